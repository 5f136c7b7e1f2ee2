// Every type here is public API (re-exported by `api`); the derive macros'
// generated code misleads the `unreachable_pub` lint.
#![allow(unreachable_pub)]
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The UID, GID and fsGroup of the distroless `nonroot` user.
pub const DEFAULT_NON_ROOT_USER: i64 = 65532;

/// A cluster-wide policy: which workloads must be distroless and non-root,
/// what happens when one is not, and how pods are mutated to comply.
// kube's printcolumn(...) attributes repeat the same keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "distrolessguard.dev",
    version = "v1alpha1",
    kind = "DistrolessPolicy",
    shortname = "dpol",
    category = "distroless-guard",
    doc = "Makes distroless, non-root workloads the default: rules, actions, mutation and exemptions.",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    status = "DistrolessPolicyStatus",
    printcolumn(name = "Matched", type_ = "integer", json_path = ".status.audit.matched"),
    printcolumn(name = "Violating", type_ = "integer", json_path = ".status.audit.violating"),
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct DistrolessPolicySpec {
    /// The action for every rule that `rules` does not override.
    #[serde(default)]
    pub action: Action,

    /// Per-rule overrides: rule id -> Deny | Warn | Audit | Ignore.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rules_schema")]
    #[x_kube(validation = Rule::new(
        "self.all(k, k in ['root-uid', 'non-root-disabled', 'exec-probe', 'exec-hook', 'shell-command', 'image-has-shell', 'image-has-package-manager', 'image-root-user', 'image-unverified'])"
    ).message("unknown rule id; valid ids are root-uid, non-root-disabled, exec-probe, exec-hook, shell-command, image-has-shell, image-has-package-manager, image-root-user, image-unverified"))]
    pub rules: BTreeMap<RuleId, RuleAction>,

    /// Which objects the policy applies to. Empty matches every namespace.
    #[serde(default, rename = "match")]
    pub match_: Match,

    /// The UID used for runAsUser, runAsGroup and fsGroup by mutation.
    #[serde(default = "default_non_root_user")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub non_root_user: i64,

    /// How pods are mutated at creation.
    #[serde(default)]
    pub mutation: Mutation,

    /// Exceptions, each with a reason and an optional expiry date. Bounded so
    /// that the API server can bound the cost of the CEL rules on each one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub exemptions: Vec<Exemption>,

    /// What `image-unverified` does when an image cannot be read from its
    /// registry in time: Deny, Warn or Allow. A `rules` entry for
    /// `image-unverified` takes precedence.
    #[serde(default)]
    pub on_error: OnError,

    /// How long admission waits for image inspection, in seconds.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 25))]
    #[schemars(extend("format" = "int32"))]
    pub timeout_seconds: u32,

    /// The platform of multi-platform images that is inspected
    /// (`os/arch[/variant]`), or `all` to require every platform to pass.
    #[serde(default = "default_platform")]
    pub platform: String,
}

impl Default for DistrolessPolicySpec {
    /// What an empty `spec: {}` means.
    fn default() -> Self {
        DistrolessPolicySpec {
            action: Action::default(),
            rules: BTreeMap::new(),
            match_: Match::default(),
            non_root_user: DEFAULT_NON_ROOT_USER,
            mutation: Mutation::default(),
            exemptions: Vec::new(),
            on_error: OnError::default(),
            timeout_seconds: default_timeout_seconds(),
            platform: default_platform(),
        }
    }
}

fn default_timeout_seconds() -> u32 {
    3
}

fn default_platform() -> String {
    "linux/amd64".into()
}

/// What happens when an image cannot be inspected.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    Deny,
    #[default]
    Warn,
    Allow,
}

/// A map from rule id to action. The keys are checked by the CEL rule on the
/// field (a map cannot carry an enum of keys in a structural schema).
fn rules_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 9,
        "additionalProperties": {
            "type": "string",
            "enum": ["Deny", "Warn", "Audit", "Ignore"]
        }
    })
}

/// Rule id -> count (a map's keys cannot carry an enum in a structural schema).
fn by_rule_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0}
    })
}

fn default_non_root_user() -> i64 {
    DEFAULT_NON_ROOT_USER
}

/// What happens to a workload that breaks a rule.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum Action {
    /// Admit, and record the violation in metrics and the policy status.
    Audit,
    /// Admit with an admission warning (`kubectl` prints `Warning: ...`).
    Warn,
    /// Reject the request with a message that says how to fix it.
    #[default]
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Audit => "Audit",
            Action::Warn => "Warn",
            Action::Deny => "Deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A per-rule override of the policy's action.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Deny,
    Warn,
    Audit,
    /// The policy does not check this rule.
    Ignore,
}

impl RuleAction {
    /// The action this override stands for, `None` for `Ignore`.
    pub fn action(self) -> Option<Action> {
        match self {
            RuleAction::Deny => Some(Action::Deny),
            RuleAction::Warn => Some(Action::Warn),
            RuleAction::Audit => Some(Action::Audit),
            RuleAction::Ignore => None,
        }
    }
}

/// The stable rule ids. Tests, docs, metrics and `check --output json` use them.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum RuleId {
    RootUid,
    NonRootDisabled,
    ExecProbe,
    ExecHook,
    ShellCommand,
    ImageHasShell,
    ImageHasPackageManager,
    ImageRootUser,
    ImageUnverified,
}

