//! The audit of custom resources: the kinds the chart lists in
//! `webhook.customResources` (`--custom-resource GROUP/RESOURCE`), found by
//! discovery and watched as dynamic objects. Every pod spec inside one
//! ([`crate::policy::embedded`], the finder `check` and the webhook use) goes
//! into the [`ClusterView`] as a Pod's, with the object's kind and the path
//! of the spec ([`EmbeddedIn`]), so policy statuses, Events and PolicyReports
//! name the custom resource and where in it the problem sits.
//!
//! A kind whose CRD is not installed yet is looked up again every 30 s; until
//! then it is left out (logged), and the view's readiness does not wait for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::discovery;
use kube::{Resource, ResourceExt};
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use super::audit_summary::{AuditObject, EmbeddedIn};
use super::cluster_view::{ClusterView, Key, Workloads};
use super::watch::{self, Controllers, InitialList, is_custom_controller};
use crate::policy::{WorkloadKind, embedded};

/// A custom resource to audit: its API group and plural resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomResource {
    pub group: String,
    pub resource: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not GROUP/RESOURCE (for example argoproj.io/rollouts)")]
pub struct NotAResource(String);

impl std::str::FromStr for CustomResource {
    type Err = NotAResource;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((group, resource))
                if !group.is_empty() && !resource.is_empty() && !resource.contains('/') && !group.contains('*') =>
            {
                Ok(CustomResource {
                    group: group.to_string(),
                    resource: resource.to_string(),
                })
            }
            _ => Err(NotAResource(s.to_string())),
        }
    }
}

impl std::fmt::Display for CustomResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.resource, self.group)
    }
}

/// Why a custom resource's kind is not known (yet).
#[derive(Debug, thiserror::Error)]
enum Unresolved {
    #[error("discovery of the API group failed: {0}")]
    Discovery(#[from] kube::Error),
    #[error("the API group {group} serves no resource {resource}")]
    NotServed { group: String, resource: String },
}

/// The served kind of a custom resource, from discovery.
async fn resolve(client: &kube::Client, r: &CustomResource) -> Result<ApiResource, Unresolved> {
    let group = discovery::group(client, &r.group).await?;
    group
        .recommended_resources()
        .into_iter()
        .map(|(ar, _)| ar)
        .find(|ar| ar.plural == r.resource)
        .ok_or_else(|| Unresolved::NotServed {
            group: r.group.clone(),
            resource: r.resource.clone(),
        })
}

/// Looks each resource up once now, so the kinds found are known as owners
/// before the built-in watches read their first objects; those not found are
/// looked up again by their own watch task.
pub(crate) async fn resolve_now(client: &kube::Client, resources: &[CustomResource]) -> Vec<Option<ApiResource>> {
    let mut out = Vec::new();
    for r in resources {
        match tokio::time::timeout(Duration::from_secs(10), resolve(client, r)).await {
            Ok(Ok(ar)) => out.push(Some(ar)),
            Ok(Err(e)) => {
                warn!(resource = %r, error = %e, "custom resource not served (yet); looked up again every 30 s");
                out.push(None);
            }
            Err(_) => {
                warn!(resource = %r, "discovery did not answer within 10 s; looked up again every 30 s");
                out.push(None);
            }
        }
    }
    out
}

/// Starts a watch of each custom resource on `tasks` (`found`: what
/// [`resolve_now`] found for it).
pub(crate) fn spawn(
    tasks: &mut JoinSet<()>,
    client: kube::Client,
    view: Arc<ClusterView>,
    initial: InitialList,
    resources: Vec<(CustomResource, Option<ApiResource>)>,
    controllers: Controllers,
) {
    for (r, found) in resources {
        let span = info_span!("watch", resource = %r);
        let (client, view, controllers) = (client.clone(), view.clone(), controllers.clone());
        tasks.spawn(
            async move {
                let ar = match found {
                    Some(ar) => ar,
                    None => loop {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        match resolve(&client, &r).await {
                            Ok(ar) => break ar,
                            Err(e) => warn!(error = %e, "custom resource still not served"),
                        }
                    },
                };
                info!(kind = %ar.kind, version = %ar.version, "auditing the pod specs of a custom resource");
                controllers.write().insert((ar.group.clone(), ar.kind.clone()));
                let api: Api<DynamicObject> = Api::all_with(client, &ar);
                let feed = Embedded::new(r.to_string(), ar, controllers);
                watch::drive(watch::stream(api, initial), view, feed).await;
            }
            .instrument(span),
        );
    }
}

/// The feed of one custom resource.
struct Embedded {
    resource: String,
    ar: ApiResource,
    controllers: Controllers,
    fresh: Workloads,
    /// The keys each object's pod specs are under (an update may drop some).
    placed: HashMap<(String, String), Vec<Key>>,
    fresh_placed: HashMap<(String, String), Vec<Key>>,
}

impl Embedded {
    fn new(resource: String, ar: ApiResource, controllers: Controllers) -> Self {
        Embedded {
            resource,
            ar,
            controllers,
            fresh: HashMap::new(),
            placed: HashMap::new(),
            fresh_placed: HashMap::new(),
        }
    }

