//! Pod specs from the kinds that carry one: Pods and the pod templates of the
//! seven pod-controller kinds.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use super::model::{Container, LocalObjectReference, ObjectMeta, PodOs, PodSecurityContext, PodSpec};

/// A kind whose objects carry a pod spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    ReplicationController,
    Job,
    CronJob,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 8] = [
        WorkloadKind::Pod,
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::ReplicaSet,
        WorkloadKind::ReplicationController,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
    ];

    /// The kind for an API group and kind, `None` for kinds without a pod spec
    /// (a `Job` of another group is not a `batch` Job).
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Self> {
        WorkloadKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind && k.group() == group)
    }

    /// The kind for an object's `apiVersion` and `kind` fields, in a
    /// manifest: Deployments, DaemonSets and ReplicaSets of the old
    /// `extensions` group (still in many repositories) count as the `apps` ones
    /// they became, so their pod templates are checked, not skipped.
    pub fn from_api_version_kind(api_version: &str, kind: &str) -> Option<Self> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let group = match (group, kind) {
            ("extensions", "Deployment" | "DaemonSet" | "ReplicaSet") => "apps",
            _ => group,
        };
        Self::from_group_kind(group, kind)
    }

    /// The API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self {
            WorkloadKind::Pod | WorkloadKind::ReplicationController => "",
            WorkloadKind::Job | WorkloadKind::CronJob => "batch",
            _ => "apps",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::ReplicationController => "ReplicationController",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }

    /// Where the pod spec sits, as a field path for people (`spec.template.spec`).
    pub fn spec_path(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "spec",
            WorkloadKind::CronJob => "spec.jobTemplate.spec.template.spec",
            _ => "spec.template.spec",
        }
    }

    /// Where the pod spec sits, as an RFC 6901 JSON pointer.
    pub fn spec_pointer(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "/spec",
            WorkloadKind::CronJob => "/spec/jobTemplate/spec/template/spec",
            _ => "/spec/template/spec",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object with a pod spec, as the engine sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: WorkloadKind,
    /// `metadata.name`, or `metadata.generateName` when the name is not chosen yet.
    pub name: String,
    pub namespace: Option<String>,
    /// The object's own labels (what a webhook `objectSelector` sees);
    /// shared, as the pods of one template carry the same ones.
    pub labels: Arc<BTreeMap<String, String>>,
    /// The controlling owner, when it is a workload (a ReplicaSet's Deployment,
    /// a Pod's ReplicaSet, a Job's CronJob).
    pub owner: Option<Owner>,
    pub spec: PodSpec,
}

/// The workload that controls another (`ownerReferences` with `controller: true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: WorkloadKind,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {kind} {name}: {source}")]
pub struct ExtractError {
    pub kind: WorkloadKind,
    pub name: String,
    #[source]
    pub source: serde_json::Error,
}

