// Every type here is public API (re-exported by `api`); the derive macros'
// generated code misleads the `unreachable_pub` lint.
#![allow(unreachable_pub)]

//! `DistrolessRollout`: a staged canary from a Deployment's standard images
//! to distroless ones, with automatic rollback.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// kube's printcolumn(...) attributes repeat the same keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "distrolessguard.dev",
    version = "v1alpha1",
    kind = "DistrolessRollout",
    namespaced,
    shortname = "drol",
    category = "distroless-guard",
    doc = "A staged canary from a Deployment's standard images to distroless ones, with automatic rollback.",
    status = "DistrolessRolloutStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.step"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.desiredWeight"),
    printcolumn(name = "Effective", type_ = "integer", json_path = ".status.effectiveWeight"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.failure.reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct DistrolessRolloutSpec {
    /// The Deployment to move, in the rollout's namespace.
    pub target_ref: TargetRef,
    /// The distroless image of each container to move.
    #[schemars(length(min = 1, max = 64))]
    pub containers: Vec<ContainerImages>,
    /// The steps, in order. Default: staging (1 pod, no traffic, 5 minutes),
    /// 10% for 10 minutes, 50% for 10 minutes, then 100%.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 32))]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub failure: FailurePolicy,
    /// What 100% means.
    #[serde(default)]
    pub promotion: Promotion,
    /// Prometheus queries whose value must stay at or below a threshold while a step bakes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub metrics: Vec<MetricGate>,
    /// Holds the rollout at the current step. `kubectl distroless rollout
    /// pause` sets the `distrolessguard.dev/paused` annotation instead, which a
    /// GitOps tool does not revert; either one pauses.
    #[serde(default)]
    pub paused: bool,
    /// Goes straight to 100% from the current step (or the annotation
    /// `distrolessguard.dev/promote: full`, as `rollout promote --full` writes).
    #[serde(default)]
    pub promote_full: bool,
    /// Ends a step's pause or bake: the step's 0-based index (or the
    /// annotation `distrolessguard.dev/promote` with its 1-based number, as
    /// `rollout promote` writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_step: Option<u32>,
    /// Stops the rollout and goes back to the standard images (or the
    /// annotation `distrolessguard.dev/abort: "true"`, as `rollout abort` writes).
    #[serde(default)]
    pub abort: bool,
    /// Bumped to start a new attempt after a rollback; never automatic. The
    /// annotation `distrolessguard.dev/retry` (as `rollout retry` writes) asks
    /// the same; the higher of the two counts.
    #[serde(default)]
    pub retry: u32,
    /// Keep one failed canary pod (out of the Service's endpoints) for `kubectl distroless debug`.
    #[serde(default)]
    pub keep_failed_pod: bool,
    /// Where the canary's pods come from in weighted steps: `Added` (the
    /// default) beside all of the Deployment's, or `FromDeployment`, taken
    /// out of its count.
    #[serde(default)]
    pub canary_capacity: CanaryCapacity,
}

/// Where a weighted step's canary pods come from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CanaryCapacity {
    /// The canary adds its pods beside all of the Deployment's, whose
    /// `replicas` stay untouched (HPAs and GitOps keep owning them): extra
    /// pods and quota for the rollout's length, and a rollback that removes
    /// the canary at once with no loss of capacity.
    #[default]
    Added,
    /// The Deployment is scaled down by the canary's ready, serving pods
    /// (never below one pod of its own), so the total stays what it was
    /// (Argo Rollouts' `dynamicStableScale`). Its replicas before the canary
    /// took any are written to `status.stableScale` before it is scaled, and
    /// every exit (rollback, promotion, deletion of the rollout) puts them
    /// back. The cost: a rollback or abort runs short of the taken pods until
    /// the Deployment's replacements are ready. Refused in preflight when a
    /// HorizontalPodAutoscaler scales the Deployment; if anyone else changes
    /// its replicas mid-rollout, their number stands and the canary adds its
    /// pods for the rest of the attempt (Event `CapacityReleased`).
    FromDeployment,
}

