//! Prometheus metrics: admission, the audit, leader election and rollouts.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{Action, RuleId};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub endpoint: String,
    /// allowed, denied, warned, or error.
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    pub endpoint: String,
    pub rule: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// ok or error (certificate reloads: reloaded or rejected).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    pub policy: String,
    /// matched, compliant or violating.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RolloutLabels {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MigrationLabels {
    pub(crate) namespace: String,
    /// done, spec_blocked, not_distroless or unverified.
    pub(crate) state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PolicyLabels {
    pub(crate) policy: String,
    pub(crate) action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: String,
}

/// Admission and controller metrics, registered once and shared.
pub struct Metrics {
    /// Workloads per policy and state, from the last audit.
    pub audit_workloads: Family<AuditLabels, Gauge>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Audit passes (reconciles) by result.
    pub audit_passes: Family<ResultLabels, Counter>,
    /// Audit wake-ups that wrote nothing because another replica leads.
    audit_skipped: Counter,
    /// Reads of the leader Lease, by what this replica found.
    lease_checks: Family<ResultLabels, Counter>,
    /// 1 for each DistrolessPolicy this replica enforces.
    policies: Family<PolicyLabels, Gauge>,
    pub reviews: Family<ReviewLabels, Counter>,
    pub violations: Family<ViolationLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    /// 1 for each rollout's current phase, 0 for its others.
    rollout_phases: Family<RolloutLabels, Gauge>,
    rollbacks: Family<ReasonLabels, Counter>,
    detect: Histogram,
    /// Workloads per namespace and migration state, from the last audit.
    migration: Family<MigrationLabels, Gauge>,
    /// How long an audit pass takes to evaluate everything (without its writes).
    audit_evaluation: Histogram,
    /// Passes of the audit's image reader, and the images each read.
    image_audit_passes: Counter,
    image_audit_reads: Counter,
    /// Reads of serving certificate files that changed on disk: reloaded, or
    /// rejected (the previous certificate kept, the files read again next check).
    tls_reloads: Family<ResultLabels, Counter>,
    /// The admission series, resolved once (see [`ENDPOINTS`], [`VERDICTS`]).
    admission: AdmissionSeries,
    registry: Registry,
}

/// The webhook's endpoints and verdicts: their series exist from the start
/// (at 0) and are recorded without hashing labels or locking the family.
pub(crate) const ENDPOINTS: [&str; 2] = ["validate", "mutate"];
pub(crate) const VERDICTS: [&str; 4] = ["allowed", "warned", "denied", "error"];

/// The actions a violation can carry, in the order of [`AdmissionSeries::violations`].
const ACTIONS: [Action; 3] = [Action::Audit, Action::Warn, Action::Deny];

struct AdmissionSeries {
    reviews: [[Counter; VERDICTS.len()]; ENDPOINTS.len()],
    latency: [Histogram; ENDPOINTS.len()],
    /// Violations by endpoint, rule and action: each series is taken from the
    /// family the first time it counts (so none is shown before it happens)
    /// and then counted without building its labels again.
    violations: [[[OnceLock<Counter>; ACTIONS.len()]; RuleId::ALL.len()]; ENDPOINTS.len()],
}

impl AdmissionSeries {
    fn resolve(
        reviews: &Family<ReviewLabels, Counter>,
        latency: &Family<EndpointLabels, Histogram, fn() -> Histogram>,
    ) -> Self {
        AdmissionSeries {
            reviews: ENDPOINTS.map(|endpoint| {
                VERDICTS.map(|verdict| {
                    reviews
                        .get_or_create(&ReviewLabels {
                            endpoint: endpoint.into(),
                            verdict: verdict.into(),
                        })
                        .clone()
                })
            }),
            latency: ENDPOINTS.map(|endpoint| {
                latency
                    .get_or_create(&EndpointLabels {
                        endpoint: endpoint.into(),
                    })
                    .clone()
            }),
            violations: Default::default(),
        }
    }
}

