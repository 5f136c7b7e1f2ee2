//! Controllers: the policy audit controller and leader election. Watches keep
//! an in-memory view of policies, namespaces and workloads on every replica
//! (the webhook needs policies and namespace labels); only the leader writes
//! statuses and events.

pub mod audit;
pub mod certs;
pub mod leader;
pub mod pull_secrets;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod, ReplicationController};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::api::{AuditSummary, Condition, DistrolessPolicy, DistrolessPolicyStatus, RuleId};
use crate::policy::{CompiledPolicy, ObjectShape, PolicySet, WorkloadKind, namespace_name_labels};
use crate::webhook::NamespaceLabels;
use audit::AuditObject;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "distroless-guard";

type Key = (WorkloadKind, String, String);

/// What the watches have seen, shared by the webhook and the audit.
#[derive(Default)]
pub struct ClusterView {
    workloads: Mutex<HashMap<Key, AuditObject>>,
    namespaces: RwLock<HashMap<String, BTreeMap<String, String>>>,
    policies: Mutex<BTreeMap<String, DistrolessPolicy>>,
    /// Something changed: the audit should run again.
    pub changed: Notify,
    /// Watches that finished their first list.
    synced: AtomicUsize,
}

/// The watches that must finish their first list before the view is ready.
pub const WATCHES: usize = WorkloadKind::ALL.len() + 2;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl ClusterView {
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= WATCHES
    }

    pub fn workload_count(&self) -> usize {
        lock(&self.workloads).len()
    }

    pub fn policies(&self) -> BTreeMap<String, DistrolessPolicy> {
        lock(&self.policies).clone()
    }
}

impl NamespaceLabels for ClusterView {
    fn labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let known = match self.namespaces.read() {
            Ok(n) => n.get(namespace).cloned(),
            Err(p) => p.into_inner().get(namespace).cloned(),
        };
        known.unwrap_or_else(|| namespace_name_labels(namespace))
    }
}