/// The annotations that act as verbs. `kubectl distroless rollout` writes
/// these rather than spec fields: a GitOps tool that owns the spec (Argo CD,
/// Flux) leaves annotations it did not write alone, so a promote or an abort
/// is not reverted at the next sync. The spec fields of the same name still
/// work; either one asks.
pub mod verbs {
    /// `"true"`: hold at the current step.
    pub const PAUSED: &str = "distrolessguard.dev/paused";
    /// `"true"`: roll back to the standard images now.
    pub const ABORT: &str = "distrolessguard.dev/abort";
    /// A step number (1-based, as `kubectl get drol` shows it): end that
    /// step's pause or bake. `"full"`: go to 100% now.
    pub const PROMOTE: &str = "distrolessguard.dev/promote";
    /// The attempt number to run (a retry after a rollback sets it to the
    /// next one).
    pub const RETRY: &str = "distrolessguard.dev/retry";
    /// Every verb annotation.
    pub const ALL: [&str; 4] = [PAUSED, ABORT, PROMOTE, RETRY];

    /// Why an annotation's value is not a verb, or `None` when it is one.
    pub fn invalid(key: &str, value: &str) -> Option<String> {
        let ok = match key {
            PAUSED | ABORT => matches!(value, "true" | "false"),
            PROMOTE => value == "full" || value.parse::<u32>().is_ok_and(|n| n >= 1),
            RETRY => value.parse::<u32>().is_ok(),
            _ => return None,
        };
        (!ok).then(|| {
            let want = match key {
                PAUSED | ABORT => "\"true\" or \"false\"",
                PROMOTE => "a step number from 1, or \"full\"",
                _ => "an attempt number (0 or more)",
            };
            format!("annotation {key}: {value:?} is not {want}")
        })
    }
}

/// What the rollout is asked to do now: the spec fields and the verb
/// annotations together ([`verbs`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verbs {
    pub paused: bool,
    pub abort: bool,
    pub promote_full: bool,
    /// The index (0-based) of the step whose pause or bake is ended.
    pub promote_step: Option<u32>,
    pub retry: u32,
}

impl DistrolessRollout {
    /// The verb annotations this rollout carries (for `status.observedVerbs`).
    pub fn verb_annotations(&self) -> BTreeMap<String, String> {
        self.metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| verbs::ALL.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The spec's verbs and the annotations' together; a value that is not a
    /// verb (the webhook refuses those) asks for nothing.
    pub fn verbs(&self) -> Verbs {
        let a = self.verb_annotations();
        let get = |k: &str| a.get(k).map(String::as_str);
        let promote = get(verbs::PROMOTE);
        Verbs {
            paused: self.spec.paused || get(verbs::PAUSED) == Some("true"),
            abort: self.spec.abort || get(verbs::ABORT) == Some("true"),
            promote_full: self.spec.promote_full || promote == Some("full"),
            promote_step: promote
                .and_then(|p| p.parse::<u32>().ok())
                .and_then(|n| n.checked_sub(1))
                .or(self.spec.promote_step),
            retry: get(verbs::RETRY)
                .and_then(|r| r.parse::<u32>().ok())
                .map_or(self.spec.retry, |r| r.max(self.spec.retry)),
        }
    }
}

/// The Deployment a rollout moves.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct TargetRef {
    pub name: String,
}

/// One container's images.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerImages {
    /// The container's name in the Deployment's pod template.
    pub name: String,
    /// The distroless image to move to.
    pub image: String,
    /// The image to go back to; default: what the Deployment runs when the rollout starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_image: Option<String>,
}

