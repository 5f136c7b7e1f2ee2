//! Pod specs from the kinds that carry one: Pods and the pod templates of the
//! seven pod-controller kinds.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

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

    /// The kind for an object's `apiVersion` and `kind` fields.
    pub fn from_api_version_kind(api_version: &str, kind: &str) -> Option<Self> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
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
    /// The object's own labels (what a webhook `objectSelector` sees).
    pub labels: BTreeMap<String, String>,
    pub spec: PodSpec,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {kind} {name}: {source}")]
pub struct ExtractError {
    pub kind: WorkloadKind,
    pub name: String,
    #[source]
    pub source: serde_json::Error,
}

impl Workload {
    /// Reads a workload of a known kind from any serde source (raw JSON on the
    /// admission path, a parsed document in the CLI).
    pub fn deserialize<'de, D: Deserializer<'de>>(
        kind: WorkloadKind,
        de: D,
    ) -> Result<Self, D::Error> {
        let (metadata, spec) = match kind {
            WorkloadKind::Pod => {
                let shape = PodShape::deserialize(de)?;
                (shape.metadata, shape.spec)
            }
            WorkloadKind::CronJob => {
                let shape = CronJobShape::deserialize(de)?;
                let spec = shape
                    .spec
                    .and_then(|s| s.job_template)
                    .and_then(|j| j.spec)
                    .and_then(|s| s.template)
                    .and_then(|t| t.spec);
                (shape.metadata, spec)
            }
            _ => {
                let shape = TemplateShape::deserialize(de)?;
                (
                    shape.metadata,
                    shape.spec.and_then(|s| s.template).and_then(|t| t.spec),
                )
            }
        };
        Ok(Workload {
            kind,
            name: metadata
                .name
                .filter(|n| !n.is_empty())
                .or(metadata.generate_name)
                .unwrap_or_default(),
            namespace: metadata.namespace.filter(|n| !n.is_empty()),
            labels: metadata.labels.unwrap_or_default(),
            spec: spec.unwrap_or_default(),
        })
    }

    /// Reads a workload from a parsed object; `Ok(None)` when its kind carries no pod spec.
    pub fn from_value(object: &serde_json::Value) -> Result<Option<Self>, ExtractError> {
        let field = |name: &str| {
            object
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
        };
        let Some(kind) = WorkloadKind::from_api_version_kind(field("apiVersion"), field("kind"))
        else {
            return Ok(None);
        };
        Workload::deserialize(kind, object)
            .map(Some)
            .map_err(|source| ExtractError {
                kind,
                name: object
                    .pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("<unnamed>")
                    .to_string(),
                source,
            })
    }
}

#[derive(Deserialize)]
struct PodShape {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<PodSpec>,
}

#[derive(Deserialize)]
struct TemplateShape {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<TemplateHolder>,
}

#[derive(Deserialize)]
struct TemplateHolder {
    #[serde(default)]
    template: Option<PodShapeOnly>,
}

#[derive(Deserialize)]
struct PodShapeOnly {
    #[serde(default)]
    spec: Option<PodSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CronJobShape {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<CronJobSpecShape>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CronJobSpecShape {
    #[serde(default)]
    job_template: Option<JobTemplateShape>,
}

#[derive(Deserialize)]
struct JobTemplateShape {
    #[serde(default)]
    spec: Option<TemplateHolder>,
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
        assert_eq!(w.spec.containers[0].name, "job");
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
    fn generated_names_are_used_when_the_name_is_not_chosen_yet() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-7d9f-"}, "spec": {"containers": []}});
        assert_eq!(
            Workload::from_value(&obj).unwrap().unwrap().name,
            "web-7d9f-"
        );
    }
}