impl crate::webhook::Owners for ClusterView {
    fn owner<'a>(
        &'a self,
        namespace: &'a str,
        owner: &'a crate::policy::Owner,
    ) -> futures_util::future::BoxFuture<'a, Option<crate::policy::Workload>> {
        Box::pin(async move {
            let key = (owner.kind, namespace.to_string(), owner.name.clone());
            // A controller creates children right after its owner appears; give
            // the watch a moment to deliver it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                if let Some(o) = lock(&self.workloads).get(&key).filter(|o| o.uid == owner.uid) {
                    return Some(o.workload.clone());
                }
                if tokio::time::Instant::now() >= deadline {
                    debug!(kind = %owner.kind, %namespace, name = %owner.name, "owner not in the view");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

pub fn api_resource(kind: WorkloadKind) -> ApiResource {
    match kind {
        WorkloadKind::Pod => ApiResource::erase::<Pod>(&()),
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        WorkloadKind::ReplicaSet => ApiResource::erase::<ReplicaSet>(&()),
        WorkloadKind::ReplicationController => ApiResource::erase::<ReplicationController>(&()),
        WorkloadKind::Job => ApiResource::erase::<Job>(&()),
        WorkloadKind::CronJob => ApiResource::erase::<CronJob>(&()),
    }
}

/// The audit's view of a watched object; `None` when it cannot be read (logged, skipped).
fn audit_object(kind: WorkloadKind, obj: &DynamicObject) -> Option<AuditObject> {
    let controlled = obj.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && WorkloadKind::ALL
                .iter()
                .any(|k| k.as_str() == o.kind && k.group() == group_of(&o.api_version))
    });
    let value = serde_json::to_value(obj).ok()?;
    match serde::Deserialize::deserialize(&value) {
        Ok(shape) => {
            let shape: ObjectShape = shape;
            let mut workload = shape.into_workload(kind);
            workload.namespace = obj.namespace();
            Some(AuditObject {
                uid: obj.uid().unwrap_or_default(),
                workload,
                controlled,
            })
        }
        Err(e) => {
            warn!(%kind, name = %obj.name_any(), error = %e, "skipping an object the engine cannot read");
            None
        }
    }
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Starts every watch; they run until the process ends, re-watching on errors.
pub fn start_watches(
    client: kube::Client,
    view: Arc<ClusterView>,
    policy_sink: impl Fn(PolicySet) + Send + Sync + 'static,
) {
    for kind in WorkloadKind::ALL {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(kind));
        let view = view.clone();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            let mut relist: Option<HashMap<Key, AuditObject>> = None;
            let mut counted = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => relist = Some(HashMap::new()),
                    Ok(watcher::Event::InitApply(obj)) => {
                        if let (Some(buf), Some(o)) = (relist.as_mut(), audit_object(kind, &obj)) {
                            buf.insert((kind, obj.namespace().unwrap_or_default(), obj.name_any()), o);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        let fresh = relist.take().unwrap_or_default();
                        let mut all = lock(&view.workloads);
                        all.retain(|k, _| k.0 != kind);
                        all.extend(fresh);
                        drop(all);
                        if !counted {
                            counted = true;
                            view.synced.fetch_add(1, Ordering::AcqRel);
                        }
                        view.changed.notify_one();
                    }
                    Ok(watcher::Event::Apply(obj)) => {
                        let key = (kind, obj.namespace().unwrap_or_default(), obj.name_any());
                        if let Some(o) = audit_object(kind, &obj) {
                            lock(&view.workloads).insert(key, o);
                            view.changed.notify_one();
                        }
                    }
                    Ok(watcher::Event::Delete(obj)) => {
                        lock(&view.workloads).remove(&(kind, obj.namespace().unwrap_or_default(), obj.name_any()));
                        view.changed.notify_one();
                    }
                    Err(e) => {
                        warn!(%kind, error = %e, "watch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_view = view.clone();
    tokio::spawn(async move {
        let mut stream = watcher(namespaces, watcher::Config::default()).boxed();
        let mut counted = false;
        while let Some(event) = stream.next().await {
            let update = |ns: &Namespace, view: &ClusterView| {
                let mut labels = namespace_name_labels(&ns.name_any());
                labels.extend(ns.labels().clone());
                if let Ok(mut all) = view.namespaces.write() {
                    all.insert(ns.name_any(), labels);
                }
            };
            match event {
                Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) => update(&ns, &ns_view),
                Ok(watcher::Event::Delete(ns)) => {
                    if let Ok(mut all) = ns_view.namespaces.write() {
                        all.remove(&ns.name_any());
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if !counted {
                        counted = true;
                        ns_view.synced.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Ok(watcher::Event::Init) => {}
                Err(e) => {
                    warn!(error = %e, "namespace watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            ns_view.changed.notify_one();
        }
    });

    let policies: Api<DistrolessPolicy> = Api::all(client);
    tokio::spawn(async move {
        let mut stream = watcher(policies, watcher::Config::default()).boxed();
        let mut relist: Option<BTreeMap<String, DistrolessPolicy>> = None;
        let mut counted = false;
        while let Some(event) = stream.next().await {
            let mut publish = false;
            match event {
                Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(p)) => {
                    if let Some(buf) = relist.as_mut() {
                        buf.insert(p.name_any(), p);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    *lock(&view.policies) = relist.take().unwrap_or_default();
                    if !counted {
                        counted = true;
                        view.synced.fetch_add(1, Ordering::AcqRel);
                    }
                    publish = true;
                }
                Ok(watcher::Event::Apply(p)) => {
                    lock(&view.policies).insert(p.name_any(), p);
                    publish = true;
                }
                Ok(watcher::Event::Delete(p)) => {
                    lock(&view.policies).remove(&p.name_any());
                    publish = true;
                }
                Err(e) => {
                    warn!(error = %e, "policy watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            if publish {
                let (set, _) = compile_all(&lock(&view.policies));
                policy_sink(set);
                view.changed.notify_one();
            }
        }
    });
}

/// Compiles every policy on its own, so one invalid policy never disables the others.
pub fn compile_all(policies: &BTreeMap<String, DistrolessPolicy>) -> (PolicySet, BTreeMap<String, String>) {
    let mut valid = Vec::new();
    let mut invalid = BTreeMap::new();
    for (name, p) in policies {
        match CompiledPolicy::compile(p) {
            Ok(c) => valid.push(c),
            Err(e) => {
                invalid.insert(name.clone(), e.to_string());
            }
        }
    }
    (PolicySet::from_compiled(valid).unwrap_or_default(), invalid)
}

/// Another valid policy with the same `match` and a different `nonRootUser`.
fn conflict_with(policy: &CompiledPolicy, set: &PolicySet) -> Option<String> {
    set.policies()
        .iter()
        .find(|o| o.name != policy.name && o.spec.match_ == policy.spec.match_ && o.spec.non_root_user != policy.spec.non_root_user)
        .map(|o| {
            let winner = if o.name < policy.name { &o.name } else { &policy.name };
            format!(
                "policy {:?} matches the same objects with nonRootUser {}; mutation uses the value of {winner:?} (first by name)",
                o.name, o.spec.non_root_user
            )
        })
}

/// When the next exemption of a policy stops applying: midnight UTC after its
/// last day. The audit wakes then, so an expired exemption stops on time.
pub fn expiry_instant(policy: &CompiledPolicy, today: jiff::civil::Date) -> Option<Timestamp> {
    let last_day = policy.next_expiry(today)?;
    let day_after = last_day.tomorrow().ok()?;
    day_after.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// The full rule map, so a rule that stops being broken is written as 0.
fn full_by_rule(summary: &mut AuditSummary) {
    for r in RuleId::ALL {
        summary.by_rule.entry(r.to_string()).or_insert(0);
    }
}

/// Told after each audit pass whether every write succeeded.
pub type PassHook = Box<dyn Fn(bool) + Send + Sync>;

/// Told each policy's summary.
pub type SummaryHook = Box<dyn Fn(&str, &AuditSummary) + Send + Sync>;

/// The audit loop's context.
pub struct Auditor {
    pub client: kube::Client,
    pub view: Arc<ClusterView>,
    pub leader: watch::Receiver<bool>,
    pub recorder: Recorder,
    /// How long to wait for more changes before evaluating.
    pub debounce: Duration,
    /// Called after every pass with whether every write succeeded (metrics).
    pub on_pass: Option<PassHook>,
    /// Called with each policy's summary (metrics gauges).
    pub on_summary: Option<SummaryHook>,
}

impl Auditor {
    pub fn new(client: kube::Client, view: Arc<ClusterView>, leader: watch::Receiver<bool>, identity: &str) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.into()),
        };
        Auditor {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            view,
            leader,
            debounce: Duration::from_millis(100),
            on_pass: None,
            on_summary: None,
        }
    }

    /// Runs until the process ends: evaluate when something changed (or an
    /// exemption expires), write what changed while leading.
    pub async fn run(mut self) {
        let mut written: HashMap<String, DistrolessPolicyStatus> = HashMap::new();
        let mut emitted: HashSet<(String, String, u64)> = HashSet::new();
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
                _ = self.leader.changed() => { written.clear(); }
                _ = wake => {}
            }
            tokio::time::sleep(self.debounce).await;
            if !*self.leader.borrow() || !self.view.synced() {
                continue;
            }
            let (expiry, ok) = self.evaluate(&mut written, &mut emitted).await;
            next_expiry = expiry;
            if let Some(f) = &self.on_pass {
                f(ok);
            }
        }
    }

    /// One pass over every policy; returns when the next exemption expires,
    /// and whether every write succeeded.
    pub async fn evaluate(
        &self,
        written: &mut HashMap<String, DistrolessPolicyStatus>,
        emitted: &mut HashSet<(String, String, u64)>,
    ) -> (Option<Timestamp>, bool) {
        let mut ok = true;
        let now = Timestamp::now();
        let policies = self.view.policies();
        let (set, invalid) = compile_all(&policies);
        // Summaries are computed under the lock (nothing is copied but what is
        // new to report); writes happen after it is released.
        let mut results: HashMap<String, (AuditSummary, Vec<PendingEvent>)> = {
            let workloads = lock(&self.view.workloads);
            let namespaces = match self.view.namespaces.read() {
                Ok(n) => n,
                Err(p) => p.into_inner(),
            };
            set.policies()
                .iter()
                .map(|compiled| {
                    let (mut summary, violating) = audit::summarize(compiled, workloads.values(), &namespaces, now);
                    full_by_rule(&mut summary);
                    let pending = violating
                        .iter()
                        .filter_map(|v| PendingEvent::new(&compiled.name, v, emitted))
                        .collect();
                    (compiled.name.clone(), (summary, pending))
                })
                .collect()
        };
        let api: Api<DistrolessPolicy> = Api::all(self.client.clone());
        let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
        let mut next_expiry = None;
        for (name, policy) in &policies {
            let generation = policy.meta().generation;
            let previous = written.get(name).or(policy.status.as_ref());
            let (condition, audit) = match (set.get(name), invalid.get(name)) {
                (Some(compiled), _) => {
                    let (summary, pending) = results.remove(name).unwrap_or_default();
                    if let Some(f) = &self.on_summary {
                        f(name, &summary);
                    }
                    self.emit_events(name, pending, emitted).await;
                    next_expiry = match (next_expiry, expiry_instant(compiled, today)) {
                        (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                        (a, b) => a.or(b),
                    };
                    let (reason, message) = match conflict_with(compiled, &set) {
                        Some(m) => ("Conflict", m),
                        None => (
                            "InForce",
                            "the policy is valid and applied by admission and audit".to_string(),
                        ),
                    };
                    (("True", reason, message), Some(summary))
                }
                (None, Some(error)) => (("False", "Invalid", error.clone()), None),
                (None, None) => continue,
            };
            let (status_value, reason, message) = condition;
            let transition = previous
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .filter(|c| c.status == status_value && c.reason == reason)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            let status = DistrolessPolicyStatus {
                observed_generation: generation,
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status: status_value.into(),
                    reason: reason.into(),
                    message,
                    observed_generation: generation,
                    last_transition_time: transition,
                }],
                audit,
            };
            let same = previous.is_some_and(|p| {
                let mut a = p.clone();
                let mut b = status.clone();
                for s in [&mut a, &mut b] {
                    if let Some(audit) = s.audit.as_mut() {
                        audit.last_evaluated.clear();
                    }
                }
                a == b
            });
            if same {
                continue;
            }
            if !*self.leader.borrow() {
                return (next_expiry, ok);
            }
            let patch =
                json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessPolicy", "status": status});
            match api
                .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    debug!(policy = %name, "status written");
                    written.insert(name.clone(), status);
                }
                Err(e) => {
                    ok = false;
                    warn!(policy = %name, error = %e, "cannot write the policy status");
                }
            }
        }
        written.retain(|name, _| policies.contains_key(name));
        (next_expiry, ok)
    }

    /// One Event per violating workload and set of violations (not per pass).
    async fn emit_events(
        &self,
        policy: &str,
        pending: Vec<PendingEvent>,
        emitted: &mut HashSet<(String, String, u64)>,
    ) {
        for e in pending {
            if !*self.leader.borrow() {
                return;
            }
            let event = Event {
                type_: EventType::Warning,
                reason: "DistrolessViolation".into(),
                note: Some(format!("policy {policy}: {}", e.note)),
                action: "Audit".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &e.reference).await {
                Ok(()) => {
                    info!(policy, kind = ?e.reference.kind, name = ?e.reference.name, "violation event recorded");
                    emitted.insert(e.key);
                }
                Err(err) => warn!(error = %err, "cannot record an event"),
            }
        }
    }
}

/// An Event not yet recorded: the violations of one workload under one policy.
struct PendingEvent {
    key: (String, String, u64),
    reference: ObjectReference,
    note: String,
}

impl PendingEvent {
    /// `None` when this very set of violations was already recorded.
    fn new(policy: &str, v: &audit::Violating<'_>, emitted: &HashSet<(String, String, u64)>) -> Option<Self> {
        let lines: Vec<String> = v
            .violations
            .iter()
            .map(crate::webhook::admission::violation_line)
            .collect();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        lines.hash(&mut hasher);
        let key = (policy.to_string(), v.object.uid.clone(), hasher.finish());
        if emitted.contains(&key) {
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
        let mut note = lines.join("; ");
        if note.len() > 1000 {
            let cut = note
                .char_indices()
                .map(|(i, _)| i)
                .take_while(|&i| i <= 997)
                .last()
                .unwrap_or(0);
            note.truncate(cut);
            note.push_str("...");
        }
        Some(PendingEvent { key, reference, note })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_wakes_at_midnight_after_the_last_exempt_day() {
        let policy: DistrolessPolicy = serde_yaml::from_str(
            "apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: p}\nspec:\n  exemptions:\n  - {reason: a, expires: '2027-03-31'}\n  - {reason: b, expires: '2026-12-01'}\n  - {reason: c}\n",
        )
        .unwrap();
        let compiled = CompiledPolicy::compile(&policy).unwrap();
        let today: jiff::civil::Date = "2026-11-22".parse().unwrap();
        let at = expiry_instant(&compiled, today).unwrap();
        assert_eq!(
            at,
            "2026-12-02T00:00:00Z".parse::<Timestamp>().unwrap(),
            "the earliest expiry first"
        );
        let later: jiff::civil::Date = "2026-12-02".parse().unwrap();
        assert_eq!(
            expiry_instant(&compiled, later).unwrap(),
            "2027-04-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        let after_all: jiff::civil::Date = "2027-04-01".parse().unwrap();
        assert_eq!(expiry_instant(&compiled, after_all), None);
    }
}
