//! The operator's controllers against the real API server: the audit status
//! (server-side apply, counted through the real Deployment and ReplicaSet
//! controllers), leader election on the real Lease, and certificate rotation
//! through the real Secret and both webhook configurations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::*;

async fn audit(policy: &str) -> Option<Value> {
    get_json(&["distrolesspolicy", policy])
        .await?
        .pointer("/status/audit")
        .cloned()
}

#[tokio::test]
async fn the_audit_counts_workloads_through_their_controllers_and_writes_status_with_server_side_apply() {
    let release = Release::install("distroless-guard-audit", &[]).await;
    let ns = release.namespace("audit", &[]).await;
    let name = testcluster::unique("audit");
    create_policy(&policy(&name, &ns, json!({"action": "Audit"}))).await;

    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - {{name: web, image: registry.test/web:1, command: [sh, -c, "exec web"]}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: nightly, namespace: {ns}}}
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {{name: job, image: registry.test/job:1, securityContext: {{runAsUser: 0}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: fine, namespace: {ns}}}
spec:
  containers:
  - {{name: app, image: registry.test/app:1}}
"#
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &manifest).await;
    assert!(out.status.success(), "{}", text(&out).1);
    // The Deployment's ReplicaSet and its three Pods run on kwok nodes ...
    wait_for("3 ready pods", Duration::from_secs(60), || async {
        let d = get_json(&["deployment", "web", "-n", &ns]).await?;
        (d["status"]["readyReplicas"] == 3).then_some(())
    })
    .await;
    // ... and count once, through the Deployment.
    let a = wait_for("the audit of 3 workloads", Duration::from_secs(60), || async {
        audit(&name).await.filter(|a| a["matched"] == 3 && a["violating"] == 2)
    })
    .await;
    assert_eq!(a["compliant"], 1, "{a}");
    assert_eq!(a["byRule"]["shell-command"], 1, "{a}");
    assert_eq!(a["byRule"]["root-uid"], 1, "{a}");
    let top: Vec<&Value> = a["topViolations"].as_array().unwrap().iter().collect();
    assert!(
        top.iter().any(|t| t["kind"] == "Deployment" && t["name"] == "web"),
        "{top:?}"
    );
    assert!(
        !top.iter().any(|t| t["kind"] == "ReplicaSet" || t["kind"] == "Pod"),
        "{top:?}"
    );

    // Written with server-side apply under our field manager, on the status subresource.
    let full = kubectl_ok(&["get", "distrolesspolicy", &name, "--show-managed-fields", "-o", "json"]).await;
    let full: Value = serde_json::from_str(&full).unwrap();
    let ours: Vec<&Value> = full["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["manager"] == "distroless-guard")
        .collect();
    assert!(
        ours.iter()
            .any(|m| m["operation"] == "Apply" && m["subresource"] == "status"),
        "{:#}",
        full["metadata"]["managedFields"]
    );
    let status = &full["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");

    // Health, readiness and metrics of the leader, over plain HTTP.
    let leader = holder_of(&release).await;
    let op = release.operators.iter().find(|o| o.pod == leader).unwrap();
    assert_eq!(http_get(op.health, "/healthz").await.0, 200);
    assert_eq!(http_get(op.health, "/readyz").await.0, 200);
    let metrics = http_get(op.health, "/metrics").await.1;
    assert!(metrics.contains("distroless_guard_leader 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "distroless_guard_audit_workloads{{policy=\"{name}\",state=\"violating\"}} 2"
        )),
        "{metrics}"
    );
    // One Event per violating workload and set of violations, however many passes ran.
    let events = get_json(&["events.events.k8s.io", "-n", &ns]).await.unwrap();
    let for_web = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "DistrolessViolation" && e["regarding"]["name"] == "web")
        .count();
    assert_eq!(for_web, 1, "{events:#}");
    // No hot loop: once settled, the status is not written again.
    let status_writes = || {
        release
            .audit_events()
            .iter()
            .filter(|e| {
                e["verb"] == "patch"
                    && e["objectRef"]["subresource"] == "status"
                    && e["objectRef"]["name"] == name.as_str()
            })
            .count()
    };
    // Passes made to run (a namespace label changes, which changes no
    // verdict), each waited for on the leader's pass counter: the first lets
    // anything pending be written, the next three must write nothing.
    let pass = |i: usize| {
        let (release, ns) = (&release, &ns);
        async move {
            let before = metric_sum(release, "distroless_guard_audit_passes_total").await;
            kubectl_ok(&["label", "namespace", ns, &format!("touched={i}"), "--overwrite"]).await;
            wait_for("an audit pass after the touch", Duration::from_secs(30), || async {
                (metric_sum(release, "distroless_guard_audit_passes_total").await > before).then_some(())
            })
            .await;
        }
    };
    pass(0).await;
    let writes = status_writes();
    for i in 1..4 {
        pass(i).await;
    }
    assert_eq!(
        status_writes(),
        writes,
        "the status is rewritten although nothing changed"
    );

    // A fix rolls out through the real controllers: the count follows.
    kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/template/spec/containers/0/command"}]"#,
    ])
    .await;
    wait_for(
        "the fixed Deployment to count as compliant",
        Duration::from_secs(60),
        || async {
            audit(&name)
                .await
                .filter(|a| a["violating"] == 1 && a["compliant"] == 2)
        },
    )
    .await;
    // And deleting a workload removes it.
    kubectl_ok(&["delete", "cronjob", "nightly", "-n", &ns]).await;
    let a = wait_for("the CronJob to go", Duration::from_secs(60), || async {
        audit(&name).await.filter(|a| a["matched"] == 2)
    })
    .await;
    assert_eq!(a["byRule"]["root-uid"], 0, "{a}");

    delete_policy(&name).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