/// One step: `staging` (canary pods with no traffic), a traffic `weight`, or
/// neither: a bare `pause` or `bakeSeconds` holds at the previous step's
/// staging or weight (never a promotion; a first step of that kind stages one
/// pod).
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.staging) && has(self.weight))")
        .message("a step is either staging (no traffic) or a weight, not both"),
    validation = Rule::new(
        "has(self.staging) || has(self.weight) || (has(self.pause) && self.pause) || (has(self.bakeSeconds) && self.bakeSeconds > 0)"
    )
    .message("an empty step does nothing: give staging, weight, pause: true or bakeSeconds")
)]
pub struct Step {
    /// Canary pods that run without receiving traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<Staging>,
    /// Percent of the ready endpoints the canary should make up (1-100). 100
    /// promotes: the Deployment itself moves to the distroless images. Unset
    /// (and no staging): the step holds at the previous step's weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: Option<u32>,
    /// How long the step runs healthy before the next one, in seconds.
    #[serde(default)]
    #[schemars(range(max = 86400))]
    pub bake_seconds: u32,
    /// Wait for `kubectl distroless rollout promote` after the bake (which
    /// `promote` also ends early).
    #[serde(default)]
    pub pause: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct Staging {
    /// Canary pods to run.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: u32,
}

fn one() -> u32 {
    1
}

/// The default steps.
pub fn default_steps() -> Vec<Step> {
    let weight = |w: u32, bake: u32| Step {
        staging: None,
        weight: Some(w),
        bake_seconds: bake,
        pause: false,
    };
    vec![
        Step {
            staging: Some(Staging { replicas: 1 }),
            weight: None,
            bake_seconds: 300,
            pause: false,
        },
        weight(10, 600),
        weight(50, 600),
        weight(100, 0),
    ]
}

/// When a canary counts as failed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Container restarts a canary pod may have (more is a failure, even if it is Ready again).
    #[serde(default)]
    pub max_restarts: u32,
    /// How long a canary pod may take to have ready containers, in seconds.
    #[serde(default = "default_ready_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub ready_timeout_seconds: u32,
    /// How long `ErrImagePull`/`ImagePullBackOff` is tolerated, in seconds.
    #[serde(default = "default_image_pull_grace")]
    #[schemars(range(max = 3600))]
    pub image_pull_grace_seconds: u32,
    /// How long a step may take to have all its canary pods ready, and the
    /// promotion to finish the Deployment's rolling update, in seconds. Past
    /// it the rollout rolls back (`ProgressDeadlineExceeded`).
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: u32,
    /// `AwaitGitOps`: how long the last canary is held waiting for the Git
    /// change, in seconds (default one day). Past it the rollout rolls back
    /// (`GitOpsDeadlineExceeded`): an unwatched canary is not left serving
    /// forever.
    #[serde(default = "default_gitops_deadline")]
    #[schemars(range(min = 60, max = 2592000))]
    pub git_ops_deadline_seconds: u32,
}

fn default_progress_deadline() -> u32 {
    600
}

fn default_gitops_deadline() -> u32 {
    86400
}

fn default_ready_timeout() -> u32 {
    120
}

fn default_image_pull_grace() -> u32 {
    30
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            max_restarts: 0,
            ready_timeout_seconds: default_ready_timeout(),
            image_pull_grace_seconds: default_image_pull_grace(),
            progress_deadline_seconds: default_progress_deadline(),
            git_ops_deadline_seconds: default_gitops_deadline(),
        }
    }
}

/// What the last step does.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Promotion {
    /// Patch only the Deployment's container images (server-side apply, field
    /// manager `distroless-guard`), watch its rolling update, then remove the canary.
    #[default]
    PatchDeployment,
    /// Hold at the last weight until the Deployment's template carries the
    /// distroless images (the Git change merged), then remove the canary.
    AwaitGitOps,
}

/// A Prometheus instant query and the largest value it may return.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.auth) || self.address.startsWith('https://')")
    .message("credentials are sent only over https://: give an https:// address or no auth"))]
