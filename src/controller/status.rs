//! What a policy's status should be: pure functions of the policy, what the
//! audit found and the previous status. The writer ([`super::auditor`]) only
//! sends what these decide, and only when [`needs_write`] says so.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{AuditSummary, DistrolessPolicy, DistrolessPolicyStatus, RuleId};
use crate::policy::{CompiledPolicy, PolicySet};

/// The condition type every policy carries.
pub(crate) const READY: &str = "Ready";

/// Reasons of the `Ready` condition.
pub(crate) mod reason {
    /// Valid and applied by admission and audit.
    pub(crate) const IN_FORCE: &str = "InForce";
    /// Valid, but another policy with the same `match` sets another `nonRootUser`.
    pub(crate) const CONFLICT: &str = "Conflict";
    /// Not applied: the policy cannot be compiled.
    pub(crate) const INVALID: &str = "Invalid";
}

/// Compiles every policy on its own, so one invalid policy never disables the
/// others; the invalid ones with the reason.
pub(crate) fn compile_all(policies: &BTreeMap<String, DistrolessPolicy>) -> (PolicySet, BTreeMap<String, String>) {
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
pub(crate) fn conflict_with(policy: &CompiledPolicy, set: &PolicySet) -> Option<String> {
    set.policies()
        .iter()
        .find(|o| {
            o.name != policy.name
                && o.spec.match_ == policy.spec.match_
                && o.spec.non_root_user != policy.spec.non_root_user
        })
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
pub(crate) fn expiry_instant(policy: &CompiledPolicy, today: jiff::civil::Date) -> Option<Timestamp> {
    let last_day = policy.next_expiry(today)?;
    let day_after = last_day.tomorrow().ok()?;
    day_after.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// Every rule in the map, so a rule that stops being broken is written as 0.
pub(crate) fn full_by_rule(summary: &mut AuditSummary) {
    for r in RuleId::ALL {
        summary.by_rule.entry(r).or_insert(0);
    }
}

/// What the audit found for one policy.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Finding {
    /// In force: the audit's summary, and a conflict with another policy if any.
    Valid {
        summary: AuditSummary,
        conflict: Option<String>,
    },
    /// Not applied, with the reason.
    Invalid(String),
}

/// The status `policy` should have now. The `Ready` condition keeps its
/// transition time while its status and reason stay the same.
pub(crate) fn desired_status(
    policy: &DistrolessPolicy,
    finding: Finding,
    previous: Option<&DistrolessPolicyStatus>,
    now: Timestamp,
) -> DistrolessPolicyStatus {
    let generation = policy.metadata.generation;
    let (status, reason, message, audit) = match finding {
        Finding::Valid { summary, conflict } => match conflict {
            Some(m) => ("True", reason::CONFLICT, m, Some(summary)),
            None => (
                "True",
                reason::IN_FORCE,
                "the policy is valid and applied by admission and audit".to_string(),
                Some(summary),
            ),
        },
        Finding::Invalid(error) => ("False", reason::INVALID, error, None),
    };
    let transition = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .filter(|c| c.status == status && c.reason == reason)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    DistrolessPolicyStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: READY.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: transition,
        }],
        audit,
    }
}

