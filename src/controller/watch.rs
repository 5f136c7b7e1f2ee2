//! One watch driver for every feed of the [`ClusterView`]: kube-runtime's
//! watcher with a backoff, each event handed to the view as
//! apply, delete or reset. A span per watch; an object the engine cannot read
//! is logged and skipped without breaking the stream.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource};
use kube::core::DynamicResourceScope;
use kube::core::PartialObjectMeta;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tracing::{Instrument, info_span, warn};

use super::audit_summary::AuditObject;
use super::cluster_view::{ClusterView, Key};
use crate::api::DistrolessPolicy;
use crate::policy::workload::SpecShape;
use crate::policy::{ObjectShape, PolicySet, WorkloadKind};

/// What one feed does with the watch's events.
pub(crate) trait Feed: Send + 'static {
    type Object: Clone + std::fmt::Debug + Send + 'static;
    /// An object seen (added or changed).
    fn apply(&mut self, view: &ClusterView, object: Self::Object);
    fn delete(&mut self, view: &ClusterView, object: Self::Object);
    /// A fresh list begins (after a (re)connect): objects follow, then `reset`.
    fn begin(&mut self);
    fn restart_apply(&mut self, object: Self::Object);
    fn reset(&mut self, view: &ClusterView);
}

pub(crate) async fn drive<F: Feed>(
    stream: impl futures_util::Stream<Item = Result<watcher::Event<F::Object>, watcher::Error>>,
    view: Arc<ClusterView>,
    mut feed: F,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => feed.begin(),
            Ok(watcher::Event::InitApply(o)) => feed.restart_apply(o),
            Ok(watcher::Event::InitDone) => feed.reset(&view),
            Ok(watcher::Event::Apply(o)) => feed.apply(&view, o),
            Ok(watcher::Event::Delete(o)) => feed.delete(&view, o),
            // The backoff waits before the next attempt.
            Err(e) => warn!(error = %e, "watch failed; retrying"),
        }
    }
}

/// A workload as the audit's watches read it off the wire: the metadata the
/// audit and the watcher use, and the text of the spec. managedFields,
/// status, annotations and the rest are skipped by the parser, never built,
/// so a page of the initial list (or a streamed one) holds 500 specs as text
/// rather than 500 whole parsed objects. The spec is parsed per object
/// ([`audit_object`]), so one object the engine cannot read is skipped alone.
#[derive(Clone, Debug, serde::Deserialize)]
pub(crate) struct WatchedWorkload {
    #[serde(deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    spec: Option<Box<RawValue>>,
}

/// The metadata fields [`WatchedWorkload`] keeps.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

fn slim_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = <SlimMeta as serde::Deserialize>::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        generate_name: m.generate_name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        owner_references: m.owner_references,
        ..ObjectMeta::default()
    })
}

