//! The admission webhook over real HTTPS: a real client, the real server on
//! 127.0.0.1, real AdmissionReview JSON (tests/data).

use std::time::Duration;

use crate::support::webhook::TestWebhook;
use base64::Engine;
use distroless_guard::api::DistrolessPolicy;
use distroless_guard::policy::PolicySet;
use hyper::StatusCode;
use serde_json::{Value, json};

fn data(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn body(review: &Value) -> Vec<u8> {
    serde_json::to_vec(review).unwrap()
}

fn response(bytes: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    review["response"].clone()
}

fn policy(yaml: &str) -> PolicySet {
    let p: DistrolessPolicy = serde_saphyr::from_str(yaml).unwrap();
    PolicySet::new(&[p]).unwrap()
}

#[tokio::test]
async fn a_deployment_with_an_exec_probe_is_denied_with_everything_kubectl_must_show() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let mut conn = hook.connect().await;
    let review = data("deployment-exec-probe.json");
    let (status, bytes) = conn.post("/validate", body(&review)).await;
    assert_eq!(status, StatusCode::OK);
    let resp = response(&bytes);
    assert_eq!(resp["uid"], review["request"]["uid"]);
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["status"]["code"], 403);
    let message = resp["status"]["message"].as_str().unwrap();
    for part in [
        "Deployment shop/checkout",
        "[exec-probe]",
        "container \"checkout\"",
        "spec.template.spec.containers[0].livenessProbe.exec",
        "use httpGet, grpc or tcpSocket",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    hook.server.shutdown().await;
}

#[tokio::test]
async fn a_cron_job_running_bash_is_denied_at_its_job_template_path() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let (_, bytes) = hook
        .connect()
        .await
        .post("/validate", body(&data("cronjob-shell.json")))
        .await;
    let resp = response(&bytes);
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(message.contains("CronJob ops/cleanup"), "{message}");
    assert!(
        message.contains("[shell-command]") && message.contains("/bin/bash -lc"),
        "{message}"
    );
    assert!(
        message.contains("spec.jobTemplate.spec.template.spec.containers[0].command[0]"),
        "{message}"
    );
}

#[tokio::test]
async fn a_compliant_pod_is_allowed_and_mutated_to_the_non_root_user() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let mut conn = hook.connect().await;
    let review = data("pod-compliant.json");
    let resp = response(&conn.post("/validate", body(&review)).await.1);
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("status").is_none() && resp.get("warnings").is_none());

    let resp = response(&conn.post("/mutate", body(&review)).await.1);
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().unwrap())
        .unwrap();
    let ops: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &ops).unwrap();
    assert_eq!(
        pod["spec"]["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532})
    );

    // The mutated pod, reviewed again (reinvocation), gets no further patch.
    let mut again = review.clone();
    again["request"]["object"] = pod;
    let resp = response(&conn.post("/mutate", body(&again)).await.1);
    assert!(resp.get("patch").is_none(), "{resp}");
}

#[tokio::test]
async fn workload_templates_are_never_mutated() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let resp = hook.review("/mutate", body(&data("deployment-exec-probe.json"))).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
}

#[tokio::test]
async fn warn_mode_admits_with_warnings_and_audit_mode_with_annotations() {
    let warn = TestWebhook::start(policy("apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: warn}\nspec: {action: Warn}\n")).await;
    let resp = warn
        .review("/validate", body(&data("deployment-exec-probe.json")))
        .await;
    assert_eq!(resp["allowed"], true);
    let warnings = resp["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].as_str().unwrap().contains("[exec-probe]"), "{warnings:?}");

    let audit = TestWebhook::start(policy("apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: audit}\nspec: {action: Audit}\n")).await;
    let resp = audit
        .review("/validate", body(&data("deployment-exec-probe.json")))
        .await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("warnings").is_none());
    assert_eq!(
        resp["auditAnnotations"]["audit-violations"],
        "exec-probe@spec.template.spec.containers[0].livenessProbe.exec"
    );
}

#[tokio::test]
async fn an_update_may_keep_an_old_violation_but_not_add_a_new_one() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let mut conn = hook.connect().await;
    let resp = response(
        &conn
            .post("/validate", body(&data("deployment-update-preexisting.json")))
            .await
            .1,
    );
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("already present before this update")
    );

    let resp = response(
        &conn
            .post("/validate", body(&data("deployment-update-new-violation.json")))
            .await
            .1,
    );
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("[root-uid]") && !message.contains("[exec-probe]"),
        "{message}"
    );
}

