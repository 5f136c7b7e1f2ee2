//! `kubectl distroless rollout ...`: DistrolessRollout verbs with
//! kubectl-argo-rollouts' vocabulary, each a merge patch of the verb
//! annotations the controller reads (`api::rollout::verbs`). Annotations, not
//! spec fields: a GitOps tool that owns the spec does not revert them.
//!
//! - `promote`: end the current step's pause or bake
//!   (`distrolessguard.dev/promote: <step number>`); `--full`: go to 100% now
//!   (`distrolessguard.dev/promote: full`).
//! - `pause` / `resume`: `distrolessguard.dev/paused`.
//! - `abort`: roll back to the standard images now (`distrolessguard.dev/abort`).
//! - `retry`: a new attempt after a rollback (`distrolessguard.dev/retry` set
//!   to the next attempt; the other verbs cleared).
//! - `undo`: drop the rollout and keep the standard images: abort, wait for
//!   `RolledBack`, delete the rollout (its canary goes with it).
//!
//! A spec field of the same name (`spec.paused`, ...) set by hand or in Git
//! is cleared by the verb that undoes it, since either one asks.

use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::{Error, describe};
use crate::api::rollout::verbs;
use crate::api::{DistrolessRollout, Phase};

/// A verb that changes a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Promote { full: bool },
    Pause,
    Resume,
    Abort,
    Retry,
}

/// The merge patch for a verb on this rollout, or why it makes no sense now.
/// Why a verb cannot be sent to a rollout in its phase.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum VerbRefused {
    #[error("rollout {name} is {phase}: only `retry` starts it again")]
    Finished { name: String, phase: &'static str },
    #[error("rollout {name} is {phase}: retry starts a new attempt after a rollback")]
    RetryBeforeRollback { name: String, phase: &'static str },
}

pub(crate) fn patch(verb: Verb, r: &DistrolessRollout) -> Result<Value, VerbRefused> {
    let status = r.status.clone().unwrap_or_default();
    let name = r.metadata.name.clone().unwrap_or_default();
    let final_phase = status.phase.is_final();
    let mut annotations = serde_json::Map::new();
    let mut spec = serde_json::Map::new();
    let mut set = |key: &str, value: Value| {
        annotations.insert(key.into(), value);
    };
    match verb {
        _ if final_phase && verb != Verb::Retry => {
            return Err(VerbRefused::Finished {
                name,
                phase: status.phase.as_str(),
            });
        }
        Verb::Promote { full } => {
            let step = if full {
                "full".to_string()
            } else {
                (status.current_step + 1).to_string()
            };
            set(verbs::PROMOTE, json!(step));
            set(verbs::PAUSED, Value::Null);
            if r.spec.paused {
                spec.insert("paused".into(), json!(false));
            }
        }
        Verb::Pause => set(verbs::PAUSED, json!("true")),
        Verb::Resume => {
            set(verbs::PAUSED, Value::Null);
            if r.spec.paused {
                spec.insert("paused".into(), json!(false));
            }
        }
        Verb::Abort => set(verbs::ABORT, json!("true")),
        Verb::Retry if status.phase != Phase::RolledBack => {
            return Err(VerbRefused::RetryBeforeRollback {
                name,
                phase: status.phase.as_str(),
            });
        }
        Verb::Retry => {
            set(verbs::RETRY, json!((r.verbs().retry + 1).to_string()));
            for key in [verbs::ABORT, verbs::PROMOTE, verbs::PAUSED] {
                set(key, Value::Null);
            }
            let s = &r.spec;
            if s.abort || s.paused || s.promote_full || s.promote_step.is_some() {
                spec.extend([
                    ("abort".to_string(), json!(false)),
                    ("paused".to_string(), json!(false)),
                    ("promoteFull".to_string(), json!(false)),
                    ("promoteStep".to_string(), Value::Null),
                ]);
            }
        }
    }
    let mut body = json!({"metadata": {"annotations": annotations}});
    if !spec.is_empty() {
        body["spec"] = Value::Object(spec);
    }
    Ok(body)
}

fn api(client: &kube::Client, namespace: Option<&str>) -> Api<DistrolessRollout> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

pub(crate) async fn get(client: &kube::Client, namespace: &str, name: &str) -> Result<DistrolessRollout, Error> {
    api(client, Some(namespace))
        .get(name)
        .await
        .map_err(|e| describe(e, &format!("distrolessrollout {name:?}"), namespace))
}

/// Every rollout in `namespace` (all namespaces with `None`).
pub(crate) async fn list(client: &kube::Client, namespace: Option<&str>) -> Result<Vec<DistrolessRollout>, Error> {
    api(client, namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| describe(e, "distrolessrollouts", namespace.unwrap_or("(all)")))
}

/// Applies a verb; returns the rollout as patched.
pub(crate) async fn act(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    verb: Verb,
) -> Result<DistrolessRollout, Error> {
    let r = get(client, namespace, name).await?;
    let body = patch(verb, &r).map_err(|e| Error::Refused(e.to_string()))?;
    api(client, Some(namespace))
        .patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(|e| describe(e, &format!("distrolessrollout {name:?}"), namespace))
}

/// How `status` ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    RolledBack,
    Paused,
    /// Failed on images that came from Git: the Git change must be reverted.
    GitRevertNeeded,
    TimedOut,
}

