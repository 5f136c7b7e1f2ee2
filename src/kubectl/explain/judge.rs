//! From what was gathered to an [`Explanation`]: the engine's verdict under
//! the policies in force and their exemptions, the containers not running
//! with a distroless hint, the Warning Events (the rules of our webhook's
//! refusals read back) and the rollout moving the workload. Pure: no I/O,
//! the time is given.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::Value;

use super::gather::Gathered;
use super::{
    ContainerFinding, EventFinding, Explanation, RolloutFinding, RuleFinding, refused_by, rules_in_refusal, split_fix,
};
use crate::api::DistrolessRollout;
use crate::kubectl::Error;
use crate::policy::{CompiledPolicy, PolicySet, Subject, Workload};

/// The most Warning Events shown (newest first, each message once).
const MAX_EVENTS: usize = 10;

pub(super) fn explain(g: &Gathered, now: jiff::Timestamp) -> Result<Explanation, Error> {
    let mut out = Explanation {
        object: format!("{}/{}", g.kind.to_ascii_lowercase(), g.name),
        namespace: g.namespace.clone(),
        ..Explanation::default()
    };
    match &g.policies {
        Ok(policies) => {
            let compiled: Vec<CompiledPolicy> = policies
                .iter()
                .filter_map(|p| CompiledPolicy::compile(p).ok())
                .collect();
            let set = PolicySet::from_compiled(compiled).unwrap_or_default();
            let (matched, rules) = rules(&g.object, &g.namespace, &g.namespace_labels, &set, now)?;
            out.exemptions = exemptions(&set, &matched, &g.namespace);
            out.policies = matched;
            out.rules = rules;
        }
        Err(e) => out.unavailable.push(format!("DistrolessPolicies: {e}")),
    }
    let mut involved = g.owners.clone();
    match &g.pods {
        Ok(pods) => {
            involved.extend(pods.iter().filter_map(|p| p.metadata.uid.clone()));
            out.containers = pods.iter().flat_map(containers_not_running).collect();
        }
        Err(e) => out.unavailable.push(format!("pods: {e}")),
    }
    match &g.events {
        Ok(events) => warning_events(events, &involved, &mut out),
        Err(e) => out.unavailable.push(format!("events: {e}")),
    }
    match &g.rollouts {
        Ok(rollouts) => out.rollouts = rollouts_moving(rollouts, &g.name),
        Err(e) => out.unavailable.push(format!("distrolessrollouts: {e}")),
    }
    Ok(out)
}

/// The engine's view: the policies that match and the rules broken under them.
pub(super) fn rules(
    object: &Value,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    policies: &PolicySet,
    now: jiff::Timestamp,
) -> Result<(Vec<String>, Vec<RuleFinding>), Error> {
    let workload = Workload::from_value(object)
        .map_err(|source| Error::NotAWorkload {
            what: "the object".into(),
            source,
        })?
        .ok_or_else(|| Error::Usage("not a workload with a pod template".into()))?;
    let subject = Subject::new(&workload, namespace, labels);
    let verdict = crate::policy::evaluate(policies, &subject, now);
    let rules = verdict
        .violations
        .iter()
        .map(|v| {
            let (cause, fix) = split_fix(&v.message);
            RuleFinding {
                rule: v.rule.to_string(),
                action: format!("{:?}", v.action),
                container: v.container.clone(),
                path: v.path.clone(),
                cause,
                fix,
                policy: v.policy.clone(),
            }
        })
        .collect();
    Ok((verdict.matched, rules))
}

/// The exemptions of the matching policies that cover this namespace, in words
/// (by the engine's own rule: namespaces by name, images by pattern).
fn exemptions(set: &PolicySet, matched: &[String], namespace: &str) -> Vec<String> {
    let every = |what: &str, items: Vec<String>| {
        if items.is_empty() {
            format!("every {what}")
        } else {
            items.join(", ")
        }
    };
    matched
        .iter()
        .filter_map(|name| set.get(name))
        .flat_map(|p| {
            p.exemptions.iter().filter(|e| e.covers_namespace(namespace)).map(|c| {
                let e = &c.exemption;
                format!(
                    "policy {}: {} for {}{}: {}",
                    p.name,
                    every("rule", e.rules.iter().map(ToString::to_string).collect()),
                    every("image", e.images.clone()),
                    e.expires.as_deref().map(|x| format!(" until {x}")).unwrap_or_default(),
                    e.reason
                )
            })
        })
        .collect()
}