/// Whether `next` says anything `previous` does not (the evaluation time aside).
pub(crate) fn needs_write(previous: Option<&DistrolessPolicyStatus>, next: &DistrolessPolicyStatus) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    let mut a = previous.clone();
    let mut b = next.clone();
    for s in [&mut a, &mut b] {
        if let Some(audit) = s.audit.as_mut() {
            audit.last_evaluated = None;
        }
    }
    a != b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> DistrolessPolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn summary(violating: u32, when: &str) -> AuditSummary {
        let mut s = AuditSummary {
            matched: violating,
            violating,
            last_evaluated: Some(Time(at(when))),
            ..Default::default()
        };
        full_by_rule(&mut s);
        s
    }

    const P: &str = "apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: p, generation: 3}\nspec: {}\n";

    #[test]
    fn a_valid_policy_is_ready_in_force_with_its_generation() {
        let s = desired_status(
            &policy(P),
            Finding::Valid {
                summary: summary(1, "2026-11-01T00:00:00Z"),
                conflict: None,
            },
            None,
            at("2026-11-01T00:00:00Z"),
        );
        assert_eq!(s.observed_generation, Some(3));
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            (READY, "True", reason::IN_FORCE)
        );
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(s.audit.unwrap().by_rule.len(), RuleId::ALL.len());
    }

    #[test]
    fn the_transition_time_moves_only_when_the_condition_does() {
        let p = policy(P);
        let first = desired_status(
            &p,
            Finding::Valid {
                summary: summary(1, "2026-11-01T00:00:00Z"),
                conflict: None,
            },
            None,
            at("2026-11-01T00:00:00Z"),
        );
        let later = desired_status(
            &p,
            Finding::Valid {
                summary: summary(2, "2026-11-02T00:00:00Z"),
                conflict: None,
            },
            Some(&first),
            at("2026-11-02T00:00:00Z"),
        );
        assert_eq!(
            later.conditions[0].last_transition_time,
            Time(at("2026-11-01T00:00:00Z"))
        );
        let invalid = desired_status(
            &p,
            Finding::Invalid("bad".into()),
            Some(&later),
            at("2026-11-03T00:00:00Z"),
        );
        assert_eq!(
            invalid.conditions[0].last_transition_time,
            Time(at("2026-11-03T00:00:00Z"))
        );
        assert_eq!(invalid.conditions[0].reason, reason::INVALID);
        assert_eq!(invalid.audit, None);
    }

    #[test]
    fn only_a_real_change_is_written() {
        let p = policy(P);
        let a = desired_status(
            &p,
            Finding::Valid {
                summary: summary(1, "2026-11-01T00:00:00Z"),
                conflict: None,
            },
            None,
            at("2026-11-01T00:00:00Z"),
        );
        assert!(needs_write(None, &a));
        let same_later = desired_status(
            &p,
            Finding::Valid {
                summary: summary(1, "2026-11-01T00:05:00Z"),
                conflict: None,
            },
            Some(&a),
            at("2026-11-01T00:05:00Z"),
        );
        assert!(!needs_write(Some(&a), &same_later), "only the evaluation time differs");
        let changed = desired_status(
            &p,
            Finding::Valid {
                summary: summary(2, "2026-11-01T00:06:00Z"),
                conflict: None,
            },
            Some(&a),
            at("2026-11-01T00:06:00Z"),
        );
        assert!(needs_write(Some(&a), &changed));
        let conflict = desired_status(
            &p,
            Finding::Valid {
                summary: summary(1, "2026-11-01T00:07:00Z"),
                conflict: Some("another".into()),
            },
            Some(&a),
            at("2026-11-01T00:07:00Z"),
        );
        assert!(needs_write(Some(&a), &conflict));
        assert_eq!(conflict.conditions[0].reason, reason::CONFLICT);
    }

    #[test]
    fn the_audit_wakes_at_midnight_after_the_last_exempt_day() {
        let p = policy(
            "apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: p}\nspec:\n  exemptions:\n  - {reason: a, expires: '2027-03-31'}\n  - {reason: b, expires: '2026-12-01'}\n  - {reason: c}\n",
        );
        let compiled = CompiledPolicy::compile(&p).unwrap();
        let today: jiff::civil::Date = "2026-11-22".parse().unwrap();
        assert_eq!(
            expiry_instant(&compiled, today),
            Some(at("2026-12-02T00:00:00Z")),
            "the earliest expiry first"
        );
        let later: jiff::civil::Date = "2026-12-02".parse().unwrap();
        assert_eq!(expiry_instant(&compiled, later), Some(at("2027-04-01T00:00:00Z")));
        let after_all: jiff::civil::Date = "2027-04-01".parse().unwrap();
        assert_eq!(expiry_instant(&compiled, after_all), None);
    }

    #[test]
    fn policies_with_the_same_match_and_another_uid_conflict() {
        let a = policy(
            "apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: a}\nspec: {nonRootUser: 1000}\n",
        );
        let b =
            policy("apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: b}\nspec: {}\n");
        let policies = BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]);
        let (set, invalid) = compile_all(&policies);
        assert!(invalid.is_empty());
        let message = conflict_with(set.get("b").unwrap(), &set).unwrap();
        assert!(message.contains("\"a\"") && message.contains("1000"), "{message}");
    }
}
