//! The real `run` code path (watches, audit controller, leader election,
//! certificates, webhook) with the real `kube::Client`, against the in-memory
//! API server (a test double: tests/support/apiserver.rs).

mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use distroless_guard::cli::run::{self, RunArgs};
use serde_json::{Value, json};
use support::apiserver::ApiServer;

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: RunArgs,
}

fn crd() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/distrolessguard.dev_distrolesspolicies.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn args(server: &ApiServer, dir: &std::path::Path, identity: &str) -> RunArgs {
    let kubeconfig = dir.join(format!("kubeconfig-{identity}"));
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    Wrapper::parse_from([
        "run",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--namespace",
        "distroless-guard",
        "--identity",
        identity,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--cert-check-seconds",
        "1",
        "--lease-seconds",
        "3",
        "--log-format",
        "text",
    ])
    .args
}

async fn create(server: &ApiServer, path: &str, body: Value) {
    let client = reqwest_like(server);
    let (status, text) = client.send("POST", path, Some(body)).await;
    assert!(status < 300, "POST {path}: {status} {text}");
}

/// Plain HTTP to the double (it speaks plain HTTP on 127.0.0.1).
struct Raw {
    addr: std::net::SocketAddr,
}

fn reqwest_like(server: &ApiServer) -> Raw {
    Raw { addr: server.addr }
}

