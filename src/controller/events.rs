//! One `DistrolessViolation` Event per violating workload and set of
//! violations, not one per audit pass. What was recorded (or handed to the
//! writer) is remembered per (policy, workload) and forgotten when the
//! workload stops violating, so the memory is bounded by the workloads that
//! violate now.
//!
//! The Events are written by their own task ([`spawn_writer`]) from a
//! bounded queue, so a first pass over a large cluster (25,000 violating
//! workloads at 50,000 pods) never holds the audit's statuses back, and the
//! API server gets them one at a time. What does not fit in the queue is left
//! for a later pass, which the writer asks for once the queue is empty.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use k8s_openapi::api::core::v1::ObjectReference;

use super::audit_summary::Violating;

/// (policy, workload uid; for a pod spec inside a custom resource, uid#path).
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

/// What was done with an Event of this set of violations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    /// In the writer's queue.
    Queued,
    Recorded,
}

/// What was recorded or queued, per (policy, workload): the hash of its
/// set of violations.
#[derive(Default, Debug)]
pub(crate) struct EventLog {
    recorded: HashMap<Subject, (u64, Written)>,
}

/// The longest note an Event may carry (the API server allows 1 KiB).
const MAX_NOTE: usize = 1000;

impl EventLog {
    /// The Events this pass calls for: one per violating workload whose set
    /// of violations was not recorded yet. Forgets the workloads of `policy`
    /// that no longer violate.
    pub(crate) fn pending(&mut self, policy: &str, violating: &[Violating<'_>]) -> Vec<PendingEvent> {
        let live: HashSet<std::borrow::Cow<'_, str>> = violating.iter().map(|v| v.object.identity()).collect();
        self.recorded
            .retain(|(p, id), _| p != policy || live.contains(id.as_str()));
        violating
            .iter()
            .filter_map(|v| {
                let lines: Vec<String> = v.violations.iter().map(ToString::to_string).collect();
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                lines.hash(&mut hasher);
                let hash = hasher.finish();
                let subject = (policy.to_string(), v.object.identity().into_owned());
                if self.recorded.get(&subject).is_some_and(|(h, _)| *h == hash) {
                    return None;
                }
                let (api_version, kind) = v.object.api_version_kind();
                let reference = ObjectReference {
                    api_version: Some(api_version.into_owned()),
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

    /// The Event is in the writer's queue: not to be asked for again.
    pub(crate) fn queued(&mut self, event: &PendingEvent) {
        self.recorded
            .insert(event.subject.clone(), (event.hash, Written::Queued));
    }

    /// The Event was written.
    pub(crate) fn recorded(&mut self, event: &PendingEvent) {
        self.recorded
            .insert(event.subject.clone(), (event.hash, Written::Recorded));
    }

    /// The Event could not be written (or queued): a later pass asks again.
    pub(crate) fn failed(&mut self, event: &PendingEvent) {
        if self.recorded.get(&event.subject) == Some(&(event.hash, Written::Queued)) {
            self.recorded.remove(&event.subject);
        }
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

/// Events waiting for the writer, at most.
pub(crate) const QUEUE: usize = 512;

/// The writer's side of the queue, for the auditor.
pub(crate) struct EventQueue {
    tx: mpsc::Sender<PendingEvent>,
    log: Arc<Mutex<EventLog>>,
    /// Set when an Event did not fit; the writer then asks for a pass.
    overflowed: Arc<std::sync::atomic::AtomicBool>,
}

impl EventQueue {
    /// Queues what fits; the rest waits for a later pass.
    pub(crate) fn send(&self, events: Vec<PendingEvent>) {
        let mut log = self.log.lock();
        for e in events {
            log.queued(&e);
            if let Err(mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e)) = self.tx.try_send(e)
            {
                log.failed(&e);
                self.overflowed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Starts the task that writes the queued Events while this replica leads,
/// one at a time. `more` is notified when the queue ran empty after some did
/// not fit.
pub(crate) fn spawn_writer(
    client: kube::Client,
    reporter: Reporter,
    leader: watch::Receiver<bool>,
    log: Arc<Mutex<EventLog>>,
    more: Arc<Notify>,
) -> EventQueue {
    let (tx, mut rx) = mpsc::channel::<PendingEvent>(QUEUE);
    let overflowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let queue = EventQueue {
        tx,
        log: log.clone(),
        overflowed: overflowed.clone(),
    };
    tokio::spawn(async move {
        let mut recorded = 0usize;
        while let Some(e) = rx.recv().await {
            if !*leader.borrow() {
                log.lock().failed(&e);
                continue;
            }
            let event = Event {
                type_: EventType::Warning,
                reason: "DistrolessViolation".into(),
                note: Some(e.note.clone()),
                action: "Audit".into(),
                secondary: None,
            };
            // A Recorder per Event: kube's keeps every Event it published for
            // six minutes to count repeats as a series, and scans them all on
            // each publish. Ours never repeat (the log records each set of
            // violations once), and at 5,000 violating workloads that cache
            // held 14.6 MiB (a heap profile of `cargo bench --bench audit`)
            // and made a first pass quadratic.
            let recorder = Recorder::new(client.clone(), reporter.clone());
            match recorder.publish(&event, &e.reference).await {
                Ok(()) => {
                    debug!(policy = %e.policy, kind = ?e.reference.kind, name = ?e.reference.name, "violation event recorded");
                    log.lock().recorded(&e);
                    recorded += 1;
                }
                Err(err) => {
                    warn!(error = %err, "cannot record an event");
                    log.lock().failed(&e);
                }
            }
            if rx.is_empty() {
                if recorded > 0 {
                    info!(events = recorded, "violation events recorded");
                    recorded = 0;
                }
                if overflowed.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    more.notify_one();
                }
            }
        }
    });
    queue
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
    use crate::controller::audit_summary::AuditObject;
    use crate::policy::{Violation, Workload};
    use serde_json::json;

    fn object(uid: &str) -> AuditObject {
        let value = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": uid, "namespace": "shop"}, "spec": {}});
        AuditObject {
            uid: uid.into(),
            workload: Workload::from_value(&value).unwrap().unwrap(),
            controlled: false,
            embedded: None,
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

    #[test]
    fn queued_events_are_not_asked_for_again_and_those_that_did_not_fit_are() {
        let log = Arc::new(Mutex::new(EventLog::default()));
        let (tx, mut rx) = mpsc::channel(1);
        let queue = EventQueue {
            tx,
            log: log.clone(),
            overflowed: Arc::default(),
        };
        let (a, b, c) = (object("a"), object("b"), object("c"));
        let pass: Vec<Violating<'_>> = [&a, &b, &c]
            .into_iter()
            .map(|object| Violating {
                object,
                violations: vec![violation(RuleId::ShellCommand)],
            })
            .collect();
        let events = log.lock().pending("p", &pass);
        queue.send(events);
        assert!(queue.overflowed.load(std::sync::atomic::Ordering::Relaxed));
        // One fit; the other two are asked for again, the queued one is not.
        let again = log.lock().pending("p", &pass);
        let uids: Vec<_> = again.iter().map(|e| e.reference.uid.clone().unwrap()).collect();
        assert_eq!(uids, ["b", "c"]);
        let sent = rx.try_recv().unwrap();
        assert_eq!(sent.reference.uid.as_deref(), Some("a"));
        // A write that failed is asked for again; a written one is not.
        log.lock().failed(&sent);
        assert_eq!(log.lock().pending("p", &pass[..1]).len(), 1);
        log.lock().recorded(&sent);
        assert!(log.lock().pending("p", &pass[..1]).is_empty());
    }
}