/// Any of the workload kinds, read in one pass whatever the kind: a pod spec
/// sits at `spec`, `spec.template.spec` or `spec.jobTemplate.spec.template.spec`,
/// and those field names never clash. Fields the engine does not read are
/// skipped without being stored.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ObjectShape {
    pub metadata: ObjectMeta,
    pub(crate) spec: Option<SpecShape>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct SpecShape {
    // A Pod's own spec.
    pub(crate) security_context: Option<PodSecurityContext>,
    pub(crate) os: Option<PodOs>,
    pub(crate) init_containers: Option<Vec<Container>>,
    pub(crate) containers: Option<Vec<Container>>,
    pub(crate) ephemeral_containers: Option<Vec<Container>>,
    pub(crate) image_pull_secrets: Option<Vec<LocalObjectReference>>,
    pub(crate) node_selector: Option<std::collections::BTreeMap<String, String>>,
    // Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job.
    // Boxed, as the rarer shapes: a Pod's spec is read without moving room
    // for two more pod specs around.
    pub(crate) template: Option<Box<TemplateShape>>,
    // CronJob.
    pub(crate) job_template: Option<Box<JobTemplateShape>>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub(crate) struct TemplateShape {
    pub(crate) spec: Option<PodSpec>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub(crate) struct JobTemplateShape {
    pub(crate) spec: Option<JobSpecShape>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub(crate) struct JobSpecShape {
    pub(crate) template: Option<Box<TemplateShape>>,
}

impl ObjectShape {
    /// The workload this object is, read as an object of `kind`.
    pub fn into_workload(self, kind: WorkloadKind) -> Workload {
        let spec = self.spec.unwrap_or_default();
        let template = |t: Option<Box<TemplateShape>>| t.and_then(|t| t.spec).unwrap_or_default();
        let pod_spec = match kind {
            WorkloadKind::Pod => PodSpec {
                security_context: spec.security_context,
                os: spec.os,
                init_containers: spec.init_containers,
                containers: spec.containers,
                ephemeral_containers: spec.ephemeral_containers,
                image_pull_secrets: spec.image_pull_secrets,
                node_selector: spec.node_selector,
            },
            WorkloadKind::CronJob => template(spec.job_template.and_then(|j| j.spec).and_then(|s| s.template)),
            _ => template(spec.template),
        };
        let meta = self.metadata;
        let owner = meta.owner_references.iter().flatten().find_map(|o| {
            let kind = WorkloadKind::from_api_version_kind(&o.api_version, &o.kind)?;
            (o.controller == Some(true)).then(|| Owner {
                kind,
                name: o.name.clone(),
                uid: o.uid.clone(),
            })
        });
        Workload {
            kind,
            name: meta
                .name
                .filter(|n| !n.is_empty())
                .or(meta.generate_name)
                .unwrap_or_default(),
            namespace: meta.namespace.filter(|n| !n.is_empty()),
            labels: Arc::new(meta.labels.unwrap_or_default()),
            owner,
            spec: pod_spec,
        }
    }
}

impl Workload {
    /// Gives back the room parsing left spare: serde grows a list as it reads
    /// it, so one container is held in room for four (1.2 KB instead of 300
    /// bytes, the largest item of a heap profile of the audit at 10,000 pods).
    /// For what is kept long (the audit's view).
    pub fn shrink_to_fit(&mut self) {
        let spec = &mut self.spec;
        for list in [
            &mut spec.init_containers,
            &mut spec.containers,
            &mut spec.ephemeral_containers,
        ]
        .into_iter()
        .flatten()
        {
            list.shrink_to_fit();
            for c in list.iter_mut() {
                for words in [&mut c.command, &mut c.args].into_iter().flatten() {
                    words.shrink_to_fit();
                }
            }
        }
        if let Some(secrets) = &mut spec.image_pull_secrets {
            secrets.shrink_to_fit();
        }
    }

    /// Reads a workload from a parsed object; `Ok(None)` when its kind carries no pod spec.
    pub fn from_value(object: &serde_json::Value) -> Result<Option<Self>, ExtractError> {
        let field = |name: &str| object.get(name).and_then(|v| v.as_str()).unwrap_or_default();
        let Some(kind) = WorkloadKind::from_api_version_kind(field("apiVersion"), field("kind")) else {
            return Ok(None);
        };
        match ObjectShape::deserialize(object) {
            Ok(shape) => Ok(Some(shape.into_workload(kind))),
            Err(source) => Err(ExtractError {
                kind,
                name: object
                    .pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("<unnamed>")
                    .to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cron_job_pod_spec_is_found_under_job_template() {
        let obj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": "ops"},
            "spec": {"schedule": "0 1 * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "job", "image": "busybox"}]}}}}}});
        let w = Workload::from_value(&obj).unwrap().unwrap();
        assert_eq!(w.kind, WorkloadKind::CronJob);
        assert_eq!(w.namespace.as_deref(), Some("ops"));
        assert_eq!(w.spec.containers()[0].name, "job");
    }

    #[test]
    fn deployments_daemon_sets_and_replica_sets_of_the_old_extensions_group_are_the_apps_ones() {
        for (kind, expected) in [
            ("Deployment", WorkloadKind::Deployment),
            ("DaemonSet", WorkloadKind::DaemonSet),
            ("ReplicaSet", WorkloadKind::ReplicaSet),
        ] {
            assert_eq!(
                WorkloadKind::from_api_version_kind("extensions/v1beta1", kind),
                Some(expected)
            );
        }
        // Nothing else of that group carries a pod spec.
        assert_eq!(
            WorkloadKind::from_api_version_kind("extensions/v1beta1", "Ingress"),
            None
        );
    }

    #[test]
    fn a_job_of_another_api_group_is_not_a_batch_job() {
        let obj = json!({"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job", "metadata": {"name": "j"}});
        assert!(Workload::from_value(&obj).unwrap().is_none());
        assert_eq!(
            WorkloadKind::from_api_version_kind("apps/v1", "Deployment"),
            Some(WorkloadKind::Deployment)
        );
        assert_eq!(
            WorkloadKind::from_api_version_kind("v1", "Pod"),
            Some(WorkloadKind::Pod)
        );
    }

    #[test]
    fn kinds_without_a_pod_spec_are_not_workloads() {
        let obj = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
        assert!(Workload::from_value(&obj).unwrap().is_none());
    }

    #[test]
    fn a_field_of_the_wrong_type_is_an_error_naming_the_object() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "nope"}});
        let err = Workload::from_value(&obj).unwrap_err().to_string();
        assert!(err.contains("Pod p"), "{err}");
    }

    #[test]
    fn the_controlling_owner_is_kept_when_it_is_a_workload() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "1"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "u2", "controller": true}]}});
        let w = Workload::from_value(&obj).unwrap().unwrap();
        assert_eq!(
            w.owner,
            Some(Owner {
                kind: WorkloadKind::ReplicaSet,
                name: "web-7d9f".into(),
                uid: "u2".into()
            })
        );
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "u2"}]}});
        assert_eq!(
            Workload::from_value(&obj).unwrap().unwrap().owner,
            None,
            "not the controller"
        );
    }

    #[test]
    fn generated_names_are_used_when_the_name_is_not_chosen_yet() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-7d9f-"}, "spec": {"containers": []}});
        assert_eq!(Workload::from_value(&obj).unwrap().unwrap().name, "web-7d9f-");
    }
}