impl Raw {
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

fn deployment(name: &str, command: Option<&[&str]>) -> Value {
    let mut c = json!({"name": "app", "image": "registry.example.com/app:1"});
    if let Some(cmd) = command {
        c["command"] = json!(cmd);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop", "uid": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [c]}}}})
}

async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn audit_of(server: &ApiServer, policy: &str) -> Option<Value> {
    server
        .get("distrolessguard.dev", "distrolesspolicies", "", policy)?
        .pointer("/status/audit")
        .cloned()
}

const AUDIT_POLICY: &str = "apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: audit}\nspec: {action: Audit, match: {excludeNamespaces: [kube-system]}}\n";

async fn webhook_configs(server: &ApiServer) {
    for (kind, plural, path) in [
        (
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            "/validate",
        ),
        (
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            "/mutate",
        ),
    ] {
        create(server, &format!("/apis/admissionregistration.k8s.io/v1/{plural}"), json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": "distroless-guard"},
            "webhooks": [{"name": format!("{}.distrolessguard.dev", &path[1..]), "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "clientConfig": {"service": {"namespace": "distroless-guard", "name": "distroless-guard-webhook", "path": path}}}]})).await;
    }
}

/// The double with the CRD and webhook configurations, and one operator ("a") running against it.
async fn operator() -> (ApiServer, run::Running, tempfile::TempDir) {
    let server = ApiServer::start().await;
    server.install_crd(crd()).unwrap();
    webhook_configs(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let running = run::start(args(&server, dir.path(), "a")).await.unwrap();
    (server, running, dir)
}

#[tokio::test]
async fn a_missing_crd_is_a_clear_error_that_says_how_to_install_it() {
    let server = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let err = run::start(args(&server, dir.path(), "a"))
        .await
        .err()
        .expect("run must refuse to start");
    assert!(
        err.contains("CRD is not installed") && err.contains("kubectl apply"),
        "{err}"
    );
}

#[tokio::test]
async fn an_audit_policy_status_follows_workloads_and_events_are_emitted_once() {
    let (server, running, _dir) = operator().await;
    let policy: Value = serde_yaml::from_str(AUDIT_POLICY).unwrap();
    create(&server, "/apis/distrolessguard.dev/v1alpha1/distrolesspolicies", policy).await;
    create(
        &server,
        "/apis/apps/v1/namespaces/shop/deployments",
        deployment("web", Some(&["sh", "-c", "run"])),
    )
    .await;
    create(
        &server,
        "/apis/apps/v1/namespaces/shop/deployments",
        deployment("api", None),
    )
    .await;
    // A Pod owned by the web Deployment's ReplicaSet counts through its controller.
    create(&server, "/api/v1/namespaces/shop/pods", json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-x", "uid": "rs", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "i", "command": ["sh"]}]}})).await;

    let audit = wait_for("a first status", Duration::from_secs(10), || {
        audit_of(&server, "audit").filter(|a| a["matched"] == 2)
    })
    .await;
    assert_eq!(
        (audit["compliant"].as_u64(), audit["violating"].as_u64()),
        (Some(1), Some(1)),
        "{audit}"
    );
    assert_eq!(audit["byRule"]["shell-command"], 1);
    assert_eq!(
        audit["topViolations"][0],
        json!({"kind": "Deployment", "namespace": "shop", "name": "web", "rules": ["shell-command"]})
    );
    let status = server
        .get("distrolessguard.dev", "distrolesspolicies", "", "audit")
        .unwrap()["status"]
        .clone();
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        (
            status["conditions"][0]["type"].as_str(),
            status["conditions"][0]["status"].as_str()
        ),
        (Some("Ready"), Some("True"))
    );

    // A workload changes: the status follows.
    let (code, text) = reqwest_like(&server)
        .send("PATCH", "/apis/apps/v1/namespaces/shop/deployments/api", Some(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "i", "securityContext": {"runAsUser": 0}}]}}}})))
        .await;
    assert_eq!(code, 200, "{text}");
    wait_for("api to violate", Duration::from_secs(10), || {
        audit_of(&server, "audit").filter(|a| a["violating"] == 2)
    })
    .await;
    // And disappears.
    let (code, _) = reqwest_like(&server)
        .send("DELETE", "/apis/apps/v1/namespaces/shop/deployments/web", None)
        .await;
    assert_eq!(code, 200);
    let audit = wait_for("web to go", Duration::from_secs(10), || {
        audit_of(&server, "audit").filter(|a| a["matched"] == 1)
    })
    .await;
    assert_eq!(audit["byRule"]["shell-command"], 0);
    assert_eq!(audit["byRule"]["root-uid"], 1);

    // Events: one per violating workload and violation set, however many passes ran.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let events: Vec<Value> = server.list("events.k8s.io", "events");
    let for_web = events
        .iter()
        .filter(|e| e.pointer("/regarding/name") == Some(&json!("web")))
        .count();
    let for_api = events
        .iter()
        .filter(|e| e.pointer("/regarding/name") == Some(&json!("api")))
        .count();
    assert_eq!((for_web, for_api), (1, 1), "{events:#?}");
    let note = events
        .iter()
        .find(|e| e.pointer("/regarding/name") == Some(&json!("web")))
        .unwrap()["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(note.contains("[shell-command]") && note.contains("Fix:"), "{note}");
    // A dropped watch is recovered without losing updates.
    server.drop_watches();
    create(&server, "/apis/batch/v1/namespaces/shop/cronjobs", json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "shop", "uid": "nightly"}, "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {
        "containers": [{"name": "c", "image": "i", "command": ["bash", "-lc", "x"]}]}}}}}})).await;
    wait_for("the CronJob after a dropped watch", Duration::from_secs(10), || {
        audit_of(&server, "audit").filter(|a| a["matched"] == 2 && a["violating"] == 2)
    })
    .await;

    // Health, readiness and metrics, over plain HTTP.
    let get = |path: &'static str| {
        let addr = running.health_addr;
        async move { Raw { addr }.send("GET", path, None).await }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    let (_, metrics) = get("/metrics").await;
    assert!(metrics.contains("distroless_guard_leader 1"), "{metrics}");
    assert!(
        metrics.contains("distroless_guard_audit_workloads{policy=\"audit\",state=\"violating\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("distroless_guard_audit_passes_total{result=\"ok\"}"),
        "{metrics}"
    );

    // No hot loop: the status is written only when it changes.
    let writes = server.count_requests("PATCH", "/distrolesspolicies/audit/status");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        server.count_requests("PATCH", "/distrolesspolicies/audit/status"),
        writes
    );
    running.shutdown().await;
}

