//! The Helm chart, rendered by the real Helm v4 engine (PyPI
//! `helm-python-sdk`), every object validated against the Kubernetes 1.37
//! JSON schemas (`kubernetes-validate`, strict) or the project's own CRD
//! schema, then checked for the invariants an admin relies on.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::support::chart::{Case, Rendered, chart_dir, render, render_chart, render_one, root, strings};
use distroless_guard::controller::api_resource;
use distroless_guard::policy::{SYSTEM_NAMESPACES, WorkloadKind};
use serde_json::{Value, json};

/// Kinds with no schema in kubernetes-validate (they belong to cert-manager
/// and the Prometheus Operator); the tests below check their fields by hand.
const THIRD_PARTY_KINDS: &[&str] = &["Certificate", "Issuer", "ServiceMonitor"];

/// Realistic value sets an admin would install with.
fn value_sets() -> Vec<(&'static str, Case)> {
    vec![
        ("defaults", Case::new(json!({}))),
        ("cert-manager", Case::new(json!({"certManager": {"enabled": true}}))),
        (
            "cert-manager with a ClusterIssuer",
            Case::new(
                json!({"certManager": {"enabled": true, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}),
            ),
        ),
        (
            "service monitor",
            Case::new(
                json!({"metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prom"}}},
                             "grafanaDashboard": {"enabled": true}, "policyReports": {"enabled": false}}),
            ),
        ),
        (
            "network policy",
            Case::new(json!({"networkPolicy": {"enabled": true, "metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}})),
        ),
        ("three replicas", Case::new(json!({"replicaCount": 3}))),
        (
            "one replica listing in pages",
            Case::new(json!({"replicaCount": 1, "watches": {"initialList": "paged"}})),
        ),
        (
            "custom failure policy",
            Case::new(json!({"webhook": {
                "failurePolicy": "Ignore", "timeoutSeconds": 10,
                "mutating": {"failurePolicy": "Ignore"},
                "excludeNamespaces": ["legacy", "kube-system"],
                "namespaceSelector": {"matchLabels": {"team": "payments"},
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod"]}]},
                "objectSelector": {"matchLabels": {"guard": "on"}},
                "matchConditions": [{"name": "not-a-node", "expression": "!request.userInfo.username.startsWith('system:node:')"}]}})),
        ),
        (
            "custom resources",
            Case::new(json!({"webhook": {"customResources": [
                {"apiGroups": ["argoproj.io"], "resources": ["rollouts"]},
                {"apiGroups": ["jobset.x-k8s.io"], "apiVersions": ["v1alpha2"], "resources": ["jobsets"]}]}})),
        ),
        (
            "no mutation",
            Case::new(json!({"webhook": {"mutating": {"enabled": false}}})),
        ),
        (
            "image inspection",
            Case::new(
                json!({"imageInspection": {"enabled": true, "insecureRegistries": ["registry.local:5000"],
                "dockerConfigSecret": "registry-creds"}}),
            ),
        ),
        ("default policy", Case::new(json!({"defaultPolicy": {"enabled": true}}))),
        (
            "no metric gate credentials",
            Case::new(json!({"rollouts": {"metricGateCredentials": false}})),
        ),
        (
            "other release and namespace",
            Case {
                values: json!({"image": {"digest": format!("sha256:{}", "a".repeat(64))}}),
                release: "guard",
                namespace: "platform-security",
            },
        ),
    ]
}

/// One value set, rendered.
struct Set {
    name: &'static str,
    namespace: &'static str,
    values: Value,
    r: Rendered,
}

fn render_all() -> Vec<Set> {
    let sets = value_sets();
    let cases: Vec<Case> = sets
        .iter()
        .map(|(_, c)| Case {
            values: c.values.clone(),
            ..*c
        })
        .collect();
    sets.into_iter()
        .zip(render(&cases).cases)
        .map(|((name, case), r)| {
            assert_eq!(r.error, None, "value set {name:?} did not render");
            Set {
                name,
                namespace: case.namespace,
                values: case.values,
                r,
            }
        })
        .collect()
}

fn container(r: &Rendered) -> &Value {
    &r.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn args(r: &Rendered) -> Vec<String> {
    strings(&container(r)["args"])
}

#[test]
fn the_chart_lints_clean_matches_the_crate_version_and_ships_the_generated_crds() {
    let answer = render(&[]);
    let errors = strings(&answer.lint["errors"]);
    assert!(errors.is_empty(), "helm lint --strict: {errors:?}");
    for m in answer.lint["messages"].as_array().unwrap() {
        assert!(m["severity"].as_i64().unwrap() < 2, "helm lint --strict: {m}");
    }
    assert_eq!(answer.metadata["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(answer.metadata["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(answer.metadata["apiVersion"], "v2");

    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().to_string(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let chart_crds = files(&chart_dir().join("crds"));
    assert!(!chart_crds.is_empty());
    assert!(
        chart_crds == files(&root().join("crds")),
        "charts/distroless-guard/crds differs from crds/; copy it: cp crds/*.yaml charts/distroless-guard/crds/"
    );
}

#[test]
fn every_value_set_renders_objects_valid_against_the_kubernetes_schemas() {
    for Set { name, namespace, r, .. } in render_all() {
        for (template, object, outcome) in &r.objects {
            let kind = object["kind"].as_str().unwrap();
            if THIRD_PARTY_KINDS.contains(&kind) {
                assert_eq!(outcome, "no-schema", "{name}: {template}: {kind}");
            } else {
                assert_eq!(
                    outcome, "valid",
                    "{name}: {template}: {kind} {}",
                    object["metadata"]["name"]
                );
            }
            if object["kind"] != "ClusterRole"
                && object["kind"] != "ClusterRoleBinding"
                && !object["kind"].as_str().unwrap().contains("WebhookConfiguration")
                && object["kind"] != "DistrolessPolicy"
            {
                assert_eq!(
                    object["metadata"]["namespace"], namespace,
                    "{name}: {kind} in the release namespace"
                );
            }
            let labels = &object["metadata"]["labels"];
            for label in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "helm.sh/chart",
            ] {
                assert!(labels[label].is_string(), "{name}: {kind} lacks the label {label}");
            }
        }
    }
}

#[test]
fn the_validator_in_these_tests_catches_a_broken_template() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("distroless-guard");
    let mut cp = Command::new("cp");
    cp.arg("-r").arg(chart_dir()).arg(&copy);
    assert!(crate::command::output(cp).status.success());
    let deployment = copy.join("templates/deployment.yaml");
    let text = std::fs::read_to_string(&deployment).unwrap();
    let broken = text.replace(
        "  revisionHistoryLimit: 5\n",
        "  revisionHistoryLimit: five\n  replicaz: 2\n",
    );
    assert_ne!(text, broken);
    std::fs::write(&deployment, broken).unwrap();
    let answer = render_chart(&copy, &[Case::new(json!({}))]);
    let (_, _, outcome) = answer.cases[0]
        .objects
        .iter()
        .find(|o| o.1["kind"] == "Deployment")
        .unwrap();
    assert!(outcome.starts_with("invalid"), "{outcome}");
}

#[test]
fn the_values_schema_rejects_wrong_types_and_unknown_keys() {
    let bad = [
        (json!({"replicaCount": "two"}), "replicaCount"),
        (json!({"replicaCount": 0}), "replicaCount"),
        (json!({"webhook": {"failurePolicy": "Sometimes"}}), "failurePolicy"),
        (json!({"webhook": {"timeoutSeconds": 31}}), "timeoutSeconds"),
        (json!({"webhook": {"excludeNamespaces": "legacy"}}), "excludeNamespaces"),
        (json!({"certManager": {"enabled": "yes"}}), "enabled"),
        (json!({"defaultPolicy": {"enabled": true, "action": "Block"}}), "action"),
        (json!({"image": {"digest": "latest"}}), "digest"),
        (json!({"replicas": 2}), "replicas"),
        (json!({"logging": {"format": "xml"}}), "format"),
        (
            json!({"webhook": {"customResources": [{"apiGroups": ["*"], "resources": ["rollouts"]}]}}),
            "apiGroups",
        ),
        (
            json!({"webhook": {"customResources": [{"apiGroups": ["argoproj.io"]}]}}),
            "resources",
        ),
    ];
    let answer = render(&bad.iter().map(|(v, _)| Case::new(v.clone())).collect::<Vec<_>>());
    for ((values, key), rendered) in bad.iter().zip(&answer.cases) {
        let error = rendered
            .error
            .as_deref()
            .unwrap_or_else(|| panic!("{values} was accepted"));
        assert!(error.contains(key), "{values}: the error names {key:?}: {error}");
        assert!(rendered.objects.is_empty());
    }
}

fn webhooks(config: &Value) -> &Vec<Value> {
    config["webhooks"].as_array().unwrap()
}

#[test]
fn the_workload_webhooks_never_intercept_the_control_plane_or_the_release_namespace_and_the_rollout_webhook_sees_only_rollouts()
 {
    for Set {
        name,
        namespace,
        values,
        r,
    } in render_all()
    {
        let mut configs = r.all("ValidatingWebhookConfiguration");
        assert_eq!(configs.len(), 1, "{name}");
        configs.extend(r.all("MutatingWebhookConfiguration"));
        let extra = strings(&values["webhook"]["excludeNamespaces"]);
        for config in configs {
            for w in webhooks(config) {
                if w["name"] == "rollouts.distrolessguard.dev" {
                    // Every namespace, so no rollout escapes the authorization
                    // check; it can block nothing but our own resource.
                    assert!(w.get("namespaceSelector").is_none(), "{name}: {w:#}");
                    assert_eq!(w["failurePolicy"], "Fail", "{name}");
                    let rules = w["rules"].as_array().unwrap();
                    assert!(
                        rules.iter().all(|r| r["apiGroups"] == json!(["distrolessguard.dev"])
                            && r["resources"] == json!(["distrolessrollouts"])),
                        "{name}: {rules:#?}"
                    );
                    continue;
                }
                let exprs = w["namespaceSelector"]["matchExpressions"].as_array().unwrap();
                let guard = exprs
                    .iter()
                    .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
                    .unwrap_or_else(|| panic!("{name}: {} has no exclusion", w["name"]));
                let excluded: BTreeSet<String> = strings(&guard["values"]).into_iter().collect();
                for ns in SYSTEM_NAMESPACES
                    .iter()
                    .copied()
                    .chain([namespace])
                    .chain(extra.iter().map(String::as_str))
                {
                    assert!(excluded.contains(ns), "{name}: {} does not exclude {ns}", w["name"]);
                }
                assert_eq!(excluded.len(), strings(&guard["values"]).len(), "{name}: no duplicates");
                if let Some(labels) = values["webhook"]["namespaceSelector"].get("matchLabels") {
                    assert_eq!(&w["namespaceSelector"]["matchLabels"], labels, "{name}");
                    assert_eq!(
                        exprs.len(),
                        2,
                        "{name}: the admin's expression is kept beside the exclusion"
                    );
                }
            }
        }
    }
}

#[test]
fn webhook_settings_come_from_values_and_cover_every_kind_the_engine_handles() {
    for Set {
        name,
        namespace,
        values,
        r,
    } in render_all()
    {
        let service = r
            .all("Service")
            .into_iter()
            .find(|s| s["spec"]["ports"][0]["name"] == "webhook")
            .unwrap()
            .clone();
        let validating = r.one("ValidatingWebhookConfiguration");
        let w = &webhooks(validating)[0];
        assert_eq!(
            w["failurePolicy"],
            values["webhook"].get("failurePolicy").cloned().unwrap_or(json!("Fail")),
            "{name}"
        );
        assert_eq!(
            w["timeoutSeconds"],
            values["webhook"].get("timeoutSeconds").cloned().unwrap_or(json!(5)),
            "{name}"
        );
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(w["matchPolicy"], "Equivalent");
        assert_eq!(
            w["clientConfig"]["service"]["name"], service["metadata"]["name"],
            "{name}"
        );
        assert_eq!(w["clientConfig"]["service"]["namespace"], namespace);
        assert_eq!(w["clientConfig"]["service"]["path"], "/validate");
        assert_eq!(
            w["clientConfig"]["service"]["port"],
            service["spec"]["ports"][0]["port"]
        );
        assert!(
            w["clientConfig"].get("caBundle").is_none(),
            "{name}: an offline render has no caBundle to keep"
        );
        if let Some(conditions) = values["webhook"].get("matchConditions") {
            assert_eq!(&w["matchConditions"], conditions);
        }
        if let Some(selector) = values["webhook"].get("objectSelector") {
            assert_eq!(&w["objectSelector"], selector);
        }

        // Every kind the engine reads pod specs from, with CREATE and UPDATE, and ephemeral containers.
        let mut covered: BTreeSet<(String, String, String)> = BTreeSet::new();
        for rule in w["rules"].as_array().unwrap() {
            assert_eq!(rule["scope"], "Namespaced");
            for g in strings(&rule["apiGroups"]) {
                for res in strings(&rule["resources"]) {
                    for op in strings(&rule["operations"]) {
                        covered.insert((g.clone(), res.clone(), op));
                    }
                }
            }
        }
        for kind in WorkloadKind::ALL {
            let ar = api_resource(kind);
            for op in ["CREATE", "UPDATE"] {
                assert!(
                    covered.contains(&(ar.group.clone(), ar.plural.clone(), op.to_string())),
                    "{name}: the validating webhook misses {op} {}",
                    ar.plural
                );
            }
        }
        assert!(covered.contains(&("".into(), "pods/ephemeralcontainers".into(), "UPDATE".into())));
        for (_, res, _) in &covered {
            assert!(!res.contains('*'), "{name}: no wildcard resources");
        }

        // Custom resources: their own webhook, the same settings, exactly the kinds listed.
        let custom: Vec<&Value> = webhooks(validating)
            .iter()
            .filter(|w| w["name"] == "resources.distrolessguard.dev")
            .collect();
        match values["webhook"]["customResources"].as_array() {
            None => assert!(custom.is_empty(), "{name}: no custom resources, no webhook for them"),
            Some(listed) => {
                let c = custom[0];
                assert_eq!(c["clientConfig"]["service"]["path"], "/validate-resources");
                for field in ["failurePolicy", "timeoutSeconds", "namespaceSelector", "matchPolicy"] {
                    assert_eq!(c[field], w[field], "{name}: {field}");
                }
                let rules: Vec<Value> = listed
                    .iter()
                    .map(|l| {
                        json!({"apiGroups": l["apiGroups"], "apiVersions": l.get("apiVersions").cloned().unwrap_or(json!(["*"])),
                            "operations": ["CREATE", "UPDATE"], "resources": l["resources"], "scope": "Namespaced"})
                    })
                    .collect();
                assert_eq!(c["rules"], json!(rules), "{name}");
            }
        }
        // The audit reads the same custom resources: a flag per group and
        // resource, and list/watch on exactly those in the operator's role.
        let container = &r.one("Deployment")["spec"]["template"]["spec"]["containers"][0];
        let flags: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str()?.strip_prefix("--custom-resource="))
            .collect();
        let mut wanted = Vec::new();
        let mut granted = Vec::new();
        for l in values["webhook"]["customResources"].as_array().into_iter().flatten() {
            for g in l["apiGroups"].as_array().unwrap() {
                for res in l["resources"].as_array().unwrap() {
                    wanted.push(format!("{}/{}", g.as_str().unwrap(), res.as_str().unwrap()));
                }
            }
            granted.push(json!({"apiGroups": l["apiGroups"], "resources": l["resources"], "verbs": ["list", "watch"]}));
        }
        assert_eq!(flags, wanted, "{name}");
        let role = r.one("ClusterRole")["rules"].as_array().unwrap().clone();
        for rule in &granted {
            assert!(role.contains(rule), "{name}: {rule} not in the role");
        }
        let custom_rules = role
            .iter()
            .filter(|r| !["", "apps", "batch"].contains(&r["apiGroups"][0].as_str().unwrap_or_default()))
            .filter(|r| r["verbs"] == json!(["list", "watch"]))
            .count();
        assert_eq!(
            custom_rules,
            granted.len() + 1,
            "{name}: only the listed ones (and policies) are watched"
        );

        let mutating = r.all("MutatingWebhookConfiguration");
        if values["webhook"]["mutating"]["enabled"] == false {
            assert!(mutating.is_empty(), "{name}");
            continue;
        }
        let m = &webhooks(mutating[0])[0];
        assert_eq!(m["reinvocationPolicy"], "IfNeeded");
        assert_eq!(m["sideEffects"], "None");
        assert_eq!(m["matchPolicy"], "Equivalent");
        assert_eq!(m["clientConfig"]["service"]["path"], "/mutate");
        assert_eq!(
            m["failurePolicy"],
            values["webhook"]["mutating"]
                .get("failurePolicy")
                .cloned()
                .unwrap_or(json!("Fail"))
        );
        assert_eq!(
            m["rules"],
            json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}]),
            "{name}: only new pods are mutated, never templates"
        );
    }
}

fn rules_of(r: &Rendered, kind: &str) -> Vec<Value> {
    r.one(kind)["rules"].as_array().unwrap().clone()
}

#[test]
fn rbac_has_no_wildcards_and_grants_only_what_the_settings_need() {
    for Set {
        name,
        namespace,
        values,
        r,
    } in render_all()
    {
        let cluster = rules_of(&r, "ClusterRole");
        let local = rules_of(&r, "Role");
        for rule in cluster.iter().chain(&local) {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).iter().any(|s| s.contains('*')),
                    "{name}: wildcard in {field}: {rule}"
                );
            }
            // Deleting is for what the operator itself creates: a rollout's canary
            // ReplicaSets, the PolicyReports of namespaces with nothing audited any more.
            let deletes_own =
                strings(&rule["resources"]) == ["replicasets"] || strings(&rule["resources"]) == ["policyreports"];
            for verb in strings(&rule["verbs"]) {
                assert!(
                    ["get", "list", "watch", "create", "update", "patch"].contains(&verb.as_str())
                        || (verb == "delete" && deletes_own),
                    "{name}: the operator never needs {verb}: {rule}"
                );
            }
            assert!(!strings(&rule["resources"]).is_empty() && rule.get("nonResourceURLs").is_none());
        }
        let grants = |rules: &[Value], resource: &str, verb: &str| {
            rules.iter().any(|r| {
                strings(&r["resources"]).iter().any(|x| x == resource) && strings(&r["verbs"]).iter().any(|v| v == verb)
            })
        };
        let inspection = values["imageInspection"]["enabled"] == true;
        let gate_credentials = values["rollouts"]["metricGateCredentials"] != false;
        assert_eq!(
            grants(&cluster, "secrets", "get"),
            inspection || gate_credentials,
            "{name}: cluster-wide Secrets only for imagePullSecrets or metric gate credentials"
        );
        for kind in WorkloadKind::ALL {
            let plural = api_resource(kind).plural;
            assert!(
                grants(&cluster, &plural, "watch") && grants(&cluster, &plural, "list"),
                "{name}: {plural}"
            );
            // Only the rollout controller writes workloads: its canary ReplicaSets,
            // the images of the Deployment it promotes or restores, a
            // server-side dry-run create of a canary pod in its preflight, and
            // the failed canary pod keepFailedPod takes out of its ReplicaSet.
            let writes: &[&str] = match plural.as_str() {
                "replicasets" => &["create", "patch"],
                "deployments" => &["get", "patch"],
                "pods" => &["create", "patch"],
                _ => &[],
            };
            for verb in ["create", "update", "patch", "get"] {
                assert_eq!(
                    grants(&cluster, &plural, verb),
                    writes.contains(&verb),
                    "{name}: {verb} {plural}"
                );
            }
        }
        let cert_manager = values["certManager"]["enabled"] == true;
        assert_eq!(
            grants(&cluster, "validatingwebhookconfigurations", "patch"),
            !cert_manager,
            "{name}"
        );
        assert_eq!(grants(&local, "secrets", "update"), !cert_manager, "{name}");
        // The Lease and the certificate Secret belong to the release, so the
        // operator needs no `create` and `helm uninstall` leaves nothing behind.
        assert!(
            !grants(&local, "leases", "create") && !grants(&local, "secrets", "create"),
            "{name}"
        );
        let lease = r.one("Lease");
        assert!(
            lease.get("spec").is_none(),
            "{name}: the operator owns the Lease's spec"
        );
        let secrets = r.all("Secret");
        assert_eq!(secrets.len(), usize::from(!cert_manager), "{name}");
        for secret in secrets {
            assert!(
                secret.get("data").is_none() && secret["type"] == "Opaque",
                "{name}: the operator owns the data"
            );
        }
        for binding in ["ClusterRoleBinding", "RoleBinding"] {
            let subject = &r.one(binding)["subjects"][0];
            assert_eq!(subject["kind"], "ServiceAccount");
            assert_eq!(
                subject["name"],
                r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
            );
            assert_eq!(subject["namespace"], namespace);
        }
    }
}

