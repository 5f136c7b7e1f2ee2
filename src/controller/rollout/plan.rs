//! The rollout planner: a pure function of (rollout, Deployment, canary
//! ReplicaSets, pods, metric readings, now) to the actions to take and the
//! status to write. Everything it needs to resume is in the status (step and
//! its start, when its pods were ready, the standard images), and everything
//! else it re-derives from what exists, so a restarted leader, or a crash
//! halfway through the actions, ends in the same place.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::canary::{self, SERVING_GATE};
use super::classify;
use crate::api::{
    CanaryCapacity, CanaryStatus, DistrolessRollout, DistrolessRolloutStatus, FailureReason, Phase, Promotion,
    RolloutFailure, StableScale, Step,
};
use crate::image::reference::same_image;

/// The latest value of a metric gate's query.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MetricReading {
    pub name: String,
    pub value: Result<f64, super::analysis::GateError>,
}

/// What exists now, as the reconciler read it.
pub(crate) struct Observed<'a> {
    pub rollout: &'a DistrolessRollout,
    pub deployment: Option<&'a Deployment>,
    /// The rollout's canary ReplicaSets (one, or an old one after a template change).
    pub canaries: &'a [ReplicaSet],
    /// Pods labelled with the rollout's name.
    pub canary_pods: &'a [Pod],
    /// The Deployment's own pods running the distroless images (after promotion).
    pub promoted_pods: &'a [Pod],
    pub metrics: &'a [MetricReading],
    pub now: Timestamp,
}

/// One thing the reconciler does.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// Dry-run a canary pod through admission, read the distroless images,
    /// check quota; the result goes into `status.preflight`.
    RunPreflight {
        template: Box<PodTemplateSpec>,
    },
    /// Create or update (server-side apply) a canary ReplicaSet.
    ApplyCanary(Box<ReplicaSet>),
    /// Set the replicas of an existing canary ReplicaSet.
    ScaleCanary {
        name: String,
        replicas: u32,
    },
    DeleteCanary {
        name: String,
    },
    /// Open or close the serving readiness gate of these pods.
    SetServing {
        pods: Vec<String>,
        serving: bool,
    },
    /// Takes this pod out of its ReplicaSet for `kubectl debug`: its
    /// `pod-template-hash` becomes [`canary::KEPT`] (so no ReplicaSet selects
    /// it, and scaling the canary to zero cannot pick it) and its only owner
    /// the rollout (so it goes when the rollout does).
    KeepPod {
        name: String,
    },
    /// Server-side apply of only these container images on the Deployment.
    PatchDeploymentImages(BTreeMap<String, String>),
    /// Set the Deployment's `spec.replicas` (`canaryCapacity:
    /// FromDeployment`, and putting them back), as our field manager.
    ScaleDeployment {
        replicas: u32,
    },
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub actions: Vec<Action>,
    pub status: DistrolessRolloutStatus,
    /// Look again after this long (timers: bake, ready timeout, pull grace, metrics).
    pub requeue: Option<Duration>,
    /// Whether the rollout must carry [`FINALIZER`]: while the Deployment
    /// runs images we patched in and the rollout has not succeeded, or the
    /// canary holds some of its replicas, deleting the rollout must first put
    /// the standard images, and its own replicas, back. Added before any
    /// action of the plan, removed after all of them.
    pub finalizer: bool,
}

/// Held while the Deployment carries our patched images and the rollout has
/// not succeeded (see [`Plan::finalizer`]).
pub(crate) const FINALIZER: &str = "distrolessguard.dev/restore-standard-images";

impl Plan {
    /// Whether this plan decides a rollback: then its status (the phase, the
    /// failure, what to undo) is written before any action, so a crash between
    /// two API calls cannot forget a one-off failure (one restart, one OOM
    /// kill, one metric spike) that the next look would no longer see. The
    /// `RolledBack` phase redoes whatever undo is left, idempotently.
    pub(crate) fn decides_rollback(&self, previous: &DistrolessRolloutStatus) -> bool {
        self.status.phase.is_stopped() && !previous.phase.is_stopped()
    }

    /// Whether the status goes to the API server before any action: a
    /// rollback decided (above), or the Deployment about to be scaled to a
    /// number the status does not record yet, so its own count
    /// (`stableScale.replicas`) is never known only to a process that may die.
    pub(crate) fn status_first(&self, previous: &DistrolessRolloutStatus) -> bool {
        self.decides_rollback(previous)
            || (self.status.stable_scale.is_some() && self.status.stable_scale != previous.stable_scale)
    }
}

/// How often metric gates are read while a step bakes.
pub(crate) const METRIC_INTERVAL: Duration = Duration::from_secs(5);

/// What the metric gates say now.
enum Gates {
    /// Every gate read and within its threshold (or there are none).
    Pass,
    /// A gate is unread, cannot be read, or is above its threshold within
    /// its `failureLimit`: nothing moves on; the message says which.
    Hold(String),
    /// A gate failed: the rollback is planned.
    Failed,
}

struct Planner<'a> {
    o: &'a Observed<'a>,
    st: DistrolessRolloutStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
}

fn event(warning: bool, reason: &str, message: impl Into<String>) -> Action {
    Action::Event {
        warning,
        reason: reason.into(),
        message: message.into(),
    }
}

fn images_of(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .template
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn gate_open(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == SERVING_GATE && c.status == "True"))
}

fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get("pod-template-hash")
        .map(String::as_str)
}

/// The Deployment's `spec.replicas` (1 when unset, as the API server defaults it).
fn replicas(d: &Deployment) -> u32 {
    u32::try_from(d.spec.replicas.unwrap_or(1)).unwrap_or(0)
}

fn live(pod: &&Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
}

impl<'a> Planner<'a> {
    fn name(&self) -> String {
        self.o.rollout.metadata.name.clone().unwrap_or_default()
    }