    /// Every pod spec in the object, keyed; one that does not read is logged and skipped.
    fn entries(&self, obj: &DynamicObject) -> Vec<(Key, AuditObject)> {
        let Ok(mut value) = serde_json::to_value(obj) else {
            return Vec::new();
        };
        // List items may leave them out.
        value["apiVersion"] = self.ar.api_version.clone().into();
        value["kind"] = self.ar.kind.clone().into();
        let meta = obj.meta();
        let controlled = meta.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true)
                && (WorkloadKind::from_api_version_kind(&o.api_version, &o.kind).is_some()
                    || is_custom_controller(&self.controllers, &o.api_version, &o.kind))
        });
        let (namespace, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
        let mut out = Vec::new();
        for (pointer, path) in embedded::pod_specs(&value) {
            let mut workload = match embedded::workload(&value, &pointer) {
                Ok(w) => w,
                Err(e) => {
                    warn!(%name, %path, error = %e.source, "skipping a pod spec the engine cannot read");
                    continue;
                }
            };
            workload.shrink_to_fit();
            let embedded = Arc::new(EmbeddedIn {
                resource: self.resource.clone(),
                api_version: self.ar.api_version.clone(),
                kind: self.ar.kind.clone(),
                path,
            });
            out.push((
                (
                    WorkloadKind::Pod,
                    namespace.clone(),
                    name.clone(),
                    Some(embedded.clone()),
                ),
                AuditObject {
                    uid: meta.uid.clone().unwrap_or_default(),
                    workload,
                    controlled,
                    embedded: Some(embedded),
                },
            ));
        }
        out
    }
}

fn id(obj: &DynamicObject) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

impl watch::Feed for Embedded {
    type Object = DynamicObject;

    fn apply(&mut self, view: &ClusterView, obj: DynamicObject) {
        let entries = self.entries(&obj);
        let keys: Vec<Key> = entries.iter().map(|(k, _)| k.clone()).collect();
        for gone in self.placed.remove(&id(&obj)).into_iter().flatten() {
            if !keys.contains(&gone) {
                view.delete_workload(&gone);
            }
        }
        for (k, o) in entries {
            view.apply_workload(k, o);
        }
        if !keys.is_empty() {
            self.placed.insert(id(&obj), keys);
        }
    }

    fn delete(&mut self, view: &ClusterView, obj: DynamicObject) {
        for k in self.placed.remove(&id(&obj)).into_iter().flatten() {
            view.delete_workload(&k);
        }
    }

    fn begin(&mut self) {
        self.fresh.clear();
        self.fresh_placed.clear();
    }

    fn restart_apply(&mut self, obj: DynamicObject) {
        let entries = self.entries(&obj);
        if !entries.is_empty() {
            self.fresh_placed
                .insert(id(&obj), entries.iter().map(|(k, _)| k.clone()).collect());
        }
        for (k, o) in entries {
            self.fresh.insert(k, Box::new(o));
        }
    }

