//! Admission through the real API server: kubectl's own errors and warnings,
//! mutation as stored, the controller-manager's creates, and Pod Security
//! Admission running after our mutation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

fn deployment(name: &str, ns: &str, image: &str, container: Value) -> Value {
    let mut c = json!({"name": "app", "image": image});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), container.as_object()) {
        c.extend(extra.clone());
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [c]}}}})
}

#[tokio::test]
async fn kubectl_users_see_denials_warnings_and_mutation_from_the_webhooks() {
    let release = Release::install("distroless-guard-adm", &[]).await;
    let ns = release.namespace("adm", &[]).await;
    let warn_ns = release.namespace("adm-warn", &[]).await;
    let deny = testcluster::unique("adm-deny");
    let warn = testcluster::unique("adm-warn");
    create_policy(&policy(&deny, &ns, json!({"action": "Deny"}))).await;
    create_policy(&policy(&warn, &warn_ns, json!({"action": "Warn"}))).await;
    release.wait_serving(&ns).await;

    // A root pod: kubectl prints the webhook's message with the rule id and the fix.
    let out = kubectl(&[
        "run",
        "root",
        "-n",
        &ns,
        "--image=registry.test/app:1",
        "--restart=Never",
        "--overrides",
        r#"{"spec":{"securityContext":{"runAsUser":0}}}"#,
    ])
    .await;
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("admission webhook \"validate.distrolessguard.dev\" denied the request")
            && err.contains(&format!("Pod {ns}/root"))
            && err.contains("[root-uid]")
            && err.contains("65532"),
        "{err}"
    );

    // A Deployment with an exec probe is refused at `kubectl apply`, not later.
    let bad = deployment(
        "probe",
        &ns,
        "registry.test/app:1",
        json!({"livenessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}}}),
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &bad.to_string()).await;
    let (_, err) = text(&out);
    assert!(!out.status.success(), "the Deployment was admitted");
    assert!(
        err.contains(&format!("Deployment {ns}/probe")) && err.contains("[exec-probe]"),
        "{err}"
    );
    assert!(
        err.contains("spec.template.spec.containers[0].livenessProbe.exec"),
        "{err}"
    );
    assert!(get_json(&["deployment", "probe", "-n", &ns]).await.is_none());

    // In Warn mode the same Deployment is admitted and kubectl prints the warning.
    let bad = deployment(
        "probe",
        &warn_ns,
        "registry.test/app:1",
        json!({"livenessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}}}),
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &bad.to_string()).await;
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Warning: distroless-guard: Deployment") && err.contains("[exec-probe]"),
        "{err}"
    );

    // A bare pod is admitted and stored mutated to the non-root user.
    kubectl_ok(&[
        "run",
        "bare",
        "-n",
        &ns,
        "--image=registry.test/app:1",
        "--restart=Never",
    ])
    .await;
    let yaml = kubectl_ok(&["get", "pod", "bare", "-n", &ns, "-o", "yaml"]).await;
    let pod: Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(pod["spec"]["securityContext"]["fsGroup"], 65532, "{yaml}");
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert!(yaml.contains("fsGroup: 65532"));

    // pods/ephemeralcontainers: a debug container that starts a shell is refused.
    wait_for("the bare pod to run", Duration::from_secs(30), || async {
        let p = get_json(&["pod", "bare", "-n", &ns]).await?;
        (p["status"]["phase"] == "Running").then_some(())
    })
    .await;
    let out = kubectl(&[
        "debug",
        "bare",
        "-n",
        &ns,
        "--image=registry.test/busybox:1",
        "-c",
        "dbg",
        "--profile=general",
        "--",
        "sh",
        "-c",
        "id",
    ])
    .await;
    let (_, err) = text(&out);
    assert!(!out.status.success(), "the ephemeral container was admitted");
    assert!(
        err.contains("[shell-command]") && err.contains("ephemeralContainers"),
        "{err}"
    );
    let pod = get_json(&["pod", "bare", "-n", &ns]).await.unwrap();
    assert!(
        pod["spec"]["ephemeralContainers"].is_null(),
        "nothing was added: {}",
        pod["spec"]
    );

    delete_policy(&deny).await;
    delete_policy(&warn).await;
    let _ = release.uninstall().await;
    for n in [&ns, &warn_ns] {
        kubectl_ok(&["delete", "namespace", n, "--wait=false"]).await;
    }
}

async fn rollout_done(ns: &str, name: &str, image: &str) -> Option<()> {
    let d = get_json(&["deployment", name, "-n", ns]).await?;
    let s = &d["status"];
    let done = d["metadata"]["generation"] == s["observedGeneration"]
        && s["updatedReplicas"] == d["spec"]["replicas"]
        && s["readyReplicas"] == d["spec"]["replicas"]
        && s["replicas"] == d["spec"]["replicas"]
        && d["spec"]["template"]["spec"]["containers"][0]["image"] == image;
    done.then_some(())
}

#[tokio::test]
async fn a_legacy_deployment_ships_a_new_image_through_a_deny_policy_and_owner_references_grant_nothing() {
    let release = Release::install("distroless-guard-legacy", &[]).await;
    let ns = release.namespace("legacy", &[]).await;
    // Admitted before any policy: runs as root, with an exec probe.
    let legacy = deployment(
        "legacy",
        &ns,
        "registry.test/legacy:1",
        json!({"securityContext": {"runAsUser": 0}, "readinessProbe": {"exec": {"command": ["cat", "/ready"]}}}),
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &legacy.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    wait_for("the legacy rollout", Duration::from_secs(60), || {
        rollout_done(&ns, "legacy", "registry.test/legacy:1")
    })
    .await;

    let deny = testcluster::unique("legacy-deny");
    create_policy(&policy(&deny, &ns, json!({"action": "Deny"}))).await;
    release.wait_serving(&ns).await;

    // The CVE fix: a new tag. The update is admitted with warnings, and the
    // controller-manager's new ReplicaSet and Pods are admitted too.
    let out = kubectl(&[
        "set",
        "image",
        "deployment/legacy",
        "app=registry.test/legacy:1.0.1",
        "-n",
        &ns,
    ])
    .await;
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("already present before this update"), "{err}");
    wait_for("the fixed image to roll out", Duration::from_secs(90), || {
        rollout_done(&ns, "legacy", "registry.test/legacy:1.0.1")
    })
    .await;
    let out = kubectl_ok(&["rollout", "status", "deployment/legacy", "-n", &ns, "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = get_json(&["pods", "-n", &ns, "-l", "app=legacy"]).await.unwrap();
    let images: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap())
        .collect();
    assert!(
        !images.is_empty() && images.iter().all(|i| *i == "registry.test/legacy:1.0.1"),
        "{images:?}"
    );

    // A user who writes the same ownerReferences gets nothing from them.
    let rs = get_json(&["replicasets", "-n", &ns, "-l", "app=legacy"]).await.unwrap();
    let current = rs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/legacy:1.0.1")
        .unwrap()
        .clone();
    let forged = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "forged", "namespace": ns,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": current["metadata"]["name"],
            "uid": current["metadata"]["uid"], "controller": true}]},
        "spec": current["spec"]["template"]["spec"]});
    let out = kubectl_stdin(&["create", "-f", "-"], &forged.to_string()).await;
    let (_, err) = text(&out);
    assert!(!out.status.success(), "a forged owner reference was trusted");
    assert!(err.contains("[root-uid]") && err.contains("[exec-probe]"), "{err}");

    delete_policy(&deny).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn the_real_pod_security_admission_agrees_with_our_mutation_and_our_denials() {
    let release = Release::install("distroless-guard-psa", &[]).await;
    let ns = release
        .namespace("psa", &[("pod-security.kubernetes.io/enforce", "restricted")])
        .await;
    let deny = testcluster::unique("psa-deny");
    create_policy(&policy(
        &deny,
        &ns,
        json!({"action": "Deny", "mutation": {"allowPrivilegeEscalation": false, "seccompRuntimeDefault": true, "dropAllCapabilities": true}}),
    ))
    .await;
    let ours = release.namespace("psa-ours", &[]).await;
    let ours_deny = testcluster::unique("psa-ours-deny");
    create_policy(&policy(&ours_deny, &ours, json!({"action": "Deny"}))).await;
    release.wait_serving(&ours).await;
    // Both policies are in force once the webhook serves the second one.
    wait_for("the restricted namespace's policy", Duration::from_secs(30), || async {
        let p = get_json(&["distrolesspolicy", &deny]).await?;
        (p.pointer("/status/observedGeneration")? == 1).then_some(())
    })
    .await;

    // A pod with no securityContext at all: our mutation makes it restricted-compliant,
    // and the real PSA (which runs after mutating webhooks) admits it.
    let bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": ns},
        "spec": {"containers": [{"name": "app", "image": "registry.test/app:1"}, {"name": "side", "image": "registry.test/side:1"}],
                 "initContainers": [{"name": "init", "image": "registry.test/init:1"}]}});
    let out = kubectl_stdin(&["create", "-f", "-"], &bare.to_string()).await;
    let (_, err) = text(&out);
    assert!(
        out.status.success(),
        "PSA or our webhook refused the mutated pod: {err}"
    );
    assert!(!err.contains("would violate PodSecurity"), "{err}");
    let pod = get_json(&["pod", "bare", "-n", &ns]).await.unwrap();
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    for c in pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["spec"]["initContainers"].as_array().unwrap())
    {
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{c}");
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]), "{c}");
    }

    // Without our webhooks (a namespace they do not see), the same pod is refused by PSA:
    // the admission above was our mutation's doing.
    let plain = namespace("psa-plain", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let mut other = bare.clone();
    other["metadata"]["namespace"] = json!(plain);
    let out = kubectl_stdin(&["create", "-f", "-"], &other.to_string()).await;
    let (_, err) = text(&out);
    assert!(
        !out.status.success() && err.contains("violates PodSecurity \"restricted"),
        "{err}"
    );

    // Every pod we deny as root, PSA denies too: ours alone in one namespace, PSA alone in another.
    for (name, spec) in [
        (
            "pod-uid0",
            json!({"securityContext": {"runAsUser": 0}, "containers": [{"name": "c", "image": "i"}]}),
        ),
        (
            "container-uid0",
            json!({"containers": [{"name": "c", "image": "i", "securityContext": {"runAsUser": 0}}]}),
        ),
        (
            "nonroot-false",
            json!({"securityContext": {"runAsNonRoot": false}, "containers": [{"name": "c", "image": "i"}]}),
        ),
        (
            "init-uid0",
            json!({"initContainers": [{"name": "i", "image": "i", "securityContext": {"runAsUser": 0}}], "containers": [{"name": "c", "image": "i"}]}),
        ),
    ] {
        let pod =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ours}, "spec": spec});
        let out = kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &pod.to_string()).await;
        let (_, err) = text(&out);
        assert!(
            !out.status.success() && err.contains("distroless-guard"),
            "{name}: ours admitted it: {err}"
        );
        let mut psa_only = pod.clone();
        psa_only["metadata"]["namespace"] = json!(plain);
        let out = kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &psa_only.to_string()).await;
        let (_, err) = text(&out);
        assert!(
            !out.status.success() && err.contains("PodSecurity"),
            "{name}: PSA admitted what we deny: {err}"
        );
    }

    delete_policy(&deny).await;
    delete_policy(&ours_deny).await;
    let _ = release.uninstall().await;
    for n in [&ns, &plain, &ours] {
        kubectl_ok(&["delete", "namespace", n, "--wait=false"]).await;
    }
}