#[test]
fn the_operators_own_pod_passes_its_own_default_policy() {
    let bin = env!("CARGO_BIN_EXE_distroless-guard");
    let dir = tempfile::tempdir().unwrap();
    for Set { name, r, .. } in render_all() {
        let pod = &r.one("Deployment")["spec"]["template"]["spec"];
        let c = container(&r);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(
            c.get("command").is_none(),
            "{name}: the image's exec-form entrypoint runs, no shell"
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert!(
                c[probe]["httpGet"].is_object() && c[probe].get("exec").is_none(),
                "{name}: {probe}"
            );
        }
        let requests = &c["resources"]["requests"];
        let limits = &c["resources"]["limits"];
        assert!(
            requests["cpu"].is_string() && requests["memory"].is_string() && limits["memory"].is_string(),
            "{name}"
        );

        // The same engine the webhook runs, over the rendered chart: nothing to report.
        let file = dir.path().join(format!("{}.json", name.replace(' ', "-")));
        std::fs::write(&file, serde_json::to_vec(&r.as_list()).unwrap()).unwrap();
        let mut check = Command::new(bin);
        check.args(["check", "-o", "json", "-f"]).arg(&file);
        let out = crate::command::output(check);
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{name}: check read the Deployment");
        assert_eq!(results[0]["kind"], "Deployment");
        assert_eq!(results[0]["violations"], json!([]), "{name}");
        assert_eq!(
            results[0]["mutations"],
            json!([]),
            "{name}: nothing left for the mutation to fill in"
        );
        assert!(out.status.success(), "{name}: exit {:?}", out.status.code());
    }
}