/// Follows a rollout until it succeeds, rolls back, pauses or `timeout`
/// passes, calling `progress` with each new status line.
pub(crate) async fn wait(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    mut progress: impl FnMut(&DistrolessRollout),
) -> Result<Outcome, Error> {
    let first = get(client, namespace, name).await?;
    let api = api(client, Some(namespace));
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let mut last = String::new();
    let mut judge = |r: &DistrolessRollout| {
        let line = summary(r);
        if line != last {
            progress(r);
            last = line;
        }
        // A status older than the spec or the verbs (a promote or retry just
        // written) says nothing yet.
        let observed = r.status.as_ref().and_then(|s| s.observed_generation);
        let verbs_seen = r
            .status
            .as_ref()
            .is_some_and(|s| s.observed_verbs == r.verb_annotations());
        if observed < r.metadata.generation || !verbs_seen {
            return None;
        }
        match r.status.as_ref().map(|s| s.phase) {
            Some(Phase::Succeeded) => Some(Outcome::Succeeded),
            Some(Phase::RolledBack) => Some(Outcome::RolledBack),
            Some(Phase::GitRevertNeeded) => Some(Outcome::GitRevertNeeded),
            Some(Phase::Paused) => Some(Outcome::Paused),
            _ => None,
        }
    };
    if let Some(o) = judge(&first) {
        return Ok(o);
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return Ok(Outcome::TimedOut),
            next = stream.next() => match next {
                Some(Ok(r)) => {
                    if let Some(o) = judge(&r) {
                        return Ok(o);
                    }
                }
                Some(Err(_)) => {} // the watcher backs off and retries
                None => {
                    return Err(Error::WatchEnded {
                        what: format!("rollout {name}"),
                    });
                }
            }
        }
    }
}

