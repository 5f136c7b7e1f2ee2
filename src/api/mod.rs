//! Custom resource types. Nothing but types, their schema and their defaults.

pub mod policy;

pub use policy::{
    Action, AuditSummary, DEFAULT_NON_ROOT_USER, DistrolessPolicy, DistrolessPolicySpec, DistrolessPolicyStatus,
    Exemption, FsGroupMode, Match, Mutation, OnError, RuleAction, RuleId, RunAsUserMode, WorkloadViolations,
};

/// The CRDs this operator owns, as one multi-document YAML stream.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&DistrolessPolicy::crd())
}