fn latency_histogram() -> Histogram {
    // 25 us .. about 0.8 s.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("distroless_guard");
        let reviews = Family::<ReviewLabels, Counter>::default();
        let violations = Family::<ViolationLabels, Counter>::default();
        let latency = Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "admission_reviews",
            "AdmissionReviews answered, by endpoint and verdict",
            reviews.clone(),
        );
        registry.register(
            "admission_violations",
            "Rule violations found at admission, by endpoint, rule id and action",
            violations.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer an AdmissionReview, from body received to response built",
            latency.clone(),
        );
        let leader = Gauge::default();
        let audit_passes = Family::<ResultLabels, Counter>::default();
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        registry.register(
            "audit_passes",
            "Audit passes over every policy, by result",
            audit_passes.clone(),
        );
        let audit_skipped = Counter::default();
        registry.register(
            "audit_skipped",
            "Audit wake-ups (a change seen, an expiry due) that wrote nothing because another replica leads",
            audit_skipped.clone(),
        );
        let lease_checks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "leader_lease_checks",
            "Reads of the leader Lease by this replica, by what it found: held (by this replica, renewed or taken), \
             other (another replica holds a live lease) or error",
            lease_checks.clone(),
        );
        let policies = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "policy_info",
            "1 for each DistrolessPolicy this replica enforces at admission and audits (when it leads), by name and action",
            policies.clone(),
        );
        let audit_workloads = Family::<AuditLabels, Gauge>::default();
        registry.register(
            "audit_workloads",
            "Workloads a policy matches, by policy and state (matched, compliant, violating)",
            audit_workloads.clone(),
        );
        let rollout_phases = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_phase",
            "1 for the phase each DistrolessRollout is in, 0 for the others",
            rollout_phases.clone(),
        );
        let rollbacks = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rollbacks",
            "Rollouts rolled back, by failure reason",
            rollbacks.clone(),
        );
        // 0.1 s .. about 1.6 h.
        let detect = Histogram::new(exponential_buckets(0.1, 2.0, 16));
        registry.register(
            "rollout_time_to_detect_seconds",
            "From the start of the failing step to the rollout noticing the failure",
            detect.clone(),
        );
        let migration = Family::<MigrationLabels, Gauge>::default();
        registry.register(
            "workloads",
            "Workloads not controlled by another, by namespace and migration state (done, spec_blocked, not_distroless, unverified)",
            migration.clone(),
        );
        // 1 ms .. about 16 s.
        let audit_evaluation = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "audit_evaluation_seconds",
            "Time an audit pass spends evaluating every workload, image and policy (its writes excluded)",
            audit_evaluation.clone(),
        );
        let image_audit_passes = Counter::default();
        registry.register(
            "image_audit_passes",
            "Passes of the audit's image reader (the leader's), whether or not an image was due",
            image_audit_passes.clone(),
        );
        let image_audit_reads = Counter::default();
        registry.register(
            "image_audit_reads",
            "Images the audit's image reader read from their registry (due: never read, or older than the refresh interval)",
            image_audit_reads.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Reads of serving certificate files that changed on disk, by result: reloaded, or rejected (unreadable, \
             or a key that does not match: the previous certificate is still served and the files are read again at \
             the next check)",
            tls_reloads.clone(),
        );
        Metrics {
            tls_reloads,
            admission: AdmissionSeries::resolve(&reviews, &latency),
            image_audit_passes,
            image_audit_reads,
            audit_evaluation,
            migration,
            rollout_phases,
            rollbacks,
            detect,
            audit_workloads,
            leader,
            audit_passes,
            audit_skipped,
            lease_checks,
            policies,
            reviews,
            violations,
            latency,
            registry,
        }
    }
}

