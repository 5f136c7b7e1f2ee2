//! Admission where a pod's image decides the verdict: the real webhook over
//! HTTPS, inspecting images pushed to a real registry on 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::registry::{Blob, Compression, Image, Layer, TestRegistry, push};
use crate::support::webhook::TestWebhook;
use distroless_guard::admission::{Admission, NameOnly};
use distroless_guard::api::DistrolessPolicy;
use distroless_guard::image::{Inspector, InspectorConfig};
use distroless_guard::policy::PolicySet;
use serde_json::{Value, json};

fn pod_review(image: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "e911857d-c318-11e8-bbad-025000000001",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "shop", "operation": "CREATE",
        "userInfo": {"username": "dev"},
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                     "containers": [{"name": "web", "image": image, "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}}]}}}}))
    .unwrap()
}

fn response(bytes: &[u8]) -> Value {
    serde_json::from_slice::<Value>(bytes).unwrap()["response"].clone()
}

fn policy(yaml: &str) -> PolicySet {
    PolicySet::new(&[serde_saphyr::from_str::<DistrolessPolicy>(yaml).unwrap()]).unwrap()
}

async fn images(registry: &TestRegistry) -> (String, String) {
    let shell = registry.image("shop/web:debian");
    let distroless = registry.image("shop/web:distroless");
    let debian = Layer::new()
        .symlink("bin", "usr/bin")
        .file("usr/bin/dash", b"ELF")
        .symlink("usr/bin/sh", "dash")
        .tar();
    push(
        &shell,
        &Image::new(vec![Blob::layer(debian, Compression::Gzip)]).user("65532"),
    )
    .await;
    let app = Layer::new()
        .file("app", b"ELF")
        .file("etc/passwd", b"nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n")
        .tar();
    push(
        &distroless,
        &Image::new(vec![Blob::layer(app, Compression::Gzip)]).user("nonroot"),
    )
    .await;
    (shell, distroless)
}

fn admission(policies: PolicySet, insecure: &str) -> Admission {
    let inspector = Inspector::new(InspectorConfig {
        insecure_registries: vec![insecure.to_string()],
        ..Default::default()
    })
    .expect("inspector");
    Admission::new(policies, Arc::new(NameOnly)).with_inspector(inspector)
}

#[tokio::test]
async fn an_image_with_a_shell_is_denied_and_a_distroless_one_allowed() {
    let registry = TestRegistry::start();
    let (shell, distroless) = images(&registry).await;
    let hook = TestWebhook::start_with(admission(PolicySet::builtin_default(), &registry.host())).await;
    let mut conn = hook.connect().await;

    let resp = response(&conn.post("/validate", pod_review(&shell)).await.1);
    assert_eq!(resp["allowed"], false, "{resp}");
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("[image-has-shell]") && message.contains("/usr/bin/sh"),
        "{message}"
    );
    assert!(message.contains("spec.containers[0].image"), "{message}");

    let resp = response(&conn.post("/validate", pod_review(&distroless)).await.1);
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("warnings").is_none(), "{resp}");
}

/// A TCP proxy that never answers: every registry call through it times out.
async fn black_hole() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

#[tokio::test]
async fn an_image_that_cannot_be_read_in_time_follows_on_error() {
    let hole = black_hole().await;
    let image = format!("{hole}/shop/web:1");
    let warn = TestWebhook::start_with(admission(
        policy("apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: p}\nspec: {timeoutSeconds: 1}\n"),
        &hole.to_string(),
    ))
    .await;
    let started = Instant::now();
    let resp = warn.review("/validate", pod_review(&image)).await;
    let took = started.elapsed();
    assert_eq!(resp["allowed"], true, "{resp}");
    let warning = resp["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("[image-unverified]") && warning.contains("within 1s"),
        "{warning}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "answered within the policy's deadline: {took:?}"
    );

    let deny = TestWebhook::start_with(admission(
        policy("apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: p}\nspec: {timeoutSeconds: 1, onError: Deny}\n"),
        &hole.to_string(),
    ))
    .await;
    let resp = deny.review("/validate", pod_review(&image)).await;
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("[image-unverified]")
    );
}

#[test]
fn check_inspect_images_applies_the_image_rules_offline() {
    let registry = TestRegistry::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (shell, distroless) = runtime.block_on(images(&registry));
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pods.yaml");
    let pod = |name: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  securityContext: {{runAsUser: 65532}}\n  containers:\n  - {{name: app, image: \"{image}\"}}\n"
        )
    };
    std::fs::write(
        &manifest,
        format!("{}---\n{}", pod("with-shell", &shell), pod("distroless", &distroless)),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
        check.args(["check", "-o", "json", "-f"]).arg(&manifest).args(extra);
        crate::command::output(check)
    };
    let offline = run(&[]);
    assert_eq!(
        offline.status.code(),
        Some(0),
        "without --inspect-images no registry is read"
    );
    let out = run(&["--inspect-images", "--insecure-registry", &registry.host()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results[0]["violations"][0]["rule"], "image-has-shell");
    assert_eq!(results[1]["allowed"], true);
}