impl Resource for WatchedWorkload {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The (API group, kind) of every custom kind found so far: a built-in object
/// one of them controls (an Argo Rollout's ReplicaSets) is counted through it,
/// not again on its own.
pub(crate) type Controllers = Arc<parking_lot::RwLock<HashSet<(String, String)>>>;

/// Whether an owner reference names a found custom kind.
pub(crate) fn is_custom_controller(controllers: &Controllers, api_version: &str, kind: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    controllers.read().contains(&(group.to_string(), kind.to_string()))
}

/// The audit's view of a watched object; `None` when it cannot be read (logged, skipped).
pub(crate) fn audit_object(kind: WorkloadKind, obj: &WatchedWorkload, custom: &Controllers) -> Option<AuditObject> {
    let spec = match obj
        .spec
        .as_deref()
        .map(|raw| serde_json::from_str::<SpecShape>(raw.get()))
    {
        None => None,
        Some(Ok(spec)) => Some(spec),
        Some(Err(e)) => {
            warn!(%kind, name = %obj.name_any(), error = %e, "skipping an object the engine cannot read");
            return None;
        }
    };
    let meta = &obj.metadata;
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let controlled = owners.iter().any(|o| {
        o.controller == Some(true)
            && (WorkloadKind::from_api_version_kind(&o.api_version, &o.kind).is_some()
                || is_custom_controller(custom, &o.api_version, &o.kind))
    });
    let shape = ObjectShape {
        metadata: crate::policy::model::ObjectMeta {
            name: meta.name.clone(),
            generate_name: meta.generate_name.clone(),
            namespace: meta.namespace.clone(),
            labels: meta.labels.clone(),
            owner_references: Some(
                owners
                    .iter()
                    .map(|o| crate::policy::model::OwnerReference {
                        api_version: o.api_version.clone(),
                        kind: o.kind.clone(),
                        name: o.name.clone(),
                        uid: o.uid.clone(),
                        controller: o.controller,
                    })
                    .collect(),
            ),
        },
        spec,
    };
    let mut workload = shape.into_workload(kind);
    workload.shrink_to_fit();
    Some(AuditObject {
        uid: meta.uid.clone().unwrap_or_default(),
        workload,
        controlled,
        embedded: None,
    })
}

type Labels = Arc<BTreeMap<String, String>>;

/// Label sets seen, shared between the workloads that carry the same: the
/// pods of one template do, and a map of one label takes a 528-byte node.
/// Sets no workload uses any more are dropped once as many new ones came.
#[derive(Default)]
struct LabelSets {
    sets: HashSet<Labels>,
    added: usize,
}

impl LabelSets {
    fn share(&mut self, labels: Labels) -> Labels {
        if let Some(known) = self.sets.get(&labels) {
            return known.clone();
        }
        self.added += 1;
        if self.added > self.sets.len().max(1024) {
            self.sets.retain(|s| Arc::strong_count(s) > 1);
            self.added = 0;
        }
        self.sets.insert(labels.clone());
        labels
    }
}

fn key(kind: WorkloadKind, obj: &WatchedWorkload) -> Key {
    (kind, obj.namespace().unwrap_or_default(), obj.name_any(), None)
}

struct Workloads {
    kind: WorkloadKind,
    fresh: super::cluster_view::Workloads,
    labels: LabelSets,
    /// Custom kinds found (an object one of them controls is counted through it).
    custom: Controllers,
}

impl Workloads {
    fn read(&mut self, obj: &WatchedWorkload) -> Option<AuditObject> {
        let mut o = audit_object(self.kind, obj, &self.custom)?;
        o.workload.labels = self.labels.share(o.workload.labels);
        Some(o)
    }
}

impl Feed for Workloads {
    type Object = WatchedWorkload;
    fn apply(&mut self, view: &ClusterView, obj: WatchedWorkload) {
        if let Some(o) = self.read(&obj) {
            view.apply_workload(key(self.kind, &obj), o);
        }
    }
    fn delete(&mut self, view: &ClusterView, obj: WatchedWorkload) {
        view.delete_workload(&key(self.kind, &obj));
    }
    fn begin(&mut self) {
        self.fresh.clear();
    }
    fn restart_apply(&mut self, obj: WatchedWorkload) {
        if let Some(o) = self.read(&obj) {
            self.fresh.insert(key(self.kind, &obj), Box::new(o));
        }
    }
    fn reset(&mut self, view: &ClusterView) {
        view.reset_workloads(self.kind, std::mem::take(&mut self.fresh));
    }
}

#[derive(Default)]
struct Namespaces {
    fresh: Vec<(String, BTreeMap<String, String>)>,
}

impl Feed for Namespaces {
    type Object = PartialObjectMeta<Namespace>;
    fn apply(&mut self, view: &ClusterView, ns: Self::Object) {
        view.apply_namespace(&ns.name_any(), ns.labels());
    }
    fn delete(&mut self, view: &ClusterView, ns: Self::Object) {
        view.delete_namespace(&ns.name_any());
    }
    fn begin(&mut self) {
        self.fresh.clear();
    }
    fn restart_apply(&mut self, ns: Self::Object) {
        self.fresh.push((ns.name_any(), ns.labels().clone()));
    }
    fn reset(&mut self, view: &ClusterView) {
        view.reset_namespaces(std::mem::take(&mut self.fresh));
    }
}

/// Policies also go to the webhook, compiled, on every change.
struct Policies<S> {
    fresh: Vec<DistrolessPolicy>,
    sink: S,
}

impl<S: Fn(PolicySet) + Send + 'static> Policies<S> {
    fn publish(&self, view: &ClusterView) {
        let (set, _) = super::status::compile_all(&view.policies());
        (self.sink)(set);
    }
}