    fn after(&mut self, d: Duration) {
        let d = d.max(Duration::from_millis(500));
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn distroless(&self) -> BTreeMap<String, String> {
        self.o
            .rollout
            .spec
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.image.clone()))
            .collect()
    }

    fn steps(&self) -> &'a [Step] {
        &self.o.rollout.spec.steps
    }

    fn enter_step(&mut self, index: u32) {
        let now = Time(self.o.now);
        self.st.current_step = index;
        self.st.step_started_at = Some(now);
        self.st.step_ready_at = None;
        let step = effective_step(self.steps(), index as usize);
        self.st.desired_weight = match &step {
            Some(s) if s.staging.is_some() => 0,
            Some(Step { weight: Some(w), .. }) => (*w).min(100),
            _ => 100,
        };
        self.st.phase = match &step {
            Some(s) if s.staging.is_some() => Phase::Staging,
            Some(s) if s.weight.is_some_and(|w| w < 100) => Phase::Canary,
            _ => Phase::Promoting,
        };
        let held = self
            .steps()
            .get(index as usize)
            .is_some_and(|s| s.staging.is_none() && s.weight.is_none());
        let what = match &step {
            Some(s) if held && s.staging.is_some() => "holding at staging (no traffic)".to_string(),
            Some(Step { weight: Some(w), .. }) if held => format!("holding at {w}% of the traffic"),
            Some(s) if s.staging.is_some() => "staging (no traffic)".to_string(),
            Some(Step { weight: Some(w), .. }) if *w < 100 => format!("{w}% of the traffic"),
            _ => "promotion to 100%".to_string(),
        };
        self.actions
            .push(event(false, "StepStarted", format!("step {}: {what}", index + 1)));
    }

    /// Stops on a failure: closes the gates, shrinks the canary, restores the
    /// Deployment's images if they were patched. Called again in `RolledBack`
    /// until all of it is done.
    fn roll_back(&mut self, failure: RolloutFailure) {
        let warning = format!(
            "rolled back: {}{}: {}{}",
            failure.reason,
            failure
                .pod
                .as_deref()
                .map(|p| format!(" in pod {p}"))
                .unwrap_or_default(),
            failure.message,
            if failure.hint.is_empty() {
                String::new()
            } else {
                format!(". Hint: {}", failure.hint)
            }
        );
        // The distroless images came from Git, not from us: putting the
        // standard ones back would fight the GitOps tool, so Git must revert.
        let from_git = !self.st.deployment_patched && self.o.deployment.is_some_and(|d| self.carries_distroless(d));
        if from_git {
            let warning = format!(
                "{}; the Deployment got the distroless images from Git, so revert that change there \
                 (the operator does not fight Git); the canary is removed",
                warning.replacen("rolled back", "failed", 1)
            );
            self.actions.push(event(true, "GitRevertNeeded", warning.clone()));
            self.st.message = warning;
            self.st.phase = Phase::GitRevertNeeded;
        } else {
            self.actions.push(event(true, "RolledBack", warning.clone()));
            self.st.message = warning;
            self.st.phase = Phase::RolledBack;
        }
        self.st.failure = Some(failure);
        self.undo();
    }

    /// Whether the Deployment's template runs every container's distroless image.
    fn carries_distroless(&self, d: &Deployment) -> bool {
        let images = images_of(d);
        self.o
            .rollout
            .spec
            .containers
            .iter()
            .all(|c| images.get(&c.name).is_some_and(|i| same_image(i, &c.image)))
    }

    /// The 100% step's bake: how long the promoted Deployment's own pods are
    /// watched (gates and failures) before the rollout succeeds.
    fn promotion_bake(&self) -> u32 {
        self.steps()
            .last()
            .filter(|s| s.weight.is_some_and(|w| w >= 100))
            .map_or(0, |s| s.bake_seconds)
    }

    /// Whether this attempt's canary takes its pods out of the Deployment's
    /// count (`canaryCapacity: FromDeployment`, not released).
    fn takes_capacity(&self) -> bool {
        self.o.rollout.spec.canary_capacity == CanaryCapacity::FromDeployment && !self.st.capacity_released
    }

    /// The Deployment's own count: its replicas before the canary took any.
    fn own_replicas(&self, d: &Deployment) -> u32 {
        self.st
            .stable_scale
            .as_ref()
            .map_or_else(|| replicas(d), |s| s.replicas)
    }

    /// Canary pods for `weight` percent of a Deployment of `total` pods.
    fn canary_size(&self, total: u32, weight: u32) -> u32 {
        if self.takes_capacity() {
            canary::replicas_taking(total, weight)
        } else {
            canary::replicas_for(total, weight)
        }
    }

    /// Notices the Deployment's replicas set by someone else while the canary
    /// holds some of them (`kubectl scale`, an autoscaler, a GitOps sync): their
    /// number stands, nothing is put back over it, and the canary adds its pods
    /// for the rest of the attempt, so the two never fight over `spec.replicas`.
    /// Before our scale was first seen in place, only a number that is neither
    /// the Deployment's own nor ours is someone else's (the scale may not have
    /// been made yet: the status is written before it).
    fn watch_scale(&mut self, d: &Deployment) {
        let Some(s) = self.st.stable_scale.clone() else {
            return;
        };
        let now = replicas(d);
        let ours = canary::replicas_set_by_us(d);
        let outside = if s.held {
            !ours
        } else {
            now != s.replicas && now != s.scaled_to
        };
        if outside {
            self.st.stable_scale = None;
            self.st.capacity_released = true;
            self.actions.push(event(
                true,
                "CapacityReleased",
                format!(
                    "the Deployment's replicas were set to {now} by someone else while the canary held it at {} of its {}: \
                     that number stands, and for the rest of this attempt the canary adds its pods instead of taking \
                     the Deployment's (canaryCapacity: FromDeployment does not mix with another owner of spec.replicas)",
                    s.scaled_to, s.replicas
                ),
            ));
        } else if !s.held && ours && now == s.scaled_to {
            self.st.stable_scale = Some(StableScale { held: true, ..s });
        }
    }

    /// Scales the Deployment to its own count less the `take` pods the canary
    /// stands in for (0: its own count back). The first scale records the own
    /// count in the status, which is written before the scale is made.
    fn take_capacity(&mut self, d: &Deployment, take: u32) {
        let now = replicas(d);
        let Some(mut s) = self.st.stable_scale.clone() else {
            if take > 0 {
                let to = now.saturating_sub(take);
                self.st.stable_scale = Some(StableScale {
                    replicas: now,
                    scaled_to: to,
                    held: false,
                });
                self.actions.push(Action::ScaleDeployment { replicas: to });
                self.actions.push(event(
                    false,
                    "CapacityTaken",
                    format!(
                        "the Deployment is scaled from {now} to {to} replicas: {take} ready canary pod(s) serve in \
                         their place (canaryCapacity: FromDeployment); every exit puts {now} back"
                    ),
                ));
            }
            return;
        };
        if take == 0 {
            self.restore_stable(Some(d));
            return;
        }
        let to = s.replicas.saturating_sub(take);
        if s.scaled_to != to {
            s.scaled_to = to;
            self.st.stable_scale = Some(s);
        }
        if now != to {
            self.actions.push(Action::ScaleDeployment { replicas: to });
        }
    }

    /// Puts the Deployment's own replicas back, and forgets them once it has
    /// them (or is gone).
    fn restore_stable(&mut self, d: Option<&Deployment>) {
        // A scale this same plan decided before (a step's take, then a gate
        // failing) is not made.
        self.actions.retain(|a| match a {
            Action::ScaleDeployment { .. } => false,
            Action::Event { reason, .. } => reason != "CapacityTaken",
            _ => true,
        });
        let Some(s) = self.st.stable_scale.clone() else {
            return;
        };
        match d {
            Some(d) if replicas(d) != s.replicas => {
                self.actions.push(Action::ScaleDeployment { replicas: s.replicas });
            }
            Some(_) => {
                self.st.stable_scale = None;
                let recorded = self.o.rollout.status.as_ref().is_some_and(|s| s.stable_scale.is_some());
                if recorded {
                    self.actions.push(event(
                        false,
                        "CapacityRestored",
                        format!("the Deployment has its own {} replicas back", s.replicas),
                    ));
                }
            }
            None => self.st.stable_scale = None,
        }
    }

    /// The metric gates' readings judged: a reading above the threshold past
    /// `failureLimit` rolls back, as do more than `consecutiveErrorLimit`
    /// unreadable ones in a row; anything short of every gate read and
    /// within its threshold holds. Readings count at most once per interval.
    fn gates(&mut self) -> Gates {
        let o = self.o;
        let spec = &o.rollout.spec;
        if spec.metrics.is_empty() {
            return Gates::Pass;
        }
        let mut holding = Vec::new();
        let due = self
            .st
            .metrics_read_at
            .as_ref()
            .is_none_or(|t| o.now.duration_since(t.0).as_millis() >= METRIC_INTERVAL.as_millis() as i128);
        for reading in o.metrics {
            let Some(gate) = spec.metrics.iter().find(|g| g.name == reading.name) else {
                continue;
            };
            match &reading.value {
                Ok(v) if *v > gate.threshold => {
                    self.st.metric_errors.remove(&gate.name);
                    let failures = self.st.metric_failures.entry(gate.name.clone()).or_insert(0);
                    if due || *failures == 0 {
                        *failures += 1;
                    }
                    let failures = *failures;
                    if failures > gate.failure_limit {
                        let message = format!(
                            "{} = {v} is above {} ({}){}",
                            gate.name,
                            gate.threshold,
                            gate.query,
                            if gate.failure_limit > 0 {
                                format!("; {failures} readings above it, failureLimit {}", gate.failure_limit)
                            } else {
                                String::new()
                            }
                        );
                        self.fail(FailureReason::MetricGate, message);
                        return Gates::Failed;
                    }
                    holding.push(format!(
                        "metric {} = {v} is above {} ({failures}/{} tolerated)",
                        gate.name, gate.threshold, gate.failure_limit
                    ));
                }
                Ok(_) => {
                    self.st.metric_errors.remove(&gate.name);
                }
                Err(e) => {
                    let errors = self.st.metric_errors.entry(gate.name.clone()).or_insert(0);
                    if due {
                        *errors += 1;
                    }
                    let errors = *errors;
                    if errors > gate.consecutive_error_limit {
                        let message = format!(
                            "{} could not be read {errors} times in a row (consecutiveErrorLimit {}): {e}",
                            gate.name, gate.consecutive_error_limit
                        );
                        self.fail(FailureReason::MetricUnavailable, message);
                        return Gates::Failed;
                    }
                    holding.push(format!(
                        "metric {} cannot be read ({errors}/{}): {e}",
                        gate.name, gate.consecutive_error_limit
                    ));
                }
            }
        }
        if !o.metrics.is_empty() && due {
            self.st.metrics_read_at = Some(Time(o.now));
        }
        self.after(METRIC_INTERVAL);
        // A gate never read (or unread now) vouches for nothing.
        if spec.metrics.iter().any(|g| !o.metrics.iter().any(|r| r.name == g.name)) {
            holding.push("waiting for the metric gates' first reading".into());
        }
        if holding.is_empty() {
            Gates::Pass
        } else {
            Gates::Hold(holding.join("; "))
        }
    }

    /// Rolls back when `started` is more than `seconds` ago; otherwise looks
    /// again when it will be. Returns whether it rolled back.
    fn past_deadline(
        &mut self,
        started: Option<&Time>,
        seconds: u32,
        reason: FailureReason,
        message: impl FnOnce() -> String,
    ) -> bool {
        let Some(started) = started.map(|t| t.0) else {
            return false;
        };
        let end = started + jiff::SignedDuration::from_secs(i64::from(seconds));
        if self.o.now >= end {
            self.fail(reason, message());
            return true;
        }
        self.after(self.o.now.duration_until(end).unsigned_abs());
        false
    }

    /// The rollback's actions for what still differs from "rolled back".
    fn undo(&mut self) {
        // The Deployment's own replicas first: the canary is not serving well.
        self.restore_stable(self.o.deployment);
        let open: Vec<String> = self
            .o
            .canary_pods
            .iter()
            .filter(live)
            .filter(|p| gate_open(p))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if !open.is_empty() {
            self.actions.push(Action::SetServing {
                pods: open,
                serving: false,
            });
        }
        // `keepFailedPod`: the pod that failed (any canary pod, for a failure
        // of no pod in particular: a metric gate, an abort) leaves its
        // ReplicaSet first, so scaling to zero cannot take it, nor keep
        // another in its place.
        if self.o.rollout.spec.keep_failed_pod && !self.o.canary_pods.iter().filter(live).any(canary::is_kept) {
            let failed = self.st.failure.as_ref().and_then(|f| f.pod.clone());
            let candidates = || self.o.canary_pods.iter().filter(live).filter(|p| !canary::is_kept(p));
            let pick = candidates()
                .find(|p| p.metadata.name.is_some() && p.metadata.name == failed)
                .or_else(|| candidates().next())
                .and_then(|p| p.metadata.name.clone());
            if let Some(name) = pick {
                self.actions.push(Action::KeepPod { name });
            }
        }
        for rs in self.o.canaries {
            let name = rs.metadata.name.clone().unwrap_or_default();
            if rs.spec.replicas.unwrap_or(0) != 0 {
                self.actions.push(Action::ScaleCanary { name, replicas: 0 });
            }
        }
        if self.st.deployment_patched
            && let Some(d) = self.o.deployment
        {
            let now = images_of(d);
            let standard = self.st.standard_images.clone();
            if standard
                .iter()
                .any(|(n, i)| !now.get(n).is_some_and(|now| same_image(now, i)))
            {
                self.actions.push(Action::PatchDeploymentImages(standard));
            } else {
                self.st.deployment_patched = false;
            }
        }
    }

    fn fail(&mut self, reason: FailureReason, message: String) {
        let hint = classify::hint(&reason, None, &message);
        self.roll_back(RolloutFailure {
            reason,
            message,
            hint,
            detected_at: Some(Time(self.o.now)),
            ..RolloutFailure::default()
        });
    }

    fn plan(mut self) -> Plan {
        let o = self.o;
        let spec = &o.rollout.spec;
        let verbs = o.rollout.verbs();
        self.st.observed_generation = o.rollout.metadata.generation;
        self.st.observed_verbs = o.rollout.verb_annotations();
        if let Some(d) = o.deployment {
            self.watch_scale(d);
        }

        // Deleted: whatever we patched into the Deployment goes back (the
        // canary ReplicaSets are the garbage collector's, as we own them).
        if o.rollout.metadata.deletion_timestamp.is_some() {
            if self.st.phase != Phase::Succeeded {
                self.undo();
                self.st.message = if self.st.deployment_patched {
                    "deleted mid-rollout: the standard images are put back before the rollout goes".into()
                } else {
                    "deleted".into()
                };
            }
            if o.deployment.is_none() {
                self.st.deployment_patched = false;
            }
            if self.st.deployment_patched || self.st.stable_scale.is_some() {
                self.after(Duration::from_secs(2));
            }
            return self.finish();
        }
        // A new attempt, asked for explicitly.
        if verbs.retry != self.st.observed_retry {
            // What the cluster still carries from earlier attempts stays on
            // record (a rollback not yet carried out must still be undone);
            // the conditions are made afresh by `finish`.
            let kept = std::mem::take(&mut self.st);
            self.st = DistrolessRolloutStatus {
                observed_retry: verbs.retry,
                observed_verbs: kept.observed_verbs,
                observed_generation: kept.observed_generation,
                standard_images: kept.standard_images,
                deployment_patched: kept.deployment_patched,
                stable_scale: kept.stable_scale,
                ..DistrolessRolloutStatus::default()
            };
            self.actions
                .push(event(false, "Retry", format!("attempt {} begins", verbs.retry + 1)));
        }
        if self.st.phase == Phase::Succeeded {
            self.restore_stable(o.deployment);
            for rs in o.canaries {
                self.actions.push(Action::DeleteCanary {
                    name: rs.metadata.name.clone().unwrap_or_default(),
                });
            }
            return self.finish();
        }
        let Some(d) = o.deployment else {
            self.st.message = format!("Deployment {} not found in this namespace", spec.target_ref.name);
            self.after(Duration::from_secs(10));
            return self.finish();
        };
        let images = images_of(d);
        if self.st.standard_images.is_empty() {
            for c in &spec.containers {
                match (&c.standard_image, images.get(&c.name)) {
                    (_, None) => {
                        self.fail(
                            FailureReason::InvalidSpec,
                            format!("the Deployment has no container {:?}", c.name),
                        );
                        return self.finish();
                    }
                    (Some(s), _) => {
                        self.st.standard_images.insert(c.name.clone(), s.clone());
                    }
                    (None, Some(now)) => {
                        self.st.standard_images.insert(c.name.clone(), now.clone());
                    }
                }
            }
        }
        let distroless = self.distroless();
        let template_distroless = self.carries_distroless(d);
        if self.st.phase == Phase::RolledBack {
            self.undo();
            if self.actions.iter().any(|a| !matches!(a, Action::Event { .. })) {
                self.after(Duration::from_secs(2));
            }
            return self.finish();
        }
        if self.st.phase == Phase::GitRevertNeeded {
            self.undo();
            if template_distroless {
                self.after(Duration::from_secs(10));
            } else {
                self.st.phase = Phase::RolledBack;
                self.st.message = "the Git change was reverted: the Deployment is back on the standard images".into();
                self.actions.push(event(false, "GitReverted", self.st.message.clone()));
            }
            return self.finish();
        }
        if verbs.abort {
            self.fail(
                FailureReason::Aborted,
                "the rollout was aborted; back on the standard images".into(),
            );
            return self.finish();
        }
        // Our own promotion patch, even when the status that says so has not
        // reached this replica's cache yet: the image fields are ours.
        if template_distroless && !self.st.deployment_patched && canary::images_applied_by_us(d) {
            self.st.deployment_patched = true;
        }
        // The Deployment moved to other standard images (a new release in Git):
        // they are what a rollback goes back to.
        if !template_distroless && !self.st.deployment_patched {
            let moved: Vec<(String, String)> = self
                .st
                .standard_images
                .iter()
                .filter_map(|(n, s)| images.get(n).filter(|i| *i != s).map(|i| (n.clone(), i.clone())))
                .collect();
            for (n, i) in moved {
                self.actions.push(event(
                    false,
                    "StandardImageChanged",
                    format!("container {n} now runs {i} in the Deployment; a rollback goes back to it"),
                ));
                self.st.standard_images.insert(n, i);
            }
        }

        if self.st.phase == Phase::Preflight {
            // A preflight on record is this attempt's: a retry clears it above,
            // and it is written with the status of the plan that asked for it.
            match &self.st.preflight {
                Some(p) if !p.passed => {
                    let message = p.message.clone();
                    self.fail(FailureReason::PreflightFailed, message);
                    return self.finish();
                }
                Some(p) => {
                    self.actions.push(event(false, "PreflightPassed", p.message.clone()));
                    self.enter_step(0);
                }
                _ => {
                    let template = canary::template(d, &distroless, &self.name());
                    self.actions.push(Action::RunPreflight {
                        template: Box::new(template),
                    });
                    self.st.message = "checking that a canary pod would be admitted and its image is distroless".into();
                    self.after(Duration::from_secs(1));
                    return self.finish();
                }
            }
        }
        if template_distroless && self.st.phase != Phase::Promoting {
            self.actions.push(event(
                false,
                "DeploymentCarriesDistroless",
                "the Deployment's template already carries the distroless images",
            ));
            self.st.phase = Phase::Promoting;
        }
        if verbs.promote_full && self.st.phase != Phase::Promoting {
            self.actions.push(event(
                false,
                "PromotedFull",
                "promoted to 100% (rollout promote --full)",
            ));
            self.st.phase = Phase::Promoting;
        }
        if self.st.phase == Phase::Promoting {
            self.promote(d, &distroless, template_distroless);
        } else {
            self.run_step(d, &distroless);
        }
        self.finish()
    }

    /// The current (staging or weighted) step: canary size, gates, failures, bake.
    fn run_step(&mut self, d: &Deployment, distroless: &BTreeMap<String, String>) {
        let o = self.o;
        let spec = &o.rollout.spec;
        let verbs = o.rollout.verbs();
        let index = self.st.current_step;
        // Steps are numbered from 1 wherever a person reads them.
        let number = index + 1;
        let Some(step) = effective_step(self.steps(), index as usize) else {
            self.st.phase = Phase::Promoting;
            return self.promote(d, distroless, false);
        };
        if step.weight.is_some_and(|w| w >= 100) {
            self.st.phase = Phase::Promoting;
            return self.promote(d, distroless, false);
        }
        let total = self.own_replicas(d);
        let (wanted, weight) = match (&step.staging, step.weight) {
            (Some(s), _) => (s.replicas, 0),
            // A share of no pods: one canary pod would take all the traffic.
            (None, Some(w)) if total == 0 => (0, w),
            (None, Some(w)) => (self.canary_size(total, w), w),
            (None, None) => (0, 0),
        };
        self.st.desired_weight = weight;
        let serving = weight > 0;
        let hash = self.ensure_canary(d, distroless, wanted);
        let pods: Vec<&Pod> = o
            .canary_pods
            .iter()
            .filter(live)
            .filter(|p| pod_hash(p) == Some(hash.as_str()))
            .collect();
        let current_rs = o.canaries.iter().find(|rs| canary::hash_of(rs) == Some(hash.as_str()));
        let owned: Vec<Pod> = pods.iter().map(|p| (*p).clone()).collect();
        if let Some(f) = classify::classify(&owned, current_rs, &spec.failure, o.now) {
            return self.roll_back(f);
        }
        if current_rs.is_some_and(canary::failing_to_create) {
            // Tolerated for now (an unreachable webhook): look again soon.
            self.after(Duration::from_secs(2));
        }
        // Gates: open for traffic in a weighted step, closed in staging.
        let flip: Vec<String> = pods
            .iter()
            .filter(|p| gate_open(p) != serving)
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if !flip.is_empty() {
            self.actions.push(Action::SetServing { pods: flip, serving });
        }
        let ready = pods.iter().filter(|p| classify::containers_ready(p)).count() as u32;
        self.st.canary = Some(CanaryStatus {
            replica_set: canary::canary_name(d.metadata.name.as_deref().unwrap_or_default(), &hash),
            replicas: wanted,
            ready,
        });
        let serving_ready = pods.iter().filter(|p| classify::ready(p)).count() as u32;
        self.size_stable(d, total, wanted, serving_ready, serving);
        let stable_ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0).max(0) as u32;
        self.st.effective_weight = canary::weight_of(serving_ready, stable_ready);
        let beside = if self.takes_capacity() && total > 1 {
            total - wanted
        } else {
            total
        };
        if serving && canary::unachievable(weight, canary::weight_of(wanted, beside)) {
            self.st.message = format!(
                "WeightUnachievable: {wanted} canary pod(s) next to {beside} make {}%, not {weight}%",
                canary::weight_of(wanted, beside)
            );
        } else {
            self.st.message = format!("step {number}: {ready}/{wanted} canary pods ready");
        }
        // Timers: pods not ready in time, images not pulled in time.
        for p in &pods {
            if let Some(created) = classify::created(p) {
                for limit in [
                    spec.failure.ready_timeout_seconds,
                    spec.failure.image_pull_grace_seconds,
                ] {
                    let end = created.checked_add(jiff::SignedDuration::from_secs(i64::from(limit)));
                    if let Ok(end) = end
                        && o.now < end
                    {
                        self.after(o.now.duration_until(end).unsigned_abs());
                    }
                }
            }
        }
        if total == 0 && step.staging.is_none() {
            self.st.message = format!(
                "step {number}: the Deployment has 0 replicas, so there is no traffic to give the canary {weight}% of; \
                 the step holds with no canary pod until the Deployment is scaled up (or `rollout promote --full`)"
            );
            self.st.step_ready_at = None;
            return;
        }
        if ready < wanted {
            self.st.step_ready_at = None;
            if !verbs.paused {
                let started = self.st.step_started_at.clone();
                let deadline = spec.failure.progress_deadline_seconds;
                self.past_deadline(started.as_ref(), deadline, FailureReason::ProgressDeadlineExceeded, || {
                    format!(
                        "step {number}: {ready}/{wanted} canary pods ready after {deadline} s (progressDeadlineSeconds)"
                    )
                });
            }
            return;
        }
        if wanted == 0 {
            self.st.step_ready_at = None;
            return;
        }
        let ready_at = self.st.step_ready_at.get_or_insert(Time(o.now)).0;
        // Metric gates, while the step bakes. They fail closed: a reading that
        // cannot be had holds the step, and too many in a row roll back.
        match self.gates() {
            Gates::Failed => return,
            Gates::Hold(why) => {
                self.st.phase = if verbs.paused { Phase::Paused } else { phase_of(&step) };
                self.st.message = format!("{why}; the step holds");
                return;
            }
            Gates::Pass => {}
        }
        let bake_end = ready_at + jiff::SignedDuration::from_secs(i64::from(step.bake_seconds));
        // `rollout promote` (promoteStep = this step) ends the bake as well as a pause.
        let promoted = verbs.promote_step == Some(index);
        if o.now < bake_end && !promoted {
            self.after(o.now.duration_until(bake_end).unsigned_abs());
            self.st.phase = if verbs.paused { Phase::Paused } else { phase_of(&step) };
            return;
        }
        if verbs.paused {
            self.st.phase = Phase::Paused;
            self.st.message = format!("step {number} done; paused");
            return;
        }
        if step.pause && verbs.promote_step != Some(index) {
            self.st.phase = Phase::Paused;
            self.st.message = format!("step {number} done; waiting for `kubectl distroless rollout promote`");
            return;
        }
        self.actions
            .push(event(false, "StepCompleted", format!("step {number} baked healthy")));
        self.enter_step(index + 1);
        self.after(Duration::from_millis(500));
    }

    /// `canaryCapacity: FromDeployment`: the Deployment gives up one pod for
    /// each canary pod that serves (ready, gate open), up to the step's
    /// canary and never its last pod, so the pods serving never fall below
    /// its own count while the canary grows. Anything else gives them back.
    fn size_stable(&mut self, d: &Deployment, total: u32, wanted: u32, serving_ready: u32, serving: bool) {
        let take = if serving && self.takes_capacity() {
            serving_ready.min(wanted).min(total.saturating_sub(1))
        } else {
            0
        };
        self.take_capacity(d, take);
    }

    /// Ensures the canary ReplicaSet of the current template at `wanted`
    /// replicas; removes canaries of older templates. Returns the template hash.
    fn ensure_canary(&mut self, d: &Deployment, distroless: &BTreeMap<String, String>, wanted: u32) -> String {
        let o = self.o;
        let template = canary::template(d, distroless, &self.name());
        let hash = canary::template_hash(&template);
        let mut replaced = false;
        for rs in o.canaries {
            if canary::hash_of(rs) != Some(hash.as_str()) {
                replaced = true;
                self.actions.push(Action::DeleteCanary {
                    name: rs.metadata.name.clone().unwrap_or_default(),
                });
            }
        }
        // The status names the canary this step ran with: a different one now
        // means a new template, even if an earlier reconcile that removed the
        // old canary did not get to write its status.
        let new_name = canary::canary_name(d.metadata.name.as_deref().unwrap_or_default(), &hash);
        let recorded_other = self.st.canary.as_ref().is_some_and(|c| c.replica_set != new_name);
        match o.canaries.iter().find(|rs| canary::hash_of(rs) == Some(hash.as_str())) {
            None => {
                if replaced || recorded_other {
                    // The Deployment's template changed (a Git change): the step starts over.
                    self.actions.push(event(
                        false,
                        "TemplateChanged",
                        "the Deployment's pod template changed; the canary is rebuilt from it and the step starts over",
                    ));
                    self.st.step_started_at = Some(Time(o.now));
                    self.st.step_ready_at = None;
                }
                self.actions.push(Action::ApplyCanary(Box::new(canary::replica_set(
                    o.rollout, d, template, wanted,
                ))));
            }
            Some(rs) => {
                let have = rs.spec.replicas.unwrap_or(0);
                if have != i32::try_from(wanted).unwrap_or(i32::MAX) {
                    self.actions.push(Action::ScaleCanary {
                        name: rs.metadata.name.clone().unwrap_or_default(),
                        replicas: wanted,
                    });
                }
            }
        }
        hash
    }

    /// 100%: the Deployment moves to the distroless images, by our patch or
    /// by Git, its rolling update is judged like the canary (failures, gates,
    /// `progressDeadlineSeconds`), then its pods are watched for the 100%
    /// step's bake before the canary is removed.
    fn promote(&mut self, d: &Deployment, distroless: &BTreeMap<String, String>, template_distroless: bool) {
        let o = self.o;
        let spec = &o.rollout.spec;
        let previous = o.rollout.status.as_ref().map(|s| s.phase).unwrap_or_default();
        if previous != Phase::Promoting {
            // Promotion's own clock: a jump here (promote --full, a Git
            // change) does not inherit the step's.
            self.st.step_started_at = Some(Time(o.now));
            self.st.step_ready_at = None;
        }
        self.st.phase = Phase::Promoting;
        self.st.desired_weight = 100;
        // The Deployment rolls out with its own count of pods (the GitOps
        // hold keeps the last step's canary, and its share, until then).
        if template_distroless || spec.promotion == Promotion::PatchDeployment {
            self.restore_stable(Some(d));
        }
        if !template_distroless {
            match spec.promotion {
                Promotion::PatchDeployment => {
                    self.actions.push(Action::PatchDeploymentImages(distroless.clone()));
                    self.actions.push(event(
                        false,
                        "Promoting",
                        "the Deployment's images are patched to the distroless ones",
                    ));
                    self.st.deployment_patched = true;
                    self.st.message = "the Deployment rolls out the distroless images".into();
                }
                Promotion::AwaitGitOps => self.hold_for_git(d, distroless),
            }
            self.after(Duration::from_secs(1));
            return;
        }
        let promoted_at = self.st.promoted_at.get_or_insert(Time(o.now)).clone();
        // The Deployment's own rolling update, judged like the canary.
        if let Some(f) = classify::classify(o.promoted_pods, None, &spec.failure, o.now) {
            return self.roll_back(f);
        }
        let gates = match self.gates() {
            Gates::Failed => return,
            Gates::Hold(why) => Some(why),
            Gates::Pass => None,
        };
        let s = d.status.clone().unwrap_or_default();
        let want = d.spec.replicas.unwrap_or(1);
        let done = s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
            && s.updated_replicas.unwrap_or(0) == want
            && s.available_replicas.unwrap_or(0) == want
            && s.replicas.unwrap_or(0) == want;
        let progress = format!(
            "{}/{want} updated, {}/{want} available",
            s.updated_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0)
        );
        // Once rolled out, a pod that goes away during the bake (an HPA
        // scaling, a node drained) is no missed deadline; failures of the
        // pods themselves are still caught above.
        if !done && self.st.step_ready_at.is_none() {
            let deadline = spec.failure.progress_deadline_seconds;
            if self.past_deadline(
                Some(&promoted_at),
                deadline,
                FailureReason::ProgressDeadlineExceeded,
                || {
                    format!(
                        "the Deployment's rolling update to the distroless images did not finish within {deadline} s \
                     (progressDeadlineSeconds): {progress}"
                    )
                },
            ) {
                return;
            }
            self.st.message = format!("the Deployment rolls out the distroless images: {progress}");
            if let Some(why) = gates {
                self.st.message = format!("{}; {why}", self.st.message);
            }
            self.after(Duration::from_secs(1));
            return;
        }
        let ready_at = self.st.step_ready_at.get_or_insert(Time(o.now)).0;
        let bake = self.promotion_bake();
        let bake_end = ready_at + jiff::SignedDuration::from_secs(i64::from(bake));
        if o.now < bake_end || gates.is_some() || !done || self.st.stable_scale.is_some() {
            let mut message = format!(
                "the Deployment runs the distroless images ({progress}); its pods are watched for the 100% step's \
                 bake of {bake} s before the canary is removed"
            );
            if let Some(why) = gates {
                message = format!("{message}; {why}");
            }
            self.st.message = message;
            if o.now < bake_end {
                self.after(o.now.duration_until(bake_end).unsigned_abs());
            } else {
                self.after(Duration::from_secs(1));
            }
            return;
        }
        for rs in o.canaries {
            self.actions.push(Action::DeleteCanary {
                name: rs.metadata.name.clone().unwrap_or_default(),
            });
        }
        self.st.phase = Phase::Succeeded;
        self.st.effective_weight = 100;
        self.st.canary = None;
        self.st.deployment_patched = false;
        self.st.message = "the Deployment runs the distroless images".into();
        self.actions.push(event(
            false,
            "Succeeded",
            "the Deployment runs the distroless images; the canary is removed",
        ));
    }

    /// `AwaitGitOps` before the Git change: the last weighted step's canary
    /// keeps serving and is watched like any step (failures, gates), for at
    /// most `gitOpsDeadlineSeconds`.
    fn hold_for_git(&mut self, d: &Deployment, distroless: &BTreeMap<String, String>) {
        let o = self.o;
        let failure = &o.rollout.spec.failure;
        let last = self
            .steps()
            .iter()
            .filter_map(|s| s.weight.filter(|w| *w < 100))
            .next_back()
            .unwrap_or(0);
        let total = self.own_replicas(d);
        let wanted = if total == 0 { 0 } else { self.canary_size(total, last) };
        let hash = self.ensure_canary(d, distroless, wanted);
        let held: Vec<Pod> = o
            .canary_pods
            .iter()
            .filter(live)
            .filter(|p| pod_hash(p) == Some(hash.as_str()))
            .cloned()
            .collect();
        let rs = o.canaries.iter().find(|rs| canary::hash_of(rs) == Some(hash.as_str()));
        if let Some(f) = classify::classify(&held, rs, failure, o.now) {
            return self.roll_back(f);
        }
        let deadline = failure.git_ops_deadline_seconds;
        let started = self.st.step_started_at.clone();
        if self.past_deadline(
            started.as_ref(),
            deadline,
            FailureReason::GitOpsDeadlineExceeded,
            || {
                format!(
                    "the Deployment's template did not carry the distroless images within {deadline} s \
                 (gitOpsDeadlineSeconds) of the hold"
                )
            },
        ) {
            return;
        }
        let closed: Vec<String> = held
            .iter()
            .filter(|p| !gate_open(p))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if !closed.is_empty() && last > 0 {
            self.actions.push(Action::SetServing {
                pods: closed,
                serving: true,
            });
        }
        let serving_ready = held.iter().filter(|p| classify::ready(p)).count() as u32;
        // The held pods serve; after staging alone `wanted` is 0, so none are taken.
        self.size_stable(d, total, wanted, serving_ready, true);
        self.st.message =
            "holding at the last weight until the Deployment's template carries the distroless images (the Git change)"
                .into();
        if let Gates::Hold(why) = self.gates() {
            self.st.message = format!("{}; {why}", self.st.message);
        }
    }

    fn finish(mut self) -> Plan {
        let prev = self.o.rollout.status.clone().unwrap_or_default();
        let steps = self.steps().len() as u32;
        self.st.step = format!("{}/{steps}", (self.st.current_step + 1).min(steps));
        self.st.conditions = conditions(&self.st, &prev.conditions, self.o.now);
        Plan {
            finalizer: (self.st.deployment_patched && self.st.phase != Phase::Succeeded)
                || self.st.stable_scale.is_some(),
            actions: self.actions,
            status: self.st,
            requeue: self.requeue,
        }
    }
}