#[tokio::test]
async fn certificates_are_created_the_ca_bundle_patched_and_a_forced_rotation_served() {
    let (server, running, _dir) = operator().await;
    let secret = server
        .get("", "secrets", "distroless-guard", "distroless-guard-webhook-tls")
        .expect("the Secret is created");
    let ca = secret["data"]["ca.crt"].as_str().unwrap().to_string();
    let bundle = wait_for("caBundle", Duration::from_secs(10), || {
        let v = server.get(
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "",
            "distroless-guard",
        )?;
        let m = server.get(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
            "distroless-guard",
        )?;
        let vb = v.pointer("/webhooks/0/clientConfig/caBundle")?.as_str()?.to_string();
        let mb = m.pointer("/webhooks/0/clientConfig/caBundle")?.as_str()?.to_string();
        (vb == mb).then_some(vb)
    })
    .await;
    assert_eq!(bundle, ca, "the webhook configurations trust the Secret's CA");

    // The TLS listener serves the Secret's certificate, trusted through the CA.
    use base64::Engine;
    let ca_pem = base64::engine::general_purpose::STANDARD.decode(&ca).unwrap();
    let served = || async {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).unwrap())
            .unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(running.webhook_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("distroless-guard-webhook.distroless-guard.svc").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
    };
    let before = served().await;
    // Force a rotation: the certificate "expires" now.
    let (code, text) = reqwest_like(&server)
        .send(
            "PATCH",
            "/api/v1/namespaces/distroless-guard/secrets/distroless-guard-webhook-tls",
            Some(json!({"metadata": {"annotations": {"distrolessguard.dev/not-after": "2000-01-01T00:00:00Z"}}})),
        )
        .await;
    assert_eq!(code, 200, "{text}");
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if served().await != before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the rotated certificate was never served"
        );
    }
    let rotated = server
        .get("", "secrets", "distroless-guard", "distroless-guard-webhook-tls")
        .unwrap();
    assert_eq!(
        rotated["data"]["ca.crt"].as_str().unwrap(),
        ca,
        "rotation keeps the CA, so the caBundle stays valid"
    );
    running.shutdown().await;
}

