//! Custom resource types. Nothing but types, their schema and their defaults.

pub mod policy;
pub mod rollout;

pub use policy::{
    Action, AuditSummary, DEFAULT_NON_ROOT_USER, DistrolessPolicy, DistrolessPolicySpec, DistrolessPolicyStatus,
    Exemption, FsGroupMode, ImageCounts, Match, Mutation, OnError, RuleAction, RuleId, RunAsUserMode,
    WorkloadViolations,
};

pub use rollout::{
    CanaryStatus, ContainerImages, DistrolessRollout, DistrolessRolloutSpec, DistrolessRolloutStatus, FailurePolicy,
    MetricGate, Phase, PreflightResult, Promotion, RolloutFailure, Staging, Step, TargetRef,
};

/// Each CRD this operator owns: the file it is kept in under `crds/`, and its YAML.
pub fn crds() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    [DistrolessPolicy::crd(), DistrolessRollout::crd()]
        .into_iter()
        .map(|crd| {
            let file = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
            Ok((file, serde_saphyr::to_string(&crd)?))
        })
        .collect()
}

/// The CRDs this operator owns, as one multi-document YAML stream.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    Ok(crds()?
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n"))
}
