//! One `DistrolessViolation` Event per violating workload and set of
//! violations, not one per audit pass. What was recorded is remembered per
//! (policy, workload) and forgotten when the workload stops violating, so
//! the memory is bounded by the workloads that violate now.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::ObjectReference;

use super::audit::Violating;

/// (policy, workload uid).
type Subject = (String, String);

/// An Event not yet recorded: the violations of one workload under one policy.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PendingEvent {
    pub policy: String,
    pub reference: ObjectReference,
    pub note: String,
    subject: Subject,
    hash: u64,
}

/// What was recorded, per (policy, workload).
#[derive(Default, Debug)]
pub(crate) struct EventLog {
    recorded: HashMap<Subject, u64>,
}

/// The longest note an Event may carry (the API server allows 1 KiB).
const MAX_NOTE: usize = 1000;

impl EventLog {
    /// The Events this pass calls for: one per violating workload whose set
    /// of violations was not recorded yet. Forgets the workloads of `policy`
    /// that no longer violate.
    pub(crate) fn pending(&mut self, policy: &str, violating: &[Violating<'_>]) -> Vec<PendingEvent> {
        let live: HashSet<&str> = violating.iter().map(|v| v.object.uid.as_str()).collect();
        self.recorded
            .retain(|(p, uid), _| p != policy || live.contains(uid.as_str()));
        violating
            .iter()
            .filter_map(|v| {
                let lines: Vec<String> = v.violations.iter().map(ToString::to_string).collect();
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                lines.hash(&mut hasher);
                let hash = hasher.finish();
                let subject = (policy.to_string(), v.object.uid.clone());
                if self.recorded.get(&subject) == Some(&hash) {
                    return None;
                }
                let kind = v.object.workload.kind;
                let reference = ObjectReference {
                    api_version: Some(if kind.group().is_empty() {
                        "v1".into()
                    } else {
                        format!("{}/v1", kind.group())
                    }),
                    kind: Some(kind.to_string()),
                    name: Some(v.object.workload.name.clone()),
                    namespace: Some(v.object.namespace().to_string()),
                    uid: Some(v.object.uid.clone()),
                    ..ObjectReference::default()
                };
                Some(PendingEvent {
                    policy: policy.to_string(),
                    reference,
                    note: truncate(format!("policy {policy}: {}", lines.join("; "))),
                    subject,
                    hash,
                })
            })
            .collect()
    }

    /// The Event was written.
    pub(crate) fn recorded(&mut self, event: &PendingEvent) {
        self.recorded.insert(event.subject.clone(), event.hash);
    }

    /// Forgets every policy but these (deleted policies).
    pub(crate) fn keep_policies(&mut self, names: &HashSet<&str>) {
        self.recorded.retain(|(p, _), _| names.contains(p.as_str()));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.recorded.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.recorded.is_empty()
    }
}

fn truncate(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let cut = note
            .char_indices()
            .map(|(i, _)| i)
            .take_while(|&i| i <= MAX_NOTE - 3)
            .last()
            .unwrap_or(0);
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Action, RuleId};
    use crate::controller::audit::AuditObject;
    use crate::policy::{Violation, Workload};
    use serde_json::json;

    fn object(uid: &str) -> AuditObject {
        let value = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": uid, "namespace": "shop"}, "spec": {}});
        AuditObject {
            uid: uid.into(),
            workload: Workload::from_value(&value).unwrap().unwrap(),
            controlled: false,
        }
    }

    fn violation(rule: RuleId) -> Violation {
        Violation {
            rule,
            action: Action::Audit,
            container: Some("c".into()),
            path: "spec.template.spec.containers[0]".into(),
            message: "m".repeat(1200),
            policy: "p".into(),
        }
    }

    #[test]
    fn one_event_per_set_of_violations_and_the_log_forgets_what_stopped_violating() {
        let mut log = EventLog::default();
        let (a, b) = (object("a"), object("b"));
        let pass = vec![
            Violating {
                object: &a,
                violations: vec![violation(RuleId::ShellCommand)],
            },
            Violating {
                object: &b,
                violations: vec![violation(RuleId::RootUid)],
            },
        ];
        let events = log.pending("p", &pass);
        assert_eq!(events.len(), 2);
        for e in &events {
            assert!(e.note.len() <= MAX_NOTE && e.note.ends_with("..."), "{}", e.note.len());
            log.recorded(e);
        }
        assert!(log.pending("p", &pass).is_empty(), "nothing new");
        // b now breaks another rule: one new Event; a is fixed: forgotten.
        let pass = vec![Violating {
            object: &b,
            violations: vec![violation(RuleId::RootUid), violation(RuleId::ExecProbe)],
        }];
        let events = log.pending("p", &pass);
        assert_eq!(events.len(), 1);
        assert_eq!(log.len(), 1, "only b is remembered");
        log.keep_policies(&HashSet::new());
        assert!(log.is_empty());
    }
}
