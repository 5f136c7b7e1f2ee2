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
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub owner_references: Option<Vec<OwnerReference>>,
}

/// An entry of `metadata.ownerReferences`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub controller: Option<bool>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub security_context: Option<PodSecurityContext>,
    pub os: Option<PodOs>,
    pub init_containers: Option<Vec<Container>>,
    pub containers: Option<Vec<Container>>,
    pub ephemeral_containers: Option<Vec<Container>>,
    /// Secrets with registry credentials for the pod's images.
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Read for `kubernetes.io/os` (a Windows pod).
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
    pub name: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub fs_group: Option<i64>,
    pub seccomp_profile: Option<IgnoredAny>,
    /// Only whether it is set: a Windows pod.
    pub windows_options: Option<IgnoredAny>,
}

/// A container of any of the three lists (init, regular, ephemeral).
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub security_context: Option<SecurityContext>,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub lifecycle: Option<Lifecycle>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub privileged: Option<bool>,
    pub capabilities: Option<Capabilities>,
    pub seccomp_profile: Option<IgnoredAny>,
    /// Only whether it is set: a Windows pod.
    pub windows_options: Option<IgnoredAny>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Capabilities {
    pub add: Option<Vec<String>>,
    pub drop: Option<Vec<String>>,
}

/// A probe or lifecycle handler; only whether it runs a command matters.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Probe {
    pub exec: Option<ExecAction>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ExecAction {
    pub command: Option<Vec<String>>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Lifecycle {
    pub post_start: Option<Probe>,
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