/// A pod's containers waiting for a reason other than starting, with a hint.
fn containers_not_running(pod: &Pod) -> Vec<ContainerFinding> {
    let statuses = pod.status.iter().flat_map(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
    });
    statuses
        .filter_map(|c| {
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
            let reason = waiting
                .and_then(|w| w.reason.clone())
                .filter(|r| r != "ContainerCreating" && r != "PodInitializing")?;
            let mut message = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
            let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            if let Some(t) = last.and_then(|t| t.message.clone()).filter(|m| !m.is_empty()) {
                message = format!("{message}; last exit: {t}");
            }
            let hint = crate::controller::failure_hint(&reason, last.map(|t| t.exit_code), &message);
            Some(ContainerFinding {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                container: c.name.clone(),
                reason,
                message,
                hint,
            })
        })
        .collect()
}

/// Warning Events on the involved objects, newest first and each message
/// once; the rules of our webhook's refusals join the engine's.
fn warning_events(events: &[Event], involved: &BTreeSet<String>, out: &mut Explanation) {
    let mut events: Vec<&Event> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| e.involved_object.uid.as_ref().is_some_and(|u| involved.contains(u)))
        .collect();
    events.sort_by_key(|e| {
        std::cmp::Reverse(
            e.last_timestamp
                .clone()
                .map(|t| t.0)
                .or(e.event_time.clone().map(|t| t.0)),
        )
    });
    let mut seen = BTreeSet::new();
    for e in events {
        let message = e.message.clone().unwrap_or_default();
        if !seen.insert(message.clone()) || out.events.len() >= MAX_EVENTS {
            continue;
        }
        if refused_by(&message).as_deref() == Some("distroless-guard") {
            for r in rules_in_refusal(&message) {
                if !out.rules.iter().any(|x| x.rule == r.rule && x.container == r.container) {
                    out.rules.push(r);
                }
            }
        }
        out.events.push(EventFinding {
            object: format!(
                "{}/{}",
                e.involved_object
                    .kind
                    .as_deref()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                e.involved_object.name.as_deref().unwrap_or_default()
            ),
            reason: e.reason.clone().unwrap_or_default(),
            refused_by: refused_by(&message),
            count: e.count.unwrap_or(1),
            message,
        });
    }
}