/// The step at `index` as it runs. A step that names neither `staging` nor a
/// `weight` (a bare `pause` or `bakeSeconds`, as Argo Rollouts users write
/// them) holds at the previous step's staging or weight with its own bake and
/// pause: it never promotes. With nothing before it, it stages one pod.
pub(crate) fn effective_step(steps: &[Step], index: usize) -> Option<Step> {
    let step = steps.get(index)?;
    if step.staging.is_some() || step.weight.is_some() {
        return Some(step.clone());
    }
    let mut held = step.clone();
    match steps[..index]
        .iter()
        .rev()
        .find(|s| s.staging.is_some() || s.weight.is_some())
    {
        Some(before) => {
            held.staging = before.staging.clone();
            held.weight = before.weight;
        }
        None => held.staging = Some(crate::api::Staging { replicas: 1 }),
    }
    Some(held)
}

fn phase_of(step: &Step) -> Phase {
    if step.staging.is_some() {
        Phase::Staging
    } else {
        Phase::Canary
    }
}

/// `Ready`, `Progressing` and `Stalled`, keeping transition times that did not change.
fn conditions(st: &DistrolessRolloutStatus, previous: &[Condition], now: Timestamp) -> Vec<Condition> {
    let reason = st.phase.as_str();
    let failure = st.failure.as_ref().map(|f| f.reason.as_str());
    let (ready, progressing, stalled) = match st.phase {
        Phase::Succeeded => (true, false, false),
        Phase::RolledBack | Phase::GitRevertNeeded => (false, false, true),
        Phase::Paused => (false, false, false),
        _ => (false, true, false),
    };
    let make = |kind: &str, on: bool, why: &str| {
        let status = if on { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == kind && c.status == status && c.reason == why)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: kind.into(),
            status: status.into(),
            reason: why.into(),
            message: st.message.clone(),
            observed_generation: st.observed_generation,
            last_transition_time: since,
        }
    };
    vec![
        make("Ready", ready, reason),
        make("Progressing", progressing, reason),
        make("Stalled", stalled, failure.unwrap_or(reason)),
    ]
}