async fn holder_of(release: &Release) -> String {
    wait_for("a lease holder", Duration::from_secs(30), || holder(release)).await
}

/// The Lease's holder now.
async fn holder(release: &Release) -> Option<String> {
    let lease = get_json(&["lease", &format!("{}-leader", release.name), "-n", &release.namespace]).await?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

#[tokio::test]
async fn when_the_leader_dies_the_other_replica_takes_the_real_lease_and_status_writes_go_on() {
    let mut release = Release::install("distroless-guard-ha", &[]).await;
    assert_eq!(release.operators.len(), 2);
    let first = wait_for("a lease holder", Duration::from_secs(30), || holder(&release)).await;
    let leader = release
        .operators
        .iter()
        .position(|o| o.pod == first)
        .expect("the holder is one of the operator pods");
    let survivor = release.operators[1 - leader].pod.clone();
    // A crash, not a shutdown: the lease is not released.
    let killed = Instant::now();
    release.operators.remove(leader).kill();
    let second = wait_for("the survivor to take the lease", Duration::from_secs(30), || async {
        holder(&release).await.filter(|h| *h != first)
    })
    .await;
    let took = killed.elapsed();
    assert_eq!(second, survivor);
    // The lease is 4 s (test values) and a follower retries every second.
    assert!(took < Duration::from_secs(7), "the takeover took {took:?}");

    // The new leader writes: a policy created now gets a status.
    let ns = release.namespace("ha", &[]).await;
    let name = testcluster::unique("ha");
    create_policy(&policy(&name, &ns, json!({"action": "Audit"}))).await;
    wait_for("a status from the new leader", Duration::from_secs(30), || async {
        audit(&name).await
    })
    .await;
    assert_eq!(holder(&release).await.as_deref(), Some(survivor.as_str()));
    delete_policy(&name).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// The certificate a webhook process presents for the Service name, DER.
async fn served(addr: std::net::SocketAddr, server_name: &str, ca_pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem).ok()?)
        .ok()?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?[0].to_vec())
}