/// The rollouts whose target is this Deployment, where each stands.
fn rollouts_moving(rollouts: &[DistrolessRollout], name: &str) -> Vec<RolloutFinding> {
    rollouts
        .iter()
        .filter(|r| r.spec.target_ref.name == name)
        .map(|r| {
            let s = r.status.clone().unwrap_or_default();
            RolloutFinding {
                name: r.metadata.name.clone().unwrap_or_default(),
                phase: s.phase.as_str().to_string(),
                step: s.current_step + 1,
                message: s.message.clone(),
                failure: s.failure.as_ref().map(|f| {
                    format!(
                        "{}{}: {}",
                        f.reason,
                        f.pod.as_deref().map(|p| format!(" in pod {p}")).unwrap_or_default(),
                        f.message
                    )
                }),
                hint: s.failure.map(|f| f.hint).unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DistrolessPolicy;
    use crate::policy::namespace_name_labels;
    use serde_json::json;

    fn web() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "d-1"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "app:1", "command": ["sh", "-c", "exec /app"]}]}}}})
    }

    fn gathered() -> Gathered {
        let policy: DistrolessPolicy = serde_json::from_value(json!({
            "apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessPolicy",
            "metadata": {"name": "strict"},
            "spec": {"exemptions": [{"rules": ["shell-command"], "images": ["legacy:*"], "namespaces": ["shop"],
                "reason": "migrating", "expires": "2999-01-01"},
                {"namespaces": ["sho*"], "reason": "a namespace name, never a pattern"}]}}))
        .unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "uid": "p-1", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-x", "uid": "rs-1"}]},
            "status": {"containerStatuses": [
                {"name": "app", "image": "app:1", "imageID": "", "ready": false, "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                 "lastState": {"terminated": {"exitCode": 127, "message": "exec: \"sh\": executable file not found"}}},
                {"name": "side", "image": "side:1", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ContainerCreating"}}}]}}))
        .unwrap();
        let event = |uid: &str, kind: &str, message: &str, type_: &str| -> Event {
            serde_json::from_value(
                json!({"metadata": {"name": "e"}, "type": type_, "reason": "FailedCreate",
                "message": message, "involvedObject": {"uid": uid, "kind": kind, "name": "web-x"}}),
            )
            .unwrap()
        };
        Gathered {
            kind: "Deployment",
            name: "web".into(),
            namespace: "shop".into(),
            object: web(),
            policies: Ok(vec![policy]),
            namespace_labels: namespace_name_labels("shop"),
            owners: ["d-1".to_string(), "rs-1".to_string()].into(),
            pods: Ok(vec![pod]),
            events: Ok(vec![
                event(
                    "rs-1",
                    "ReplicaSet",
                    "admission webhook \"validate.distrolessguard.dev\" denied the request: [image-has-shell] \
                     container \"app\": image app:1 has a shell (/bin/sh). Fix: build FROM distroless",
                    "Warning",
                ),
                event("other", "ReplicaSet", "not ours", "Warning"),
                event("rs-1", "ReplicaSet", "scaled", "Normal"),
            ]),
            rollouts: Err(Error::Forbidden {
                message: "distrolessrollouts".into(),
            }),
        }
    }

    #[test]
    fn the_engine_gives_rule_cause_and_fix_per_container() {
        let (matched, rules) = rules(
            &web(),
            "shop",
            &namespace_name_labels("shop"),
            &PolicySet::builtin_default(),
            jiff::Timestamp::now(),
        )
        .unwrap();
        assert!(!matched.is_empty());
        let shell = rules
            .iter()
            .find(|r| r.rule == "shell-command")
            .expect("the shell rule");
        assert_eq!(shell.container.as_deref(), Some("app"));
        assert!(!shell.fix.is_empty() && !shell.cause.contains("Fix:"), "{shell:?}");
    }

    #[test]
    fn a_gathered_workload_is_explained_from_policies_pods_events_and_what_could_not_be_read() {
        let x = explain(&gathered(), "2026-12-05T00:00:00Z".parse().unwrap()).unwrap();
        assert_eq!((x.object.as_str(), x.namespace.as_str()), ("deployment/web", "shop"));
        assert_eq!(x.policies, ["strict"]);
        // Only the exemption that names this namespace: the engine reads `sho*` as a name.
        assert_eq!(
            x.exemptions,
            ["policy strict: shell-command for legacy:* until 2999-01-01: migrating"]
        );
        let rules: Vec<&str> = x.rules.iter().map(|r| r.rule.as_str()).collect();
        assert!(rules.contains(&"shell-command"), "the engine's: {rules:?}");
        assert!(
            rules.contains(&"image-has-shell"),
            "read back from the refusal: {rules:?}"
        );
        // Only the waiting reason that is not a start, with the kubelet's hint for exit 127.
        assert_eq!(x.containers.len(), 1, "{:?}", x.containers);
        assert_eq!(x.containers[0].reason, "CrashLoopBackOff");
        assert!(
            x.containers[0].message.contains("last exit: exec"),
            "{:?}",
            x.containers[0]
        );
        assert!(x.containers[0].hint.contains("shell"), "{:?}", x.containers[0]);
        // Only the Warning on an involved object.
        assert_eq!(x.events.len(), 1, "{:?}", x.events);
        assert_eq!(x.events[0].refused_by.as_deref(), Some("distroless-guard"));
        assert_eq!(x.events[0].object, "replicaset/web-x");
        assert_eq!(x.unavailable, ["distrolessrollouts: forbidden: distrolessrollouts"]);
    }
}
