//! The audit as PolicyReports (`wgpolicyk8s.io/v1alpha2`, the format Kyverno
//! and Policy Reporter use): one `PolicyReport` named `distroless-guard` per
//! namespace with audited workloads (a `fail` or `warn` result per workload
//! and rule broken, a `pass` per compliant workload and policy), and one
//! `ClusterPolicyReport` with the totals. Pure: the auditor writes them.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::audit::{AuditObject, Violating};
use crate::api::{Action, RuleId};

/// The name of every report we write, unless the operator is told another
/// (the chart gives its release's name, so two installations never share one).
pub const REPORT_NAME: &str = "distroless-guard";
/// The label that marks them as ours.
pub(crate) const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "distroless-guard");
/// Results kept per report (the API server's object size limit is far above).
pub(crate) const MAX_RESULTS: usize = 1000;

/// What one policy found in one pass.
pub(crate) struct PolicyOutcome<'a> {
    pub policy: &'a str,
    pub violating: &'a [Violating<'a>],
    pub compliant: &'a [&'a AuditObject],
}

/// How bad breaking a rule is.
pub(crate) fn severity(rule: RuleId) -> &'static str {
    match rule {
        RuleId::RootUid | RuleId::NonRootDisabled | RuleId::ImageRootUser | RuleId::ImageHasShell => "high",
        RuleId::ShellCommand | RuleId::ExecProbe | RuleId::ExecHook | RuleId::ImageHasPackageManager => "medium",
        RuleId::ImageUnverified => "low",
    }
}

fn resource(o: &AuditObject) -> Value {
    let kind = o.workload.kind;
    let api_version = if kind.group().is_empty() {
        "v1".to_string()
    } else {
        format!("{}/v1", kind.group())
    };
    json!({"apiVersion": api_version, "kind": kind.to_string(), "name": o.workload.name,
           "namespace": o.namespace(), "uid": o.uid})
}

/// The desired reports: namespace -> its PolicyReport, and the ClusterPolicyReport.
pub(crate) fn build(name: &str, outcomes: &[PolicyOutcome<'_>], now: Timestamp) -> (BTreeMap<String, Value>, Value) {
    let timestamp = json!({"seconds": now.as_second(), "nanos": 0});
    let mut results: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in outcomes {
        for v in o.violating {
            for violation in &v.violations {
                let (cause, fix) = crate::policy::cause_and_fix(&violation.message);
                let mut properties = serde_json::Map::new();
                properties.insert("path".into(), json!(violation.path));
                properties.insert("action".into(), json!(format!("{:?}", violation.action)));
                if let Some(c) = &violation.container {
                    properties.insert("container".into(), json!(c));
                }
                if !fix.is_empty() {
                    properties.insert("fix".into(), json!(fix));
                }
                results
                    .entry(v.object.namespace().to_string())
                    .or_default()
                    .push(json!({
                        "policy": o.policy,
                        "rule": violation.rule.to_string(),
                        "category": "distroless",
                        "result": if violation.action == Action::Warn { "warn" } else { "fail" },
                        "severity": severity(violation.rule),
                        "message": cause,
                        "properties": properties,
                        "resources": [resource(v.object)],
                        "source": "distroless-guard",
                        "scored": true,
                        "timestamp": timestamp,
                    }));
            }
        }
        for object in o.compliant {
            results.entry(object.namespace().to_string()).or_default().push(json!({
                "policy": o.policy,
                "rule": "distroless",
                "category": "distroless",
                "result": "pass",
                "severity": "info",
                "message": "every rule of the policy passes",
                "resources": [resource(object)],
                "source": "distroless-guard",
                "scored": true,
                "timestamp": timestamp,
            }));
        }
    }
    let mut totals = BTreeMap::<&str, u64>::new();
    let mut reports = BTreeMap::new();
    for (namespace, mut list) in results {
        // Stable order (the report changes only when a result does); failures first when cut.
        list.sort_by_key(|r| {
            (
                r["result"] == "pass",
                r["resources"][0]["kind"].to_string(),
                r["resources"][0]["name"].to_string(),
                r["policy"].to_string(),
                r["rule"].to_string(),
            )
        });
        let total = list.len();
        list.truncate(MAX_RESULTS);
        let mut summary =
            BTreeMap::<&str, u64>::from([("pass", 0), ("fail", 0), ("warn", 0), ("error", 0), ("skip", 0)]);
        for r in &list {
            if let Some(k) = r["result"]
                .as_str()
                .and_then(|k| summary.keys().find(|s| **s == k).copied())
            {
                *summary.entry(k).or_default() += 1;
            }
        }
        for (k, n) in &summary {
            *totals.entry(k).or_default() += n;
        }
        let mut annotations = serde_json::Map::new();
        if total > MAX_RESULTS {
            annotations.insert(
                "distrolessguard.dev/truncated".into(),
                json!(format!("{} of {total} results kept", MAX_RESULTS)),
            );
        }
        reports.insert(
            namespace.clone(),
            json!({
                "apiVersion": "wgpolicyk8s.io/v1alpha2",
                "kind": "PolicyReport",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {MANAGED_BY.0: MANAGED_BY.1}, "annotations": annotations},
                "summary": summary,
                "results": list,
            }),
        );
    }
    for k in ["pass", "fail", "warn", "error", "skip"] {
        totals.entry(k).or_default();
    }
    let cluster = json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "ClusterPolicyReport",
        "metadata": {"name": name, "labels": {MANAGED_BY.0: MANAGED_BY.1},
                     "annotations": {"distrolessguard.dev/namespaces": reports.len().to_string()}},
        "summary": totals,
        "results": [],
    });
    (reports, cluster)
}