#[test]
fn replicas_disruption_budget_and_spreading_keep_the_webhook_available() {
    for Set { name, values, r, .. } in render_all() {
        let replicas = values.get("replicaCount").cloned().unwrap_or(json!(2));
        let deployment = r.one("Deployment");
        assert_eq!(deployment["spec"]["replicas"], replicas, "{name}");
        assert_eq!(
            deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
            "{name}"
        );
        let pdbs = r.all("PodDisruptionBudget");
        if replicas.as_i64().unwrap() > 1 {
            assert_eq!(pdbs.len(), 1, "{name}");
            assert_eq!(pdbs[0]["spec"]["minAvailable"], 1);
            assert_eq!(
                pdbs[0]["spec"]["selector"]["matchLabels"],
                deployment["spec"]["selector"]["matchLabels"]
            );
        } else {
            assert!(
                pdbs.is_empty(),
                "{name}: a budget of 1 over 1 replica would block every node drain"
            );
        }
        let pod = &deployment["spec"]["template"]["spec"];
        assert!(pod["affinity"]["podAntiAffinity"].is_object(), "{name}");
        assert_eq!(
            pod["topologySpreadConstraints"][0]["whenUnsatisfiable"], "ScheduleAnyway",
            "{name}"
        );
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for service in r.all("Service") {
            for (k, v) in service["spec"]["selector"].as_object().unwrap() {
                assert_eq!(
                    &labels[k], v,
                    "{name}: Service {} selects the pods",
                    service["metadata"]["name"]
                );
            }
            let port = service["spec"]["ports"][0]["targetPort"].as_str().unwrap();
            assert!(
                container(&r)["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == port),
                "{name}: {port}"
            );
        }
    }
}

#[test]
fn operator_flags_match_the_names_the_chart_gives_its_objects() {
    for Set {
        name,
        namespace,
        values,
        r,
    } in render_all()
    {
        let args = args(&r);
        assert_eq!(args[0], "run");
        let flag = |f: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{f}=")))
                .map(str::to_string)
        };
        let webhook_service = r
            .all("Service")
            .into_iter()
            .find(|s| s["spec"]["ports"][0]["name"] == "webhook")
            .unwrap();
        assert_eq!(
            flag("service-name").as_deref(),
            webhook_service["metadata"]["name"].as_str(),
            "{name}"
        );
        assert_eq!(
            flag("validating-webhook").as_deref(),
            r.one("ValidatingWebhookConfiguration")["metadata"]["name"].as_str()
        );
        let lease = flag("lease-name").unwrap();
        let role = rules_of(&r, "Role");
        assert!(
            role.iter().any(|rule| strings(&rule["resourceNames"]).contains(&lease)),
            "{name}: the Role names the Lease"
        );
        let env = container(&r)["env"].as_array().unwrap();
        assert!(
            env.iter().any(
                |e| e["name"] == "POD_NAMESPACE" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
            )
        );
        let volumes = r.one("Deployment")["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();

        if values["certManager"]["enabled"] == true {
            assert_eq!(
                flag("tls-cert").as_deref(),
                Some("/etc/distroless-guard/tls/tls.crt"),
                "{name}"
            );
            assert!(flag("cert-secret").is_none());
            let certificate = r.one("Certificate");
            let secret = certificate["spec"]["secretName"].as_str().unwrap();
            assert!(
                volumes.iter().any(|v| v["secret"]["secretName"] == secret),
                "{name}: the Certificate's Secret is mounted"
            );
            let host = format!(
                "{}.{namespace}.svc",
                webhook_service["metadata"]["name"].as_str().unwrap()
            );
            assert!(
                strings(&certificate["spec"]["dnsNames"]).contains(&host),
                "{name}: {host}"
            );
            let inject = format!("{namespace}/{}", certificate["metadata"]["name"].as_str().unwrap());
            for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"] {
                assert_eq!(
                    r.one(kind)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                    inject.as_str(),
                    "{name}"
                );
            }
            let issuer = &certificate["spec"]["issuerRef"];
            match values["certManager"]["issuerRef"].as_object() {
                Some(given) => {
                    assert_eq!(issuer, &Value::Object(given.clone()));
                    assert!(r.all("Issuer").is_empty());
                }
                None => {
                    assert_eq!(issuer["kind"], "Issuer");
                    assert_eq!(issuer["name"], r.one("Issuer")["metadata"]["name"]);
                    assert!(r.one("Issuer")["spec"]["selfSigned"].is_object());
                }
            }
        } else {
            assert!(flag("tls-cert").is_none() && r.all("Certificate").is_empty(), "{name}");
            let secret = flag("cert-secret").unwrap();
            assert!(
                role.iter()
                    .any(|rule| strings(&rule["resourceNames"]).contains(&secret)),
                "{name}: the Role names {secret}"
            );
        }

        if values["imageInspection"]["enabled"] == true {
            assert!(args.contains(&"--inspect-images".to_string()));
            assert!(args.contains(&"--insecure-registry=registry.local:5000".to_string()));
            assert_eq!(
                flag("docker-config").as_deref(),
                Some("/etc/distroless-guard/registry/config.json")
            );
            assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "registry-creds"));
        } else {
            assert!(!args.contains(&"--inspect-images".to_string()), "{name}");
        }
    }
}