impl<S: Fn(PolicySet) + Send + 'static> Feed for Policies<S> {
    type Object = DistrolessPolicy;
    fn apply(&mut self, view: &ClusterView, p: DistrolessPolicy) {
        view.apply_policy(p);
        self.publish(view);
    }
    fn delete(&mut self, view: &ClusterView, p: DistrolessPolicy) {
        view.delete_policy(&p.name_any());
        self.publish(view);
    }
    fn begin(&mut self) {
        self.fresh.clear();
    }
    fn restart_apply(&mut self, p: DistrolessPolicy) {
        self.fresh.push(p);
    }
    fn reset(&mut self, view: &ClusterView) {
        view.reset_policies(std::mem::take(&mut self.fresh));
        self.publish(view);
    }
}

/// Retry a failed watch after 100 ms, doubling up to 5 s with jitter (reset
/// after a minute without errors). The webhook admits with what the view
/// knows, so a replica must not stay blind for long: kube's default waits up
/// to 30 s.
fn backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let quick = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(quick), Duration::from_secs(60))
}

/// How a watch reads what exists before it follows changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialList {
    /// A watch that streams the objects (`sendInitialEvents`, the WatchList
    /// feature: on by default from Kubernetes 1.34, and in 1.32). The API
    /// server sends them from its watch cache, one at a time, instead of
    /// building pages of the whole list in memory.
    Streaming,
    /// Pages of 500 objects, then a watch: what every API server serves.
    Paged,
}

impl InitialList {
    fn config(self) -> watcher::Config {
        match self {
            InitialList::Streaming => watcher::Config::default().streaming_lists(),
            InitialList::Paged => watcher::Config::default(),
        }
    }

    /// The choice for an API server of this minor version (`1.N`): streaming
    /// where WatchList is on by default, paged elsewhere (1.33 turned it off).
    pub fn for_server(major: &str, minor: &str) -> Self {
        let minor: u32 = minor.trim_end_matches('+').parse().unwrap_or(0);
        if major == "1" && (minor == 32 || minor >= 34) {
            InitialList::Streaming
        } else {
            InitialList::Paged
        }
    }
}

pub(crate) fn stream<K>(
    api: Api<K>,
    initial: InitialList,
) -> impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher(api, initial.config()).backoff(backoff())
}