pub struct MetricGate {
    pub name: String,
    /// Prometheus base URL, e.g. `http://prometheus.monitoring:9090`.
    pub address: String,
    /// An instant query. Several series: the highest value counts. No sample
    /// or `NaN` (a ratio over no traffic): inconclusive, like an error.
    /// `{{namespace}}`, `{{deployment}}`, `{{canaryHash}}` (the canary pods'
    /// `pod-template-hash`; after promotion, the Deployment's new pods') and
    /// `{{canaryPods}}` (their names as a regex alternation, `a|b`) are
    /// replaced before the query is sent, to scope it to the canary.
    pub query: String,
    /// The rollout fails when the value goes above this.
    pub threshold: f64,
    /// Readings in a row that may fail (Prometheus down, a timeout, no sample,
    /// `NaN`) before the rollout rolls back. Until then the step holds: a bake
    /// never ends on a gate that cannot be read.
    #[serde(default = "four")]
    #[schemars(range(max = 100))]
    pub consecutive_error_limit: u32,
    /// Readings above the threshold tolerated in this attempt before the
    /// rollout rolls back (Argo Rollouts' `failureLimit`); default 0: the
    /// first one rolls back.
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub failure_limit: u32,
    /// Credentials and trust for a Prometheus behind authentication (https://
    /// only), from a Secret in the rollout's namespace. The rollout webhook
    /// admits a Secret reference only from a user who may read that Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<GateAuth>,
}

/// Where a metric gate's credentials are: keys of one Secret.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.tokenKey) && has(self.usernameKey))")
        .message("a gate authenticates with a bearer token or a user name and password, not both"),
    validation = Rule::new("has(self.usernameKey) == has(self.passwordKey)")
        .message("usernameKey and passwordKey go together"),
    validation = Rule::new("has(self.tokenKey) || has(self.usernameKey) || has(self.caKey)")
        .message("give tokenKey, usernameKey and passwordKey, or caKey")
)]
pub struct GateAuth {
    /// The Secret, in the rollout's namespace.
    pub secret_name: String,
    /// The key holding a bearer token (`Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
    /// The key holding the user name for basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_key: Option<String>,
    /// The key holding the password for basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_key: Option<String>,
    /// The key holding the PEM certificates of the CA that signs the server's
    /// certificate; then only that CA is trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
}

fn four() -> u32 {
    4
}

/// Where a rollout stands.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Checking that a canary pod would be admitted and its image is distroless.
    #[default]
    Preflight,
    /// Canary pods run without traffic.
    Staging,
    /// Canary pods take a share of the traffic.
    Canary,
    /// The Deployment moves to the distroless images.
    Promoting,
    Succeeded,
    /// Back on the standard images after a failure or an abort.
    RolledBack,
    /// Held by `spec.paused` or a step's `pause`.
    Paused,
    /// The distroless images came into the Deployment from Git (not from the
    /// operator) and failed there: the operator does not fight Git, so the
    /// Git change must be reverted. Becomes `RolledBack` once the template is
    /// back on the standard images.
    GitRevertNeeded,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "Preflight",
            Phase::Staging => "Staging",
            Phase::Canary => "Canary",
            Phase::Promoting => "Promoting",
            Phase::Succeeded => "Succeeded",
            Phase::RolledBack => "RolledBack",
            Phase::Paused => "Paused",
            Phase::GitRevertNeeded => "GitRevertNeeded",
        }
    }

    pub const ALL: [Phase; 8] = [
        Phase::Preflight,
        Phase::Staging,
        Phase::Canary,
        Phase::Promoting,
        Phase::Succeeded,
        Phase::RolledBack,
        Phase::Paused,
        Phase::GitRevertNeeded,
    ];

    /// Nothing more happens until the spec changes.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack)
    }

    /// Stopped on a failure: rolled back, or waiting for Git to revert.
    pub fn is_stopped(self) -> bool {
        matches!(self, Phase::RolledBack | Phase::GitRevertNeeded)
    }
}

/// What went wrong, and what to do about it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutFailure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `CrashLoopBackOff`, `CreateContainerConfigError`, `OOMKilled`, `ReadyTimeout`,
    /// `Restarts`, `FailedCreate`, `PreflightFailed`, `MetricGate`, `Aborted`, ...
    #[schemars(with = "String")]
    pub reason: FailureReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: String,
    /// What it most likely means for a distroless image, and the fix.
    #[serde(default)]
    pub hint: String,
    /// When the failure was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<Time>,
}

