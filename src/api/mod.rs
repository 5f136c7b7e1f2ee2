//! Custom resource types. Nothing but types, their schema and their defaults.

pub(crate) mod policy;
pub(crate) mod rollout;

pub use policy::{
    Action, AuditSummary, DEFAULT_NON_ROOT_USER, DistrolessPolicy, DistrolessPolicySpec, DistrolessPolicyStatus,
    Exemption, FsGroupMode, ImageCounts, Match, Mutation, OnError, RuleAction, RuleId, RunAsUserMode,
    WorkloadViolations,
};

pub use rollout::{
    CanaryCapacity, CanaryStatus, ContainerImages, DistrolessRollout, DistrolessRolloutSpec, DistrolessRolloutStatus,
    FailurePolicy, FailureReason, MetricGate, Phase, PreflightResult, Promotion, RolloutFailure, StableScale, Staging,
    Step, TargetRef,
};

/// Each CRD this operator owns: the file it is kept in under `crds/`, and its YAML.
pub fn crds() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    [DistrolessPolicy::crd(), DistrolessRollout::crd()]
        .into_iter()
        .map(|crd| {
            let file = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
            let mut value =
                serde_json::to_value(&crd).map_err(<serde_saphyr::SerializeError as serde::ser::Error>::custom)?;
            kubernetes_formats(&mut value);
            Ok((file, serde_saphyr::to_string(&value)?))
        })
        .collect()
}

/// schemars names unsigned integers `uint32`/`uint64`, formats the API server
/// does not know (it warns "unrecognized format" on every apply of the CRD);
/// Kubernetes' own are `int32` and `int64`. The values' ranges stay bounded by
/// the schema's `minimum` and the types.
fn kubernetes_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(f)) = map.get_mut("format") {
                match f.as_str() {
                    "uint32" | "uint16" | "uint8" => *f = "int32".into(),
                    "uint64" | "uint" => *f = "int64".into(),
                    _ => {}
                }
            }
            map.values_mut().for_each(kubernetes_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(kubernetes_formats),
        _ => {}
    }
}

/// The CRDs this operator owns, as one multi-document YAML stream.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    Ok(crds()?
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n"))
}