#[test]
fn optional_objects_appear_only_when_asked_for() {
    for Set {
        name,
        namespace,
        values,
        r,
    } in render_all()
    {
        let kinds = r.kinds();
        let has = |k: &str| kinds.iter().any(|x| x == k);
        assert_eq!(
            has("ServiceMonitor"),
            values["metrics"]["serviceMonitor"]["enabled"] == true,
            "{name}"
        );
        assert_eq!(
            has("NetworkPolicy"),
            values["networkPolicy"]["enabled"] == true,
            "{name}"
        );
        let dashboards: Vec<&Value> = r
            .all("ConfigMap")
            .into_iter()
            .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
            .collect();
        assert_eq!(
            dashboards.len(),
            usize::from(values["grafanaDashboard"]["enabled"] == true),
            "{name}"
        );
        for d in dashboards {
            let dashboard: Value = serde_json::from_str(d["data"]["distroless-guard.json"].as_str().unwrap()).unwrap();
            let exprs: Vec<String> = dashboard["panels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["targets"][0]["expr"].as_str().unwrap().to_string())
                .collect();
            assert!(
                exprs.iter().any(|e| e.contains("distroless_guard_workloads")),
                "{exprs:?}"
            );
            assert!(
                exprs.iter().any(|e| e.contains("distroless_guard_rollbacks_total")),
                "{exprs:?}"
            );
        }
        let reports = values["policyReports"]["enabled"] != false;
        let args = r.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert_eq!(args.contains("--policy-reports"), reports, "{name}");
        // Unset, the operator chooses by the API server's version.
        match values["watches"]["initialList"].as_str() {
            Some(list) => assert!(args.contains(&format!("--initial-list={list}")), "{name}: {args}"),
            None => assert!(!args.contains("--initial-list"), "{name}: {args}"),
        }
        let rules = r.one("ClusterRole")["rules"].to_string();
        assert_eq!(rules.contains("policyreports"), reports, "{name}");
        assert_eq!(
            has("DistrolessPolicy"),
            values["defaultPolicy"]["enabled"] == true,
            "{name}: off by default"
        );
        if has("ServiceMonitor") {
            let monitor = r.one("ServiceMonitor");
            let metrics = r
                .all("Service")
                .into_iter()
                .find(|s| s["spec"]["ports"][0]["name"] == "metrics")
                .unwrap();
            for (k, v) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
                assert_eq!(
                    &metrics["metadata"]["labels"][k], v,
                    "{name}: the ServiceMonitor selects the metrics Service"
                );
            }
            assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
            assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
            assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
        }
        if has("NetworkPolicy") {
            let policy = r.one("NetworkPolicy");
            let ports: Vec<&Value> = policy["spec"]["ingress"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| &i["ports"][0]["port"])
                .collect();
            assert_eq!(ports, [&json!("webhook"), &json!("metrics")], "{name}");
        }
        if has("DistrolessPolicy") {
            let policy = r.one("DistrolessPolicy");
            assert_eq!(
                policy["spec"]["action"], "Audit",
                "{name}: a first policy records, never blocks"
            );
            let excluded = strings(&policy["spec"]["match"]["excludeNamespaces"]);
            for ns in SYSTEM_NAMESPACES.iter().copied().chain([namespace]) {
                assert!(excluded.iter().any(|x| x == ns), "{name}: {ns}");
            }
        }
    }
}

#[test]
fn the_install_notes_tell_the_admin_what_to_do_next() {
    let r = render_one(json!({}));
    for expected in [
        "kind: DistrolessPolicy",
        "action: Audit",
        "kubectl get distrolesspolicies",
        "caBundle",
        "helm uninstall distroless-guard -n distroless-guard",
        "kube-system, kube-node-lease, kube-public, distroless-guard",
    ] {
        assert!(r.notes.contains(expected), "NOTES.txt lacks {expected:?}:\n{}", r.notes);
    }
    let r =
        render_one(json!({"defaultPolicy": {"enabled": true, "name": "baseline"}, "certManager": {"enabled": true}}));
    assert!(
        r.notes.contains("\"baseline\" is in force with action Audit"),
        "{}",
        r.notes
    );
    assert!(r.notes.contains("injected by cert-manager"), "{}", r.notes);
}