/// Why a rollout failed: the reasons the operator finds itself, the
/// kubelet's and the scheduler's that it acts on, and any other reason the
/// cluster gives, kept as written. Serialized as its name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(from = "String", into = "String")]
pub enum FailureReason {
    /// The kubelet's: the container keeps exiting.
    CrashLoopBackOff,
    /// The kubelet's: it cannot start the container as configured (a root image under `runAsNonRoot`).
    CreateContainerConfigError,
    /// The kernel's, through the kubelet: over the memory limit.
    OOMKilled,
    /// The scheduler's: no node fits the canary's pods.
    Unschedulable,
    /// The ReplicaSet controller's: the API server refused the canary's pods.
    FailedCreate,
    /// Containers not ready within `readyTimeoutSeconds`.
    ReadyTimeout,
    /// More restarts than `maxRestarts`.
    Restarts,
    /// The distroless images failed inspection before any pod moved.
    PreflightFailed,
    /// A metric gate's threshold was broken.
    MetricGate,
    /// A metric gate could not be read often enough in a row.
    MetricUnavailable,
    /// `kubectl distroless rollout abort`.
    Aborted,
    /// The rollout names what the Deployment does not have.
    InvalidSpec,
    /// A step or the promotion took longer than its deadline.
    ProgressDeadlineExceeded,
    /// The Git change did not arrive within the GitOps deadline.
    GitOpsDeadlineExceeded,
    /// Any other reason, as the cluster wrote it (`ErrImagePull`, `RunContainerError`, ...).
    Other(String),
}

impl FailureReason {
    const NAMED: [FailureReason; 14] = [
        FailureReason::CrashLoopBackOff,
        FailureReason::CreateContainerConfigError,
        FailureReason::OOMKilled,
        FailureReason::Unschedulable,
        FailureReason::FailedCreate,
        FailureReason::ReadyTimeout,
        FailureReason::Restarts,
        FailureReason::PreflightFailed,
        FailureReason::MetricGate,
        FailureReason::MetricUnavailable,
        FailureReason::Aborted,
        FailureReason::InvalidSpec,
        FailureReason::ProgressDeadlineExceeded,
        FailureReason::GitOpsDeadlineExceeded,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            FailureReason::CrashLoopBackOff => "CrashLoopBackOff",
            FailureReason::CreateContainerConfigError => "CreateContainerConfigError",
            FailureReason::OOMKilled => "OOMKilled",
            FailureReason::Unschedulable => "Unschedulable",
            FailureReason::FailedCreate => "FailedCreate",
            FailureReason::ReadyTimeout => "ReadyTimeout",
            FailureReason::Restarts => "Restarts",
            FailureReason::PreflightFailed => "PreflightFailed",
            FailureReason::MetricGate => "MetricGate",
            FailureReason::MetricUnavailable => "MetricUnavailable",
            FailureReason::Aborted => "Aborted",
            FailureReason::InvalidSpec => "InvalidSpec",
            FailureReason::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            FailureReason::GitOpsDeadlineExceeded => "GitOpsDeadlineExceeded",
            FailureReason::Other(reason) => reason,
        }
    }
}

impl Default for FailureReason {
    fn default() -> Self {
        FailureReason::Other(String::new())
    }
}

impl From<&str> for FailureReason {
    fn from(reason: &str) -> Self {
        FailureReason::NAMED
            .into_iter()
            .find(|named| named.as_str() == reason)
            .unwrap_or_else(|| FailureReason::Other(reason.to_string()))
    }
}

impl From<String> for FailureReason {
    fn from(reason: String) -> Self {
        FailureReason::from(reason.as_str())
    }
}