#[tokio::test]
async fn an_ephemeral_debug_container_running_as_root_is_denied() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let resp = hook
        .review("/validate", body(&data("pod-ephemeral-root-debugger.json")))
        .await;
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.ephemeralContainers[0].securityContext.runAsUser"),
        "{message}"
    );
    assert!(message.contains("container \"debugger-root\""), "{message}");
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let mut conn = hook.connect().await;
    let good = data("pod-compliant.json");
    let mut wrong_version = good.clone();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_request = good.clone();
    no_request.as_object_mut().unwrap().remove("request");
    let mut no_object = good.clone();
    no_object["request"].as_object_mut().unwrap().remove("object");
    let mut wrong_type = good.clone();
    wrong_type["request"]["object"]["spec"]["containers"] = json!("not a list");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut deep_object = serde_json::to_string(&good).unwrap();
    deep_object = deep_object.replacen("\"object\":{", &format!("\"object\":{{\"x\":{deep},"), 1);

    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "not json",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "not an AdmissionReview",
        ),
        ("empty", Vec::new(), StatusCode::BAD_REQUEST, "not an AdmissionReview"),
        (
            "wrong apiVersion",
            body(&wrong_version),
            StatusCode::BAD_REQUEST,
            "expected apiVersion admission.k8s.io/v1",
        ),
        ("no request", body(&no_request), StatusCode::BAD_REQUEST, "no request"),
        (
            "no object",
            body(&no_object),
            StatusCode::BAD_REQUEST,
            "request.object is missing",
        ),
        (
            "deeply nested",
            format!("{{\"apiVersion\":\"admission.k8s.io/v1\",\"x\":{deep}}}").into_bytes(),
            StatusCode::BAD_REQUEST,
            "missing field `kind`",
        ),
        (
            "deeply nested request",
            format!("{{\"request\":{deep}}}").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid type: sequence",
        ),
        (
            "too big",
            vec![b' '; 8 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "length limit",
        ),
    ];
    for (what, bytes, want, text) in cases {
        for path in ["/validate", "/mutate"] {
            let (status, out) = hook.connect().await.post(path, bytes.clone()).await;
            assert_eq!(status, want, "{what} on {path}: {}", String::from_utf8_lossy(&out));
            let error: Value =
                serde_json::from_slice(&out).unwrap_or_else(|_| panic!("{what}: error body is not JSON"));
            assert!(error["error"].as_str().unwrap().contains(text), "{what}: {error}");
        }
    }
    // 100,000 levels of nesting in a field nobody reads is skipped without recursion.
    let resp = response(&conn.post("/validate", deep_object.into_bytes()).await.1);
    assert_eq!(resp["allowed"], true);
    // A readable review whose object has a wrong field type is denied with the reason, uid echoed.
    let resp = response(&conn.post("/validate", body(&wrong_type)).await.1);
    assert_eq!(
        (resp["allowed"].as_bool(), resp["status"]["code"].as_u64()),
        (Some(false), Some(400))
    );
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot read this Pod")
    );
    assert_eq!(resp["uid"], good["request"]["uid"]);

    let (status, _) = conn.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "the server keeps serving on an old connection");
    let resp = hook.review("/validate", body(&good)).await;
    assert_eq!(resp["allowed"], true);
}