/// A CustomResourceDefinition as Argo Rollouts ships it, reduced to what
/// the API server needs: any spec is kept.
fn rollout_crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "rollouts.argoproj.io"},
        "spec": {"group": "argoproj.io", "scope": "Namespaced",
            "names": {"kind": "Rollout", "plural": "rollouts", "singular": "rollout", "listKind": "RolloutList"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}})
}

/// The Rollout CRD, installed once for the tests that use it (two creating
/// it at once would race).
async fn install_rollout_crd() {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let out = kubectl_stdin(&["apply", "-f", "-"], &rollout_crd().to_string()).await;
            assert!(out.status.success(), "{}", text(&out).1);
            kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "crd/rollouts.argoproj.io",
                "--timeout=60s",
            ])
            .await;
        })
        .await;
}

/// A release whose chart lists Argo Rollouts in `webhook.customResources`,
/// with the Rollout CRD installed.
async fn release_judging_rollouts(name: &str) -> Release {
    install_rollout_crd().await;
    Release::install(
        name,
        &[
            "--set-json",
            r#"webhook.customResources=[{"apiGroups":["argoproj.io"],"resources":["rollouts"]}]"#,
        ],
    )
    .await
}

/// The fix corpus' Rollout (its file and the object, moved to `ns`).
fn corpus_rollout(ns: &str) -> (std::path::PathBuf, Value) {
    let file = root().join(crate::corpus::CORPUS).join("rollout.yaml");
    let mut rollout: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    rollout["metadata"]["namespace"] = json!(ns);
    (file, rollout)
}

