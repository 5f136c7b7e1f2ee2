//! The audit controller: when the view changes (or an exemption expires), it
//! plans each policy's status and the Events due ([`Auditor::plan`], no I/O
//! beyond reading the view), then, only while this replica leads, writes
//! them: statuses with server-side apply under our field manager, only when
//! they changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::FIELD_MANAGER;
use super::audit;
use super::events::{EventLog, PendingEvent};
use super::images::ImageKnowledge;
use super::status::{self, Finding};
use super::view::ClusterView;
use crate::api::{AuditSummary, DistrolessPolicy, DistrolessPolicyStatus};
use crate::metrics::Metrics;

/// What one pass decided.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Statuses that differ from what was last written.
    pub statuses: Vec<(String, DistrolessPolicyStatus)>,
    pub events: Vec<PendingEvent>,
    /// Every valid policy's summary (for the metrics).
    pub summaries: Vec<(String, AuditSummary)>,
    /// When the next exemption expires (the audit wakes then).
    pub next_expiry: Option<Timestamp>,
}

pub(crate) struct Auditor {
    client: kube::Client,
    recorder: Recorder,
    metrics: Option<Arc<Metrics>>,
    view: Arc<ClusterView>,
    leader: watch::Receiver<bool>,
    /// How long to wait for more changes before a pass.
    debounce: Duration,
    /// The statuses this replica wrote while leading.
    written: HashMap<String, DistrolessPolicyStatus>,
    events: EventLog,
    /// What the image audit learned, when the operator reads images.
    images: Option<Arc<ImageKnowledge>>,
}

impl Auditor {
    pub(crate) fn new(
        client: kube::Client,
        view: Arc<ClusterView>,
        leader: watch::Receiver<bool>,
        identity: &str,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.into()),
        };
        Auditor {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics: None,
            view,
            leader,
            debounce: Duration::from_millis(100),
            written: HashMap::new(),
            events: EventLog::default(),
            images: None,
        }
    }

    /// Applies the image rules with what the image audit learned.
    pub(crate) fn with_images(mut self, images: Arc<ImageKnowledge>) -> Self {
        self.images = Some(images);
        self
    }

    /// Counts passes and summaries in these metrics.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs until the task is cancelled.
    pub(crate) async fn run(mut self) {
        let mut next_expiry: Option<Timestamp> = None;
        loop {
            let wake = async {
                match next_expiry {
                    Some(t) => {
                        let wait = Timestamp::now().duration_until(t).unsigned_abs();
                        tokio::time::sleep(wait.min(Duration::from_secs(3600))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.view.changed.notified() => {}
                _ = self.leader.changed() => {
                    // A new term: what the last one wrote may have been overwritten.
                    self.written.clear();
                }
                _ = wake => {}
            }
            tokio::time::sleep(self.debounce).await;
            if !*self.leader.borrow() || !self.view.synced() {
                continue;
            }
            let plan = self.plan(Timestamp::now());
            next_expiry = plan.next_expiry;
            let ok = self.write(plan).await;
            if let Some(m) = &self.metrics {
                m.audit_pass(ok);
            }
        }
    }

    /// What this pass should write: statuses that changed, Events not yet
    /// recorded, and the summaries.
    pub(crate) fn plan(&mut self, now: Timestamp) -> Plan {
        let policies = self.view.policies();
        let (set, invalid) = status::compile_all(&policies);
        let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
        let events = &mut self.events;
        let facts = self.images.as_ref().map(|k| k.facts());
        // Summaries are computed under the view's lock without copying workloads.
        let mut found: HashMap<String, (AuditSummary, Vec<PendingEvent>)> =
            self.view.with_workloads(|workloads, namespaces| {
                set.policies()
                    .iter()
                    .map(|compiled| {
                        let (mut summary, violating) =
                            audit::summarize(compiled, workloads.values(), namespaces, now, facts.as_ref());
                        status::full_by_rule(&mut summary);
                        let pending = events.pending(&compiled.name, &violating);
                        (compiled.name.clone(), (summary, pending))
                    })
                    .collect()
            });
        let mut plan = Plan::default();
        for (name, policy) in &policies {
            let finding = match (set.get(name), invalid.get(name)) {
                (Some(compiled), _) => {
                    let (summary, pending) = found.remove(name).unwrap_or_default();
                    plan.events.extend(pending);
                    plan.summaries.push((name.clone(), summary.clone()));
                    plan.next_expiry = match (plan.next_expiry, status::expiry_instant(compiled, today)) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    Finding::Valid {
                        summary,
                        conflict: status::conflict_with(compiled, &set),
                    }
                }
                (None, Some(error)) => Finding::Invalid(error.clone()),
                (None, None) => continue,
            };
            let previous = self.written.get(name).or(policy.status.as_ref());
            let desired = status::desired_status(policy, finding, previous, now);
            if status::needs_write(previous, &desired) {
                plan.statuses.push((name.clone(), desired));
            }
        }
        self.written.retain(|name, _| policies.contains_key(name));
        let names: HashSet<&str> = policies.keys().map(String::as_str).collect();
        self.events.keep_policies(&names);
        plan
    }

    /// Writes the plan while this replica leads; whether every write succeeded.
    async fn write(&mut self, plan: Plan) -> bool {
        if let Some(m) = &self.metrics {
            for (name, summary) in &plan.summaries {
                m.audit_summary(name, summary);
            }
        }
        let mut ok = true;
        for e in plan.events {
            if !*self.leader.borrow() {
                return ok;
            }
            let event = Event {
                type_: EventType::Warning,
                reason: "DistrolessViolation".into(),
                note: Some(e.note.clone()),
                action: "Audit".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &e.reference).await {
                Ok(()) => {
                    info!(policy = %e.policy, kind = ?e.reference.kind, name = ?e.reference.name, "violation event recorded");
                    self.events.recorded(&e);
                }
                Err(err) => warn!(error = %err, "cannot record an event"),
            }
        }
        let api: Api<DistrolessPolicy> = Api::all(self.client.clone());
        for (name, status) in plan.statuses {
            if !*self.leader.borrow() {
                return ok;
            }
            let patch =
                json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessPolicy", "status": status});
            match api
                .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    debug!(policy = %name, "status written");
                    self.written.insert(name, status);
                }
                Err(e) => {
                    ok = false;
                    warn!(policy = %name, error = %e, "cannot write the policy status");
                }
            }
        }
        ok
    }
}