impl Metrics {
    pub fn observe(&self, endpoint: &str, verdict: &str, elapsed: Duration) {
        let e = ENDPOINTS.iter().position(|e| *e == endpoint);
        let v = VERDICTS.iter().position(|v| *v == verdict);
        if let (Some(e), Some(v)) = (e, v) {
            self.admission.reviews[e][v].inc();
            self.admission.latency[e].observe(elapsed.as_secs_f64());
            return;
        }
        self.reviews
            .get_or_create(&ReviewLabels {
                endpoint: endpoint.into(),
                verdict: verdict.into(),
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn violation(&self, endpoint: &str, rule: RuleId, action: Action) {
        let labels = || ViolationLabels {
            endpoint: endpoint.into(),
            rule: rule.as_str().into(),
            action: action.as_str().into(),
        };
        let e = ENDPOINTS.iter().position(|e| *e == endpoint);
        let r = RuleId::ALL.iter().position(|r| *r == rule);
        let a = ACTIONS.iter().position(|a| *a == action);
        match (e, r, a) {
            (Some(e), Some(r), Some(a)) => self.admission.violations[e][r][a]
                .get_or_init(|| self.violations.get_or_create(&labels()).clone())
                .inc(),
            _ => self.violations.get_or_create(&labels()).inc(),
        };
    }

    pub fn audit_summary(&self, policy: &str, summary: &crate::api::AuditSummary) {
        for (state, n) in [
            ("matched", summary.matched),
            ("compliant", summary.compliant),
            ("violating", summary.violating),
        ] {
            self.audit_workloads
                .get_or_create(&AuditLabels {
                    policy: policy.into(),
                    state: state.into(),
                })
                .set(i64::from(n));
        }
    }

    /// How long a pass's evaluation took.
    pub(crate) fn audit_evaluation(&self, seconds: f64) {
        self.audit_evaluation.observe(seconds);
    }

    /// One pass of the audit's image reader, which read `read` images.
    pub fn image_audit_pass(&self, read: usize) {
        self.image_audit_passes.inc();
        self.image_audit_reads.inc_by(read as u64);
    }

    pub fn audit_pass(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.audit_passes
            .get_or_create(&ResultLabels { result: result.into() })
            .inc();
    }

    /// The audit woke while another replica leads, and wrote nothing.
    /// The serving certificate changed on disk and was `reloaded` (or not).
    pub(crate) fn tls_reload(&self, reloaded: bool) {
        let result = if reloaded { "reloaded" } else { "rejected" };
        self.tls_reloads
            .get_or_create(&ResultLabels { result: result.into() })
            .inc();
    }

    pub(crate) fn audit_skipped(&self) {
        self.audit_skipped.inc();
    }

    /// This replica read the leader Lease and found it `held` (by itself),
    /// held by `other`, or could not (`error`).
    pub(crate) fn lease_check(&self, result: &'static str) {
        self.lease_checks
            .get_or_create(&ResultLabels { result: result.into() })
            .inc();
    }

    /// The DistrolessPolicies this replica enforces now, replacing the last set.
    pub(crate) fn set_policies(&self, set: &crate::policy::PolicySet) {
        self.policies.clear();
        for p in set.policies() {
            self.policies
                .get_or_create(&PolicyLabels {
                    policy: p.name.clone(),
                    action: p.spec.action.as_str().into(),
                })
                .set(1);
        }
    }

    /// A rollout is in `phase` now.
    pub(crate) fn rollout_phase(&self, namespace: &str, name: &str, phase: crate::api::Phase) {
        for p in crate::api::Phase::ALL {
            self.rollout_phases
                .get_or_create(&RolloutLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    phase: p.as_str().into(),
                })
                .set(i64::from(p == phase));
        }
    }

    pub(crate) fn rollback(&self, reason: &str) {
        self.rollbacks
            .get_or_create(&ReasonLabels { reason: reason.into() })
            .inc();
    }

    /// The migration state of every workload, replacing the last pass's.
    pub(crate) fn migration(&self, counts: &[(String, crate::inventory::Counts)]) {
        self.migration.clear();
        for (namespace, c) in counts {
            for (state, n) in [
                ("done", c.done),
                ("spec_blocked", c.spec_blocked),
                ("not_distroless", c.not_distroless),
                ("unverified", c.unverified),
            ] {
                self.migration
                    .get_or_create(&MigrationLabels {
                        namespace: namespace.clone(),
                        state: state.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    pub(crate) fn time_to_detect(&self, seconds: f64) {
        self.detect.observe(seconds);
    }

    /// Whether this replica leads now.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;

    #[test]
    fn policy_info_lists_exactly_the_policies_of_the_last_set() {
        let m = Metrics::default();
        m.set_policies(&PolicySet::builtin_default());
        assert!(
            m.encode()
                .contains("distroless_guard_policy_info{policy=\"builtin-default\",action=\"Deny\"} 1"),
            "{}",
            m.encode()
        );
        m.set_policies(&PolicySet::default());
        assert!(!m.encode().contains("builtin-default"), "{}", m.encode());
    }

    #[test]
    fn lease_checks_and_skipped_audits_are_counted_by_what_was_found() {
        let m = Metrics::default();
        for found in ["held", "other", "other", "error"] {
            m.lease_check(found);
        }
        m.audit_skipped();
        let text = m.encode();
        for line in [
            "distroless_guard_leader_lease_checks_total{result=\"held\"} 1",
            "distroless_guard_leader_lease_checks_total{result=\"other\"} 2",
            "distroless_guard_leader_lease_checks_total{result=\"error\"} 1",
            "distroless_guard_audit_skipped_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn violations_are_counted_by_endpoint_rule_and_action_and_shown_only_once_seen() {
        let m = Metrics::default();
        assert!(!m.encode().contains("admission_violations_total{"), "{}", m.encode());
        m.violation("validate", RuleId::ShellCommand, Action::Deny);
        m.violation("validate", RuleId::ShellCommand, Action::Deny);
        m.violation("validate", RuleId::ShellCommand, Action::Warn);
        m.violation("mutate", RuleId::ImageUnverified, Action::Audit);
        m.violation("validate-resources", RuleId::RootUid, Action::Deny);
        let text = m.encode();
        let mut got: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("distroless_guard_admission_violations_total{"))
            .collect();
        let mut expected = [
            "{endpoint=\"validate\",rule=\"shell-command\",action=\"Deny\"} 2",
            "{endpoint=\"validate\",rule=\"shell-command\",action=\"Warn\"} 1",
            "{endpoint=\"mutate\",rule=\"image-unverified\",action=\"Audit\"} 1",
            "{endpoint=\"validate-resources\",rule=\"root-uid\",action=\"Deny\"} 1",
        ]
        .map(|l| format!("distroless_guard_admission_violations_total{l}"));
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "{text}");
    }
}