#[tokio::test]
async fn custom_resources_listed_in_the_chart_have_their_pod_templates_judged_through_the_real_api_server() {
    let release = release_judging_rollouts("distroless-guard-cr").await;
    let ns = release.namespace("cr", &[]).await;
    let deny = testcluster::unique("cr-deny");
    create_policy(&policy(&deny, &ns, json!({"action": "Deny"}))).await;
    release.wait_serving(&ns).await;

    let (file, rollout) = corpus_rollout(&ns);
    // As written, plus a root user: refused by name and path at `kubectl apply`.
    let mut root_rollout = rollout.clone();
    root_rollout["spec"]["template"]["spec"]["securityContext"] = json!({"runAsUser": 0});
    let out = kubectl_stdin(&["apply", "-f", "-"], &root_rollout.to_string()).await;
    let (_, err) = text(&out);
    assert!(
        !out.status.success()
            && err.contains("admission webhook \"resources.distrolessguard.dev\" denied the request")
            && err.contains(&format!("Rollout {ns}/checkout is denied"))
            && err.contains("[root-uid]")
            && err.contains("spec.template.spec.securityContext.runAsUser"),
        "{err}"
    );
    // What `check --fix` writes for it is admitted.
    let mut fixed = crate::corpus::objects_in(&crate::corpus::fix(&file, None)).remove(0);
    fixed["metadata"]["namespace"] = json!(ns);
    let out = kubectl_stdin(&["apply", "-f", "-"], &fixed.to_string()).await;
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("distroless-guard"),
        "no warning for the fixed rollout: {err}"
    );
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
    delete_policy(&deny).await;
}

