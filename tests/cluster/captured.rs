//! AdmissionReviews as the real API server sends them, recorded by a
//! webhook that answers "allowed" and keeps every body it receives. The
//! webhook's reader must read each one; with `DISTROLESS_GUARD_RECAPTURE=1`
//! they are also written to `tests/data/captured/`, where the serving tests
//! and the `review_read` and `admission_http` benches use them.
//!
//! Recaptured with: `DISTROLESS_GUARD_RECAPTURE=1 cargo test --test cluster captured`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use distroless_guard::admission::review::{self, AdmissionReview, Operation};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::support::*;
use crate::tls::TestCa;

/// An HTTPS server on 127.0.0.1 that allows every review and keeps its body.
struct Recorder {
    port: u16,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
) -> hyper::Response<Full<Bytes>> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let uid = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["request"]["uid"].as_str().map(str::to_owned))
        .unwrap_or_default();
    bodies.lock().push(body);
    let reply = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true}});
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.to_string())))
        .expect("a response")
}

impl Recorder {
    async fn start(ca: &TestCa) -> Recorder {
        let cert = ca.serving_cert(1);
        let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("certificate")];
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, bodies) = (acceptor.clone(), kept.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |r| {
                        let bodies = bodies.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(r, bodies).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Recorder { port, bodies, task }
    }

    /// The first body kept so far for which `matches` holds.
    fn find(&self, matches: &dyn Fn(&Value) -> bool) -> Option<Bytes> {
        self.bodies
            .lock()
            .iter()
            .find(|b| serde_json::from_slice::<Value>(b).is_ok_and(|v| matches(&v["request"])))
            .cloned()
    }
}

fn pem(der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// A pod whose command, probe and environment hold `&&`, `2>&1`, `|` and
/// `<`/`>`, which the API server's encoder writes as `\u0026`, `\u003c`, `\u003e`.
fn pipeline_pod(ns: &str) -> Value {
    let env: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("<value {i}> & more")}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pipeline", "namespace": ns},
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/shop/web:1.8.2",
            "command": ["sh", "-c", "echo ready > /tmp/ready && exec /app 2>&1 | tee /tmp/log"],
            "env": env,
            "readinessProbe": {"exec": {"command": ["sh", "-c", "test -f /tmp/ready && echo ok"]}}}]}})
}

fn plain_pod(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/shop/web:1.8.2",
            "ports": [{"containerPort": 8080}]}]}})
}

fn probed_deployment(ns: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "checkout", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "checkout"}},
            "template": {"metadata": {"labels": {"app": "checkout"}}, "spec": {"containers": [{
                "name": "checkout", "image": "registry.example.com/shop/checkout:3.2.1",
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}}}]}}}})
}

fn shell_cronjob(ns: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "cleanup", "namespace": ns},
        "spec": {"schedule": "*/15 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "cleanup", "image": "registry.example.com/ops/cleanup:1.0",
                "command": ["/bin/bash", "-lc", "find /data -mtime +7 -delete && echo done"]}]}}}}}})
}

async fn apply(manifest: &Value, extra: &[&str]) {
    let mut args = vec!["create", "-f", "-"];
    args.extend_from_slice(extra);
    let out = kubectl_stdin(&args, &manifest.to_string()).await;
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out).1);
}

type Matcher = Box<dyn Fn(&Value) -> bool>;

fn review_of(operation: &'static str, kind: &'static str, name: &'static str) -> Matcher {
    Box::new(move |r| r["operation"] == operation && r["kind"]["kind"] == kind && r["name"] == name)
}