#[test]
fn leadership_moves_when_the_leader_stops_renewing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(ApiServer::start());
    server.install_crd(crd()).unwrap();
    rt.block_on(webhook_configs(&server));
    let dir = tempfile::tempdir().unwrap();
    // Each instance runs on its own runtime; stopping one drops every task it had.
    let spawn = |identity: &'static str| {
        let args = args(&server, dir.path(), identity);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (lead_tx, lead_rx) = std::sync::mpsc::channel::<bool>();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let running = run::start(args).await.unwrap();
                let mut leading = running.leading.clone();
                let watcher = tokio::spawn(async move {
                    loop {
                        let _ = lead_tx.send(*leading.borrow_and_update());
                        if leading.changed().await.is_err() {
                            return;
                        }
                    }
                });
                tokio::task::spawn_blocking(move || stop_rx.recv()).await.ok();
                watcher.abort();
            });
            drop(rt);
        });
        (stop_tx, lead_rx, handle)
    };
    let holder = || {
        server
            .get(
                "coordination.k8s.io",
                "leases",
                "distroless-guard",
                "distroless-guard-leader",
            )
            .and_then(|l| {
                l.pointer("/spec/holderIdentity")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
    };
    let (stop_a, lead_a, thread_a) = spawn("replica-a");
    let deadline = Instant::now() + Duration::from_secs(15);
    while holder().as_deref() != Some("replica-a") {
        assert!(Instant::now() < deadline, "replica-a never led");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (stop_b, lead_b, thread_b) = spawn("replica-b");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(holder().as_deref(), Some("replica-a"), "b waits while a renews");
    assert!(lead_b.try_iter().all(|l| !l), "b never believed it led");
    assert!(lead_a.try_iter().any(|l| l));
    stop_a.send(()).unwrap();
    thread_a.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while holder().as_deref() != Some("replica-b") {
        assert!(Instant::now() < deadline, "leadership never moved to replica-b");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The new leader writes: a policy created now gets its status from b.
    let policy: Value = serde_yaml::from_str(AUDIT_POLICY).unwrap();
    rt.block_on(create(
        &server,
        "/apis/distrolessguard.dev/v1alpha1/distrolesspolicies",
        policy,
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while audit_of(&server, "audit").is_none() {
        assert!(Instant::now() < deadline, "the new leader did not write the status");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_b.send(()).unwrap();
    thread_b.join().unwrap();
}

#[tokio::test]
async fn pod_creates_go_through_the_operators_webhooks_as_the_api_server_would_send_them() {
    let (server, running, _dir) = operator().await;
    server.route_service("distroless-guard", "distroless-guard-webhook", running.webhook_addr);
    let deny: Value = serde_yaml::from_str("apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: deny}\nspec: {action: Deny, match: {excludeNamespaces: [kube-system]}}\n").unwrap();
    create(&server, "/apis/distrolessguard.dev/v1alpha1/distrolesspolicies", deny).await;
    // Wait until the caBundle is written and the policy is loaded: a root pod is then denied.
    let root_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "i", "securityContext": {"runAsUser": 0}}]}});
    let started = Instant::now();
    let (code, text) = loop {
        let (code, text) = reqwest_like(&server)
            .send("POST", "/api/v1/namespaces/shop/pods", Some(root_pod.clone()))
            .await;
        if code == 403 {
            break (code, text);
        }
        if code < 300 {
            reqwest_like(&server)
                .send("DELETE", "/api/v1/namespaces/shop/pods/root", None)
                .await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never denied: {code} {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 403);
    let message = serde_json::from_str::<Value>(&text).unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("admission webhook \"validate.distrolessguard.dev\" denied the request: Pod shop/root"),
        "{message}"
    );
    assert!(
        message.contains("[root-uid]") && message.contains("runAsUser to 65532"),
        "{message}"
    );

    // A bare pod is admitted and mutated to the non-root user.
    let (code, text) = reqwest_like(&server)
        .send("POST", "/api/v1/namespaces/shop/pods", Some(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bare", "namespace": "shop"}, "spec": {"containers": [{"name": "app", "image": "i"}]}})))
        .await;
    assert_eq!(code, 201, "{text}");
    let pod = server.get("", "pods", "shop", "bare").unwrap();
    assert_eq!(
        pod["spec"]["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532})
    );
    running.shutdown().await;
}

#[tokio::test]
async fn missing_rbac_for_a_watched_resource_is_named_at_startup() {
    let server = ApiServer::start().await;
    server.install_crd(crd()).unwrap();
    server.fail_requests("/apis/batch/v1/cronjobs", 403, 1);
    let dir = tempfile::tempdir().unwrap();
    let err = run::start(args(&server, dir.path(), "a"))
        .await
        .err()
        .expect("run must refuse to start");
    assert!(
        err.contains("no RBAC permission to list/watch cronjobs (batch/v1)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_writing_at_once() {
    let (server, running, _dir) = operator().await;
    let mut leading = running.leading.clone();
    tokio::time::timeout(Duration::from_secs(10), leading.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    // Someone else takes the lease (as after a partition): a must notice and stop.
    let far_future = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600))
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let (code, text) = reqwest_like(&server)
        .send(
            "PATCH",
            "/apis/coordination.k8s.io/v1/namespaces/distroless-guard/leases/distroless-guard-leader",
            Some(
                json!({"spec": {"holderIdentity": "intruder", "renewTime": far_future, "leaseDurationSeconds": 3600}}),
            ),
        )
        .await;
    assert_eq!(code, 200, "{text}");
    tokio::time::timeout(Duration::from_secs(10), leading.wait_for(|l| !*l))
        .await
        .unwrap()
        .unwrap();
    let writes = server.count_requests("PATCH", "/status");
    let policy: Value = serde_yaml::from_str(AUDIT_POLICY).unwrap();
    create(&server, "/apis/distrolessguard.dev/v1alpha1/distrolesspolicies", policy).await;
    create(
        &server,
        "/apis/apps/v1/namespaces/shop/deployments",
        deployment("web", Some(&["sh"])),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.count_requests("PATCH", "/status"),
        writes,
        "a replica that does not lead writes nothing"
    );
    assert!(audit_of(&server, "audit").is_none());
    running.shutdown().await;
}
