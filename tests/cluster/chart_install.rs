//! The chart as an admin installs it: the real Helm v4 CLI, the operator
//! running with a token of the chart's ServiceAccount (so the chart's real
//! RBAC authorizes every call), the webhooks reached through their Service.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Every object of a release, across namespaces, by its instance label.
async fn objects_of(release: &str) -> Vec<String> {
    let kinds = "deployments,services,serviceaccounts,secrets,leases,roles,rolebindings,clusterroles,\
                 clusterrolebindings,validatingwebhookconfigurations,mutatingwebhookconfigurations,\
                 poddisruptionbudgets,networkpolicies,configmaps,pods,replicasets,endpointslices";
    let out = kubectl_ok(&[
        "get",
        kinds,
        "-A",
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "name",
    ])
    .await;
    out.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn helm_install_serves_through_the_service_upgrade_keeps_the_ca_and_uninstall_leaves_only_the_crd() {
    let mut release = Release::install("distroless-guard-life", &[]).await;
    let bundle = release.ca_bundle().await;
    let ns = release.namespace("life", &[]).await;
    let deny = testcluster::unique("life-deny");
    create_policy(&policy(&deny, &ns, json!({"action": "Deny"}))).await;
    release.wait_serving(&ns).await;

    // The API server reached the webhook at an operator pod's IP and port, as a
    // Service's EndpointSlice names it, through the cluster network.
    let pod_ips: BTreeSet<String> = release.operators.iter().map(|o| o.pod_ip.clone()).collect();
    let connects = cp().egress().connects();
    assert!(
        connects
            .iter()
            .any(|c| c.routed_to.is_some() && pod_ips.iter().any(|ip| c.target == format!("{ip}:8443"))),
        "no webhook call reached an operator pod: {connects:?} (pods {pod_ips:?})"
    );
    let slices = get_json(&[
        "endpointslices",
        "-n",
        &release.namespace,
        "-l",
        &format!("kubernetes.io/service-name={}-webhook", release.name),
    ])
    .await
    .unwrap();
    let ready: BTreeSet<String> = slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    assert_eq!(
        ready, pod_ips,
        "both operator pods are ready endpoints of the webhook Service"
    );

    // helm upgrade (server-side apply) keeps what the operator wrote: the
    // caBundle (the chart looks it up) and the Secret's certificates. The
    // operators are stopped first so nothing could write them back.
    release.stop_operators();
    let tls_secret = format!("{}-webhook-tls", release.name);
    let secret_before = get_json(&["secret", &tls_secret, "-n", &release.namespace])
        .await
        .unwrap();
    let mut helm = cp().helm();
    helm.args(["upgrade", &release.name])
        .arg(chart_dir())
        .args(["-n", &release.namespace])
        .args(&release.helm_args)
        .args(["--set", "podAnnotations.upgraded=yes"]);
    let out = output(helm).await;
    assert!(out.status.success(), "helm upgrade: {}", text(&out).1);
    for kind in ["validatingwebhookconfiguration", "mutatingwebhookconfiguration"] {
        let cfg = get_json(&[kind, &release.name]).await.unwrap();
        assert_eq!(
            cfg.pointer("/webhooks/0/clientConfig/caBundle").and_then(Value::as_str),
            Some(bundle.as_str()),
            "{kind} lost its caBundle in the upgrade"
        );
    }
    let secret_after = get_json(&["secret", &tls_secret, "-n", &release.namespace])
        .await
        .unwrap();
    assert_eq!(
        secret_after["data"], secret_before["data"],
        "the upgrade kept the certificates"
    );
    assert!(secret_after["data"]["ca.crt"].is_string());

    // Uninstall: nothing of the release is left; the CRD stays (Helm never deletes CRDs,
    // as the chart's README says).
    let name = release.name.clone();
    let out = release.uninstall().await;
    assert!(out.status.success(), "helm uninstall: {}", text(&out).1);
    let left = wait_for("the release's objects to go", Duration::from_secs(60), || {
        let name = name.clone();
        async move {
            let left = objects_of(&name).await;
            left.is_empty().then_some(left)
        }
    })
    .await;
    assert!(left.is_empty());
    let crds = [
        "distrolesspolicies.distrolessguard.dev",
        "distrolessrollouts.distrolessguard.dev",
    ];
    for crd in crds {
        assert!(get_json(&["crd", crd]).await.is_some(), "helm uninstall removed {crd}");
    }
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).unwrap();
    assert!(readme.contains(&format!("kubectl delete crd {}", crds.join(" "))));
    delete_policy(&deny).await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// (verb, apiGroup, resource[/subresource]) of an audit event. A server-side
/// apply that created its object (201) needed `create` as well as `patch`.
fn calls(e: &Value) -> Vec<(String, String, String)> {
    let (verb, group, resource) = call(e);
    let created = verb == "patch" && e.pointer("/responseStatus/code") == Some(&json!(201));
    let mut out = vec![(verb, group.clone(), resource.clone())];
    if created {
        out.push(("create".into(), group, resource));
    }
    out
}

fn call(e: &Value) -> (String, String, String) {
    let r = &e["objectRef"];
    let mut resource = r["resource"].as_str().unwrap_or_default().to_string();
    if let Some(sub) = r["subresource"].as_str() {
        resource = format!("{resource}/{sub}");
    }
    (
        e["verb"].as_str().unwrap_or_default().to_string(),
        r["apiGroup"].as_str().unwrap_or_default().to_string(),
        resource,
    )
}

/// The (verb, group, resource) triples a Role or ClusterRole grants.
fn granted(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for verb in rule["verbs"].as_array().into_iter().flatten() {
            for group in rule["apiGroups"].as_array().into_iter().flatten() {
                for res in rule["resources"].as_array().into_iter().flatten() {
                    out.insert((
                        verb.as_str().unwrap().to_string(),
                        group.as_str().unwrap().to_string(),
                        res.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// Drives the operator through every call it makes: policy status, Events,
/// certificates, leases, caBundle, rollouts.
async fn exercise(release: &Release) {
    let ns = release.namespace("rbac", &[]).await;
    let name = testcluster::unique("rbac-audit");
    create_policy(&policy(&name, &ns, json!({"action": "Audit"}))).await;
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shell", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "shell"}}, "template": {"metadata": {"labels": {"app": "shell"}},
        "spec": {"containers": [{"name": "c", "image": "registry.test/shell:1", "command": ["sh", "-c", "run"]}]}}}});
    let out = kubectl_stdin(&["create", "-f", "-"], &deployment.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    wait_for("the audit to count the Deployment", Duration::from_secs(60), || async {
        let p = get_json(&["distrolesspolicy", &name]).await?;
        (p.pointer("/status/audit/violating")? == 1).then_some(())
    })
    .await;
    wait_event(&ns, "a DistrolessViolation Event", |e| {
        e["reason"] == "DistrolessViolation"
    })
    .await;
    // Another set of violations on the same workload: another Event, with them.
    kubectl_ok(&[
        "patch",
        "deployment",
        "shell",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/template/spec/containers/0/command", "value": ["bash", "-c", "run"]}]"#,
    ])
    .await;
    wait_event(&ns, "an Event naming the new violations", |e| {
        e["reason"] == "DistrolessViolation" && e["note"].as_str().is_some_and(|n| n.contains("bash"))
    })
    .await;
    // A forced certificate rotation: Secret update, caBundle patch.
    kubectl_ok(&[
        "annotate",
        "secret",
        &format!("{}-webhook-tls", release.name),
        "-n",
        &release.namespace,
        "--overwrite",
        "distrolessguard.dev/not-after=2000-01-01T00:00:00Z",
    ])
    .await;
    wait_for("the rotated certificate", Duration::from_secs(30), || async {
        let s = get_json(&[
            "secret",
            &format!("{}-webhook-tls", release.name),
            "-n",
            &release.namespace,
        ])
        .await?;
        (s.pointer("/metadata/annotations/distrolessguard.dev~1not-after")? != "2000-01-01T00:00:00Z").then_some(())
    })
    .await;
    delete_policy(&name).await;
    // Rollouts: one that succeeds (canary ReplicaSet applied, gates opened,
    // preflight dry-run and quota, the Deployment patched, the canary deleted)
    // and one that fails (the canary scaled to zero).
    use crate::rollout::{app, create_rollout, wait_phase};
    // The good one takes its canary out of the Deployment's count (its HPAs
    // listed, its replicas scaled down and back).
    app(&ns, "good", 2, "registry.test/rbac/good:1", Value::Null).await;
    create_rollout(
        &ns,
        "good",
        "good",
        "registry.test/rbac/good:1-distroless",
        json!({"steps": [{"weight": 50, "pause": true}, {"weight": 100}], "canaryCapacity": "FromDeployment"}),
    )
    .await;
    wait_for("the good Deployment scaled down", Duration::from_secs(60), || async {
        let r = get_json(&["distrolessrollout", "good", "-n", &ns]).await?;
        (r.pointer("/status/stableScale/held")? == true).then_some(())
    })
    .await;
    kubectl_ok(&[
        "annotate",
        "distrolessrollout",
        "good",
        "-n",
        &ns,
        "distrolessguard.dev/promote=1",
    ])
    .await;
    app(&ns, "bad", 1, "registry.test/rbac/bad:1", Value::Null).await;
    let stage = format!("{ns}-crash");
    let crash = testcluster::stages::Failure::CrashLoop {
        every_ms: 300,
        exit_code: 1,
        message: "boom".into(),
    };
    cp().create_stage(&crash.stage(
        &stage,
        &testcluster::stages::Target::Image("registry.test/rbac/bad:1-distroless".into()),
    ))
    .await
    .unwrap();
    create_rollout(
        &ns,
        "bad",
        "bad",
        "registry.test/rbac/bad:1-distroless",
        json!({"steps": [{"weight": 50, "bakeSeconds": 60}, {"weight": 100}], "keepFailedPod": true}),
    )
    .await;
    // A metric gate with credentials from a Secret (get secrets), against an
    // address where nothing listens: unreadable, so it rolls back.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prom", "namespace": ns},
        "stringData": {"token": "t0ken"}});
    let out = kubectl_stdin(&["apply", "-f", "-"], &secret.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    app(&ns, "gated", 1, "registry.test/rbac/gated:1", Value::Null).await;
    create_rollout(
        &ns,
        "gated",
        "gated",
        "registry.test/rbac/gated:1-distroless",
        json!({"steps": [{"weight": 50, "bakeSeconds": 60}, {"weight": 100}],
               "metrics": [{"name": "errors", "address": "https://127.0.0.1:1", "query": "up", "threshold": 1,
                            "consecutiveErrorLimit": 0, "auth": {"secretName": "prom", "tokenKey": "token"}}]}),
    )
    .await;
    wait_phase(&ns, "good", "Succeeded", 90).await;
    let good = get_json(&["deployment", "good", "-n", &ns]).await.unwrap();
    assert_eq!(good["spec"]["replicas"], 2, "{good:#}");
    wait_phase(&ns, "bad", "RolledBack", 60).await;
    let gated = wait_phase(&ns, "gated", "RolledBack", 60).await;
    assert_eq!(gated["failure"]["reason"], "MetricUnavailable", "{gated:#}");
    wait_for("the failed canary scaled to zero", Duration::from_secs(30), || async {
        let rs = get_json(&["replicasets", "-n", &ns, "-l", "distrolessguard.dev/rollout=bad"]).await?;
        rs["items"]
            .as_array()?
            .iter()
            .all(|r| r["spec"]["replicas"] == 0)
            .then_some(())
    })
    .await;
    // keepFailedPod: one crashing canary pod stays, out of its ReplicaSet
    // (which cannot pick it when scaled to zero) and out of the traffic.
    let kept = wait_for("the failed pod kept", Duration::from_secs(30), || async {
        let pods = get_json(&[
            "pods",
            "-n",
            &ns,
            "-l",
            "distrolessguard.dev/rollout=bad,pod-template-hash=kept-for-debug",
        ])
        .await?;
        pods["items"].as_array()?.first().cloned()
    })
    .await;
    let owners = &kept["metadata"]["ownerReferences"];
    assert_eq!(owners[0]["kind"], "DistrolessRollout", "{owners}");
    assert_eq!(
        owners.as_array().unwrap().len(),
        1,
        "released by its ReplicaSet: {owners}"
    );
    let statuses = kept["status"]["containerStatuses"].as_array().unwrap();
    assert!(
        statuses
            .iter()
            .any(|c| c["restartCount"].as_i64() > Some(0) || c["ready"] == false),
        "{kept:#}"
    );
    cp().delete_stage(&stage).await.unwrap();
    // PolicyReports: one appears for a namespace with an audited workload and
    // goes when the workload does.
    let reported = release.namespace("rbac-report", &[]).await;
    let name = testcluster::unique("rbac-report");
    create_policy(&policy(&name, &reported, json!({"action": "Audit"}))).await;
    app(&reported, "web", 1, "registry.test/rbac/web:1", Value::Null).await;
    wait_for("the PolicyReport", Duration::from_secs(60), || async {
        get_json(&["policyreports.wgpolicyk8s.io", &release.name, "-n", &reported]).await
    })
    .await;
    kubectl_ok(&["delete", "deployment", "web", "-n", &reported]).await;
    wait_for("the PolicyReport gone", Duration::from_secs(60), || async {
        get_json(&["policyreports.wgpolicyk8s.io", &release.name, "-n", &reported])
            .await
            .is_none()
            .then_some(())
    })
    .await;
    delete_policy(&name).await;
    kubectl_ok(&["delete", "namespace", &ns, &reported, "--wait=false"]).await;
}

#[tokio::test]
async fn every_call_the_operator_makes_is_allowed_by_the_charts_rbac_and_every_rule_is_used() {
    let release = Release::install("distroless-guard-rbac", &[]).await;
    release.ca_bundle().await;
    exercise(&release).await;
    let events = release.audit_events();
    assert!(
        !events.is_empty(),
        "the audit log has no request of the operator's ServiceAccount"
    );
    let denied: Vec<&Value> = events
        .iter()
        .filter(|e| e.pointer("/responseStatus/code") == Some(&json!(403)))
        .collect();
    assert!(denied.is_empty(), "the chart's RBAC denied the operator: {denied:#?}");

    // Every rule of the chart's roles was needed by some call.
    let made: BTreeSet<(String, String, String)> = events.iter().flat_map(calls).collect();
    for kind in ["clusterrole", "role"] {
        let mut args = vec![kind, release.name.as_str()];
        if kind == "role" {
            args.extend(["-n", release.namespace.as_str()]);
        }
        let role = get_json(&args).await.unwrap();
        for rule in granted(&role) {
            assert!(
                made.contains(&rule),
                "{kind} grants {rule:?} but the operator never used it; made: {made:#?}"
            );
        }
    }
    let out = release.uninstall().await;
    assert!(out.status.success());
}

#[tokio::test]
async fn removing_one_verb_from_the_charts_rbac_is_caught() {
    // The same chart with `patch` on distrolesspolicies/status taken away.
    let copy = std::env::temp_dir().join(testcluster::unique(&format!("chart-{}", std::process::id())));
    copy_dir(&chart_dir(), &copy);
    let rbac = copy.join("templates/rbac.yaml");
    let text_before = std::fs::read_to_string(&rbac).unwrap();
    let broken = text_before.replace(
        "resources: [\"distrolesspolicies/status\"]\n    verbs: [\"patch\"]",
        "resources: [\"distrolesspolicies/status\"]\n    verbs: [\"get\"]",
    );
    assert_ne!(broken, text_before, "the rule to break was not found");
    std::fs::write(&rbac, broken).unwrap();

    let release = Release::install_chart("distroless-guard-norbac", &copy, &[], None).await;
    release.ca_bundle().await;
    let ns = release.namespace("norbac", &[]).await;
    let name = testcluster::unique("norbac-audit");
    create_policy(&policy(&name, &ns, json!({"action": "Audit"}))).await;
    let denied = wait_for(
        "a 403 for the status patch in the audit log",
        Duration::from_secs(60),
        || async {
            release
                .audit_events()
                .into_iter()
                .find(|e| e.pointer("/responseStatus/code") == Some(&json!(403)))
        },
    )
    .await;
    assert_eq!(
        call(&denied),
        (
            "patch".into(),
            "distrolessguard.dev".into(),
            "distrolesspolicies/status".into()
        )
    );
    delete_policy(&name).await;
    let _ = release.uninstall().await;
    let _ = std::fs::remove_dir_all(copy);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// `check --helm` renders a chart with the real Helm v4 CLI (from the test
/// binaries) and checks what it renders; values files change the verdict.
#[test]
fn check_helm_renders_the_chart_with_helm_and_judges_what_it_renders() {
    let bins = testcluster::bins::Bins::locate().unwrap_or_else(|e| panic!("{e}"));
    let chart = tempfile::tempdir().unwrap();
    let w = |path: &str, text: &str| {
        let p = chart.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("Chart.yaml", "apiVersion: v2\nname: shop\nversion: 0.1.0\n");
    w("values.yaml", "uid: 0\nimage: gcr.io/distroless/static:nonroot\n");
    w(
        "templates/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}-web\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      securityContext: {runAsUser: {{ .Values.uid }}}\n      containers:\n      - name: web\n        image: {{ .Values.image | quote }}\n",
    );
    let safe = chart.path().join("safe.yaml");
    std::fs::write(&safe, "uid: 65532\n").unwrap();
    let check = |extra: &[&str]| {
        let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
        check
            .args(["check", "--helm", chart.path().to_str().unwrap(), "-o", "json"])
            .args(extra)
            .env("HELM", bins.path("helm"));
        crate::command::output(check)
    };
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &report["results"][0];
    assert_eq!(r["name"], "distroless-guard-check-web");
    assert!(
        r["source"].as_str().unwrap().contains("shop/templates/deployment.yaml"),
        "{r}"
    );
    assert!(r["violations"].to_string().contains("root-uid"), "{r}");

    let out = check(&["--values", safe.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // --fix prints what the chart renders, fixed (`-o json` is ignored by --fix).
    let fixed = check(&["--values", safe.to_str().unwrap(), "--fix"]);
    let yaml = String::from_utf8_lossy(&fixed.stdout);
    assert!(
        yaml.contains("name: distroless-guard-check-web") && yaml.contains("runAsNonRoot: true"),
        "{yaml}"
    );

    let out = check(&["--values", "/no/such/values.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("helm template"));
}