#[tokio::test]
async fn api_server_reviews_are_read_by_the_webhooks_reader() {
    let ca = TestCa::new("capture CA");
    let recorder = Recorder::start(&ca).await;
    let ns = namespace("captured", &[]).await;
    let hook = testcluster::unique("capture");
    let config = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": hook},
        "webhooks": [{"name": "capture.distrolessguard.dev", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 10,
            "clientConfig": {"url": format!("https://127.0.0.1:{}/capture", recorder.port),
                             "caBundle": base64::engine::general_purpose::STANDARD.encode(pem(&ca.cert_der))},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "rules": [{"apiGroups": ["", "apps", "batch"], "apiVersions": ["v1"],
                       "operations": ["CREATE", "UPDATE", "DELETE"], "scope": "Namespaced",
                       "resources": ["pods", "pods/ephemeralcontainers", "deployments", "cronjobs"]}]}]});
    apply(&config, &[]).await;

    // The API server reads webhook configurations from a watch: wait until a
    // review reaches the recorder before anything is recorded for keeps.
    wait_for(
        "the API server to call the recorder",
        Duration::from_secs(60),
        || async {
            let _ = kubectl_stdin(
                &["create", "--dry-run=server", "-f", "-"],
                &plain_pod(&ns, "warmup").to_string(),
            )
            .await;
            recorder.find(&|r| r["name"] == "warmup").map(|_| ())
        },
    )
    .await;

    apply(&pipeline_pod(&ns), &[]).await;
    apply(&plain_pod(&ns, "plain"), &[]).await;
    apply(&plain_pod(&ns, "dry"), &["--dry-run=server"]).await;
    apply(&probed_deployment(&ns), &[]).await;
    kubectl_ok(&[
        "set",
        "image",
        "-n",
        &ns,
        "deployment/checkout",
        "checkout=registry.example.com/shop/checkout:3.2.2",
    ])
    .await;
    apply(&shell_cronjob(&ns), &[]).await;
    let debugger = json!({"securityContext": {"runAsUser": 0}});
    let custom = std::env::temp_dir().join(format!("{hook}-debugger.json"));
    std::fs::write(&custom, debugger.to_string()).expect("debugger profile");
    kubectl_ok(&[
        "debug",
        "-n",
        &ns,
        "plain",
        "--image=registry.example.com/tools/debug:1",
        "-c",
        "debugger",
        "--custom",
        &custom.to_string_lossy(),
    ])
    .await;
    let _ = std::fs::remove_file(&custom);
    kubectl_ok(&["delete", "pod", "-n", &ns, "pipeline", "--wait=false"]).await;

    let cases: Vec<(&str, Matcher)> = vec![
        ("pod-shell-pipeline", review_of("CREATE", "Pod", "pipeline")),
        ("pod-create", review_of("CREATE", "Pod", "plain")),
        (
            "pod-create-dry-run",
            Box::new(|r| r["name"] == "dry" && r["dryRun"] == true),
        ),
        (
            "pod-create-by-replicaset",
            Box::new(|r| {
                r["operation"] == "CREATE"
                    && r["kind"]["kind"] == "Pod"
                    && r["userInfo"]["username"] == "system:serviceaccount:kube-system:replicaset-controller"
            }),
        ),
        ("deployment-exec-probe", review_of("CREATE", "Deployment", "checkout")),
        (
            "deployment-update-preexisting",
            review_of("UPDATE", "Deployment", "checkout"),
        ),
        ("cronjob-shell", review_of("CREATE", "CronJob", "cleanup")),
        (
            "pod-ephemeral-root-debugger",
            Box::new(|r| r["subResource"] == "ephemeralcontainers" && r["name"] == "plain"),
        ),
        ("pod-delete", review_of("DELETE", "Pod", "pipeline")),
    ];
    let mut captured = Vec::new();
    for (name, matches) in &cases {
        let body = wait_for(&format!("the {name} review"), Duration::from_secs(60), || async {
            recorder.find(matches.as_ref())
        })
        .await;
        captured.push((*name, body));
    }

    for (name, body) in &captured {
        let read: AdmissionReview = review::parse(body).unwrap_or_else(|e| panic!("{name}: the webhook's reader: {e}"));
        let request = read.request.unwrap_or_else(|| panic!("{name}: no request"));
        assert_eq!(read.api_version, review::API_VERSION, "{name}");
        match *name {
            "pod-delete" => {
                assert!(matches!(request.operation, Operation::Delete), "{name}");
                assert!(
                    request.object.is_none() && request.old_object.is_some(),
                    "{name}: a delete carries only the old object"
                );
            }
            "pod-ephemeral-root-debugger" => {
                assert_eq!(request.sub_resource.as_deref(), Some("ephemeralcontainers"));
                assert!(request.object.is_some() && request.old_object.is_some(), "{name}");
            }
            "pod-create-dry-run" => assert_eq!(request.dry_run, Some(true), "{name}"),
            _ => assert!(request.object.is_some(), "{name}: no object read"),
        }
    }
    // Go's encoder escapes `&`, `<` and `>`; the reader gives the text back.
    let (_, pipeline) = &captured[0];
    let raw = String::from_utf8_lossy(pipeline);
    assert!(
        raw.contains(r"\u0026\u0026") && raw.contains(r"\u003c"),
        "the API server's escapes: {raw}"
    );
    let read: AdmissionReview = review::parse(pipeline).expect("pipeline review");
    let object = format!("{:?}", read.request.and_then(|r| r.object));
    assert!(object.contains("&& exec /app 2>&1 | tee"), "{object}");

    if std::env::var_os("DISTROLESS_GUARD_RECAPTURE").is_some() {
        let dir = root().join("tests/data/captured");
        std::fs::create_dir_all(&dir).expect("tests/data/captured");
        for (name, body) in &captured {
            std::fs::write(dir.join(format!("{name}.json")), body).expect("writing a captured review");
        }
    }
    kubectl_ok(&["delete", "validatingwebhookconfiguration", &hook]).await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}