#[tokio::test]
async fn a_forced_rotation_goes_through_the_secret_both_configurations_and_every_replica() {
    let release = Release::install("distroless-guard-rot", &[]).await;
    let secret_name = format!("{}-webhook-tls", release.name);
    let secret = || async {
        let s = get_json(&["secret", &secret_name, "-n", &release.namespace]).await?;
        let b64 = |k: &str| s["data"][k].as_str().map(str::to_string);
        Some((b64("ca.crt")?, b64("tls.crt")?))
    };
    let (ca, leaf) = wait_for("the certificate Secret", Duration::from_secs(30), secret).await;
    assert_eq!(
        release.ca_bundle().await,
        ca,
        "the webhook configurations trust the Secret's CA"
    );
    let ca_pem = base64::engine::general_purpose::STANDARD.decode(&ca).unwrap();
    let sni = format!("{}-webhook.{}.svc", release.name, release.namespace);
    for op in &release.operators {
        assert!(
            served(op.webhook, &sni, &ca_pem).await.is_some(),
            "{} serves a certificate for {sni}",
            op.pod
        );
    }
    kubectl_ok(&[
        "annotate",
        "secret",
        &secret_name,
        "-n",
        &release.namespace,
        "--overwrite",
        "distrolessguard.dev/not-after=2000-01-01T00:00:00Z",
    ])
    .await;
    let (ca2, leaf2) = wait_for("a new serving certificate", Duration::from_secs(30), || async {
        secret().await.filter(|(_, l)| *l != leaf)
    })
    .await;
    assert_eq!(ca2, ca, "rotation keeps the CA, so the caBundle stays valid");
    assert_eq!(release.ca_bundle().await, ca);
    let new_der = {
        use rustls::pki_types::pem::PemObject;
        let pem = base64::engine::general_purpose::STANDARD.decode(&leaf2).unwrap();
        rustls::pki_types::CertificateDer::from_pem_slice(&pem)
            .unwrap()
            .to_vec()
    };
    for op in &release.operators {
        wait_for(
            "every replica to serve the rotated certificate",
            Duration::from_secs(30),
            || {
                let (sni, ca_pem, new_der) = (sni.clone(), ca_pem.clone(), new_der.clone());
                async move { (served(op.webhook, &sni, &ca_pem).await? == new_der).then_some(()) }
            },
        )
        .await;
    }
    // And the API server still reaches the webhook: a root pod is denied.
    let ns = release.namespace("rot", &[]).await;
    let deny = testcluster::unique("rot-deny");
    create_policy(&policy(&deny, &ns, json!({"action": "Deny"}))).await;
    release.wait_serving(&ns).await;
    delete_policy(&deny).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_flapping_api_server_loses_no_update_and_admission_goes_on() {
    let api: std::net::SocketAddr = cp().server().trim_start_matches("https://").parse().unwrap();
    let proxy = testcluster::faults::FaultProxy::start(api).await.unwrap();
    let release = Release::install_chart("distroless-guard-flap", &chart_dir(), &[], Some(proxy.addr())).await;
    let ns = release.namespace("flap", &[]).await;
    let name = testcluster::unique("flap");
    create_policy(&policy(
        &name,
        &ns,
        json!({"action": "Deny", "rules": {"shell-command": "Audit"}}),
    ))
    .await;
    release.wait_serving(&ns).await;
    wait_for("a first status", Duration::from_secs(30), || async {
        audit(&name).await.filter(|a| a["matched"] == 0)
    })
    .await;

    // Every watch is cut mid-stream, then the API server refuses the operator for a while.
    proxy.cut_connections();
    proxy.refuse(true);
    // Admission goes on from what the operator knows.
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
    assert!(
        !out.status.success() && text(&out).1.contains("[root-uid]"),
        "{}",
        text(&out).1
    );
    // The cluster changes while the operator cannot see it.
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "shell", "namespace": ns},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.test/job:1", "command": ["bash", "-c", "x"]}]}}}});
    let out = kubectl_stdin(&["create", "-f", "-"], &job.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    // The operator tries to reach the API server after the change and is
    // turned away (its watches retry within 5 s).
    let turned_away = proxy.refused();
    wait_for(
        "the operator refused after the change",
        Duration::from_secs(30),
        || async { (proxy.refused() >= turned_away + 2).then_some(()) },
    )
    .await;
    let refused = proxy.accepted();
    proxy.refuse(false);
    // After the outage the operator catches up without a restart.
    wait_for("the status after the outage", Duration::from_secs(60), || async {
        audit(&name)
            .await
            .filter(|a| a["matched"] == 1 && a["byRule"]["shell-command"] == 1)
    })
    .await;
    assert!(proxy.accepted() > refused, "the operator reconnected through the proxy");
    delete_policy(&name).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_writing_at_its_next_lease_check_and_no_replica_audits() {
    const LEADER: &str = "distroless_guard_leader";
    const FOUND_OTHER: &str = "distroless_guard_leader_lease_checks_total{result=\"other\"}";
    const SKIPPED: &str = "distroless_guard_audit_skipped_total";
    const PASSES: &str = "distroless_guard_audit_passes_total";
    let release = Release::install("distroless-guard-lost", &[]).await;
    let first = holder_of(&release).await;
    let op = release.operators.iter().find(|o| o.pod == first).unwrap();
    let found_other = metric(op.health, FOUND_OTHER).await;
    // Someone else takes the lease (as after a partition): neither replica may write.
    let lease = format!("{}-leader", release.name);
    let far = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600))
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    kubectl_ok(&[
        "patch",
        "lease",
        &lease,
        "-n",
        &release.namespace,
        "--type=merge",
        "-p",
        &json!({"spec": {"holderIdentity": "intruder", "renewTime": far, "leaseDurationSeconds": 3600}}).to_string(),
    ])
    .await;
    // The leader's next read of the Lease finds the intruder; by the time
    // that read is counted, it no longer leads.
    wait_for("the leader's next lease check", Duration::from_secs(30), || async {
        (metric(op.health, FOUND_OTHER).await > found_other).then_some(())
    })
    .await;
    assert_eq!(
        series(op.health, LEADER).await,
        Some(0.0),
        "still leading after finding another holder"
    );
    let passes = metric_sum(&release, PASSES).await;

    let ns = release.namespace("lost", &[]).await;
    let name = testcluster::unique("lost");
    create_policy(&policy(&name, &ns, json!({"action": "Audit"}))).await;
    // Proof that each replica had its chance to write a status: it enforces
    // the new policy, and its audit then woke on a later change (the
    // namespace relabelled) and let it pass.
    let info = format!("distroless_guard_policy_info{{policy=\"{name}\",action=\"Audit\"}}");
    let mut skipped = Vec::new();
    for o in &release.operators {
        wait_for(
            "every replica to enforce the policy",
            Duration::from_secs(30),
            || async { (metric(o.health, &info).await == 1.0).then_some(()) },
        )
        .await;
        skipped.push(metric(o.health, SKIPPED).await);
    }
    kubectl_ok(&["label", "namespace", &ns, "distroless-guard.test/poke=1"]).await;
    for (o, before) in release.operators.iter().zip(skipped) {
        wait_for(
            "every replica's audit to wake and skip",
            Duration::from_secs(30),
            || async { (metric(o.health, SKIPPED).await > before).then_some(()) },
        )
        .await;
    }
    let written = get_json(&["distrolesspolicy", &name]).await.unwrap();
    assert!(
        written["status"].is_null(),
        "a replica that does not lead wrote a status: {written}"
    );
    assert_eq!(
        metric_sum(&release, PASSES).await,
        passes,
        "a replica that does not lead ran an audit pass"
    );
    assert_eq!(holder(&release).await.as_deref(), Some("intruder"));
    delete_policy(&name).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// `distroless-guard run` with a kubeconfig, until it exits (it must, here).
async fn run_until_exit(kubeconfig: &std::path::Path) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--log-format",
        "text",
        "--kubeconfig",
    ])
    .arg(kubeconfig);
    // Bounded: past 30 s the process group is killed and the test fails saying so.
    let out =
        tokio::task::spawn_blocking(move || testcluster::process::output_within(cmd, None, Duration::from_secs(30)))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("run did not exit: {e}"));
    (out.status.success(), text(&out).1)
}

