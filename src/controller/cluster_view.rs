//! What the watches have seen: workloads (as the engine reads them),
//! namespace labels and policies. Every replica keeps one; the webhook reads
//! namespace labels and owners from it, the audit reads all of it.
//!
//! Each kind is fed by [`super::watch`] through [`ClusterView::apply`],
//! [`ClusterView::delete`] and [`ClusterView::reset`] (the whole list after a
//! (re)connect), so the view itself is plain state with unit tests.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};

use std::sync::Arc;

use super::audit_summary::{AuditObject, EmbeddedIn};
use crate::admission::{NamespaceLabels, Owners};
use crate::api::DistrolessPolicy;
use crate::policy::{Owner, Workload, WorkloadKind, namespace_name_labels};

/// (kind, namespace, name) of a workload; a pod spec inside a custom
/// resource is judged as a Pod and keyed by where it sits as well (one
/// object may hold several).
pub(crate) type Key = (WorkloadKind, String, String, Option<Arc<EmbeddedIn>>);

/// The workloads by key. Boxed: an entry is then a key and a pointer, and
/// the table, which keeps room for an eighth more entries than it holds,
/// does not keep that room at the size of a whole workload (6.5 MiB of table
/// at 10,000 pods unboxed).
pub(crate) type Workloads = HashMap<Key, Box<AuditObject>>;

/// One watched collection, for readiness: the eight workload kinds, namespaces, policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Feed {
    Workloads(WorkloadKind),
    Namespaces,
    Policies,
}

/// How many feeds must list once before the view is ready.
pub(crate) const FEEDS: usize = WorkloadKind::ALL.len() + 2;

pub struct ClusterView {
    workloads: Mutex<Workloads>,
    namespaces: RwLock<HashMap<String, BTreeMap<String, String>>>,
    policies: Mutex<BTreeMap<String, DistrolessPolicy>>,
    /// Something changed: the audit should run again.
    pub changed: Notify,
    /// The same, for the audit's image reader (each waiter has its own permit).
    pub images_changed: Notify,
    synced: Mutex<std::collections::HashSet<Feed>>,
    ready: watch::Sender<bool>,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            workloads: Mutex::default(),
            namespaces: RwLock::default(),
            policies: Mutex::default(),
            changed: Notify::new(),
            images_changed: Notify::new(),
            synced: Mutex::default(),
            ready: watch::Sender::new(false),
        }
    }
}

impl ClusterView {
    /// Wakes whoever waits for changes.
    fn touched(&self) {
        self.changed.notify_one();
        self.images_changed.notify_one();
    }

    /// Whether every feed has listed once.
    pub fn synced(&self) -> bool {
        *self.ready.borrow()
    }

    /// Completes once every feed has listed once.
    pub async fn wait_synced(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    fn mark_synced(&self, feed: Feed) {
        let mut synced = self.synced.lock();
        synced.insert(feed);
        if synced.len() >= FEEDS {
            self.ready.send_if_modified(|r| !std::mem::replace(r, true));
        }
    }

    pub fn workload_count(&self) -> usize {
        self.workloads.lock().len()
    }

    pub fn policies(&self) -> BTreeMap<String, DistrolessPolicy> {
        self.policies.lock().clone()
    }

    /// Runs `f` over the workloads and namespace labels under the locks (the
    /// audit summarizes without copying them).
    pub fn with_workloads<R>(&self, f: impl FnOnce(&Workloads, &HashMap<String, BTreeMap<String, String>>) -> R) -> R {
        let workloads = self.workloads.lock();
        let namespaces = self.namespaces.read();
        f(&workloads, &namespaces)
    }

    // Workloads.

    pub fn apply_workload(&self, key: Key, object: AuditObject) {
        self.workloads.lock().insert(key, Box::new(object));
        self.touched();
    }

    pub fn delete_workload(&self, key: &Key) {
        self.workloads.lock().remove(key);
        self.touched();
    }

    /// Replaces every workload of `kind` with a fresh list.
    pub fn reset_workloads(&self, kind: WorkloadKind, fresh: Workloads) {
        let mut all = self.workloads.lock();
        all.retain(|k, _| k.0 != kind || k.3.is_some());
        all.extend(fresh);
        drop(all);
        self.mark_synced(Feed::Workloads(kind));
        self.touched();
    }

    /// Replaces every pod spec found in objects of a custom `resource`
    /// (`plural.group`) with a fresh list. Custom resources do not hold the
    /// view's readiness back: their CRD may be installed after the operator.
    pub fn reset_embedded(&self, resource: &str, fresh: Workloads) {
        let mut all = self.workloads.lock();
        all.retain(|k, _| k.3.as_ref().is_none_or(|e| e.resource != resource));
        all.extend(fresh);
        drop(all);
        self.touched();
    }

    // Namespaces: their labels, plus `kubernetes.io/metadata.name`.

    pub fn apply_namespace(&self, name: &str, labels: &BTreeMap<String, String>) {
        let mut all = namespace_name_labels(name);
        all.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.namespaces.write().insert(name.to_string(), all);
        self.touched();
    }

    pub fn delete_namespace(&self, name: &str) {
        self.namespaces.write().remove(name);
        self.touched();
    }

    pub fn reset_namespaces(&self, fresh: Vec<(String, BTreeMap<String, String>)>) {
        let all: HashMap<String, BTreeMap<String, String>> = fresh
            .into_iter()
            .map(|(name, labels)| {
                let mut all = namespace_name_labels(&name);
                all.extend(labels);
                (name, all)
            })
            .collect();
        *self.namespaces.write() = all;
        self.mark_synced(Feed::Namespaces);
        self.touched();
    }

    // Policies.

    pub fn apply_policy(&self, policy: DistrolessPolicy) {
        let name = policy.metadata.name.clone().unwrap_or_default();
        self.policies.lock().insert(name, policy);
        self.touched();
    }

    pub fn delete_policy(&self, name: &str) {
        self.policies.lock().remove(name);
        self.touched();
    }

    pub fn reset_policies(&self, fresh: Vec<DistrolessPolicy>) {
        *self.policies.lock() = fresh
            .into_iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
            .collect();
        self.mark_synced(Feed::Policies);
        self.touched();
    }

    fn owner_now(&self, namespace: &str, owner: &Owner) -> Option<Workload> {
        let key = (owner.kind, namespace.to_string(), owner.name.clone(), None);
        self.workloads
            .lock()
            .get(&key)
            .filter(|o| o.uid == owner.uid)
            .map(|o| o.workload.clone())
    }
}

impl NamespaceLabels for ClusterView {
    fn labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .read()
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| namespace_name_labels(namespace))
    }
}

