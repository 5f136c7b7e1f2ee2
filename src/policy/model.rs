//! The parts of a pod spec the rules and mutation read, and nothing else.
//!
//! Everything else in an object (env, resources, volumes, status...) is
//! skipped while parsing, without being allocated: on the admission path this
//! is several times faster than reading the full Kubernetes types, and a field
//! the engine does not read can never make an object unreadable.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub generate_name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub owner_references: Option<Vec<OwnerReference>>,
}

/// An entry of `metadata.ownerReferences`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub security_context: Option<PodSecurityContext>,
    #[serde(default)]
    pub os: Option<PodOs>,
    #[serde(default)]
    pub init_containers: Option<Vec<Container>>,
    #[serde(default)]
    pub containers: Option<Vec<Container>>,
    #[serde(default)]
    pub ephemeral_containers: Option<Vec<Container>>,
    /// Secrets with registry credentials for the pod's images.
    #[serde(default)]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Read for `kubernetes.io/os` (a Windows pod).
    #[serde(default)]
    pub node_selector: Option<std::collections::BTreeMap<String, String>>,
}

/// A reference to an object in the same namespace.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LocalObjectReference {
    #[serde(default)]
    pub name: String,
}

impl PodSpec {
    /// Names of the pod's imagePullSecrets.
    pub fn pull_secret_names(&self) -> Vec<String> {
        self.image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect()
    }

    pub fn init_containers(&self) -> &[Container] {
        self.init_containers.as_deref().unwrap_or_default()
    }

    pub fn containers(&self) -> &[Container] {
        self.containers.as_deref().unwrap_or_default()
    }

    pub fn ephemeral_containers(&self) -> &[Container] {
        self.ephemeral_containers.as_deref().unwrap_or_default()
    }

    /// Init, regular and ephemeral containers, in that order.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.init_containers()
            .iter()
            .chain(self.containers())
            .chain(self.ephemeral_containers())
    }

    /// Whether `spec.os.name` says the pod runs on Windows.
    /// Whether the pod runs on Windows: `spec.os.name: windows`, a node
    /// selector for Windows nodes, or `windowsOptions` anywhere (which only
    /// Windows pods carry).
    pub fn is_windows(&self) -> bool {
        self.os.as_ref().is_some_and(|os| os.name.as_deref() == Some("windows"))
            || self.node_selector.as_ref().is_some_and(|n| {
                ["kubernetes.io/os", "beta.kubernetes.io/os"]
                    .iter()
                    .any(|k| n.get(*k).is_some_and(|v| v == "windows"))
            })
            || self
                .security_context
                .as_ref()
                .is_some_and(|s| s.windows_options.is_some())
            || self
                .all_containers()
                .any(|c| c.security_context.as_ref().is_some_and(|s| s.windows_options.is_some()))
    }
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PodOs {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    #[serde(default)]
    pub run_as_user: Option<i64>,
    #[serde(default)]
    pub run_as_group: Option<i64>,
    #[serde(default)]
    pub run_as_non_root: Option<bool>,
    #[serde(default)]
    pub fs_group: Option<i64>,
    #[serde(default)]
    pub seccomp_profile: Option<IgnoredAny>,
    /// Only whether it is set: a Windows pod.
    #[serde(default)]
    pub windows_options: Option<IgnoredAny>,
}

/// A container of any of the three lists (init, regular, ephemeral).
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
    #[serde(default)]
    pub liveness_probe: Option<Probe>,
    #[serde(default)]
    pub readiness_probe: Option<Probe>,
    #[serde(default)]
    pub startup_probe: Option<Probe>,
    #[serde(default)]
    pub lifecycle: Option<Lifecycle>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    #[serde(default)]
    pub run_as_user: Option<i64>,
    #[serde(default)]
    pub run_as_group: Option<i64>,
    #[serde(default)]
    pub run_as_non_root: Option<bool>,
    #[serde(default)]
    pub allow_privilege_escalation: Option<bool>,
    #[serde(default)]
    pub privileged: Option<bool>,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub seccomp_profile: Option<IgnoredAny>,
    /// Only whether it is set: a Windows pod.
    #[serde(default)]
    pub windows_options: Option<IgnoredAny>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Capabilities {
    #[serde(default)]
    pub add: Option<Vec<String>>,
    #[serde(default)]
    pub drop: Option<Vec<String>>,
}

/// A probe or lifecycle handler; only whether it runs a command matters.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Probe {
    #[serde(default)]
    pub exec: Option<ExecAction>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ExecAction {
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    #[serde(default)]
    pub post_start: Option<Probe>,
    #[serde(default)]
    pub pre_stop: Option<Probe>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_secret_names_are_the_named_references_in_order_without_empty_ones() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "app", "image": "app:1"}],
            "imagePullSecrets": [{"name": "regcred"}, {"name": ""}, {}, {"name": "mirror"}]
        }))
        .expect("a pod spec");
        assert_eq!(spec.pull_secret_names(), ["regcred", "mirror"]);
        let none: PodSpec =
            serde_json::from_value(serde_json::json!({"containers": [{"name": "app"}]})).expect("a pod spec");
        assert!(none.pull_secret_names().is_empty());
    }
}