impl RuleId {
    pub const ALL: [RuleId; 9] = [
        RuleId::RootUid,
        RuleId::NonRootDisabled,
        RuleId::ExecProbe,
        RuleId::ExecHook,
        RuleId::ShellCommand,
        RuleId::ImageHasShell,
        RuleId::ImageHasPackageManager,
        RuleId::ImageRootUser,
        RuleId::ImageUnverified,
    ];

    /// Whether the rule reads the image in its registry (its result can change
    /// while the pod spec stays the same), rather than the pod spec alone.
    pub fn reads_the_image(self) -> bool {
        matches!(
            self,
            RuleId::ImageHasShell | RuleId::ImageHasPackageManager | RuleId::ImageRootUser | RuleId::ImageUnverified
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuleId::RootUid => "root-uid",
            RuleId::NonRootDisabled => "non-root-disabled",
            RuleId::ExecProbe => "exec-probe",
            RuleId::ExecHook => "exec-hook",
            RuleId::ShellCommand => "shell-command",
            RuleId::ImageHasShell => "image-has-shell",
            RuleId::ImageHasPackageManager => "image-has-package-manager",
            RuleId::ImageRootUser => "image-root-user",
            RuleId::ImageUnverified => "image-unverified",
        }
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RuleId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuleId::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown rule id {s:?}"))
    }
}

/// Which objects a policy applies to.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    /// Namespaces whose labels match. Unset or empty matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Objects whose own labels match. Unset or empty matches every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_selector: Option<LabelSelector>,
    /// Namespaces never matched, whatever their labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces: Vec<String>,
}

/// How pods are mutated at creation. Mutation fills what is unset and never
/// silently overrides an explicit value (except `fsGroup: Override`).
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mutation {
    /// Set the pod's `securityContext.runAsNonRoot: true` when it is unset.
    #[serde(default = "yes")]
    pub run_as_non_root: bool,
    /// Set the pod's `runAsUser` and `runAsGroup` to `nonRootUser` when no container sets one.
    #[serde(default)]
    pub run_as_user: RunAsUserMode,
    /// Set the pod's `fsGroup` to `nonRootUser`.
    #[serde(default)]
    pub fs_group: FsGroupMode,
    /// Set `allowPrivilegeEscalation: false` on containers that leave it unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    /// Set the pod's `seccompProfile` to `RuntimeDefault` when it is unset.
    #[serde(default)]
    pub seccomp_runtime_default: bool,
    /// Add `ALL` to every container's `capabilities.drop`.
    #[serde(default)]
    pub drop_all_capabilities: bool,
}

fn yes() -> bool {
    true
}

impl Default for Mutation {
    fn default() -> Self {
        Mutation {
            run_as_non_root: true,
            run_as_user: RunAsUserMode::default(),
            fs_group: FsGroupMode::default(),
            allow_privilege_escalation: None,
            seccomp_runtime_default: false,
            drop_all_capabilities: false,
        }
    }
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunAsUserMode {
    /// Never set runAsUser or runAsGroup.
    Never,
    /// Set them on the pod when neither the pod nor any container sets them.
    #[default]
    IfUnset,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum FsGroupMode {
    /// Never set fsGroup.
    Never,
    /// Set fsGroup when the pod leaves it unset.
    #[default]
    IfUnset,
    /// Set fsGroup to `nonRootUser` even when the pod sets another value.
    Override,
}

/// An exception to a policy. Every field given must match for it to apply.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Exemption {
    /// Why the exception exists (a ticket, an owner). Required.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("an exemption needs a non-empty reason"))]
    pub reason: String,
    /// Namespaces the exemption covers; empty means every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
    /// Image patterns (`*` matches any run of characters); empty means every image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub images: Vec<String>,
    /// Rules the exemption covers; empty means every rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleId>,
    /// Last day (UTC, `YYYY-MM-DD`) on which the exemption applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))]
    pub expires: Option<String>,
}

/// What the audit controller last found, and whether the policy is in force.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DistrolessPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when the policy is valid and in force; False with a reason otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSummary>,
}

/// Workloads the policy matches now, and how they fare.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditSummary {
    /// Workloads matched (a Pod owned by a workload controller counts through its controller).
    #[schemars(extend("format" = "int32"))]
    pub matched: u32,
    #[schemars(extend("format" = "int32"))]
    pub compliant: u32,
    #[schemars(extend("format" = "int32"))]
    pub violating: u32,
    /// Rule id -> number of workloads that break it.
    #[serde(default)]
    #[schemars(schema_with = "by_rule_schema")]
    pub by_rule: BTreeMap<RuleId, u32>,
    /// When the summary was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The first violating workloads, by kind, namespace and name.
    #[serde(default)]
    pub top_violations: Vec<WorkloadViolations>,
    /// The distinct images of the matched workloads, by what their registry
    /// showed (present when the operator reads images: `--inspect-images`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageCounts>,
}

/// Distinct images by verdict.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageCounts {
    /// No shell, no package manager.
    #[schemars(extend("format" = "int32"))]
    pub distroless: u32,
    #[schemars(extend("format" = "int32"))]
    pub not_distroless: u32,
    /// Could not be read (counted as `image-unverified`, never as compliant).
    #[schemars(extend("format" = "int32"))]
    pub unverified: u32,
    /// Not read yet: the audit's inspection is still under way.
    #[schemars(extend("format" = "int32"))]
    pub pending: u32,
}

/// One violating workload in the status.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadViolations {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub rules: Vec<String>,
}
