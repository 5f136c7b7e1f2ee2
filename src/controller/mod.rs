//! Controllers. Every replica keeps a [`ClusterView`] of policies, namespaces
//! and workloads, fed by one watch driver ([`watch`]); the webhook reads it.
//! Only the leader ([`leader`]) writes: policy statuses and Events
//! ([`auditor`], deciding with the pure [`status`] and [`audit`] functions)
//! and the webhook certificates ([`certs`]).

pub mod audit;
pub mod auditor;
pub mod certs;
pub mod events;
pub mod leader;
pub mod pull_secrets;
pub mod status;
pub mod view;
pub mod watch;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use kube::api::ApiResource;

pub use auditor::Auditor;
pub use view::ClusterView;

use crate::policy::WorkloadKind;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "distroless-guard";

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
