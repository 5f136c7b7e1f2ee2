//! The audit as PolicyReports (`wgpolicyk8s.io/v1alpha2`, the format Kyverno
//! and Policy Reporter use): one `PolicyReport` named `distroless-guard` per
//! namespace with audited workloads (a `fail` or `warn` result per workload
//! and rule broken, a `pass` per compliant workload and policy), and one
//! `ClusterPolicyReport` with the totals. Pure: the auditor writes them.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::audit_summary::{AuditObject, Violating};
use crate::api::{Action, RuleId};
use crate::policy::Violation;

/// The name of every report we write, unless the operator is told another
/// (the chart gives its release's name, so two installations never share one).
pub(crate) const REPORT_NAME: &str = "distroless-guard";
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
    let (api_version, kind) = o.api_version_kind();
    json!({"apiVersion": api_version, "kind": kind, "name": o.workload.name,
           "namespace": o.namespace(), "uid": o.uid})
}

/// SHA-256 of a report without its timestamps: whether it changed.
pub(crate) type Fingerprint = [u8; 32];

/// The desired reports. Built one namespace at a time, so that no more than
/// one namespace's results exist as JSON values at once; a report whose
/// fingerprint says it is already written is not kept at all.
#[derive(Debug)]
pub(crate) struct Desired {
    /// Every namespace that should have a report, with its fingerprint.
    pub namespaces: BTreeMap<String, Fingerprint>,
    /// The bodies of those not already written (as JSON text).
    pub bodies: BTreeMap<String, Box<RawValue>>,
    /// The ClusterPolicyReport.
    pub cluster: (Fingerprint, Box<RawValue>),
}

/// One result before it is JSON: references into the audit's findings.
enum Row<'a> {
    Broken {
        policy: &'a str,
        object: &'a AuditObject,
        violation: &'a Violation,
    },
    Passed {
        policy: &'a str,
        object: &'a AuditObject,
    },
}

impl Row<'_> {
    /// Stable order (the report changes only when a result does); failures
    /// first, for the results kept when a report is cut.
    fn order(&self) -> (bool, &str, &str, &str, &'static str, &str) {
        match self {
            Row::Broken {
                policy,
                object,
                violation,
            } => (
                false,
                object.api_version_kind().1,
                &object.workload.name,
                policy,
                violation.rule.as_str(),
                &violation.path,
            ),
            Row::Passed { policy, object } => (
                true,
                object.api_version_kind().1,
                &object.workload.name,
                policy,
                "distroless",
                object.embedded.as_ref().map_or("", |e| e.path.as_str()),
            ),
        }
    }

    /// The `result` field.
    fn result(&self) -> &'static str {
        match self {
            Row::Broken { violation, .. } if violation.action == Action::Warn => "warn",
            Row::Broken { .. } => "fail",
            Row::Passed { .. } => "pass",
        }
    }

    /// The result as JSON, without its timestamp.
    fn to_json(&self) -> Value {
        match self {
            Row::Broken {
                policy,
                object,
                violation,
            } => {
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
                json!({
                    "policy": policy,
                    "rule": violation.rule.as_str(),
                    "category": "distroless",
                    "result": self.result(),
                    "severity": severity(violation.rule),
                    "message": cause,
                    "properties": properties,
                    "resources": [resource(object)],
                    "source": "distroless-guard",
                    "scored": true,
                })
            }
            Row::Passed { policy, object } => json!({
                "policy": policy,
                "rule": "distroless",
                "category": "distroless",
                "result": "pass",
                "severity": "info",
                "message": "every rule of the policy passes",
                "resources": [resource(object)],
                "source": "distroless-guard",
                "scored": true,
            }),
        }
    }
}

const RESULTS: [&str; 5] = ["pass", "fail", "warn", "error", "skip"];

fn fingerprint(report: &Value) -> Fingerprint {
    use sha2::{Digest, Sha256};
    // Serializing a Value cannot fail (its keys are strings).
    Sha256::digest(serde_json::to_vec(report).unwrap_or_default()).into()
}

fn raw(report: &Value) -> Box<RawValue> {
    // As above: a Value always serializes.
    serde_json::value::to_raw_value(report).unwrap_or_default()
}

