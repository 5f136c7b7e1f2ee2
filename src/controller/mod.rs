//! Controllers. Every replica keeps a [`ClusterView`] of policies, namespaces
//! and workloads, fed by one watch driver ([`watch`]); the webhook reads it.
//! Only the leader ([`leader`]) writes: policy statuses and Events
//! ([`auditor`], deciding with the pure [`status`] and [`audit_summary`] functions)
//! and the webhook certificates ([`certs`]).

pub(crate) mod access;
pub(crate) mod audit_summary;
pub(crate) mod auditor;
pub(crate) mod certs;
pub(crate) mod cluster_view;
pub(crate) mod custom_resources;
pub(crate) mod events;
pub(crate) mod images;
pub(crate) mod leader;
pub(crate) mod policy_reports;
pub(crate) mod pull_secrets;
pub(crate) mod rollout;
pub(crate) mod status;
pub(crate) mod watch;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use kube::api::ApiResource;

pub(crate) use auditor::Auditor;
pub(crate) use cluster_view::ClusterView;
pub use custom_resources::CustomResource;
pub(crate) use policy_reports::REPORT_NAME;
pub use watch::InitialList;

/// What a container failure most likely means for a distroless image, and the fix.
pub fn failure_hint(reason: &str, exit_code: Option<i32>, message: &str) -> String {
    rollout::classify::hint(&reason.into(), exit_code, message)
}

use crate::policy::WorkloadKind;

/// The field manager of every write.
pub(crate) const FIELD_MANAGER: &str = "distroless-guard";

pub fn api_resource(kind: WorkloadKind) -> ApiResource {
    match kind {
        WorkloadKind::Pod => ApiResource::erase::<Pod>(&()),
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        WorkloadKind::ReplicaSet => ApiResource::erase::<ReplicaSet>(&()),
        WorkloadKind::ReplicationController => ApiResource::erase::<ReplicationController>(&()),
        WorkloadKind::Job => ApiResource::erase::<Job>(&()),
        WorkloadKind::CronJob => ApiResource::erase::<CronJob>(&()),
    }
}