#[tokio::test]
async fn startup_names_the_rbac_permission_it_lacks() {
    crate::crd::install_crd().await;
    // A user allowed to list and watch everything the operator watches but CronJobs.
    let user = testcluster::unique("dg-partial");
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": user},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "replicationcontrollers", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"], "verbs": ["list", "watch"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch"]},
            {"apiGroups": ["distrolessguard.dev"], "resources": ["distrolesspolicies"], "verbs": ["list", "watch"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
        "subjects": [{"kind": "User", "name": user}]});
    for o in [role, binding] {
        let out = kubectl_stdin(&["create", "-f", "-"], &o.to_string()).await;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let kubeconfig = cp().user_kubeconfig(&user, &[]).unwrap();
    let (ok, err) = run_until_exit(&kubeconfig).await;
    assert!(!ok);
    assert!(
        err.contains("no RBAC permission to list/watch cronjobs (batch/v1)"),
        "{err}"
    );
    kubectl_ok(&["delete", "clusterrole,clusterrolebinding", &user]).await;
}

#[tokio::test]
async fn startup_without_the_crd_says_how_to_install_it() {
    // A control plane of its own (just etcd and the API server), where the CRD never was.
    let bare = testcluster::ControlPlane::start(testcluster::Options {
        api_server_only: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("a second control plane: {e}"));
    let (ok, err) = run_until_exit(bare.admin_kubeconfig()).await;
    assert!(!ok);
    assert!(
        err.contains("CRD is not installed") && err.contains("kubectl apply"),
        "{err}"
    );
    bare.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_in_one_process_hand_the_lease_over_on_shutdown() {
    use distroless_guard::operator::{self, CertSource, OperatorConfig};
    let _exclusive = exclusive().await;
    // The chart whose one pod no process plays: RBAC, the Lease, the Secret and
    // the webhook configurations for the two replicas run here.
    let name = testcluster::unique("distroless-guard-inproc");
    let mut helm = cp().helm();
    helm.args(["install", &name])
        .arg(chart_dir())
        .args(["-n", &name, "--create-namespace", "--set", "replicaCount=1"])
        .args(test_values(&name));
    let out = output(helm).await;
    assert!(out.status.success(), "{}", text(&out).1);
    let kubeconfig = cp().service_account_kubeconfig(&name, &name).await.unwrap();
    let config = |identity: &str| OperatorConfig {
        kubeconfig: Some(kubeconfig.clone()),
        namespace: name.clone(),
        identity: identity.into(),
        service_name: format!("{name}-webhook"),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        server_limits: Default::default(),
        lease_name: format!("{name}-leader"),
        lease_duration: Duration::from_secs(15),
        cert_secret: format!("{name}-webhook-tls"),
        validating_webhook: name.clone(),
        mutating_webhook: name.clone(),
        certificates: CertSource::SelfManaged,
        cert_check: Duration::from_secs(1),
        images: None,
        image_audit: Default::default(),
        policy_reports: None,
        // The chart's replicas choose streaming on this API server; these two list in pages.
        initial_list: Some(distroless_guard::controller::InitialList::Paged),
        custom_resources: Vec::new(),
    };
    let a = operator::start(config("replica-a")).await.unwrap();
    let mut a_leads = a.leading.clone();
    tokio::time::timeout(Duration::from_secs(20), a_leads.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    let b = operator::start(config("replica-b")).await.unwrap();
    let mut b_leads = b.leading.clone();
    // b's first read of the Lease finds a holding it.
    let found_other = "distroless_guard_leader_lease_checks_total{result=\"other\"}";
    wait_for("b's first lease check", Duration::from_secs(20), || async {
        (metric(b.health_addr, found_other).await >= 1.0).then_some(())
    })
    .await;
    assert!(!*b_leads.borrow(), "b leads while a holds the lease");
    assert_eq!(series(b.health_addr, "distroless_guard_leader").await, Some(0.0));

    // a stops: its tasks end and it gives the lease up, so b takes over at once,
    // not after the 15 s lease runs out.
    let a_health = a.health_addr;
    let stopped = Instant::now();
    a.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), b_leads.wait_for(|l| *l))
        .await
        .expect("b did not take the released lease quickly")
        .unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(5), "{:?}", stopped.elapsed());
    assert!(
        tokio::net::TcpStream::connect(a_health).await.is_err(),
        "a's health server still answers"
    );
    let lease = get_json(&["lease", &format!("{name}-leader"), "-n", &name])
        .await
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    b.shutdown().await;
    let lease = get_json(&["lease", &format!("{name}-leader"), "-n", &name])
        .await
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released on shutdown: {lease}"
    );

    let mut helm = cp().helm();
    helm.args(["uninstall", &name, "-n", &name, "--wait"]);
    let _ = output(helm).await;
}