    fn reset(&mut self, view: &ClusterView) {
        view.reset_embedded(&self.resource, std::mem::take(&mut self.fresh));
        self.placed = std::mem::take(&mut self.fresh_placed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::watch::Feed;
    use serde_json::json;

    fn rollout_resource() -> ApiResource {
        ApiResource {
            group: "argoproj.io".into(),
            version: "v1alpha1".into(),
            api_version: "argoproj.io/v1alpha1".into(),
            kind: "Rollout".into(),
            plural: "rollouts".into(),
        }
    }

    fn ray_cluster(workers: usize) -> DynamicObject {
        let worker = |i: usize| {
            json!({"groupName": format!("w{i}"), "template": {"spec": {"containers": [
                {"name": "ray", "image": "rayproject/ray:2", "command": ["sh", "-c", "ray start"]}]}}})
        };
        serde_json::from_value(json!({"metadata": {"name": "ray", "namespace": "ml", "uid": "u-ray"},
            "spec": {"headGroupSpec": {"template": {"spec": {"containers": [{"name": "head", "image": "rayproject/ray:2"}]}}},
                     "workerGroupSpecs": (0..workers).map(worker).collect::<Vec<_>>()}}))
        .unwrap()
    }

    fn keys_in(view: &ClusterView) -> Vec<String> {
        let mut keys: Vec<String> = view.with_workloads(|w, _| {
            w.keys()
                .map(|k| format!("{}/{} {}", k.1, k.2, k.3.as_ref().map_or("", |e| e.path.as_str())))
                .collect()
        });
        keys.sort();
        keys
    }

    #[test]
    fn every_pod_spec_of_a_custom_resource_is_in_the_view_under_its_path_and_an_update_drops_the_gone_ones() {
        let view = ClusterView::default();
        let controllers = Controllers::default();
        let mut ar = rollout_resource();
        ar.group = "ray.io".into();
        ar.api_version = "ray.io/v1".into();
        ar.kind = "RayCluster".into();
        let mut feed = Embedded::new("rayclusters.ray.io".into(), ar, controllers);
        feed.apply(&view, ray_cluster(2));
        assert_eq!(
            keys_in(&view),
            [
                "ml/ray spec.headGroupSpec.template.spec",
                "ml/ray spec.workerGroupSpecs[0].template.spec",
                "ml/ray spec.workerGroupSpecs[1].template.spec",
            ]
        );
        view.with_workloads(|w, _| {
            let o = w.values().next().unwrap();
            assert_eq!(o.api_version_kind(), ("ray.io/v1".into(), "RayCluster"));
            assert_eq!(o.uid, "u-ray");
        });
        // One worker group fewer: its entry goes.
        feed.apply(&view, ray_cluster(1));
        assert_eq!(keys_in(&view).len(), 2);
        feed.delete(&view, ray_cluster(1));
        assert!(keys_in(&view).is_empty());
    }

    #[test]
    fn a_relist_replaces_one_resources_pod_specs_and_leaves_the_pods_and_other_resources() {
        let view = ClusterView::default();
        let controllers = Controllers::default();
        let mut rollouts = Embedded::new("rollouts.argoproj.io".into(), rollout_resource(), controllers.clone());
        let rollout = |name: &str| -> DynamicObject {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop", "uid": name},
                "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}}}))
            .unwrap()
        };
        rollouts.apply(&view, rollout("old"));
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "old", "namespace": "shop"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let pod_key: Key = (WorkloadKind::Pod, "shop".into(), "old".into(), None);
        view.apply_workload(
            pod_key.clone(),
            AuditObject {
                uid: "p".into(),
                workload: crate::policy::Workload::from_value(&pod).unwrap().unwrap(),
                controlled: false,
                embedded: None,
            },
        );
        rollouts.begin();
        rollouts.restart_apply(rollout("new"));
        rollouts.reset(&view);
        assert_eq!(
            keys_in(&view),
            ["shop/new spec.template.spec", "shop/old "],
            "the old rollout went, the Pod of the same name stayed"
        );
        // The Pods' own relist leaves the rollout's pod spec alone.
        view.reset_workloads(WorkloadKind::Pod, HashMap::new());
        assert_eq!(keys_in(&view), ["shop/new spec.template.spec"]);
        // After a relist, an update still replaces what the object had.
        rollouts.delete(&view, rollout("new"));
        assert!(keys_in(&view).is_empty());
    }

    #[test]
    fn an_object_a_found_custom_kind_controls_is_counted_through_it() {
        let controllers = Controllers::default();
        assert!(!is_custom_controller(&controllers, "argoproj.io/v1alpha1", "Rollout"));
        controllers.write().insert(("argoproj.io".into(), "Rollout".into()));
        assert!(is_custom_controller(&controllers, "argoproj.io/v1alpha1", "Rollout"));
        assert!(!is_custom_controller(&controllers, "example.com/v1", "Rollout"));
    }

    #[test]
    fn custom_resources_are_named_group_slash_plural() {
        let r: CustomResource = "argoproj.io/rollouts".parse().unwrap();
        assert_eq!(r.to_string(), "rollouts.argoproj.io");
        for bad in ["rollouts", "/rollouts", "argoproj.io/", "a/b/c", "*/pods"] {
            assert!(bad.parse::<CustomResource>().is_err(), "{bad}");
        }
    }
}
