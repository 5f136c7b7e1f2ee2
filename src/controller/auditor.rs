//! The audit controller: when the view changes (or an exemption expires), it
//! plans each policy's status and the Events due ([`Auditor::plan`], no I/O
//! beyond reading the view), then, only while this replica leads, writes
//! them: statuses with server-side apply under our field manager, only when
//! they changed.
//!
//! Not a kube-runtime `Controller`: its unit of work is one pass over the
//! whole [`ClusterView`] (every policy against every workload, the Events
//! planned across policies, PolicyReports per namespace), not one object.
//! The view is fed by kube-runtime watchers (`watch.rs`); a reconciler per
//! policy would read the same view once per policy and split the Event plan.
//! What this loop keeps is the wake-up (a change, an exemption's expiry, a
//! new term) and the debounce.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::events::Reporter;
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::FIELD_MANAGER;
use super::audit_summary;
use super::cluster_view::ClusterView;
use super::events::{EventLog, EventQueue, PendingEvent};
use super::images::ImageKnowledge;
use super::policy_reports;
use super::status::{self, Finding};
use crate::api::{AuditSummary, DistrolessPolicy, DistrolessPolicyStatus};
use crate::metrics::Metrics;

/// How often, at most, the migration counts and the PolicyReports are rebuilt.
const DERIVE_EVERY: Duration = Duration::from_secs(5);

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

/// What a pass derives once the statuses are written: it is larger to build
/// and to write, and no status should wait for it.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    /// Workloads per namespace and migration state (for the metrics).
    pub migration: Vec<(String, crate::inventory::Counts)>,
    /// The PolicyReports (per namespace) and the ClusterPolicyReport, when on.
    pub reports: Option<policy_reports::Desired>,
}