impl From<FailureReason> for String {
    fn from(reason: FailureReason) -> Self {
        match reason {
            FailureReason::Other(reason) => reason,
            named => named.as_str().to_string(),
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// For tests and messages that compare with the name as the cluster shows it.
impl PartialEq<&str> for FailureReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DistrolessRolloutStatus {
    #[serde(default)]
    pub phase: Phase,
    /// The index (0-based) of the step under way in `spec.steps`.
    #[serde(default)]
    pub current_step: u32,
    /// When the current step began (a restarted leader resumes from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// When the current step's pods were all ready (the bake counts from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ready_at: Option<Time>,
    /// Percent of ready endpoints the current step asks for.
    #[serde(default)]
    pub desired_weight: u32,
    /// Percent of ready endpoints that are canary pods now.
    #[serde(default)]
    pub effective_weight: u32,
    /// The canary ReplicaSet and its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// The images the rollout goes back to, per container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub standard_images: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<RolloutFailure>,
    /// Whether the preflight checks passed for this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightResult>,
    /// The attempt under way (`spec.retry` or the retry annotation).
    #[serde(default)]
    pub observed_retry: u32,
    /// The verb annotations this status was planned from: a client that
    /// wrote one waits for it here before reading the phase.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub observed_verbs: BTreeMap<String, String>,
    /// The step under way for people: `2/4` (1-based, as Events and the
    /// plugin number steps; `currentStep` is the 0-based index).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
    /// Per metric gate, the readings above its threshold in this attempt.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metric_failures: BTreeMap<String, u32>,
    /// When the Deployment's template was first seen carrying the distroless
    /// images (the promotion's deadline counts from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<Time>,
    /// Per metric gate, the readings in a row that failed (reset by a good one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metric_errors: BTreeMap<String, u32>,
    /// When the metric gates' readings last counted: a failed reading counts
    /// against `consecutiveErrorLimit` at most once per 5 s, however often
    /// pod events bring the rollout back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_read_at: Option<Time>,
    /// Whether the Deployment's images were patched (a rollback restores them).
    #[serde(default)]
    pub deployment_patched: bool,
    /// `canaryCapacity: FromDeployment`: the Deployment's own replicas and
    /// what the canary took them down to. Written before the Deployment is
    /// scaled; every exit puts `replicas` back, then clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_scale: Option<StableScale>,
    /// Someone else set the Deployment's replicas while the canary held some
    /// of them: their number stands, and the canary adds its pods for the
    /// rest of this attempt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capacity_released: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Why the rollout waits, or what it did last, for people.
    #[serde(default)]
    pub message: String,
    /// `Ready`, `Progressing`, `Stalled` (GitOps health checks read them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The Deployment's replicas while a `FromDeployment` canary holds some.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StableScale {
    /// The Deployment's replicas before the canary took any.
    pub replicas: u32,
    /// What the operator scales it to now.
    pub scaled_to: u32,
    /// The Deployment was seen at a number the operator set (its field
    /// manager owns `spec.replicas`): from then on, another owner means
    /// someone else scaled it.
    #[serde(default)]
    pub held: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    pub replica_set: String,
    pub replicas: u32,
    pub ready: u32,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreflightResult {
    pub passed: bool,
    #[serde(default)]
    pub message: String,
    /// `spec.retry` these checks were made for.
    #[serde(default)]
    pub retry: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_read_and_write_as_the_names_the_cluster_shows_and_keep_unknown_ones() {
        for named in FailureReason::NAMED {
            let json = serde_json::to_value(&named).unwrap();
            assert_eq!(json, named.as_str(), "{named:?}");
            assert_eq!(serde_json::from_value::<FailureReason>(json).unwrap(), named);
        }
        let pulled: FailureReason = serde_json::from_value("ErrImagePull".into()).unwrap();
        assert_eq!(pulled, FailureReason::Other("ErrImagePull".into()));
        assert_eq!(serde_json::to_value(&pulled).unwrap(), "ErrImagePull");
        let failure: RolloutFailure = serde_json::from_value(serde_json::json!({"reason": "MetricGate"})).unwrap();
        assert_eq!(failure.reason, FailureReason::MetricGate);
    }
}