#[tokio::test]
async fn the_audit_names_a_custom_resources_pod_spec_in_the_policy_status_events_and_policy_report() {
    let release = release_judging_rollouts("distroless-guard-craudit").await;
    let ns = release.namespace("craudit", &[]).await;
    let audit = testcluster::unique("cr-audit");
    create_policy(&policy(&audit, &ns, json!({"action": "Audit"}))).await;
    // A Rollout whose pod template runs as root: admitted (Audit), then found.
    let (file, mut rollout) = corpus_rollout(&ns);
    rollout["spec"]["template"]["spec"]["securityContext"] = json!({"runAsUser": 0});
    let out = kubectl_stdin(&["apply", "-f", "-"], &rollout.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);

    let status = wait_for(
        "the policy status to count the Rollout",
        Duration::from_secs(60),
        || async {
            let p = get_json(&["distrolesspolicy", &audit]).await?;
            (p.pointer("/status/audit/violating")? == 1).then_some(p)
        },
    )
    .await;
    let top = &status["status"]["audit"]["topViolations"][0];
    assert_eq!(
        (&top["kind"], &top["name"]),
        (&json!("Rollout"), &json!("checkout")),
        "{status:#}"
    );
    let event = wait_event(&ns, "the Rollout's DistrolessViolation Event", |e| {
        e["reason"] == "DistrolessViolation" && e["regarding"]["kind"] == "Rollout"
    })
    .await;
    assert_eq!(event["regarding"]["apiVersion"], "argoproj.io/v1alpha1", "{event:#}");
    assert_eq!(event["regarding"]["name"], "checkout");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("spec.template.spec.securityContext.runAsUser"),
        "{event:#}"
    );
    let report = wait_for(
        "the PolicyReport row of the Rollout",
        Duration::from_secs(30),
        || async {
            let r = get_json(&["policyreports.wgpolicyk8s.io", &release.name, "-n", &ns]).await?;
            r["results"]
                .as_array()?
                .iter()
                .find(|row| row["rule"] == "root-uid" && row["resources"][0]["kind"] == "Rollout")
                .cloned()
        },
    )
    .await;
    assert_eq!(
        (
            &report["resources"][0]["apiVersion"],
            &report["result"],
            &report["properties"]["path"]
        ),
        (
            &json!("argoproj.io/v1alpha1"),
            &json!("fail"),
            &json!("spec.template.spec.securityContext.runAsUser")
        ),
        "{report:#}"
    );
    // A ReplicaSet the Rollout controls (as Argo's controller makes them) is
    // counted through it; a bare one is counted on its own. The bare one is
    // created second: once it is counted, the first one was read too (one
    // watch, in order).
    let uid = get_json(&["rollouts.argoproj.io", "checkout", "-n", &ns])
        .await
        .unwrap()["metadata"]["uid"]
        .clone();
    let replica_set = |name: &str, owner: Value| {
        let mut rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": rollout["spec"]["template"]["spec"].clone()}}});
        if !owner.is_null() {
            rs["metadata"]["ownerReferences"] = json!([owner]);
        }
        rs.to_string()
    };
    let owner = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "checkout", "uid": uid,
        "controller": true});
    for (name, owner) in [("checkout-6d4f", owner), ("bare", Value::Null)] {
        let out = kubectl_stdin(&["create", "-f", "-"], &replica_set(name, owner)).await;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let status = wait_for("the bare ReplicaSet counted", Duration::from_secs(60), || async {
        let p = get_json(&["distrolesspolicy", &audit]).await?;
        (p.pointer("/status/audit/violating")? == 2).then_some(p)
    })
    .await;
    let listed: Vec<&Value> = status["status"]["audit"]["topViolations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["name"])
        .collect();
    assert_eq!(listed, [&json!("bare"), &json!("checkout")], "{status:#}");
    kubectl_ok(&["delete", "replicaset", "bare", "checkout-6d4f", "-n", &ns]).await;
    // What `check --fix` writes for it passes, and the report says so.
    let mut fixed = crate::corpus::objects_in(&crate::corpus::fix(&file, None)).remove(0);
    fixed["metadata"]["namespace"] = json!(ns);
    let out = kubectl_stdin(&["apply", "-f", "-"], &fixed.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    wait_for("the fixed Rollout to pass", Duration::from_secs(60), || async {
        let p = get_json(&["distrolesspolicy", &audit]).await?;
        (p.pointer("/status/audit/violating")? == 0 && p.pointer("/status/audit/compliant")? == 1).then_some(())
    })
    .await;
    // Deleted, it leaves the audit.
    kubectl_ok(&["delete", "rollouts.argoproj.io", "checkout", "-n", &ns]).await;
    wait_for("the Rollout gone from the audit", Duration::from_secs(60), || async {
        let p = get_json(&["distrolesspolicy", &audit]).await?;
        (p.pointer("/status/audit/matched")? == 0).then_some(())
    })
    .await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
    delete_policy(&audit).await;
}