pub(crate) struct Auditor {
    client: kube::Client,
    /// Who the Events say reported them.
    reporter: Reporter,
    metrics: Option<Arc<Metrics>>,
    view: Arc<ClusterView>,
    leader: watch::Receiver<bool>,
    /// How long to wait for more changes before a pass.
    debounce: Duration,
    /// The statuses this replica wrote while leading.
    written: HashMap<String, DistrolessPolicyStatus>,
    events: Arc<parking_lot::Mutex<EventLog>>,
    /// The Event writer's queue (started by [`Auditor::run`]).
    queue: Option<EventQueue>,
    /// The writer asks for a pass: Events that did not fit are due.
    more_events: Arc<tokio::sync::Notify>,
    /// What the image audit learned, when the operator reads images.
    images: Option<Arc<ImageKnowledge>>,
    /// The name of the PolicyReports written, when they are.
    reports: Option<String>,
    /// Namespace (`""` for the ClusterPolicyReport) -> fingerprint of the report
    /// this term wrote (`None`: one of ours found in the cluster, content
    /// unknown); `None` until the first write of a term has listed them.
    written_reports: Option<HashMap<String, Option<policy_reports::Fingerprint>>>,
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
            reporter,
            client,
            metrics: None,
            view,
            leader,
            debounce: Duration::from_millis(100),
            written: HashMap::new(),
            events: Arc::default(),
            queue: None,
            more_events: Arc::default(),
            images: None,
            reports: None,
            written_reports: None,
        }
    }

    /// Writes the audit as PolicyReports too, named `name`.
    pub(crate) fn with_policy_reports(mut self, name: String) -> Self {
        self.reports = Some(name);
        self
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
        self.queue = Some(super::events::spawn_writer(
            self.client.clone(),
            self.reporter.clone(),
            self.leader.clone(),
            self.events.clone(),
            self.more_events.clone(),
        ));
        let mut next_expiry: Option<Timestamp> = None;
        // The derived work (migration counts, PolicyReports) trails the
        // statuses: at most once every DERIVE_EVERY, after the changes of that
        // time, so a stream of changes does not hold the statuses back.
        let mut derived_at: Option<std::time::Instant> = None;
        let mut derive_due = false;
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
            let images = self.images.clone();
            let learned = async move {
                match images {
                    Some(k) => k.updated.notified().await,
                    None => std::future::pending().await,
                }
            };
            let derive_at = derived_at.filter(|_| derive_due).map(|t| t + DERIVE_EVERY);
            let derive_timer = async move {
                match derive_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let mut only_derive = false;
            tokio::select! {
                _ = self.view.changed.notified() => {}
                _ = self.more_events.notified() => {}
                _ = learned => {}
                _ = self.leader.changed() => {
                    // A new term: what the last one wrote may have been overwritten.
                    self.written.clear();
                    self.written_reports = None;
                    derived_at = None;
                }
                _ = wake => {}
                () = derive_timer => only_derive = true,
            }
            if !only_derive {
                tokio::time::sleep(self.debounce).await;
            }
            if !*self.leader.borrow() {
                if let Some(m) = &self.metrics {
                    m.audit_skipped();
                }
                continue;
            }
            if !self.view.synced() {
                continue;
            }
            let mut ok = true;
            if !only_derive {
                let started = std::time::Instant::now();
                let plan = self.plan(Timestamp::now());
                if let Some(m) = &self.metrics {
                    m.audit_evaluation(started.elapsed().as_secs_f64());
                }
                next_expiry = plan.next_expiry;
                ok = self.write(plan).await;
                derive_due = true;
            }
            let waited = derived_at.is_none_or(|t| t.elapsed() >= DERIVE_EVERY);
            if derive_due && waited && *self.leader.borrow() {
                let derived = self.derive(Timestamp::now());
                ok &= self.write_derived(derived).await;
                derived_at = Some(std::time::Instant::now());
                derive_due = false;
            }
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
        let mut events = self.events.lock();
        let facts = self.images.as_ref().map(|k| k.facts());
        // Summaries are computed under the view's lock without copying workloads.
        let mut found: HashMap<String, (AuditSummary, Vec<PendingEvent>)> =
            self.view.with_workloads(|workloads, namespaces| {
                set.policies()
                    .iter()
                    .map(|compiled| {
                        let (mut summary, violating, _) = audit_summary::summarize(
                            compiled,
                            workloads.values().map(|o| &**o),
                            namespaces,
                            now,
                            facts.as_ref(),
                        );
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
        events.keep_policies(&names);
        plan
    }

    /// The migration counts and, when on, the PolicyReports, from the view as it is now.
    pub(crate) fn derive(&self, now: Timestamp) -> Derived {
        let (set, _) = status::compile_all(&self.view.policies());
        let facts = self.images.as_ref().map(|k| k.facts());
        let with_reports = self.reports.clone();
        let written = self.written_reports.as_ref();
        let already = |namespace: &str, print: &policy_reports::Fingerprint| {
            written.and_then(|w| w.get(namespace)) == Some(&Some(*print))
        };
        self.view.with_workloads(|workloads, namespaces| {
            let migration = crate::inventory::counts(
                workloads.values().filter(|o| !o.controlled).map(|o| &o.workload),
                &|n| namespaces.get(n),
                &set,
                facts.as_ref(),
                now,
            );
            let reports = with_reports.map(|report_name| {
                let outcomes: Vec<_> = set
                    .policies()
                    .iter()
                    .map(|compiled| {
                        let (_, violating, compliant) = audit_summary::summarize(
                            compiled,
                            workloads.values().map(|o| &**o),
                            namespaces,
                            now,
                            facts.as_ref(),
                        );
                        (compiled, violating, compliant)
                    })
                    .collect();
                let views: Vec<policy_reports::PolicyOutcome<'_>> = outcomes
                    .iter()
                    .map(|(c, violating, compliant)| policy_reports::PolicyOutcome {
                        policy: &c.name,
                        violating,
                        compliant,
                    })
                    .collect();
                policy_reports::build(&report_name, &views, now, already)
            });
            Derived { migration, reports }
        })
    }

    /// Keeps the migration metrics and writes the reports while this replica leads.
    async fn write_derived(&mut self, derived: Derived) -> bool {
        if let Some(m) = &self.metrics {
            m.migration(&derived.migration);
        }
        match derived.reports {
            Some(desired) if *self.leader.borrow() => self.write_reports(desired).await,
            _ => true,
        }
    }

    /// Writes the plan while this replica leads; whether every status write
    /// succeeded. The Events go to their writer's queue: a first pass over a
    /// large cluster has thousands, and no status should wait for them.
    async fn write(&mut self, plan: Plan) -> bool {
        if let Some(m) = &self.metrics {
            for (name, summary) in &plan.summaries {
                m.audit_summary(name, summary);
            }
        }
        let mut ok = true;
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
        if let Some(queue) = &self.queue {
            queue.send(plan.events);
        }
        ok
    }

    /// Applies the reports that changed and deletes ours that are no longer
    /// wanted (a namespace without audited workloads any more).
    async fn write_reports(&mut self, desired: policy_reports::Desired) -> bool {
        let name = self
            .reports
            .clone()
            .unwrap_or_else(|| policy_reports::REPORT_NAME.to_string());
        let gvk = |kind: &str| GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", kind);
        let report = ApiResource::from_gvk_with_plural(&gvk("PolicyReport"), "policyreports");
        let cluster_report = ApiResource::from_gvk_with_plural(&gvk("ClusterPolicyReport"), "clusterpolicyreports");
        let mut ok = true;
        if self.written_reports.is_none() {
            // First write of this term: whatever reports of ours exist are candidates for deletion.
            let selector = format!("{}={}", policy_reports::MANAGED_BY.0, policy_reports::MANAGED_BY.1);
            let all: Api<DynamicObject> = Api::all_with(self.client.clone(), &report);
            let ours = ListParams::default()
                .labels(&selector)
                .fields(&format!("metadata.name={name}"));
            match all.list_metadata(&ours).await {
                Ok(list) => {
                    let known = list
                        .items
                        .into_iter()
                        .filter_map(|r| r.metadata.namespace)
                        .map(|ns| (ns, None))
                        .collect();
                    self.written_reports = Some(known);
                }
                Err(e) => {
                    warn!(error = %e, "cannot list PolicyReports");
                    return false;
                }
            }
        }
        let mut written = self.written_reports.take().unwrap_or_default();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for (namespace, print) in &desired.namespaces {
            if !*self.leader.borrow() {
                break;
            }
            if written.get(namespace) == Some(&Some(*print)) {
                continue;
            }
            let Some(body) = desired.bodies.get(namespace) else {
                // Judged written when built, no longer known to be: the next pass builds it.
                ok = false;
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &report);
            match api.patch(&name, &params, &Patch::Apply(body)).await {
                Ok(_) => {
                    written.insert(namespace.clone(), Some(*print));
                }
                Err(e) => {
                    ok = false;
                    warn!(%namespace, error = %e, "cannot write the PolicyReport");
                }
            }
        }
        let stale: Vec<String> = written
            .keys()
            .filter(|ns| !ns.is_empty() && !desired.namespaces.contains_key(*ns))
            .cloned()
            .collect();
        for namespace in stale {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &namespace, &report);
            match api.delete(&name, &Default::default()).await {
                Ok(_) => {
                    written.remove(&namespace);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    written.remove(&namespace);
                }
                Err(e) => {
                    ok = false;
                    warn!(%namespace, error = %e, "cannot delete a stale PolicyReport");
                }
            }
        }
        let (print, cluster) = &desired.cluster;
        if written.get("") != Some(&Some(*print)) && *self.leader.borrow() {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &cluster_report);
            match api.patch(&name, &params, &Patch::Apply(cluster)).await {
                Ok(_) => {
                    written.insert(String::new(), Some(*print));
                }
                Err(e) => {
                    ok = false;
                    warn!(error = %e, "cannot write the ClusterPolicyReport");
                }
            }
        }
        self.written_reports = Some(written);
        ok
    }
}