/// The desired reports for these outcomes. `written(namespace, fingerprint)`
/// says whether that report is already in the cluster as built; its body is
/// then not kept.
pub(crate) fn build(
    name: &str,
    outcomes: &[PolicyOutcome<'_>],
    now: Timestamp,
    written: impl Fn(&str, &Fingerprint) -> bool,
) -> Desired {
    let timestamp = json!({"seconds": now.as_second(), "nanos": 0});
    let mut rows: BTreeMap<&str, Vec<Row<'_>>> = BTreeMap::new();
    for o in outcomes {
        for v in o.violating {
            for violation in &v.violations {
                rows.entry(v.object.namespace()).or_default().push(Row::Broken {
                    policy: o.policy,
                    object: v.object,
                    violation,
                });
            }
        }
        for object in o.compliant {
            rows.entry(object.namespace()).or_default().push(Row::Passed {
                policy: o.policy,
                object,
            });
        }
    }
    let mut totals = BTreeMap::<&str, u64>::from(RESULTS.map(|k| (k, 0)));
    let mut namespaces = BTreeMap::new();
    let mut bodies = BTreeMap::new();
    for (namespace, mut list) in rows {
        list.sort_by(|a, b| a.order().cmp(&b.order()));
        let total = list.len();
        list.truncate(MAX_RESULTS);
        let mut summary = BTreeMap::<&str, u64>::from(RESULTS.map(|k| (k, 0)));
        for r in &list {
            *summary.entry(r.result()).or_default() += 1;
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
        let mut report = json!({
            "apiVersion": "wgpolicyk8s.io/v1alpha2",
            "kind": "PolicyReport",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {MANAGED_BY.0: MANAGED_BY.1}, "annotations": annotations},
            "summary": summary,
            "results": list.iter().map(Row::to_json).collect::<Vec<_>>(),
        });
        let print = fingerprint(&report);
        namespaces.insert(namespace.to_string(), print);
        if written(namespace, &print) {
            continue;
        }
        if let Some(results) = report["results"].as_array_mut() {
            for r in results.iter_mut().filter_map(Value::as_object_mut) {
                r.insert("timestamp".into(), timestamp.clone());
            }
        }
        bodies.insert(namespace.to_string(), raw(&report));
    }
    let cluster = json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "ClusterPolicyReport",
        "metadata": {"name": name, "labels": {MANAGED_BY.0: MANAGED_BY.1},
                     "annotations": {"distrolessguard.dev/namespaces": namespaces.len().to_string()}},
        "summary": totals,
        "results": [],
    });
    Desired {
        namespaces,
        bodies,
        cluster: (fingerprint(&cluster), raw(&cluster)),
    }
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
            embedded: None,
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
        let outcomes = [PolicyOutcome {
            policy: "p",
            violating: &violating,
            compliant: &compliant,
        }];
        let desired = build(REPORT_NAME, &outcomes, Timestamp::UNIX_EPOCH, |_, _| false);
        assert_eq!(desired.namespaces.keys().collect::<Vec<_>>(), ["ops", "shop"]);
        let shop = &body(&desired, "shop");
        let cluster = parse(&desired.cluster.1);
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
        assert_eq!(shop["results"][0]["timestamp"], json!({"seconds": 0, "nanos": 0}));
        // The same findings later: the same fingerprint, the body with new timestamps.
        let later = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(60);
        let again = build(REPORT_NAME, &outcomes, later, |_, _| false);
        assert_eq!(again.namespaces, desired.namespaces);
        assert_ne!(body(&again, "shop"), *shop);
        // Once written, an unchanged report is not built into a body again; a changed one is.
        let written = |ns: &str, print: &Fingerprint| ns == "shop" && *print == desired.namespaces["shop"];
        let third = build(REPORT_NAME, &outcomes, later, written);
        assert_eq!(third.bodies.keys().collect::<Vec<_>>(), ["ops"]);
        assert_eq!(third.namespaces, desired.namespaces);
        // db is gone from shop: its report changed.
        let fewer = [PolicyOutcome {
            policy: "p",
            violating: &violating,
            compliant: &[],
        }];
        let changed = build(REPORT_NAME, &fewer, later, written);
        assert_ne!(changed.namespaces["shop"], desired.namespaces["shop"]);
        assert_eq!(changed.bodies.keys().collect::<Vec<_>>(), ["ops", "shop"]);
    }

    fn parse(raw: &RawValue) -> Value {
        serde_json::from_str(raw.get()).unwrap()
    }

    fn body(desired: &Desired, namespace: &str) -> Value {
        parse(&desired.bodies[namespace])
    }

    #[test]
    fn a_report_is_bounded() {
        let objects: Vec<AuditObject> = (0..MAX_RESULTS + 5).map(|i| object(&format!("w{i}"), "big")).collect();
        let compliant: Vec<&AuditObject> = objects.iter().collect();
        let desired = build(
            REPORT_NAME,
            &[PolicyOutcome {
                policy: "p",
                violating: &[],
                compliant: &compliant,
            }],
            Timestamp::UNIX_EPOCH,
            |_, _| false,
        );
        let big = body(&desired, "big");
        assert_eq!(big["results"].as_array().unwrap().len(), MAX_RESULTS);
        assert!(
            big["metadata"]["annotations"]["distrolessguard.dev/truncated"]
                .as_str()
                .unwrap()
                .contains("1005")
        );
    }
}