/// The plan for what was observed.
pub(crate) fn plan(o: &Observed<'_>) -> Plan {
    Planner {
        o,
        st: o.rollout.status.clone().unwrap_or_default(),
        actions: Vec::new(),
        requeue: None,
    }
    .plan()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DistrolessRolloutSpec, PreflightResult};
    use proptest::prelude::*;
    use serde_json::json;

    /// A small world the planner runs against: the Deployment, the canary
    /// ReplicaSets and their pods, with a fake kubelet and Deployment controller.
    #[derive(Clone)]
    struct World {
        rollout: DistrolessRollout,
        deployment: Deployment,
        canaries: Vec<ReplicaSet>,
        pods: Vec<Pod>,
        now: Timestamp,
        /// Canary pods fail with this waiting reason.
        failing: Option<&'static str>,
        preflight_passes: bool,
        /// Deployment images seen after a promotion patch (the rolling update).
        events: Vec<String>,
        /// What the metric gates read in every reconcile.
        metrics: Vec<MetricReading>,
        /// The Deployment's own pods on the distroless images (after promotion).
        promoted: Vec<Pod>,
        /// They fail with this waiting reason.
        promoted_failing: Option<&'static str>,
        /// The Deployment's rolling update makes no progress.
        stalled: bool,
    }

    fn t0() -> Timestamp {
        "2026-11-24T10:00:00Z".parse().unwrap()
    }

    fn rollout(spec: serde_json::Value) -> DistrolessRollout {
        let mut base = json!({"targetRef": {"name": "web"}, "containers": [{"name": "app", "image": "reg/app:distroless"}],
            "failure": {"readyTimeoutSeconds": 60, "imagePullGraceSeconds": 10},
            "steps": [{"staging": {"replicas": 1}, "bakeSeconds": 30}, {"weight": 10, "bakeSeconds": 60}, {"weight": 50, "bakeSeconds": 60}, {"weight": 100}]});
        if let (Some(b), Some(s)) = (base.as_object_mut(), spec.as_object()) {
            b.extend(s.clone());
        }
        let spec: DistrolessRolloutSpec = serde_json::from_value(base).unwrap();
        let mut r = DistrolessRollout::new("web-distroless", spec);
        r.metadata.namespace = Some("shop".into());
        r.metadata.uid = Some("r-uid".into());
        r.metadata.generation = Some(1);
        r
    }

    fn deployment(replicas: i32) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "reg/app:1.0"}]}}},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}}))
        .unwrap()
    }

    impl World {
        fn new(spec: serde_json::Value, replicas: i32) -> World {
            World {
                rollout: rollout(spec),
                deployment: deployment(replicas),
                canaries: Vec::new(),
                pods: Vec::new(),
                now: t0(),
                failing: None,
                preflight_passes: true,
                events: Vec::new(),
                metrics: Vec::new(),
                promoted: Vec::new(),
                promoted_failing: None,
                stalled: false,
            }
        }

        fn plan(&self) -> Plan {
            plan(&Observed {
                rollout: &self.rollout,
                deployment: Some(&self.deployment),
                canaries: &self.canaries,
                canary_pods: &self.pods,
                promoted_pods: &self.promoted,
                metrics: &self.metrics,
                now: self.now,
            })
        }

        fn status(&self) -> DistrolessRolloutStatus {
            self.rollout.status.clone().unwrap_or_default()
        }

        /// Applies the actions (the reconciler's part).
        fn apply(&mut self, actions: &[Action], status: &mut DistrolessRolloutStatus) {
            for a in actions {
                match a {
                    Action::RunPreflight { .. } => {
                        status.preflight = Some(PreflightResult {
                            passed: self.preflight_passes,
                            message: if self.preflight_passes {
                                "ok".into()
                            } else {
                                "refused by PSA".into()
                            },
                            retry: self.rollout.verbs().retry,
                        });
                    }
                    Action::ApplyCanary(rs) => {
                        // The API server's validation: the selector must select the template.
                        let selector = rs.spec.selector.match_labels.clone().unwrap();
                        let template = &rs.spec.template.as_ref().unwrap().metadata;
                        let labels = template.as_ref().unwrap().labels.clone().unwrap();
                        assert!(
                            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
                            "the API server refuses a ReplicaSet whose selector {selector:?} does not select its template {labels:?}"
                        );
                        self.canaries.retain(|c| c.metadata.name != rs.metadata.name);
                        let mut rs = (**rs).clone();
                        rs.metadata.creation_timestamp = Some(Time(self.now));
                        self.canaries.insert(0, rs);
                    }
                    Action::ScaleCanary { name, replicas } => {
                        for c in self
                            .canaries
                            .iter_mut()
                            .filter(|c| c.metadata.name.as_deref() == Some(name))
                        {
                            c.spec.replicas = Some(*replicas as i32);
                        }
                    }
                    Action::DeleteCanary { name } => {
                        self.canaries.retain(|c| c.metadata.name.as_deref() != Some(name));
                        let hashes: Vec<String> = self
                            .canaries
                            .iter()
                            .filter_map(|c| canary::hash_of(c).map(str::to_string))
                            .collect();
                        self.pods
                            .retain(|p| pod_hash(p).is_some_and(|h| hashes.iter().any(|x| x == h)));
                    }
                    Action::SetServing { pods, serving } => {
                        for p in self
                            .pods
                            .iter_mut()
                            .filter(|p| pods.contains(p.metadata.name.as_ref().unwrap()))
                        {
                            set_condition(p, SERVING_GATE, *serving);
                        }
                    }
                    Action::PatchDeploymentImages(images) => {
                        let spec = self.deployment.spec.template.spec.as_mut().unwrap();
                        for c in &mut spec.containers {
                            if let Some(i) = images.get(&c.name) {
                                c.image = Some(i.clone());
                            }
                        }
                        self.deployment.metadata.generation = Some(self.deployment.metadata.generation.unwrap() + 1);
                    }
                    Action::ScaleDeployment { replicas } => {
                        self.deployment.spec.replicas = Some(*replicas as i32);
                        self.deployment.metadata.managed_fields = Some(vec![replicas_owner("distroless-guard")]);
                    }
                    Action::KeepPod { name } => {
                        for p in self.pods.iter_mut().filter(|p| p.metadata.name.as_ref() == Some(name)) {
                            p.metadata
                                .labels
                                .as_mut()
                                .unwrap()
                                .insert("pod-template-hash".into(), canary::KEPT.into());
                        }
                    }
                    Action::Event { reason, message, .. } => {
                        // Users read these in `kubectl describe`: one line of
                        // single-spaced prose (a lost `\` continuation once put
                        // runs of spaces into two of them).
                        assert!(
                            !message.is_empty() && !message.contains("  ") && !message.contains('\n'),
                            "{reason} event message is not one line of single-spaced prose: {message:?}"
                        );
                        self.events.push(reason.clone())
                    }
                }
            }
        }

        /// The kubelet and the controllers: canary pods follow their ReplicaSets;
        /// the Deployment finishes a rolling update in one tick.
        fn cluster_tick(&mut self) {
            // Pods taken out of their ReplicaSet stay as they are.
            let mut pods: Vec<Pod> = self.pods.iter().filter(|p| canary::is_kept(p)).cloned().collect();
            for rs in &self.canaries {
                let hash = canary::hash_of(rs).unwrap().to_string();
                let want = rs.spec.replicas.unwrap_or(0) as usize;
                let mut have: Vec<Pod> = self
                    .pods
                    .iter()
                    .filter(|p| pod_hash(p) == Some(hash.as_str()))
                    .cloned()
                    .collect();
                have.truncate(want);
                while have.len() < want {
                    let name = format!("{}-{}", rs.metadata.name.as_ref().unwrap(), have.len());
                    have.push(new_pod(&name, &hash, self.now, self.failing));
                }
                pods.extend(have);
            }
            self.pods = pods;
            let distroless = self.deployment_image() == "reg/app:distroless";
            let d = &mut self.deployment;
            let replicas = d.spec.replicas.unwrap_or(1);
            let status = d.status.as_mut().unwrap();
            status.observed_generation = d.metadata.generation;
            let updated = if self.stalled { 0 } else { replicas };
            status.updated_replicas = Some(updated);
            status.available_replicas = Some(if self.stalled { replicas } else { updated });
            status.ready_replicas = Some(replicas);
            status.replicas = Some(replicas);
            self.promoted = if distroless && !self.stalled {
                (0..replicas)
                    .map(|i| {
                        let mut p = new_pod(&format!("web-new-{i}"), "new", self.now, self.promoted_failing);
                        p.metadata.labels.as_mut().unwrap().remove(canary::ROLLOUT_LABEL);
                        p
                    })
                    .collect()
            } else {
                Vec::new()
            };
        }

        /// One reconcile: plan, apply everything, write the status (first, for a rollback).
        fn step(&mut self) -> Plan {
            self.step_losing(|_| {})
        }

        /// [`World::step`], with `lose` taking actions out of the plan after a
        /// status it writes first is written (lost on their way to the API server).
        fn step_losing(&mut self, lose: impl FnOnce(&mut Plan)) -> Plan {
            self.cluster_tick();
            let mut p = self.plan();
            if p.status_first(&self.status()) {
                self.rollout.status = Some(p.status.clone());
            }
            lose(&mut p);
            let mut status = p.status.clone();
            self.apply(&p.actions, &mut status);
            self.rollout.status = Some(status);
            p
        }

        fn run(&mut self, seconds: i64, every: i64) {
            for _ in 0..(seconds / every) {
                self.step();
                self.now += jiff::SignedDuration::from_secs(every);
            }
        }

        fn deployment_image(&self) -> String {
            self.deployment.spec.template.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        }
    }

    /// A managedFields entry: `manager` set `spec.replicas` (an update).
    fn replicas_owner(manager: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
        serde_json::from_value(
            json!({"manager": manager, "operation": "Update", "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}),
        )
        .unwrap()
    }

    fn set_condition(p: &mut Pod, kind: &str, on: bool) {
        let status = p.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != kind);
        conditions
            .push(serde_json::from_value(json!({"type": kind, "status": if on { "True" } else { "False" }})).unwrap());
        // Ready follows the gates, as the kubelet computes it.
        let ready = conditions
            .iter()
            .any(|c| c.type_ == "ContainersReady" && c.status == "True")
            && conditions.iter().any(|c| c.type_ == SERVING_GATE && c.status == "True");
        conditions.retain(|c| c.type_ != "Ready");
        conditions.push(
            serde_json::from_value(json!({"type": "Ready", "status": if ready { "True" } else { "False" }})).unwrap(),
        );
    }

    fn new_pod(name: &str, hash: &str, now: Timestamp, failing: Option<&str>) -> Pod {
        let (ready, state) = match failing {
            None => (true, json!({"running": {}})),
            Some(reason) => (
                false,
                json!({"waiting": {"reason": reason, "message": "exec: \"sh\": executable file not found in $PATH"}}),
            ),
        };
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop", "creationTimestamp": now.to_string(),
            "labels": {"app": "web", canary::ROLLOUT_LABEL: "web-distroless", "pod-template-hash": hash}},
            "status": {"conditions": [{"type": "ContainersReady", "status": if ready { "True" } else { "False" }},
                                      {"type": "Ready", "status": "False"}],
                       "containerStatuses": [{"name": "app", "image": "reg/app:distroless", "imageID": "", "ready": ready, "restartCount": 0, "state": state}]}}))
        .unwrap()
    }

    #[test]
    fn a_bare_pause_step_holds_at_the_previous_weight_and_never_promotes() {
        let steps = json!({"steps": [{"weight": 20, "bakeSeconds": 10}, {"pause": true}, {"weight": 100}]});
        let mut w = World::new(steps, 8);
        w.run(120, 5);
        let s = w.status();
        assert_eq!(
            (s.phase, s.current_step, s.desired_weight),
            (Phase::Paused, 1, 20),
            "{s:?}"
        );
        assert_eq!(
            w.deployment_image(),
            "reg/app:1.0",
            "a pause step promoted the Deployment"
        );
        assert_eq!(w.canaries[0].spec.replicas, Some(2), "2 next to 8 is 20%");
        assert!(w.pods.iter().all(gate_open), "the held canary keeps its traffic");
        // `rollout promote` moves on, to the 100% step.
        w.rollout.spec.promote_step = Some(1);
        w.run(10, 5);
        assert_eq!(w.deployment_image(), "reg/app:distroless");
    }

    #[test]
    fn a_bare_bake_step_bakes_at_the_previous_weight_then_goes_on() {
        let steps =
            json!({"steps": [{"staging": {"replicas": 1}, "bakeSeconds": 5}, {"bakeSeconds": 60}, {"weight": 100}]});
        let mut w = World::new(steps, 4);
        w.run(40, 5);
        let s = w.status();
        assert_eq!(
            (s.phase, s.current_step, s.desired_weight),
            (Phase::Staging, 1, 0),
            "{s:?}"
        );
        assert_eq!(
            w.deployment_image(),
            "reg/app:1.0",
            "a bake step promoted the Deployment"
        );
        assert!(w.pods.iter().all(|p| !gate_open(p)), "held at staging: no traffic");
        w.run(60, 5);
        assert_eq!(w.deployment_image(), "reg/app:distroless", "after its bake it goes on");
    }

    #[test]
    fn a_first_step_without_weight_stages_one_pod_rather_than_promoting() {
        let held = effective_step(
            &serde_json::from_value::<Vec<Step>>(json!([{"pause": true}])).unwrap(),
            0,
        )
        .unwrap();
        assert_eq!(
            (held.staging.map(|s| s.replicas), held.weight, held.pause),
            (Some(1), None, true)
        );
    }

    fn gated(limit: u32) -> serde_json::Value {
        json!({"steps": [{"weight": 50, "bakeSeconds": 10}, {"weight": 100}],
            "metrics": [{"name": "errors", "address": "http://prometheus:9090", "query": "rate(e[1m])",
                         "threshold": 0.05, "consecutiveErrorLimit": limit}]})
    }

    /// A 50% step baking `bake` seconds behind a gate that tolerates
    /// `failure_limit` readings above its threshold.
    fn tolerating(bake: u32, failure_limit: u32) -> serde_json::Value {
        json!({"steps": [{"weight": 50, "bakeSeconds": bake}, {"weight": 100}],
            "metrics": [{"name": "errors", "address": "http://p:9090", "query": "q", "threshold": 0.05, "failureLimit": failure_limit}]})
    }

    fn reading(value: Result<f64, &str>) -> Vec<MetricReading> {
        vec![MetricReading {
            name: "errors".into(),
            value: value.map_err(|reason| super::super::analysis::GateError::Unreachable {
                url: "http://prometheus:9090/api/v1/query".into(),
                reason: reason.into(),
            }),
        }]
    }

    #[test]
    fn a_gate_that_cannot_be_read_holds_the_bake_then_rolls_back_past_its_error_limit() {
        let mut w = World::new(gated(3), 4);
        w.metrics = reading(Err("connection refused"));
        let mut held = false;
        for _ in 0..40 {
            w.step();
            w.now += jiff::SignedDuration::from_secs(5);
            let s = w.status();
            if s.phase == Phase::RolledBack {
                break;
            }
            held |= s.metric_errors.get("errors").is_some_and(|n| *n >= 2) && s.current_step == 0;
            assert_eq!(
                w.deployment_image(),
                "reg/app:1.0",
                "promoted on an unreadable gate: {s:?}"
            );
        }
        let s = w.status();
        assert!(held, "the bake was never held on the unread gate");
        assert_eq!(s.phase, Phase::RolledBack, "{s:?}");
        let f = s.failure.unwrap();
        assert_eq!(f.reason, "MetricUnavailable");
        assert!(f.message.contains("4 times in a row"), "{}", f.message);
    }

    #[test]
    fn failed_readings_count_once_per_interval_however_often_the_rollout_is_reconciled() {
        let mut w = World::new(gated(5), 4);
        w.metrics = reading(Err("connection refused"));
        w.run(20, 5);
        let counted = w.status().metric_errors["errors"];
        // A burst of pod events: twenty reconciles within one second.
        for _ in 0..20 {
            w.step();
            w.now += jiff::SignedDuration::from_millis(50);
        }
        let s = w.status();
        assert_ne!(
            s.phase,
            Phase::RolledBack,
            "a burst of reconciles used up the error limit: {s:?}"
        );
        assert!(
            s.metric_errors["errors"] <= counted + 1,
            "{:?} after {counted}",
            s.metric_errors
        );
    }

    #[test]
    fn readings_above_the_threshold_count_once_per_interval_however_often_the_rollout_is_reconciled() {
        let mut w = World::new(tolerating(60, 3), 4);
        w.metrics = reading(Ok(0.5));
        for _ in 0..20 {
            w.step();
            if w.status().metric_failures.contains_key("errors") {
                break;
            }
            w.now += jiff::SignedDuration::from_secs(1);
        }
        let counted_at = w.now;
        assert_eq!(w.status().metric_failures.get("errors"), Some(&1), "{:?}", w.status());
        // A burst of pod events: twenty reconciles within a second.
        for _ in 0..20 {
            w.now += jiff::SignedDuration::from_millis(50);
            w.step();
        }
        assert_eq!(w.status().metric_failures["errors"], 1, "counted once in its interval");
        // The interval runs from the reading that counted, not from the burst.
        w.now = counted_at + METRIC_INTERVAL;
        w.step();
        let s = w.status();
        assert_eq!(
            (s.metric_failures["errors"], s.phase),
            (2, Phase::Canary),
            "{}",
            s.message
        );
    }

    #[test]
    fn a_gate_read_again_after_errors_lets_the_bake_end_and_forgets_them() {
        let mut w = World::new(gated(4), 4);
        w.metrics = reading(Err("inconclusive: the query gave NaN (no traffic yet?)"));
        // Past the bake's 10 s, within the limit of 4 errors.
        w.run(20, 5);
        assert!(w.status().metric_errors["errors"] >= 2, "{:?}", w.status());
        assert_eq!((w.status().phase, w.status().current_step), (Phase::Canary, 0));
        assert!(w.status().message.contains("the step holds"), "{}", w.status().message);
        w.metrics = reading(Ok(0.01));
        w.run(60, 5);
        let s = w.status();
        assert_eq!(w.deployment_image(), "reg/app:distroless", "{s:?}");
        assert!(s.metric_errors.is_empty(), "{:?}", s.metric_errors);
    }

    #[test]
    fn a_canary_that_starts_failing_while_the_git_change_waits_rolls_back() {
        let spec = json!({"promotion": "AwaitGitOps", "steps": [{"weight": 50, "bakeSeconds": 5}, {"weight": 100}]});
        let mut w = World::new(spec, 4);
        w.run(60, 5);
        assert_eq!(w.status().phase, Phase::Promoting, "{:?}", w.status());
        // Hours into the hold, the canary pods crash.
        w.failing = Some("CrashLoopBackOff");
        w.pods.clear();
        w.run(10, 5);
        let s = w.status();
        assert_eq!(s.phase, Phase::RolledBack, "{s:?}");
        assert_eq!(s.failure.unwrap().reason, "CrashLoopBackOff");
        assert!(w.pods.iter().all(|p| !gate_open(p)), "the failing canary still serves");
    }

    #[test]
    fn promote_ends_a_bake_that_has_long_to_run() {
        let steps = json!({"steps": [{"weight": 25, "bakeSeconds": 3600}, {"weight": 100}]});
        let mut w = World::new(steps, 4);
        w.run(30, 5);
        assert_eq!((w.status().phase, w.status().current_step), (Phase::Canary, 0));
        w.rollout.spec.promote_step = Some(0);
        w.run(10, 5);
        assert_eq!(
            w.deployment_image(),
            "reg/app:distroless",
            "promote did not end the bake"
        );
    }

    fn stopped_with(w: &World, phase: Phase, reason: &str) -> DistrolessRolloutStatus {
        let s = w.status();
        assert_eq!(
            (s.phase, s.failure.as_ref().map(|f| f.reason.as_str())),
            (phase, Some(reason)),
            "{s:?}"
        );
        s
    }

    #[test]
    fn gates_are_read_through_the_promotion_and_a_bad_reading_there_puts_the_standard_images_back() {
        let mut w = World::new(
            json!({"steps": [{"weight": 50, "bakeSeconds": 10}, {"weight": 100, "bakeSeconds": 120}],
            "metrics": [{"name": "errors", "address": "http://prometheus:9090", "query": "rate(e[1m])", "threshold": 0.05}]}),
            4,
        );
        w.metrics = reading(Ok(0.01));
        w.run(40, 5);
        assert_eq!(w.deployment_image(), "reg/app:distroless");
        assert_eq!(
            w.status().phase,
            Phase::Promoting,
            "the 100% step bakes: {:?}",
            w.status()
        );
        w.metrics = reading(Ok(0.4));
        w.run(10, 5);
        let s = stopped_with(&w, Phase::RolledBack, "MetricGate");
        assert_eq!(w.deployment_image(), "reg/app:1.0", "{s:?}");
    }

    #[test]
    fn a_reading_above_the_threshold_within_the_failure_limit_holds_and_the_next_one_past_it_rolls_back() {
        let mut w = World::new(tolerating(10, 2), 4);
        w.metrics = reading(Ok(0.5));
        let mut held = 0;
        for _ in 0..10 {
            w.step();
            w.now += jiff::SignedDuration::from_secs(5);
            if w.status().phase == Phase::RolledBack {
                break;
            }
            if w.status().message.contains("tolerated") {
                held += 1;
            }
            assert_eq!(w.deployment_image(), "reg/app:1.0", "promoted past a failing gate");
        }
        let s = stopped_with(&w, Phase::RolledBack, "MetricGate");
        assert_eq!(held, 2, "two readings tolerated, then the third rolls back: {s:?}");
        assert_eq!(s.metric_failures["errors"], 3);
    }

    #[test]
    fn the_100_step_bake_watches_the_promoted_pods_and_their_crash_rolls_back() {
        let mut w = World::new(
            json!({"steps": [{"weight": 50, "bakeSeconds": 10}, {"weight": 100, "bakeSeconds": 300}]}),
            4,
        );
        w.run(60, 5);
        assert_eq!(w.deployment_image(), "reg/app:distroless");
        let s = w.status();
        assert_eq!(s.phase, Phase::Promoting, "succeeded before the 100% bake: {s:?}");
        assert!(s.message.contains("bake of 300 s"), "{}", s.message);
        assert!(!w.canaries.is_empty(), "the canary stays until the bake ends");
        w.promoted_failing = Some("CrashLoopBackOff");
        w.run(10, 5);
        stopped_with(&w, Phase::RolledBack, "CrashLoopBackOff");
        assert_eq!(w.deployment_image(), "reg/app:1.0");
        // Without the crash the same rollout succeeds once the bake is over.
        let mut w = World::new(
            json!({"steps": [{"weight": 50, "bakeSeconds": 10}, {"weight": 100, "bakeSeconds": 300}]}),
            4,
        );
        w.run(400, 5);
        assert_eq!(w.status().phase, Phase::Succeeded, "{:?}", w.status());
    }

    #[test]
    fn a_rolling_update_that_stalls_past_the_progress_deadline_rolls_back() {
        let mut w = World::new(
            json!({"steps": [{"weight": 50, "bakeSeconds": 10}, {"weight": 100}],
            "failure": {"progressDeadlineSeconds": 60}}),
            4,
        );
        w.stalled = true;
        w.run(40, 5);
        assert_eq!(w.status().phase, Phase::Promoting, "{:?}", w.status());
        assert_eq!(w.deployment_image(), "reg/app:distroless");
        w.run(60, 5);
        let s = stopped_with(&w, Phase::RolledBack, "ProgressDeadlineExceeded");
        assert!(s.failure.unwrap().message.contains("0/4 updated"));
        assert_eq!(w.deployment_image(), "reg/app:1.0");
    }

    #[test]
    fn canary_pods_that_never_get_ready_fail_the_step_at_its_progress_deadline() {
        let mut w = World::new(
            json!({"failure": {"readyTimeoutSeconds": 3600, "progressDeadlineSeconds": 90}}),
            4,
        );
        // Not ready, without a reason the classifier would act on at once.
        w.failing = Some("ContainerCreating");
        w.run(80, 5);
        assert_eq!(w.status().phase, Phase::Staging, "{:?}", w.status());
        w.run(20, 5);
        let s = stopped_with(&w, Phase::RolledBack, "ProgressDeadlineExceeded");
        assert!(s.failure.unwrap().hint.contains("progressDeadlineSeconds"));
    }

    #[test]
    fn a_gitops_hold_that_outlives_its_deadline_rolls_back_the_serving_canary() {
        let mut w = World::new(
            json!({"promotion": "AwaitGitOps", "steps": [{"weight": 50, "bakeSeconds": 5}, {"weight": 100}],
            "failure": {"gitOpsDeadlineSeconds": 600}}),
            4,
        );
        w.run(60, 5);
        assert_eq!(w.status().phase, Phase::Promoting);
        assert!(w.pods.iter().any(gate_open), "the held canary serves");
        w.run(600, 30);
        let s = stopped_with(&w, Phase::RolledBack, "GitOpsDeadlineExceeded");
        assert!(s.failure.unwrap().hint.contains("retry"));
        assert!(w.pods.iter().all(|p| !gate_open(p)));
        assert_eq!(w.canaries[0].spec.replicas, Some(0));
    }

    #[test]
    fn distroless_images_from_git_that_fail_ask_for_a_git_revert_then_roll_back_when_it_comes() {
        let mut w = World::new(
            json!({"promotion": "AwaitGitOps", "steps": [{"weight": 50, "bakeSeconds": 5}, {"weight": 100}]}),
            4,
        );
        w.run(60, 5);
        // Git merges the change; its pods crash.
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].image = Some("reg/app:distroless".into());
        w.promoted_failing = Some("CrashLoopBackOff");
        w.run(10, 5);
        let s = stopped_with(&w, Phase::GitRevertNeeded, "CrashLoopBackOff");
        assert!(s.message.contains("revert that change"), "{}", s.message);
        assert!(w.events.iter().any(|e| e == "GitRevertNeeded"));
        assert!(
            !w.events.iter().any(|e| e == "RolledBack"),
            "it did not roll back: {:?}",
            w.events
        );
        assert_eq!(
            w.deployment_image(),
            "reg/app:distroless",
            "the operator does not fight Git"
        );
        assert!(s.conditions.iter().any(|c| c.type_ == "Stalled" && c.status == "True"));
        w.run(60, 5);
        assert_eq!(w.status().phase, Phase::GitRevertNeeded, "still waiting for Git");
        // Git reverts.
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].image = Some("reg/app:1.0".into());
        w.run(10, 5);
        let s = stopped_with(&w, Phase::RolledBack, "CrashLoopBackOff");
        assert!(s.message.contains("reverted"), "{}", s.message);
    }

    #[test]
    fn a_deployment_scaled_to_zero_holds_weighted_steps_with_no_canary_pod() {
        let mut w = World::new(
            json!({"steps": [{"weight": 25, "bakeSeconds": 10}, {"weight": 100}]}),
            0,
        );
        w.run(120, 5);
        let s = w.status();
        assert_eq!((s.phase, s.current_step), (Phase::Canary, 0), "{s:?}");
        assert!(s.message.contains("0 replicas"), "{}", s.message);
        assert!(w.pods.is_empty(), "one canary pod would have taken all the traffic");
        assert_eq!(w.deployment_image(), "reg/app:1.0");
        w.deployment.spec.replicas = Some(3);
        w.run(60, 5);
        assert_eq!(w.deployment_image(), "reg/app:distroless", "{:?}", w.status());
    }

    /// Pods that serve now: the Deployment's (all ready in this world) and the
    /// canary's ready ones with their gate open.
    fn serving(w: &World) -> u32 {
        w.deployment.spec.replicas.unwrap_or(0) as u32 + w.pods.iter().filter(|p| classify::ready(p)).count() as u32
    }

    fn taking(steps: serde_json::Value) -> serde_json::Value {
        json!({"canaryCapacity": "FromDeployment", "steps": steps})
    }

    #[test]
    fn a_canary_taking_from_the_deployment_shrinks_it_only_by_serving_pods_and_promotion_gives_them_back() {
        let mut w = World::new(taking(json!([{"weight": 50, "bakeSeconds": 30}, {"weight": 100}])), 4);
        let mut scaled_before_recorded = false;
        for _ in 0..12 {
            let before = w.status();
            let p = w.step();
            // The Deployment's own count is on record before it is first scaled.
            if p.actions.iter().any(|a| matches!(a, Action::ScaleDeployment { .. })) && before.stable_scale.is_none() {
                scaled_before_recorded |= !p.status_first(&before);
                assert!(p.finalizer, "scaled down without the finalizer that puts it back");
            }
            assert!(serving(&w) >= 4, "fewer than 4 pods serve: {:?}", w.status());
            w.now += jiff::SignedDuration::from_secs(2);
        }
        assert!(!scaled_before_recorded, "scaled before its own count was written");
        let s = w.status();
        assert_eq!((s.phase, s.desired_weight), (Phase::Canary, 50), "{s:?}");
        assert_eq!(w.canaries[0].spec.replicas, Some(2), "50% of 4 is 2 of them");
        assert_eq!(
            w.deployment.spec.replicas,
            Some(2),
            "the Deployment gave up the 2 the canary serves for"
        );
        assert_eq!(
            s.stable_scale,
            Some(StableScale {
                replicas: 4,
                scaled_to: 2,
                held: true
            })
        );
        assert!(w.events.iter().any(|e| e == "CapacityTaken"), "{:?}", w.events);
        w.run(60, 2);
        let s = w.status();
        assert_eq!(s.phase, Phase::Succeeded, "{s:?}");
        assert_eq!(
            w.deployment.spec.replicas,
            Some(4),
            "promotion rolls out with the Deployment's own count"
        );
        assert_eq!(
            (s.stable_scale, w.deployment_image().as_str()),
            (None, "reg/app:distroless")
        );
        assert!(w.events.iter().any(|e| e == "CapacityRestored"), "{:?}", w.events);
    }

    #[test]
    fn a_gate_failing_in_the_reconcile_that_would_first_take_capacity_scales_nothing_and_announces_nothing() {
        let mut spec = gated(0);
        spec["canaryCapacity"] = json!("FromDeployment");
        let mut w = World::new(spec, 4);
        w.metrics = reading(Ok(0.0));
        for _ in 0..10 {
            if !w.pods.is_empty() && w.pods.iter().all(gate_open) {
                break;
            }
            w.step();
            w.now += jiff::SignedDuration::from_secs(1);
        }
        assert!(w.pods.iter().all(gate_open), "the gates opened: {:?}", w.status());
        assert_eq!(
            w.status().stable_scale,
            None,
            "nothing taken while no canary pod served"
        );
        // The pods serve now, so this reconcile would take the Deployment's
        // pods; the gate fails in it.
        w.metrics = reading(Ok(1.0));
        let p = w.step();
        assert_eq!(p.status.phase, Phase::RolledBack, "{}", p.status.message);
        let scale_or_taken: Vec<&Action> = p
            .actions
            .iter()
            .filter(|a| match a {
                Action::ScaleDeployment { .. } => true,
                Action::Event { reason, .. } => reason.starts_with("Capacity"),
                _ => false,
            })
            .collect();
        assert!(scale_or_taken.is_empty(), "{scale_or_taken:?}");
        assert_eq!((p.status.stable_scale, w.deployment.spec.replicas), (None, Some(4)));
    }

    #[test]
    fn a_taking_canary_that_grows_records_each_new_scale_of_the_deployment() {
        let steps = json!([{"weight": 25, "bakeSeconds": 10}, {"weight": 50, "bakeSeconds": 600}, {"weight": 100}]);
        let mut w = World::new(taking(steps), 4);
        let scale = |w: &World| w.status().stable_scale.map(|s| (s.replicas, s.scaled_to, s.held));
        w.run(8, 1);
        assert_eq!(w.status().current_step, 0);
        assert_eq!((scale(&w), w.deployment.spec.replicas), (Some((4, 3, true)), Some(3)));
        w.run(30, 1);
        assert_eq!(w.status().current_step, 1);
        assert_eq!((scale(&w), w.deployment.spec.replicas), (Some((4, 2, true)), Some(2)));
    }

    #[test]
    fn a_rollback_of_a_taking_canary_gives_the_deployment_its_replicas_before_removing_the_canary() {
        let mut w = World::new(taking(json!([{"weight": 50, "bakeSeconds": 600}, {"weight": 100}])), 6);
        w.run(20, 2);
        assert_eq!(w.deployment.spec.replicas, Some(3), "{:?}", w.status());
        w.rollout.spec.abort = true;
        let p = w.step();
        let order: Vec<&str> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::ScaleDeployment { .. } => Some("deployment"),
                Action::ScaleCanary { .. } => Some("canary"),
                _ => None,
            })
            .collect();
        assert_eq!(order, ["deployment", "canary"]);
        assert!(p.finalizer, "the replicas are not confirmed back yet");
        w.run(10, 2);
        let s = w.status();
        assert_eq!((s.phase, s.stable_scale.clone()), (Phase::RolledBack, None), "{s:?}");
        assert_eq!(w.deployment.spec.replicas, Some(6));
        assert!(!w.step().finalizer);
        // A retry starts taking again from the Deployment's own count.
        w.rollout.spec.abort = false;
        w.rollout.spec.retry = 1;
        w.run(30, 2);
        assert_eq!(w.deployment.spec.replicas, Some(3), "{:?}", w.status());
        assert_eq!(w.status().stable_scale.map(|s| s.replicas), Some(6));
    }

    #[test]
    fn someone_else_scaling_a_taken_deployment_keeps_their_number_and_the_canary_adds_its_pods() {
        let mut w = World::new(taking(json!([{"weight": 50, "bakeSeconds": 600}, {"weight": 100}])), 4);
        w.run(20, 2);
        assert_eq!(w.deployment.spec.replicas, Some(2));
        // `kubectl scale --replicas 5`: their manager owns spec.replicas now.
        w.deployment.spec.replicas = Some(5);
        w.deployment.metadata.managed_fields = Some(vec![replicas_owner("kubectl")]);
        w.run(10, 2);
        let s = w.status();
        assert!(s.capacity_released && s.stable_scale.is_none(), "{s:?}");
        assert_eq!(w.deployment.spec.replicas, Some(5), "their number was overwritten");
        assert_eq!(w.canaries[0].spec.replicas, Some(5), "5 added beside 5 is 50%");
        assert!(w.events.iter().any(|e| e == "CapacityReleased"), "{:?}", w.events);
        assert!(!w.step().finalizer, "nothing of the Deployment's is held any more");
        // The same number written back by a GitOps sync (4, its own count) also stands.
        let mut w = World::new(taking(json!([{"weight": 50, "bakeSeconds": 600}, {"weight": 100}])), 4);
        w.run(20, 2);
        w.deployment.spec.replicas = Some(4);
        w.deployment.metadata.managed_fields = Some(vec![replicas_owner("argocd-controller")]);
        w.run(10, 2);
        assert_eq!(
            w.deployment.spec.replicas,
            Some(4),
            "a fight with the sync over spec.replicas"
        );
        assert!(w.status().capacity_released);
    }

    #[test]
    fn a_rollout_deleted_while_its_canary_holds_replicas_gives_them_back_before_it_goes() {
        let mut w = World::new(taking(json!([{"weight": 25, "bakeSeconds": 600}, {"weight": 100}])), 8);
        w.run(20, 2);
        assert_eq!(w.deployment.spec.replicas, Some(6), "{:?}", w.status());
        w.rollout.metadata.deletion_timestamp = Some(Time(w.now));
        let p = w.step();
        assert!(p.finalizer, "released before the replicas were back");
        assert_eq!(
            p.requeue,
            Some(Duration::from_secs(2)),
            "it looks again until they are back"
        );
        assert_eq!(w.deployment.spec.replicas, Some(8));
        let p = w.step();
        assert!(!p.finalizer, "the replicas are back: the rollout may go");
        assert_eq!(p.requeue, None);
    }

    #[test]
    fn a_one_replica_deployment_keeps_its_pod_and_a_staging_step_takes_nothing() {
        let mut w = World::new(taking(json!([{"staging": {"replicas": 2}, "bakeSeconds": 600}])), 3);
        w.run(20, 2);
        assert_eq!((w.deployment.spec.replicas, w.status().stable_scale), (Some(3), None));
        let mut w = World::new(taking(json!([{"weight": 50, "bakeSeconds": 600}])), 1);
        w.run(20, 2);
        assert_eq!(
            w.deployment.spec.replicas,
            Some(1),
            "the Deployment's last pod was taken"
        );
        assert_eq!(w.canaries[0].spec.replicas, Some(1));
    }

    #[test]
    fn a_rollout_deleted_mid_promotion_holds_its_finalizer_until_the_standard_images_are_back() {
        let mut w = World::new(
            json!({"steps": [{"weight": 50, "bakeSeconds": 10}, {"weight": 100, "bakeSeconds": 3600}]}),
            4,
        );
        assert!(!w.step().finalizer, "nothing to undo yet, nothing to hold");
        let mut finalizer_before_patch = false;
        for _ in 0..20 {
            let p = w.step();
            w.now += jiff::SignedDuration::from_secs(5);
            if p.actions.iter().any(|a| matches!(a, Action::PatchDeploymentImages(_))) {
                finalizer_before_patch = p.finalizer;
                break;
            }
        }
        assert!(
            finalizer_before_patch,
            "the plan that patches the Deployment asks for the finalizer"
        );
        w.run(30, 5);
        assert_eq!(
            (w.status().phase, w.deployment_image().as_str()),
            (Phase::Promoting, "reg/app:distroless")
        );
        w.rollout.metadata.deletion_timestamp = Some(Time(w.now));
        let p = w.step();
        assert!(p.finalizer, "released before the images were restored");
        assert_eq!(
            p.requeue,
            Some(Duration::from_secs(2)),
            "it looks again until they are back"
        );
        assert!(p.status.message.contains("deleted mid-rollout"), "{}", p.status.message);
        assert_eq!(w.deployment_image(), "reg/app:1.0");
        let p = w.step();
        assert!(!p.finalizer, "the images are back: the rollout may go");
        assert_eq!(p.requeue, None);
        // A rollout that succeeded leaves the Deployment as it is.
        let mut w = World::new(
            json!({"steps": [{"weight": 50, "bakeSeconds": 10}, {"weight": 100}]}),
            4,
        );
        w.run(120, 5);
        assert_eq!(w.status().phase, Phase::Succeeded);
        w.rollout.metadata.deletion_timestamp = Some(Time(w.now));
        let p = w.step();
        assert!(!p.finalizer);
        assert_eq!(w.deployment_image(), "reg/app:distroless");
    }

    /// The pod's container crash-loops.
    fn crash(p: &mut Pod) {
        let status = p.status.as_mut().unwrap();
        status.container_statuses.as_mut().unwrap()[0].state = Some(
            serde_json::from_value(json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}})).unwrap(),
        );
        status.container_statuses.as_mut().unwrap()[0].ready = false;
    }

    #[test]
    fn keep_failed_pod_keeps_the_pod_that_failed_out_of_the_replica_set_and_the_traffic() {
        let mut w = World::new(
            json!({"keepFailedPod": true, "steps": [{"staging": {"replicas": 3}, "bakeSeconds": 60}, {"weight": 100}]}),
            4,
        );
        w.run(20, 5);
        assert_eq!(w.pods.len(), 3);
        // One pod of three fails; the ReplicaSet controller would spare a healthy one.
        let failing = w.pods[1].metadata.name.clone().unwrap();
        crash(&mut w.pods[1]);
        let p = w.plan();
        assert!(
            p.actions
                .iter()
                .any(|a| *a == Action::KeepPod { name: failing.clone() }),
            "{:?}",
            p.actions
        );
        w.step();
        w.run(20, 5);
        stopped_with(&w, Phase::RolledBack, "CrashLoopBackOff");
        assert_eq!(w.canaries[0].spec.replicas, Some(0), "the ReplicaSet is scaled to zero");
        let kept: Vec<&str> = w.pods.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
        assert_eq!(kept, [failing.as_str()], "only the failed pod is left");
        assert!(!gate_open(&w.pods[0]), "and it serves no traffic");
        // Nothing more to keep on later looks.
        assert!(!w.plan().actions.iter().any(|a| matches!(a, Action::KeepPod { .. })));
    }

    #[test]
    fn a_healthy_rollout_goes_through_every_step_and_the_deployment_moves_last() {
        let mut w = World::new(json!({}), 9);
        w.step();
        assert_eq!(w.status().phase, Phase::Preflight);
        w.step();
        assert_eq!(w.status().phase, Phase::Staging);
        w.run(20, 5);
        let s = w.status();
        assert_eq!((s.phase, s.desired_weight), (Phase::Staging, 0));
        assert!(w.pods.iter().all(|p| !gate_open(p)), "no traffic in staging");
        assert_eq!(s.effective_weight, 0, "a ready pod behind a closed gate serves nothing");
        assert_eq!(
            w.deployment_image(),
            "reg/app:1.0",
            "the Deployment is untouched during the canary"
        );
        w.run(40, 5);
        let s = w.status();
        assert_eq!((s.phase, s.current_step, s.desired_weight), (Phase::Canary, 1, 10));
        assert_eq!(w.canaries[0].spec.replicas, Some(1), "1 next to 9 is 10%");
        w.step();
        assert!(w.pods.iter().all(gate_open), "the weighted step opens the gate");
        assert_eq!(w.status().effective_weight, 10);
        assert_eq!(w.deployment_image(), "reg/app:1.0");
        w.run(70, 5);
        assert_eq!((w.status().current_step, w.canaries[0].spec.replicas), (2, Some(9)));
        w.run(70, 5);
        let s = w.status();
        assert_eq!(s.phase, Phase::Succeeded, "{s:?}");
        assert_eq!(w.deployment_image(), "reg/app:distroless");
        assert!(w.canaries.is_empty(), "the canary is removed");
        for e in [
            "PreflightPassed",
            "StepStarted",
            "StepCompleted",
            "Promoting",
            "Succeeded",
        ] {
            assert!(w.events.iter().any(|x| x == e), "no {e} event: {:?}", w.events);
        }
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
    }

    #[test]
    fn the_canary_and_its_preflight_pod_carry_the_rollouts_name_which_the_replica_sets_selector_selects() {
        let mut w = World::new(json!({}), 10);
        let preflight = w.step();
        let Some(Action::RunPreflight { template }) = preflight.actions.first() else {
            panic!("the first reconcile runs the preflight: {:?}", preflight.actions)
        };
        let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels[canary::ROLLOUT_LABEL], "web-distroless");
        let applied = w.step();
        let Some(rs) = applied.actions.iter().find_map(|a| match a {
            Action::ApplyCanary(rs) => Some(rs),
            _ => None,
        }) else {
            panic!("the staging step applies the canary: {:?}", applied.actions)
        };
        let spec = &rs.spec;
        let labels = spec
            .template
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        let selector = spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(labels[canary::ROLLOUT_LABEL], "web-distroless");
        assert_eq!(selector[canary::ROLLOUT_LABEL], "web-distroless");
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{selector:?} selects {labels:?}"
        );
    }

    #[test]
    fn the_status_is_written_first_for_a_new_rollback_or_a_deployment_scale_it_does_not_record_yet() {
        let st = |phase: Phase, scale: Option<(u32, u32)>| DistrolessRolloutStatus {
            phase,
            stable_scale: scale.map(|(replicas, scaled_to)| StableScale {
                replicas,
                scaled_to,
                held: false,
            }),
            ..DistrolessRolloutStatus::default()
        };
        let plan = |status| Plan {
            status,
            ..Plan::default()
        };
        let first = |new, previous| {
            let p = plan(new);
            (p.decides_rollback(&previous), p.status_first(&previous))
        };
        // A rollback decided now, and one already on record.
        assert_eq!(
            first(st(Phase::RolledBack, None), st(Phase::Canary, None)),
            (true, true)
        );
        assert_eq!(
            first(st(Phase::GitRevertNeeded, None), st(Phase::Promoting, None)),
            (true, true)
        );
        assert_eq!(
            first(st(Phase::RolledBack, None), st(Phase::RolledBack, None)),
            (false, false)
        );
        assert_eq!(
            first(st(Phase::Canary, None), st(Phase::RolledBack, None)),
            (false, false),
            "a retry"
        );
        assert_eq!(first(st(Phase::Canary, None), st(Phase::Staging, None)), (false, false));
        // The Deployment's own count, recorded before the scale that needs it.
        assert_eq!(
            first(st(Phase::Canary, Some((6, 5))), st(Phase::Canary, None)),
            (false, true)
        );
        assert_eq!(
            first(st(Phase::Canary, Some((6, 4))), st(Phase::Canary, Some((6, 5)))),
            (false, true)
        );
        assert_eq!(
            first(st(Phase::Canary, Some((6, 5))), st(Phase::Canary, Some((6, 5)))),
            (false, false)
        );
        assert_eq!(
            first(st(Phase::Canary, None), st(Phase::Canary, Some((6, 5)))),
            (false, false),
            "given back"
        );
    }

    #[test]
    fn conditions_follow_the_phase_and_keep_the_time_of_their_last_change() {
        let now = t0();
        let then = Time(now - jiff::SignedDuration::from_secs(300));
        let status = |phase: Phase, failure: Option<FailureReason>| DistrolessRolloutStatus {
            phase,
            failure: failure.map(|reason| RolloutFailure {
                reason,
                ..RolloutFailure::default()
            }),
            message: "what happened".into(),
            observed_generation: Some(7),
            ..DistrolessRolloutStatus::default()
        };
        let seen = |cs: &[Condition]| -> Vec<(String, String, String)> {
            cs.iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect()
        };
        let expect = |r: &str, p: &str, s: &str, reason: &str, stalled: &str| -> Vec<(String, String, String)> {
            [
                ("Ready", r, reason),
                ("Progressing", p, reason),
                ("Stalled", s, stalled),
            ]
            .iter()
            .map(|(t, v, why)| (t.to_string(), v.to_string(), why.to_string()))
            .collect()
        };
        let cases = [
            (
                status(Phase::Succeeded, None),
                expect("True", "False", "False", "Succeeded", "Succeeded"),
            ),
            (
                status(Phase::Canary, None),
                expect("False", "True", "False", "Canary", "Canary"),
            ),
            (
                status(Phase::Paused, None),
                expect("False", "False", "False", "Paused", "Paused"),
            ),
            (
                status(Phase::RolledBack, Some(FailureReason::OOMKilled)),
                expect("False", "False", "True", "RolledBack", "OOMKilled"),
            ),
            (
                status(Phase::GitRevertNeeded, Some(FailureReason::MetricGate)),
                expect("False", "False", "True", "GitRevertNeeded", "MetricGate"),
            ),
        ];
        for (st, want) in cases {
            let made = conditions(&st, &[], now);
            assert_eq!(seen(&made), want, "{:?}", st.phase);
            for c in &made {
                assert_eq!((c.message.as_str(), c.observed_generation), ("what happened", Some(7)));
                assert_eq!(c.last_transition_time, Time(now), "new conditions start now");
            }
        }
        // A condition keeps its time while its status and reason stay; a
        // change of either (or of the type they are found under) starts it anew.
        let before = |kind: &str, on: &str, why: &str| Condition {
            type_: kind.into(),
            status: on.into(),
            reason: why.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: then.clone(),
        };
        let previous = [
            before("Ready", "False", "Canary"),
            before("Progressing", "True", "Staging"),
            before("Stalled", "True", "Canary"),
        ];
        let made = conditions(&status(Phase::Canary, None), &previous, now);
        let times: Vec<&Time> = made.iter().map(|c| &c.last_transition_time).collect();
        assert_eq!(times, [&then, &Time(now), &Time(now)]);
    }

    /// The reconciler comes back after `requeue` when no watch event wakes it
    /// sooner: a timer missed here is a step that waits for an unrelated event.
    #[test]
    fn the_plan_asks_to_look_again_when_its_earliest_timer_ends() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        let at = |w: &World, s: i64| w.now + jiff::SignedDuration::from_secs(s);
        // Staging: 1 pod, bake 30 s; readyTimeoutSeconds 60, imagePullGraceSeconds 10.
        let mut w = World::new(json!({}), 4);
        assert_eq!(w.step().requeue, secs(1), "the preflight's answer");
        w.now = at(&w, 1);
        assert_eq!(
            w.step().requeue,
            secs(600),
            "no canary pod yet: the step's progressDeadlineSeconds"
        );
        w.now = at(&w, 1);
        let created = w.now;
        // A pod's grace periods count from the end of the second its
        // creationTimestamp names (classify::created).
        assert_eq!(w.step().requeue, secs(11), "a new pod: its image pull grace");
        let look = |w: &mut World, age: i64| {
            w.now = created + jiff::SignedDuration::from_secs(age);
            w.plan().requeue
        };
        assert_eq!(look(&mut w, 4), secs(7), "the pull grace's rest");
        assert_eq!(look(&mut w, 11), secs(19), "the pull grace just over: the bake's rest");
        assert_eq!(look(&mut w, 20), secs(10), "the bake's rest (ready at 0, 30 s)");
        assert_eq!(look(&mut w, 29), secs(1));
        assert_eq!(
            look(&mut w, 31),
            Some(Duration::from_millis(500)),
            "baked: the next step at once (half a second, the shortest look)"
        );

        // The 100% step's bake, once the Deployment has rolled out.
        let mut w = World::new(
            json!({"steps": [{"weight": 50, "bakeSeconds": 5}, {"weight": 100, "bakeSeconds": 40}]}),
            4,
        );
        for _ in 0..30 {
            w.step();
            if w.status().phase == Phase::Promoting && w.status().step_ready_at.is_some() {
                break;
            }
            w.now = at(&w, 1);
        }
        let ready = w.status().step_ready_at.expect("the promoted pods were ready").0;
        w.now = ready + jiff::SignedDuration::from_secs(15);
        assert_eq!(w.plan().requeue, secs(25), "the rest of the 100% step's bake");
        w.now = ready + jiff::SignedDuration::from_secs(40);
        let p = w.plan();
        assert_eq!(p.status.phase, Phase::Succeeded);
        assert_eq!(p.requeue, None, "nothing left to time");
    }

    #[test]
    fn each_step_is_announced_by_its_number_from_1_and_what_it_runs() {
        let steps = json!({"steps": [{"staging": {"replicas": 1}, "bakeSeconds": 3}, {"bakeSeconds": 3},
            {"weight": 20, "bakeSeconds": 3}, {"bakeSeconds": 3}, {"weight": 100}]});
        let mut w = World::new(steps, 4);
        let mut told = Vec::new();
        for _ in 0..40 {
            for a in w.step().actions {
                if let Action::Event { reason, message, .. } = a
                    && reason == "StepStarted"
                {
                    told.push(message);
                }
            }
            w.now += jiff::SignedDuration::from_secs(1);
        }
        assert_eq!(
            told,
            [
                "step 1: staging (no traffic)",
                "step 2: holding at staging (no traffic)",
                "step 3: 20% of the traffic",
                "step 4: holding at 20% of the traffic",
                "step 5: promotion to 100%",
            ]
        );
    }

    #[test]
    fn a_weighted_step_reports_its_ready_pods_or_the_weight_its_pods_cannot_make() {
        let at_first_weight = |spec: serde_json::Value, replicas: i32| {
            let mut w = World::new(spec, replicas);
            for _ in 0..20 {
                if w.status().current_step >= 1 {
                    break;
                }
                w.step();
                w.now += jiff::SignedDuration::from_secs(5);
            }
            assert_eq!(w.status().current_step, 1, "the staging step is over within 100 s");
            w.run(10, 5);
            w.status().message
        };
        let steps = |capacity: &str| {
            json!({"canaryCapacity": capacity, "steps": [{"staging": {"replicas": 1}, "bakeSeconds": 5},
                {"weight": 10, "bakeSeconds": 600}, {"weight": 100}]})
        };
        assert_eq!(at_first_weight(steps("Added"), 9), "step 2: 1/1 canary pods ready");
        assert_eq!(
            at_first_weight(steps("Added"), 2),
            "WeightUnachievable: 1 canary pod(s) next to 2 make 33%, not 10%"
        );
        assert_eq!(
            at_first_weight(steps("FromDeployment"), 4),
            "WeightUnachievable: 1 canary pod(s) next to 3 make 25%, not 10%",
            "the canary's pod stands in for one of the Deployment's"
        );
        assert_eq!(
            at_first_weight(steps("FromDeployment"), 1),
            "WeightUnachievable: 1 canary pod(s) next to 1 make 50%, not 10%",
            "a Deployment's last pod is never taken"
        );
    }

    #[test]
    fn a_crash_looping_canary_is_rolled_back_in_the_same_reconcile_with_a_hint() {
        let mut w = World::new(json!({}), 9);
        w.failing = Some("CrashLoopBackOff");
        w.step();
        w.step();
        w.step();
        let s = w.status();
        assert_eq!(s.phase, Phase::RolledBack);
        let f = s.failure.unwrap();
        assert_eq!(f.reason, "CrashLoopBackOff");
        assert!(f.hint.contains("shell"), "{}", f.hint);
        w.step();
        assert!(
            w.canaries.iter().all(|c| c.spec.replicas == Some(0)),
            "the canary is scaled to 0"
        );
        assert_eq!(w.deployment_image(), "reg/app:1.0");
        let stalled = s.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "CrashLoopBackOff")
        );
        // Nothing happens again until a retry is asked for.
        let p = w.step();
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        w.failing = None;
        w.rollout.spec.retry = 1;
        w.run(400, 5);
        assert_eq!(w.status().phase, Phase::Succeeded);
    }

    #[test]
    fn a_retry_asked_before_a_rollback_is_carried_out_keeps_the_standard_images_and_the_patch_to_undo() {
        let mut w = World::new(json!({"steps": [{"weight": 100}]}), 3);
        w.step();
        w.step();
        assert_eq!(w.deployment_image(), "reg/app:distroless");
        // The promoted pods crash: the rollback is decided and on record, but
        // the standard images are not back yet when a retry is asked for.
        w.promoted_failing = Some("CrashLoopBackOff");
        w.cluster_tick();
        let p = w.plan();
        assert_eq!((p.status.phase, p.status.deployment_patched), (Phase::RolledBack, true));
        w.rollout.status = Some(p.status);
        // `kubectl distroless rollout retry` writes the annotation and waits
        // for it in observedVerbs; a spec edit bumps the generation.
        w.rollout.metadata.annotations =
            Some([(crate::api::rollout::verbs::RETRY.to_string(), "1".to_string())].into());
        w.rollout.metadata.generation = Some(2);
        let s = w.plan().status;
        assert_eq!(
            s.standard_images.get("app").map(String::as_str),
            Some("reg/app:1.0"),
            "the standard tag must not be read again from a Deployment that carries the distroless one"
        );
        assert!(s.deployment_patched, "the Deployment still carries our patch: {s:?}");
        assert_eq!(s.observed_generation, Some(2), "the retry's generation is observed");
        assert_eq!(s.observed_verbs, w.rollout.verb_annotations(), "the verbs are observed");
        // The new attempt fails the same way and still puts the standard tag back.
        w.run(400, 5);
        assert_eq!(w.status().phase, Phase::RolledBack, "{:?}", w.status());
        assert_eq!(w.deployment_image(), "reg/app:1.0");
    }

    #[test]
    fn a_retry_asked_before_a_taken_deployment_gets_its_replicas_back_keeps_its_count() {
        let mut w = World::new(taking(json!([{"weight": 50, "bakeSeconds": 600}, {"weight": 100}])), 6);
        w.run(20, 2);
        assert_eq!(w.deployment.spec.replicas, Some(3), "{:?}", w.status());
        w.rollout.spec.abort = true;
        let p = w.plan();
        assert_eq!(p.status.phase, Phase::RolledBack);
        // On record, not carried out: the Deployment still has 3 of its 6.
        w.rollout.status = Some(p.status);
        w.rollout.spec.abort = false;
        w.rollout.spec.retry = 1;
        let s = w.plan().status;
        assert_eq!(
            s.stable_scale.map(|s| s.replicas),
            Some(6),
            "the Deployment's own count is forgotten"
        );
        w.run(1400, 5);
        assert_eq!(w.status().phase, Phase::Succeeded, "{:?}", w.status());
        assert_eq!(
            w.deployment.spec.replicas,
            Some(6),
            "the Deployment did not get its replicas back"
        );
    }

    #[test]
    fn a_failure_the_planner_finds_itself_says_when_it_was_found() {
        let mut w = World::new(
            json!({"containers": [{"name": "nope", "image": "reg/app:distroless"}]}),
            3,
        );
        w.step();
        let f = w.status().failure.expect("an invalid spec is a failure");
        assert_eq!(f.reason, "InvalidSpec");
        assert_eq!(f.detected_at, Some(Time(t0())));
    }

    #[test]
    fn a_failure_after_promotion_patches_the_standard_images_back() {
        let mut w = World::new(json!({"steps": [{"weight": 100}]}), 3);
        w.step();
        w.step();
        let s = w.status();
        assert_eq!((s.phase, s.deployment_patched), (Phase::Promoting, true));
        assert_eq!(w.deployment_image(), "reg/app:distroless");
        // The Deployment's rolling update is under way and its new pods crash.
        w.deployment.status.as_mut().unwrap().updated_replicas = Some(1);
        let bad = new_pod("web-new-0", "x", w.now, Some("CrashLoopBackOff"));
        let p = plan(&Observed {
            rollout: &w.rollout,
            deployment: Some(&w.deployment),
            canaries: &w.canaries,
            canary_pods: &w.pods,
            promoted_pods: std::slice::from_ref(&bad),
            metrics: &[],
            now: w.now,
        });
        assert_eq!(p.status.phase, Phase::RolledBack);
        let restore = Action::PatchDeploymentImages(BTreeMap::from([("app".into(), "reg/app:1.0".into())]));
        assert!(p.actions.contains(&restore), "{:?}", p.actions);
        // Once restored, the rollback is done and the flag cleared.
        let mut status = p.status.clone();
        w.apply(&p.actions, &mut status);
        w.rollout.status = Some(status);
        w.step();
        assert_eq!(w.deployment_image(), "reg/app:1.0");
        assert!(!w.status().deployment_patched);
    }

    #[test]
    fn a_refused_preflight_stops_before_any_pod_exists() {
        let mut w = World::new(json!({}), 3);
        w.preflight_passes = false;
        w.run(10, 1);
        let s = w.status();
        assert_eq!(s.phase, Phase::RolledBack);
        assert_eq!(s.failure.unwrap().reason, "PreflightFailed");
        assert!(w.canaries.is_empty() && w.pods.is_empty());
    }

    #[test]
    fn a_paused_step_waits_for_promote_and_spec_paused_holds() {
        let mut w = World::new(
            json!({"steps": [{"weight": 50, "bakeSeconds": 5, "pause": true}, {"weight": 100}]}),
            2,
        );
        w.run(30, 1);
        assert_eq!(w.status().phase, Phase::Paused);
        assert_eq!(w.deployment_image(), "reg/app:1.0");
        w.rollout.spec.promote_step = Some(0);
        w.run(10, 1);
        assert_eq!(w.status().phase, Phase::Succeeded);

        let mut w = World::new(json!({"paused": true}), 9);
        w.run(200, 5);
        let s = w.status();
        assert_eq!((s.phase, s.current_step), (Phase::Paused, 0));
    }

    #[test]
    fn abort_rolls_back_and_a_template_change_restarts_the_step_from_the_new_template() {
        let mut w = World::new(json!({}), 9);
        w.run(20, 5);
        let first = w.canaries[0].metadata.name.clone();
        // A Git change of the template (an env var): the canary is rebuilt.
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].env = Some(vec![
            serde_json::from_value(json!({"name": "X", "value": "1"})).unwrap(),
        ]);
        w.step();
        assert_ne!(w.canaries[0].metadata.name, first);
        assert_eq!(w.canaries.len(), 1, "the old canary is deleted");
        assert!(w.events.iter().any(|e| e == "TemplateChanged"));
        // `rollout abort` writes the annotation, not the spec.
        w.rollout.metadata.annotations =
            Some([(crate::api::rollout::verbs::ABORT.to_string(), "true".to_string())].into());
        w.step();
        let s = w.status();
        assert_eq!(
            (s.phase, s.failure.unwrap().reason.as_str()),
            (Phase::RolledBack, "Aborted")
        );
        assert_eq!(
            s.observed_verbs
                .get(crate::api::rollout::verbs::ABORT)
                .map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn a_template_change_whose_status_write_was_lost_still_restarts_the_step() {
        let mut w = World::new(json!({}), 9);
        w.run(20, 5);
        let old = w.status().canary.expect("the step's canary").replica_set;
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].env = Some(vec![
            serde_json::from_value(json!({"name": "X", "value": "1"})).unwrap(),
        ]);
        // The reconcile that saw the change deleted the old canary, then
        // crashed: no new canary, and the status still names the old one.
        w.cluster_tick();
        let p = w.plan();
        assert!(
            matches!(&p.actions[0], Action::DeleteCanary { name } if *name == old),
            "{:?}",
            p.actions
        );
        let mut lost = DistrolessRolloutStatus::default();
        w.apply(&p.actions[..1], &mut lost);
        assert!(w.canaries.is_empty());
        w.now += jiff::SignedDuration::from_secs(5);
        let p = w.step();
        assert!(emits(&p, "TemplateChanged"), "{:?}", p.actions);
        assert_eq!(w.status().step_started_at, Some(Time(w.now)), "the step starts over");
    }

    #[test]
    fn the_promotion_succeeds_only_after_its_bake_with_every_pod_available_and_the_gates_passing() {
        let spec = json!({"steps": [{"weight": 50, "bakeSeconds": 5}, {"weight": 100, "bakeSeconds": 10}],
            "metrics": [{"name": "errors", "address": "http://p:9090", "query": "q", "threshold": 0.05, "failureLimit": 50}]});
        let mut w = World::new(spec, 4);
        w.metrics = reading(Ok(0.0));
        for _ in 0..40 {
            if w.status().phase == Phase::Promoting && w.status().step_ready_at.is_some() {
                break;
            }
            w.step();
            w.now += jiff::SignedDuration::from_secs(1);
        }
        let ready = w.status().step_ready_at.expect("the promoted pods were ready").0;
        w.now = ready + jiff::SignedDuration::from_secs(11);
        // A pod gone after the rollout (a node drained): no deadline, but no success either.
        w.deployment.status.as_mut().unwrap().available_replicas = Some(3);
        let p = w.plan();
        assert_eq!(p.status.phase, Phase::Promoting, "{}", p.status.message);
        assert!(p.status.message.contains("3/4 available"), "{}", p.status.message);
        w.deployment.status.as_mut().unwrap().available_replicas = Some(4);
        // A gate above its threshold, within its failureLimit, holds too.
        w.metrics = reading(Ok(1.0));
        let p = w.plan();
        assert_eq!(p.status.phase, Phase::Promoting, "{}", p.status.message);
        assert!(p.status.message.contains("tolerated"), "{}", p.status.message);
        w.metrics = reading(Ok(0.0));
        assert_eq!(w.plan().status.phase, Phase::Succeeded);
    }

    #[test]
    fn a_new_standard_tag_in_the_deployment_becomes_what_a_rollback_restores() {
        let mut w = World::new(json!({}), 9);
        w.run(10, 5);
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].image = Some("reg/app:1.1".into());
        w.step();
        assert_eq!(
            w.status().standard_images.get("app").map(String::as_str),
            Some("reg/app:1.1")
        );
    }

    /// Our field manager's server-side apply of the images (a promotion
    /// patch or a restore), as the API server records it.
    fn images_applied_by_us() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
        serde_json::from_value(
            json!({"manager": crate::controller::FIELD_MANAGER, "operation": "Apply", "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}}}),
        )
        .unwrap()
    }

    #[test]
    fn its_own_promotion_patch_is_known_from_the_managed_fields_when_the_status_saying_so_was_lost() {
        let steps = json!({"steps": [{"weight": 50, "bakeSeconds": 5}, {"weight": 100, "bakeSeconds": 60}]});
        let mut w = World::new(steps, 2);
        w.run(30, 1);
        assert_eq!(w.status().phase, Phase::Promoting);
        assert_eq!(w.deployment_image(), "reg/app:distroless");
        // The status that recorded the patch was lost (a crash after the
        // patch, or a replica whose cache has not seen the write yet).
        let mut st = w.status();
        st.deployment_patched = false;
        w.rollout.status = Some(st);
        w.deployment.metadata.managed_fields = Some(vec![images_applied_by_us()]);
        w.promoted_failing = Some("CreateContainerConfigError");
        w.run(5, 1);
        let s = w.status();
        assert_eq!(s.phase, Phase::RolledBack, "{}", s.message);
        assert_eq!(
            w.deployment_image(),
            "reg/app:1.0",
            "our patch is ours to undo, not Git's to revert"
        );
    }

    #[test]
    fn a_rollback_recorded_before_its_actions_is_carried_out_next_time_and_looked_at_again_in_2_s() {
        let steps = json!({"steps": [{"weight": 50, "bakeSeconds": 5}, {"weight": 100, "bakeSeconds": 60}]});
        let mut w = World::new(steps, 2);
        w.run(30, 1);
        assert_eq!(w.deployment_image(), "reg/app:distroless");
        w.rollout.spec.abort = true;
        // The status is written first; then the process dies.
        let decided = w.plan();
        assert!(decided.status_first(&w.status()));
        w.rollout.status = Some(decided.status);
        let p = w.step();
        assert_eq!(p.status.phase, Phase::RolledBack);
        assert!(
            p.actions.iter().any(|a| matches!(a, Action::PatchDeploymentImages(_))),
            "{:?}",
            p.actions
        );
        assert_eq!(
            p.requeue,
            Some(Duration::from_secs(2)),
            "it looks again until all is undone"
        );
        assert_eq!(w.deployment_image(), "reg/app:1.0");
        w.step();
        let p = w.step();
        assert!(
            p.actions.iter().all(|a| matches!(a, Action::Event { .. })),
            "{:?}",
            p.actions
        );
        assert_eq!(p.requeue, None, "nothing left to undo");
    }

    #[test]
    fn our_restore_in_the_managed_fields_does_not_hide_a_new_standard_tag_from_git_after_a_retry() {
        let mut w = World::new(json!({}), 9);
        w.run(20, 5);
        w.rollout.spec.abort = true;
        w.run(5, 1);
        assert_eq!(w.status().phase, Phase::RolledBack);
        // The image fields stay ours after a restore; then a release in Git.
        w.deployment.metadata.managed_fields = Some(vec![images_applied_by_us()]);
        w.rollout.spec.abort = false;
        w.rollout.spec.retry = 1;
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].image = Some("reg/app:1.1".into());
        w.run(5, 1);
        let s = w.status();
        assert!(!s.deployment_patched, "the Deployment runs Git's standard images");
        assert_eq!(
            s.standard_images.get("app").map(String::as_str),
            Some("reg/app:1.1"),
            "what a rollback restores"
        );
    }

    #[test]
    fn a_gitops_change_to_the_distroless_images_is_the_promotion() {
        let mut w = World::new(json!({"promotion": "AwaitGitOps"}), 9);
        w.run(200, 5);
        assert_eq!(
            w.status().phase,
            Phase::Promoting,
            "holds until Git changes the Deployment"
        );
        assert_eq!(w.deployment_image(), "reg/app:1.0", "never patched in AwaitGitOps");
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].image = Some("reg/app:distroless".into());
        w.run(10, 1);
        assert_eq!(w.status().phase, Phase::Succeeded);
        assert_eq!(
            w.status().standard_images.get("app").map(String::as_str),
            Some("reg/app:1.0"),
            "the distroless tag from Git is no new standard tag"
        );
        assert!(!w.events.iter().any(|e| e == "StandardImageChanged"), "{:?}", w.events);
    }

    #[test]
    fn a_git_change_to_the_distroless_images_mid_canary_is_the_promotion_announced_once_and_never_patched() {
        let mut w = World::new(
            json!({"steps": [{"weight": 10, "bakeSeconds": 60}, {"weight": 100, "bakeSeconds": 20}]}),
            9,
        );
        w.run(20, 5);
        assert_eq!(w.status().phase, Phase::Canary);
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].image = Some("reg/app:distroless".into());
        w.step();
        let s = w.status();
        assert_eq!(s.phase, Phase::Promoting);
        assert_eq!(s.step_started_at, Some(Time(w.now)), "the promotion's own clock");
        w.run(30, 1);
        let s = w.status();
        assert_eq!(s.phase, Phase::Succeeded, "{}", s.message);
        assert!(!s.deployment_patched, "Git made the change, not the operator");
        let told = w.events.iter().filter(|e| *e == "DeploymentCarriesDistroless").count();
        assert_eq!(told, 1, "{:?}", w.events);
    }

    #[test]
    fn promote_full_moves_a_canary_step_to_the_promotion_at_once_and_says_so_once() {
        let mut w = World::new(json!({}), 9);
        w.run(60, 5);
        assert_eq!((w.status().phase, w.status().current_step), (Phase::Canary, 1));
        w.rollout.spec.promote_full = true;
        w.step();
        let s = w.status();
        assert_eq!(s.phase, Phase::Promoting);
        assert_eq!(s.step_started_at, Some(Time(w.now)), "the promotion's own clock");
        assert_eq!(w.deployment_image(), "reg/app:distroless", "the Deployment is patched");
        w.run(10, 1);
        assert_eq!(w.status().phase, Phase::Succeeded, "{}", w.status().message);
        let told = w.events.iter().filter(|e| *e == "PromotedFull").count();
        assert_eq!(told, 1, "{:?}", w.events);
    }

    #[test]
    fn terminating_canary_pods_are_not_counted_served_or_kept() {
        let mut w = World::new(
            json!({"keepFailedPod": true, "steps": [{"weight": 50, "bakeSeconds": 60}, {"weight": 100}]}),
            2,
        );
        w.run(5, 1);
        assert_eq!(w.status().canary.as_ref().map(|c| (c.replicas, c.ready)), Some((2, 2)));
        // A pod the ReplicaSet let go of, still shutting down, gate closed.
        let mut going = w.pods[0].clone();
        going.metadata.name = Some("web-going".into());
        going.metadata.deletion_timestamp = Some(Time(w.now));
        set_condition(&mut going, SERVING_GATE, false);
        let observe = |w: &World, pods: &[Pod]| {
            plan(&Observed {
                rollout: &w.rollout,
                deployment: Some(&w.deployment),
                canaries: &w.canaries,
                canary_pods: pods,
                promoted_pods: &w.promoted,
                metrics: &w.metrics,
                now: w.now,
            })
        };
        let mut pods = w.pods.clone();
        pods.push(going.clone());
        let p = observe(&w, &pods);
        assert_eq!(p.status.canary.map(|c| c.ready), Some(2), "only the live pods count");
        let opened: Vec<&Action> = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::SetServing { .. }))
            .collect();
        assert!(opened.is_empty(), "a terminating pod's gate is not opened: {opened:?}");
        // Aborted: a live pod is kept for debugging, the live pods' gates are
        // closed; the terminating pod is neither kept nor closed.
        w.rollout.spec.abort = true;
        set_condition(&mut going, SERVING_GATE, true);
        pods.pop();
        pods.insert(0, going);
        let p = observe(&w, &pods);
        let live: Vec<String> = w.pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
        let kept = Action::KeepPod { name: live[0].clone() };
        assert!(p.actions.contains(&kept), "{:?}", p.actions);
        assert!(
            p.actions.contains(&Action::SetServing {
                pods: live,
                serving: false
            }),
            "{:?}",
            p.actions
        );
    }

    #[test]
    fn the_gitops_hold_keeps_the_last_weighted_steps_canary_serving() {
        let spec = json!({"promotion": "AwaitGitOps", "steps": [{"weight": 20, "bakeSeconds": 5}, {"weight": 100}]});
        let mut w = World::new(spec, 8);
        w.run(30, 1);
        assert_eq!(w.status().phase, Phase::Promoting);
        assert!(
            w.status().message.contains("holding at the last weight"),
            "{}",
            w.status().message
        );
        assert_eq!(
            w.canaries[0].spec.replicas,
            Some(2),
            "20% of 8: 2 canary pods, as in the last weighted step"
        );
        assert!(w.pods.iter().all(gate_open), "they serve");
        let p = w.plan();
        assert!(
            !p.actions.iter().any(|a| matches!(a, Action::SetServing { .. })),
            "{:?}",
            p.actions
        );
        // A pod whose gate is closed (a new pod, say) is opened.
        set_condition(&mut w.pods[1], SERVING_GATE, false);
        let closed = w.pods[1].metadata.name.clone().unwrap();
        let opened = Action::SetServing {
            pods: vec![closed],
            serving: true,
        };
        assert!(w.plan().actions.contains(&opened));
    }

    #[test]
    fn a_gitops_change_that_pins_the_distroless_tag_to_a_digest_is_the_promotion() {
        let mut w = World::new(json!({"promotion": "AwaitGitOps"}), 9);
        w.run(200, 5);
        assert_eq!(w.status().phase, Phase::Promoting);
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].image =
            Some("reg/app:distroless@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into());
        w.run(10, 1);
        assert_eq!(w.status().phase, Phase::Succeeded, "{}", w.status().message);
    }

    /// Whether the plan emits an event with this reason.
    fn emits(p: &Plan, wanted: &str) -> bool {
        p.actions
            .iter()
            .any(|a| matches!(a, Action::Event { reason, .. } if reason == wanted))
    }

    #[test]
    fn the_status_written_as_a_step_starts_names_that_steps_phase_and_weight() {
        let steps = json!({"steps": [{"staging": {"replicas": 1}, "bakeSeconds": 3}, {"bakeSeconds": 3},
            {"weight": 20, "bakeSeconds": 3}, {"weight": 100}]});
        let mut w = World::new(steps, 4);
        let mut seen = Vec::new();
        for _ in 0..40 {
            let p = w.step();
            if emits(&p, "StepStarted") {
                seen.push((p.status.current_step, p.status.phase, p.status.desired_weight));
            }
            w.now += jiff::SignedDuration::from_secs(1);
        }
        assert_eq!(
            seen,
            [
                (0, Phase::Staging, 0),
                (1, Phase::Staging, 0),
                (2, Phase::Canary, 20),
                (3, Phase::Promoting, 100),
            ],
            "a bare bake step holds at staging; a 100% step is the promotion"
        );
    }

    #[test]
    fn a_step_ends_in_the_reconcile_its_bake_ends_which_is_when_the_plan_looks_again() {
        let mut w = World::new(
            json!({"steps": [{"weight": 50, "bakeSeconds": 30}, {"weight": 100}]}),
            4,
        );
        for _ in 0..20 {
            if w.status().step_ready_at.is_some() {
                break;
            }
            w.step();
            w.now += jiff::SignedDuration::from_secs(1);
        }
        let ready = w
            .status()
            .step_ready_at
            .expect("the canary's pods are ready within 20 s")
            .0;
        let bake_end = ready + jiff::SignedDuration::from_secs(30);
        w.now = bake_end - jiff::SignedDuration::from_secs(1);
        let p = w.step();
        assert!(!emits(&p, "StepCompleted"));
        assert_eq!(p.requeue, Some(Duration::from_secs(1)), "look again when the bake ends");
        w.now = bake_end;
        let p = w.step();
        assert!(emits(&p, "StepCompleted"), "{:?}", p.actions);
        assert_eq!(p.status.current_step, 1);
    }

    #[test]
    fn the_promotions_bake_over_with_the_rolling_update_unfinished_looks_again_in_1_s() {
        let mut w = World::new(json!({"steps": [{"weight": 100, "bakeSeconds": 30}]}), 3);
        for _ in 0..20 {
            if w.status().step_ready_at.is_some() {
                break;
            }
            w.step();
            w.now += jiff::SignedDuration::from_secs(1);
        }
        assert_eq!(w.status().phase, Phase::Promoting);
        let ready = w
            .status()
            .step_ready_at
            .expect("the promoted pods are available within 20 s")
            .0;
        // An HPA scales the Deployment up; the new pod is not available yet.
        w.stalled = true;
        w.now = ready + jiff::SignedDuration::from_secs(30);
        let p = w.step();
        assert_eq!(p.status.phase, Phase::Promoting, "{}", p.status.message);
        assert_eq!(p.requeue, Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_reading_equal_to_the_threshold_passes_the_gate() {
        let mut w = World::new(tolerating(10, 0), 4);
        w.metrics = reading(Ok(0.05));
        w.run(200, 5);
        let s = w.status();
        assert_eq!(s.phase, Phase::Succeeded, "{s:?}");
        assert!(s.metric_failures.is_empty(), "{:?}", s.metric_failures);
    }

    #[test]
    fn without_keep_failed_pod_a_rollback_keeps_no_pod() {
        let mut w = World::new(
            json!({"steps": [{"staging": {"replicas": 3}, "bakeSeconds": 60}, {"weight": 100}]}),
            4,
        );
        w.run(20, 5);
        assert_eq!(w.pods.len(), 3);
        crash(&mut w.pods[1]);
        w.run(20, 5);
        stopped_with(&w, Phase::RolledBack, "CrashLoopBackOff");
        assert!(w.pods.is_empty(), "{:?}", w.pods);
    }

    /// The ReplicaSet controller reports that the API server refuses the pods.
    fn refuse_pods(rs: &mut ReplicaSet) {
        rs.status = Some(
            serde_json::from_value(json!({"replicas": 0, "conditions": [{"type": "ReplicaFailure", "status": "True",
                "reason": "FailedCreate", "message": "pods \"web-x\" is forbidden: violates PodSecurity \"restricted:latest\""}]}))
            .unwrap(),
        );
    }

    #[test]
    fn a_canary_whose_pods_the_api_server_refuses_rolls_back_in_a_step_and_in_the_gitops_hold() {
        for promotion in ["PatchDeployment", "AwaitGitOps"] {
            let spec = json!({"promotion": promotion, "steps": [{"weight": 20, "bakeSeconds": 5}, {"weight": 100, "bakeSeconds": 600}]});
            let mut w = World::new(spec, 8);
            w.run(4, 1);
            assert_eq!(w.status().phase, Phase::Canary);
            if promotion == "AwaitGitOps" {
                w.run(20, 1);
                assert!(
                    w.status().message.contains("holding at the last weight"),
                    "{:?}",
                    w.status()
                );
            }
            refuse_pods(&mut w.canaries[0]);
            let p = w.plan();
            let failure = p.status.failure.clone();
            assert_eq!(
                (p.status.phase, failure.map(|f| f.reason)),
                (Phase::RolledBack, Some("FailedCreate".into())),
                "{promotion}: {:?}",
                p.status
            );
        }
    }

    #[test]
    fn the_promotion_patch_comes_after_the_taken_deployment_gets_its_own_count_back() {
        let mut w = World::new(taking(json!([{"weight": 50, "bakeSeconds": 10}, {"weight": 100}])), 4);
        for _ in 0..40 {
            let p = w.step();
            let patch = p
                .actions
                .iter()
                .position(|a| matches!(a, Action::PatchDeploymentImages(_)));
            if let Some(patch) = patch {
                let scale = p
                    .actions
                    .iter()
                    .position(|a| *a == Action::ScaleDeployment { replicas: 4 });
                assert!(scale.is_some_and(|s| s < patch), "{:?}", p.actions);
                return;
            }
            w.now += jiff::SignedDuration::from_secs(2);
        }
        panic!("no promotion within 80 s: {:?}", w.status());
    }

    #[test]
    fn the_gitops_hold_of_a_taking_canary_keeps_the_deployment_short_by_the_pods_it_serves() {
        let mut spec = taking(json!([{"weight": 50, "bakeSeconds": 5}, {"weight": 100}]));
        spec["promotion"] = json!("AwaitGitOps");
        let mut w = World::new(spec, 4);
        w.run(40, 1);
        assert!(
            w.status().message.contains("holding at the last weight"),
            "{:?}",
            w.status()
        );
        assert_eq!(
            (w.deployment.spec.replicas, w.canaries[0].spec.replicas),
            (Some(2), Some(2))
        );
        w.deployment.spec.template.spec.as_mut().unwrap().containers[0].image = Some("reg/app:distroless".into());
        w.run(20, 1);
        assert_eq!(w.status().phase, Phase::Succeeded);
        assert_eq!(w.deployment.spec.replicas, Some(4), "its own count back");
    }

    #[test]
    fn a_gitops_hold_after_staging_alone_opens_no_gate_of_the_staging_pods() {
        let spec = json!({"promotion": "AwaitGitOps", "steps": [{"staging": {"replicas": 2}, "bakeSeconds": 5}, {"weight": 100}]});
        let mut w = World::new(spec, 4);
        for _ in 0..30 {
            let p = w.step();
            assert!(
                !p.actions
                    .iter()
                    .any(|a| matches!(a, Action::SetServing { serving: true, .. })),
                "{:?}",
                p.actions
            );
            w.now += jiff::SignedDuration::from_secs(1);
        }
        assert!(
            w.status().message.contains("holding at the last weight"),
            "{:?}",
            w.status()
        );
    }

    /// Takes the plan's scale of the Deployment out; whether it had one.
    fn lose_scale(p: &mut Plan) -> bool {
        let before = p.actions.len();
        p.actions.retain(|a| !matches!(a, Action::ScaleDeployment { .. }));
        p.actions.len() < before
    }

    #[test]
    fn a_scale_on_record_but_not_yet_made_is_made_again_and_not_taken_for_someone_elses() {
        let mut w = World::new(taking(json!([{"weight": 50, "bakeSeconds": 600}, {"weight": 100}])), 4);
        let mut lost = 0;
        for _ in 0..30 {
            // The status is written; the scale itself is lost, twice.
            w.step_losing(|p| {
                if lost < 2 && lose_scale(p) {
                    lost += 1;
                }
            });
            w.now += jiff::SignedDuration::from_secs(2);
        }
        assert_eq!(lost, 2);
        let s = w.status();
        assert!(!s.capacity_released, "{s:?}");
        assert!(!w.events.iter().any(|e| e == "CapacityReleased"), "{:?}", w.events);
        assert_eq!(w.deployment.spec.replicas, Some(2));
        let scale = s.stable_scale.map(|s| (s.replicas, s.scaled_to, s.held));
        assert_eq!(
            scale,
            Some((4, 2, true)),
            "4 of its own, scaled to 2, our scale seen in place"
        );
    }

    #[test]
    fn a_count_set_by_someone_else_to_the_one_on_record_before_our_scale_lands_is_not_taken_for_a_change() {
        // Our scale to 2 is on record and lost; before it is made again,
        // someone else's write puts the Deployment at that same 2. Their write
        // changes nothing the rollout must give way to: no capacity is
        // released, and every exit still puts the Deployment's own 4 back.
        let mut w = World::new(taking(json!([{"weight": 50, "bakeSeconds": 600}, {"weight": 100}])), 4);
        let mut lost = false;
        for _ in 0..30 {
            let mut now_lost = false;
            w.step_losing(|p| now_lost = !lost && lose_scale(p));
            if now_lost {
                lost = true;
                w.deployment.spec.replicas = Some(2);
                w.deployment.metadata.managed_fields = Some(vec![replicas_owner("kubectl")]);
            }
            w.now += jiff::SignedDuration::from_secs(2);
        }
        assert!(lost);
        let s = w.status();
        assert!(!s.capacity_released, "{s:?}");
        assert!(!w.events.iter().any(|e| e == "CapacityReleased"), "{:?}", w.events);
        assert_eq!(s.stable_scale.as_ref().map(|s| s.replicas), Some(4), "{s:?}");
        w.run(700, 10);
        assert_eq!(w.status().phase, Phase::Succeeded, "{:?}", w.status());
        assert_eq!(w.deployment.spec.replicas, Some(4), "the exit puts its own 4 back");
    }

    proptest! {
        /// A crash anywhere (some actions done, the rest and the status write
        /// lost) ends where an uninterrupted rollout ends.
        #[test]
        fn a_crash_halfway_through_any_reconcile_changes_nothing_in_the_end(
            crash_at in 0usize..60, keep in 0usize..6, replicas in 1i32..12, failing in any::<bool>(),
            spike in any::<bool>(), taking in any::<bool>()
        ) {
            // A metric gate that spikes once, in the reconcile that crashes: a
            // one-off signal the next reconcile would not see again.
            let capacity = if taking { "FromDeployment" } else { "Added" };
            let spec = json!({"steps": [{"staging": {"replicas": 1}, "bakeSeconds": 10}, {"weight": 25, "bakeSeconds": 10}, {"weight": 100}],
                "metrics": [{"name": "errors", "address": "http://prometheus:9090", "query": "q", "threshold": 0.5}],
                "canaryCapacity": capacity});
            let mut clean = World::new(spec.clone(), replicas);
            let mut crashed = World::new(spec, replicas);
            if failing {
                clean.failing = Some("CreateContainerConfigError");
                crashed.failing = Some("CreateContainerConfigError");
            }
            for i in 0..80 {
                let value = if spike && i == crash_at { 1.0 } else { 0.0 };
                clean.metrics = reading(Ok(value));
                crashed.metrics = reading(Ok(value));
                clean.step();
                crashed.cluster_tick();
                let p = crashed.plan();
                if p.status_first(&crashed.status()) {
                    crashed.rollout.status = Some(p.status.clone());
                }
                let mut status = p.status.clone();
                if i == crash_at {
                    let n = keep.min(p.actions.len());
                    let mut lost = DistrolessRolloutStatus::default();
                    crashed.apply(&p.actions[..n], &mut lost);
                } else {
                    crashed.apply(&p.actions, &mut status);
                    crashed.rollout.status = Some(status);
                }
                clean.now += jiff::SignedDuration::from_secs(1);
                crashed.now += jiff::SignedDuration::from_secs(1);
            }
            let (a, b) = (clean.status(), crashed.status());
            prop_assert_eq!(a.phase, b.phase);
            prop_assert_eq!(clean.deployment_image(), crashed.deployment_image());
            prop_assert_eq!(crashed.deployment.spec.replicas, Some(replicas), "the Deployment's own replicas are back");
            prop_assert_eq!(&b.stable_scale, &None);
            prop_assert_eq!(clean.canaries.len(), crashed.canaries.len());
            prop_assert_eq!(
                clean.canaries.iter().map(|c| c.spec.replicas).collect::<Vec<_>>(),
                crashed.canaries.iter().map(|c| c.spec.replicas).collect::<Vec<_>>()
            );
        }

        /// Bakes never end early: a step lasts at least its bake after its pods are ready.
        #[test]
        fn steps_last_at_least_their_bake(bake in 1u32..120, replicas in 1i32..10) {
            let spec = json!({"steps": [{"weight": 50, "bakeSeconds": bake}, {"weight": 100}]});
            let mut w = World::new(spec, replicas);
            let mut ready_at = None;
            for _ in 0..400 {
                w.step();
                let s = w.status();
                if ready_at.is_none() {
                    ready_at = s.step_ready_at.clone();
                }
                if s.current_step == 1 || s.phase == Phase::Promoting || s.phase == Phase::Succeeded {
                    let ready = ready_at.expect("the step had ready pods").0;
                    prop_assert!(w.now.duration_since(ready).as_secs() >= i64::from(bake));
                    break;
                }
                w.now += jiff::SignedDuration::from_secs(1);
            }
        }
    }
}