#[tokio::test]
async fn other_kinds_subresources_and_operations_are_allowed_untouched_by_validate_and_mutate() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let mut conn = hook.connect().await;
    // Allowed, with nothing added: no patch, no warning, no status.
    let untouched = |resp: &Value, what: &str| {
        assert_eq!(resp["allowed"], true, "{what}: {resp}");
        for field in ["patch", "patchType", "warnings", "status"] {
            assert!(resp.get(field).is_none(), "{what}: {field} in {resp}");
        }
    };
    let mut cases = Vec::new();
    let mut revision = data("deployment-exec-probe.json");
    revision["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "ControllerRevision"});
    cases.push(("a ControllerRevision", revision));
    let mut scale = data("deployment-exec-probe.json");
    scale["request"]["subResource"] = json!("scale");
    cases.push(("a Deployment's scale", scale));
    let mut delete = data("deployment-exec-probe.json");
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["object"] = Value::Null;
    cases.push(("a Deployment's delete", delete));
    let mut other_group = data("cronjob-shell.json");
    other_group["request"]["kind"]["group"] = json!("batch.example.com");
    cases.push(("a CronJob of another group", other_group));
    // The pod the mutating webhook patches on creation (checked below), on
    // anything but a creation: untouched.
    let pod = data("captured/pod-create.json");
    let mut update = pod.clone();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    cases.push(("a Pod's update", update));
    let mut status = pod.clone();
    status["request"]["operation"] = json!("UPDATE");
    status["request"]["subResource"] = json!("status");
    status["request"]["oldObject"] = status["request"]["object"].clone();
    cases.push(("a Pod's status", status));
    cases.push(("a Pod's delete", data("captured/pod-delete.json")));
    for (what, review) in &cases {
        for endpoint in ["/validate", "/mutate"] {
            let resp = response(&conn.post(endpoint, body(review)).await.1);
            untouched(&resp, &format!("{what} on {endpoint}"));
        }
    }
    // The control: the same pod's creation is patched.
    let created = response(&conn.post("/mutate", body(&pod)).await.1);
    assert_eq!(
        (created["allowed"].as_bool(), created["patchType"].as_str()),
        (Some(true), Some("JSONPatch"))
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let mut conn = hook.connect().await;
    assert_eq!(conn.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(conn.get("/readyz").await.0, StatusCode::OK);
    conn.post("/validate", body(&data("deployment-exec-probe.json"))).await;
    conn.post("/validate", body(&data("pod-compliant.json"))).await;
    conn.post("/validate", b"junk".to_vec()).await;
    let (status, text) = conn.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).unwrap();
    for line in [
        "distroless_guard_admission_reviews_total{endpoint=\"validate\",verdict=\"denied\"} 1",
        "distroless_guard_admission_reviews_total{endpoint=\"validate\",verdict=\"allowed\"} 1",
        "distroless_guard_admission_reviews_total{endpoint=\"validate\",verdict=\"error\"} 1",
        "distroless_guard_admission_violations_total{endpoint=\"validate\",rule=\"exec-probe\",action=\"Deny\"} 1",
        "distroless_guard_admission_duration_seconds_count{endpoint=\"validate\"} 3",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    hook.server.state.set_ready(false);
    assert_eq!(conn.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_restart_or_dropping_connections_and_a_half_written_pair_is_rejected() {
    let hook = TestWebhook::start(PolicySet::builtin_default()).await;
    let mut old_conn = hook.connect().await;
    let first = old_conn.peer_cert.clone();
    let rotated = hook.ca.serving_cert(2);
    // A half-written pair (new cert, old key) must not replace the working one:
    // once the reloader has read and rejected it, the old certificate is served.
    std::fs::write(&hook.cert_path, &rotated.cert_pem).unwrap();
    let rejected = "distroless_guard_tls_reloads_total{result=\"rejected\"}";
    let mut metrics_conn = hook.connect().await;
    let mut seen = false;
    for _ in 0..100 {
        let (_, text) = metrics_conn.get("/metrics").await;
        if String::from_utf8_lossy(&text).lines().any(|l| l.starts_with(rejected)) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the reloader never read the half-written pair");
    assert_eq!(hook.connect().await.peer_cert, first, "a mismatched pair is ignored");
    std::fs::write(&hook.key_path, &rotated.key_pem).unwrap();
    let mut served = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let conn = hook.connect().await;
        if conn.peer_cert != first {
            served = Some(conn.peer_cert);
            break;
        }
    }
    let served = served.expect("the rotated certificate was never served");
    use rustls::pki_types::pem::PemObject;
    let expected = rustls::pki_types::CertificateDer::from_pem_slice(rotated.cert_pem.as_bytes()).unwrap();
    assert_eq!(served, expected);
    // The connection opened before the rotation still works.
    assert_eq!(old_conn.get("/healthz").await.0, StatusCode::OK);
    let (_, text) = metrics_conn.get("/metrics").await;
    assert!(
        String::from_utf8_lossy(&text).contains("distroless_guard_tls_reloads_total{result=\"reloaded\"} 1"),
        "the reload is counted once"
    );
}

#[tokio::test]
async fn the_binary_serves_policies_from_files_and_exits_cleanly_on_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::TestCa::new("binary test CA");
    let (cert, key) = ca.serving_cert(7).write(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distroless-guard"))
        .args(["webhook", "--listen", "127.0.0.1:0", "--log-format", "json", "--policy"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/audit.yaml"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addr = None;
    while addr.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the webhook never said it was serving");
        let log: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
        if log["message"] == "webhook serving HTTPS" {
            addr = Some(log["addr"].as_str().unwrap().parse::<std::net::SocketAddr>().unwrap());
        }
    }
    let mut conn = crate::support::tls::HttpsConn::connect(addr.unwrap(), ca.client_config())
        .await
        .unwrap();
    // The audit policy admits the exec probe and records it.
    let resp = response(
        &conn
            .post("/validate", body(&data("deployment-exec-probe.json")))
            .await
            .1,
    );
    assert_eq!(resp["allowed"], true);
    assert!(
        resp["auditAnnotations"]["audit-violations"]
            .as_str()
            .unwrap()
            .contains("exec-probe")
    );

    let mut kill = std::process::Command::new("kill");
    kill.args(["-TERM", &child.0.id().to_string()]);
    assert!(crate::command::output(kill).status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the webhook did not exit within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("termination signal received")),
        "{rest:?}"
    );
}

/// A child killed and reaped when the test ends, passing or failing.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