/// A report without its timestamps, to tell whether it changed.
pub(crate) fn fingerprint(report: &Value) -> String {
    let mut r = report.clone();
    if let Some(list) = r["results"].as_array_mut() {
        for item in list {
            if let Some(o) = item.as_object_mut() {
                o.remove("timestamp");
            }
        }
    }
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Violation, Workload};

    fn object(name: &str, ns: &str) -> AuditObject {
        let value = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        AuditObject {
            uid: format!("uid-{name}"),
            workload: Workload::from_value(&value).unwrap().unwrap(),
            controlled: false,
        }
    }

    fn violation(rule: RuleId, action: Action) -> Violation {
        Violation {
            rule,
            action,
            container: Some("c".into()),
            path: "spec.template.spec.containers[0].image".into(),
            message: "container \"c\": image i has a shell (/bin/sh in layer sha256:1). Fix: use a distroless base"
                .into(),
            policy: "p".into(),
        }
    }

    #[test]
    fn one_result_per_workload_and_rule_with_the_fix_and_a_pass_per_compliant_workload() {
        let (web, db, job) = (object("web", "shop"), object("db", "shop"), object("job", "ops"));
        let violating = vec![
            Violating {
                object: &web,
                violations: vec![
                    violation(RuleId::ImageHasShell, Action::Deny),
                    violation(RuleId::ShellCommand, Action::Warn),
                ],
            },
            Violating {
                object: &job,
                violations: vec![violation(RuleId::ImageUnverified, Action::Audit)],
            },
        ];
        let compliant = vec![&db];
        let (reports, cluster) = build(
            REPORT_NAME,
            &[PolicyOutcome {
                policy: "p",
                violating: &violating,
                compliant: &compliant,
            }],
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(reports.keys().collect::<Vec<_>>(), ["ops", "shop"]);
        let shop = &reports["shop"];
        assert_eq!(
            shop["summary"],
            json!({"pass": 1, "fail": 1, "warn": 1, "error": 0, "skip": 0})
        );
        let shell = shop["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == "image-has-shell")
            .unwrap();
        assert_eq!(
            (shell["result"].clone(), shell["severity"].clone()),
            (json!("fail"), json!("high"))
        );
        assert_eq!(shell["properties"]["fix"], "use a distroless base");
        assert!(shell["message"].as_str().unwrap().contains("/bin/sh"));
        assert_eq!(
            shell["resources"][0],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "shop", "uid": "uid-web"})
        );
        assert_eq!(
            cluster["summary"],
            json!({"pass": 1, "fail": 2, "warn": 1, "error": 0, "skip": 0})
        );
        // The same findings later: the same report but for its timestamps.
        let (again, _) = build(
            REPORT_NAME,
            &[PolicyOutcome {
                policy: "p",
                violating: &violating,
                compliant: &compliant,
            }],
            Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(60),
        );
        assert_eq!(fingerprint(&again["shop"]), fingerprint(shop));
        assert_ne!(again["shop"], *shop);
    }

    #[test]
    fn a_report_is_bounded() {
        let objects: Vec<AuditObject> = (0..MAX_RESULTS + 5).map(|i| object(&format!("w{i}"), "big")).collect();
        let compliant: Vec<&AuditObject> = objects.iter().collect();
        let (reports, _) = build(
            REPORT_NAME,
            &[PolicyOutcome {
                policy: "p",
                violating: &[],
                compliant: &compliant,
            }],
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(reports["big"]["results"].as_array().unwrap().len(), MAX_RESULTS);
        assert!(
            reports["big"]["metadata"]["annotations"]["distrolessguard.dev/truncated"]
                .as_str()
                .unwrap()
                .contains("1005")
        );
    }
}