/// Starts every watch on `tasks`: the eight workload kinds, namespaces, and
/// policies (each change of which also goes, compiled, to `policy_sink`).
/// `custom`: the custom kinds found so far, whose objects count what they control.
pub(crate) fn spawn(
    tasks: &mut JoinSet<()>,
    client: kube::Client,
    view: Arc<ClusterView>,
    initial: InitialList,
    custom: Controllers,
    policy_sink: impl Fn(PolicySet) + Send + Sync + 'static,
) {
    for kind in WorkloadKind::ALL {
        let api: Api<WatchedWorkload> = Api::all_with(client.clone(), &super::api_resource(kind));
        let feed = Workloads {
            kind,
            fresh: HashMap::new(),
            labels: LabelSets::default(),
            custom: custom.clone(),
        };
        tasks.spawn(drive(stream(api, initial), view.clone(), feed).instrument(info_span!("watch", %kind)));
    }
    // Names and labels are all the namespace feed reads: metadata-only requests.
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    tasks.spawn(
        drive(stream(namespaces, initial), view.clone(), Namespaces::default())
            .instrument(info_span!("watch", kind = "Namespace")),
    );
    let policies: Api<DistrolessPolicy> = Api::all(client);
    let feed = Policies {
        fresh: Vec::new(),
        sink: policy_sink,
    };
    tasks
        .spawn(drive(stream(policies, initial), view, feed).instrument(info_span!("watch", kind = "DistrolessPolicy")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Workload;
    use kube::runtime::utils::Backoff;

    #[test]
    fn equal_label_sets_are_shared_and_unused_ones_dropped() {
        let mut sets = LabelSets::default();
        let set = |n: usize| Arc::new(BTreeMap::from([("app".to_string(), format!("app-{n}"))]));
        let a = sets.share(set(1));
        let b = sets.share(set(1));
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second pod of a template shares the first one's labels"
        );
        drop((a, b));
        // 1,025 new sets later, the unused first one is gone and the live ones stay.
        let live: Vec<Labels> = (2..1027).map(|n| sets.share(set(n))).collect();
        assert!(!sets.sets.contains(&set(1)));
        assert!(live.iter().all(|l| sets.sets.contains(l)));
    }

    #[test]
    fn streaming_lists_are_chosen_where_the_server_turns_watch_list_on_by_default() {
        let choice = |minor| InitialList::for_server("1", minor);
        assert_eq!(
            ["30", "31", "32", "33", "34", "37", "37+", "x"].map(choice),
            [
                InitialList::Paged,
                InitialList::Paged,
                InitialList::Streaming,
                InitialList::Paged,
                InitialList::Streaming,
                InitialList::Streaming,
                InitialList::Streaming,
                InitialList::Paged
            ]
        );
    }

    #[test]
    fn the_watch_backoff_starts_quick_is_capped_and_resets() {
        let mut b = backoff();
        let delays: Vec<Duration> = (&mut b).take(8).collect();
        // backon's jitter adds up to one more delay.
        assert!(
            delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200),
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)), "{delays:?}");
        assert!(
            delays[7] >= Duration::from_secs(5),
            "capped at 5 s before jitter: {delays:?}"
        );
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(200));
    }

    /// A Deployment as the API server sends it: managedFields, status and
    /// annotations beside what the audit reads.
    fn deployment(name: &str, command: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}"), "resourceVersion": "42",
                "labels": {"app": name}, "annotations": {"deployment.kubernetes.io/revision": "3"},
                "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "App", "name": "a", "uid": "u", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "app", "image": "registry.example/app:1", "command": command}]}}},
            "status": {"replicas": 2, "conditions": [{"type": "Available", "status": "True"}]}
        })
    }

    #[test]
    fn a_watched_workload_reads_as_the_engine_reads_the_whole_object() {
        let full = deployment("web", serde_json::json!(["sh", "-c", "exec /app"]));
        let watched: WatchedWorkload = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(watched.metadata.resource_version.as_deref(), Some("42"));
        assert!(watched.metadata.managed_fields.is_none() && watched.metadata.annotations.is_none());
        let object = audit_object(WorkloadKind::Deployment, &watched, &Default::default()).expect("readable");
        let expected = Workload::from_value(&full).unwrap().unwrap();
        assert_eq!(object.workload, expected);
        assert_eq!(object.uid, "uid-web");
        // Its controller is not a workload kind, so it is audited on its own.
        assert!(!object.controlled);
        assert_eq!(key(WorkloadKind::Deployment, &watched).1, "team");
    }

    #[test]
    fn one_unreadable_workload_in_a_page_is_skipped_and_the_others_are_read() {
        // runAsUser must be an integer: the API server would never send this,
        // but if it did, only this object is lost, not the whole page.
        let mut bad = deployment("bad", serde_json::json!(["/app"]));
        bad["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = serde_json::json!("root");
        let page = serde_json::json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "7"},
            "items": [deployment("good", serde_json::json!(["/app"])), bad]});
        let list: kube::core::ObjectList<WatchedWorkload> = serde_json::from_value(page).expect("the page parses");
        let read: Vec<String> = list
            .items
            .iter()
            .filter_map(|o| audit_object(WorkloadKind::Deployment, o, &Default::default()))
            .map(|o| o.workload.name)
            .collect();
        assert_eq!(read, ["good"]);
    }
}