/// `undo`: abort unless already rolled back, wait for the rollback, delete.
pub(crate) async fn undo(client: &kube::Client, namespace: &str, name: &str, timeout: Duration) -> Result<(), Error> {
    let r = get(client, namespace, name).await?;
    let phase = r.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if phase == Phase::Succeeded {
        return Err(Error::Refused(format!(
            "rollout {name} succeeded: the Deployment runs the distroless images; to go back, change its images \
             (or `kubectl rollout undo deployment/{}`), then delete the rollout",
            r.spec.target_ref.name
        )));
    }
    if phase == Phase::GitRevertNeeded {
        return Err(Error::Refused(format!(
            "rollout {name}: the Deployment got the distroless images from Git and they failed; revert that change \
             in Git (the rollout becomes RolledBack when the Deployment is back on the standard images), then undo"
        )));
    }
    if phase != Phase::RolledBack {
        act(client, namespace, name, Verb::Abort).await?;
        match wait(client, namespace, name, timeout, |_| {}).await? {
            Outcome::RolledBack => {}
            other => {
                return Err(Error::TimedOut(format!(
                    "rollout {name} did not roll back within {} s ({other:?}); it is left aborted",
                    timeout.as_secs()
                )));
            }
        }
    }
    api(client, Some(namespace))
        .delete(name, &DeleteParams::foreground())
        .await
        .map_err(|e| describe(e, &format!("distrolessrollout {name:?}"), namespace))?;
    // As `kubectl delete` does: return once it is gone (its canary first, foreground).
    let start = std::time::Instant::now();
    while api(client, Some(namespace))
        .get_opt(name)
        .await
        .map_err(|e| describe(e, &format!("distrolessrollout {name:?}"), namespace))?
        .is_some()
    {
        if start.elapsed() > timeout {
            return Err(Error::TimedOut(format!(
                "rollout {name} is still being deleted after {} s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// One line: phase, step, weights, message.
pub(crate) fn summary(r: &DistrolessRollout) -> String {
    let s = r.status.clone().unwrap_or_default();
    let steps = r.spec.steps.len();
    let mut line = format!(
        "{} step {}/{} weight {}% (effective {}%)",
        s.phase.as_str(),
        (s.current_step as usize + 1).min(steps),
        steps,
        s.desired_weight,
        s.effective_weight
    );
    if !s.message.is_empty() {
        line.push_str(": ");
        line.push_str(&s.message);
    }
    line
}

/// The detailed view of one rollout, for people.
pub(crate) fn describe_rollout(r: &DistrolessRollout) -> Vec<String> {
    let s = r.status.clone().unwrap_or_default();
    let mut out = vec![
        format!(
            "Name:       {}/{}",
            r.metadata.namespace.as_deref().unwrap_or_default(),
            r.metadata.name.as_deref().unwrap_or_default()
        ),
        format!("Deployment: {}", r.spec.target_ref.name),
        format!("Phase:      {}", s.phase.as_str()),
        format!(
            "Weight:     {}% desired, {}% effective",
            s.desired_weight, s.effective_weight
        ),
    ];
    for c in &r.spec.containers {
        let standard = s.standard_images.get(&c.name).or(c.standard_image.as_ref());
        out.push(format!(
            "Container:  {}: {} -> {}",
            c.name,
            standard.map_or("(not recorded yet)", String::as_str),
            c.image
        ));
    }
    out.push("Steps:".into());
    for (i, step) in r.spec.steps.iter().enumerate() {
        let what = match (&step.staging, step.weight) {
            (Some(st), _) => format!("staging, {} pod(s), no traffic", st.replicas),
            (None, Some(w)) if w >= 100 => "100%: promotion".to_string(),
            (None, Some(w)) => format!("{w}%"),
            (None, None) => "holds the previous step's traffic".to_string(),
        };
        let mark = if i as u32 == s.current_step && !s.phase.is_final() {
            "->"
        } else {
            "  "
        };
        let done = if (i as u32) < s.current_step || s.phase == Phase::Succeeded {
            " ✓"
        } else {
            ""
        };
        let pause = if step.pause { ", then pause" } else { "" };
        out.push(format!(
            "  {mark} {}: {what}, bake {} s{pause}{done}",
            i + 1,
            step.bake_seconds
        ));
    }
    if let Some(c) = &s.canary {
        out.push(format!(
            "Canary:     {} ({}/{} ready)",
            c.replica_set, c.ready, c.replicas
        ));
    }
    if let Some(t) = &s.stable_scale {
        out.push(format!(
            "Capacity:   the canary stands in for {} of the Deployment's {} replicas (put back on every exit)",
            t.replicas.saturating_sub(t.scaled_to),
            t.replicas
        ));
    } else if s.capacity_released {
        out.push("Capacity:   released: someone else set the Deployment's replicas; the canary adds its pods".into());
    }
    if let Some(f) = &s.failure {
        out.push(format!(
            "Failure:    {}{}{}: {}",
            f.reason,
            f.pod.as_deref().map(|p| format!(" in pod {p}")).unwrap_or_default(),
            f.container
                .as_deref()
                .map(|c| format!(", container {c}"))
                .unwrap_or_default(),
            f.message
        ));
        if !f.hint.is_empty() {
            out.push(format!("Hint:       {}", f.hint));
        }
    }
    if !s.message.is_empty() {
        out.push(format!("Message:    {}", s.message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(phase: &str, step: u32, retry: u32) -> DistrolessRollout {
        serde_json::from_value(json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessRollout",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"targetRef": {"name": "web"}, "containers": [{"name": "app", "image": "app:1-distroless"}], "retry": retry},
            "status": {"phase": phase, "currentStep": step}}))
        .unwrap()
    }

    /// The rollout after a verb's merge patch, as the API server would store it.
    fn after(verb: Verb, r: &DistrolessRollout) -> DistrolessRollout {
        let mut doc = serde_json::to_value(r).unwrap();
        json_patch::merge(&mut doc, &patch(verb, r).unwrap());
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn verbs_patch_only_annotations_and_the_controller_reads_them_as_asked() {
        let r = rollout("Paused", 2, 0);
        for verb in [Verb::Promote { full: false }, Verb::Pause, Verb::Resume, Verb::Abort] {
            assert!(
                patch(verb, &r).unwrap().get("spec").is_none(),
                "{verb:?} writes the spec"
            );
        }
        let promoted = after(Verb::Promote { full: false }, &r);
        assert_eq!(promoted.metadata.annotations.as_ref().unwrap()[verbs::PROMOTE], "3");
        assert_eq!(
            promoted.verbs().promote_step,
            Some(2),
            "step 3 as people count is index 2"
        );
        assert!(after(Verb::Promote { full: true }, &r).verbs().promote_full);
        let paused = after(Verb::Pause, &r);
        assert!(paused.verbs().paused);
        assert!(!after(Verb::Resume, &paused).verbs().paused);
        assert!(after(Verb::Abort, &r).verbs().abort);
        assert!(
            patch(Verb::Retry, &r)
                .unwrap_err()
                .to_string()
                .contains("after a rollback")
        );
    }

    #[test]
    fn retry_counts_on_from_the_spec_and_clears_the_other_verbs_wherever_they_were_set() {
        let mut back = rollout("RolledBack", 1, 3);
        back.spec.abort = true;
        let aborted = after(Verb::Abort, &rollout("Canary", 1, 3));
        back.metadata.annotations = aborted.metadata.annotations;
        let retried = after(Verb::Retry, &back);
        let v = retried.verbs();
        assert_eq!((v.retry, v.abort, v.paused, v.promote_step), (4, false, false, None));
        assert_eq!(after(Verb::Retry, &retried_back(retried)).verbs().retry, 5);
        assert!(
            patch(Verb::Pause, &back)
                .unwrap_err()
                .to_string()
                .contains("only `retry`")
        );
    }

    fn retried_back(mut r: DistrolessRollout) -> DistrolessRollout {
        r.status.as_mut().unwrap().phase = Phase::RolledBack;
        r
    }

    #[test]
    fn the_summary_and_description_say_where_the_rollout_is() {
        let r = rollout("Canary", 1, 0);
        assert!(summary(&r).starts_with("Canary step 2/4"), "{}", summary(&r));
        let text = describe_rollout(&r).join("\n");
        assert!(text.contains("-> 2: 10%") && text.contains("1: staging"), "{text}");
        assert!(!text.contains("Capacity:"), "{text}");
        let mut r = r;
        r.status.as_mut().unwrap().stable_scale = Some(crate::api::StableScale {
            replicas: 10,
            scaled_to: 9,
            held: true,
        });
        let text = describe_rollout(&r).join("\n");
        assert!(
            text.contains("stands in for 1 of the Deployment's 10 replicas"),
            "{text}"
        );
    }
}