impl Owners for ClusterView {
    fn owner<'a>(
        &'a self,
        namespace: &'a str,
        owner: &'a Owner,
    ) -> futures_util::future::BoxFuture<'a, Option<Workload>> {
        Box::pin(async move {
            // A controller creates children right after its owner appears; give
            // the watch a moment to deliver it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                if let Some(w) = self.owner_now(namespace, owner) {
                    return Some(w);
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::debug!(kind = %owner.kind, %namespace, name = %owner.name, "owner not in the view");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(kind: WorkloadKind, name: &str, uid: &str) -> (Key, AuditObject) {
        let api = if kind.group().is_empty() {
            "v1".to_string()
        } else {
            format!("{}/v1", kind.group())
        };
        let value = json!({"apiVersion": api, "kind": kind.as_str(), "metadata": {"name": name, "namespace": "shop"}, "spec": {}});
        let workload = Workload::from_value(&value).unwrap().unwrap();
        (
            (kind, "shop".into(), name.into(), None),
            AuditObject {
                uid: uid.into(),
                workload,
                controlled: false,
                embedded: None,
            },
        )
    }

    #[test]
    fn a_reset_replaces_one_kind_and_leaves_the_others() {
        let view = ClusterView::default();
        let (k1, o1) = object(WorkloadKind::Deployment, "web", "1");
        let (k2, o2) = object(WorkloadKind::Job, "nightly", "2");
        view.apply_workload(k1.clone(), o1);
        view.apply_workload(k2.clone(), o2);
        let (k3, o3) = object(WorkloadKind::Deployment, "api", "3");
        view.reset_workloads(WorkloadKind::Deployment, HashMap::from([(k3.clone(), Box::new(o3))]));
        view.with_workloads(|w, _| {
            assert!(!w.contains_key(&k1), "gone from the new list");
            assert!(w.contains_key(&k2) && w.contains_key(&k3));
        });
        view.delete_workload(&k2);
        assert_eq!(view.workload_count(), 1);
    }

    #[test]
    fn the_view_is_ready_once_every_feed_has_listed() {
        let view = ClusterView::default();
        for kind in WorkloadKind::ALL {
            assert!(!view.synced());
            view.reset_workloads(kind, HashMap::new());
        }
        view.reset_namespaces(Vec::new());
        assert!(!view.synced());
        view.reset_policies(Vec::new());
        assert!(view.synced());
    }

    #[test]
    fn namespace_labels_carry_the_name_label_and_unknown_namespaces_get_it_too() {
        let view = ClusterView::default();
        view.apply_namespace("shop", &BTreeMap::from([("team".to_string(), "a".to_string())]));
        let labels = view.labels("shop");
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            labels.get("kubernetes.io/metadata.name").map(String::as_str),
            Some("shop")
        );
        assert_eq!(
            view.labels("elsewhere")
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("elsewhere")
        );
        view.delete_namespace("shop");
        assert!(!view.labels("shop").contains_key("team"));
    }

    #[tokio::test]
    async fn an_owner_is_found_only_with_its_uid() {
        let view = ClusterView::default();
        let (k, o) = object(WorkloadKind::ReplicaSet, "web-1", "u1");
        view.apply_workload(k, o);
        let owner = Owner {
            kind: WorkloadKind::ReplicaSet,
            name: "web-1".into(),
            uid: "u1".into(),
        };
        assert!(view.owner("shop", &owner).await.is_some());
        let stale = Owner {
            uid: "u0".into(),
            ..owner
        };
        assert!(view.owner("shop", &stale).await.is_none(), "gives up after its grace");
    }
}
