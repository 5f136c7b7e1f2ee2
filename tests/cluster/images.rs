//! Image rules in a cluster, against a real registry on 127.0.0.1: an image
//! that changes under its tag is judged afresh for every new pod, so the
//! ReplicaSet's `FailedCreate` Event carries our denial.

use std::time::Duration;

use serde_json::json;

use crate::registry::{Blob, Compression, Image, Layer, TestRegistry, push};
use crate::support::*;

async fn push_distroless(reference: &str) {
    let app = Layer::new()
        .file("app", b"ELF")
        .file("etc/passwd", b"nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n")
        .tar();
    push(
        reference,
        &Image::new(vec![Blob::layer(app, Compression::Gzip)]).user("65532"),
    )
    .await;
}

async fn push_with_shell(reference: &str) {
    let debian = Layer::new()
        .symlink("bin", "usr/bin")
        .file("usr/bin/dash", b"ELF")
        .symlink("usr/bin/sh", "dash")
        .tar();
    push(
        reference,
        &Image::new(vec![Blob::layer(debian, Compression::Gzip)]).user("65532"),
    )
    .await;
}

#[tokio::test]
async fn pods_of_a_tag_repushed_with_a_shell_are_denied_and_the_replica_set_says_why() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let release = Release::install_inspecting("distroless-guard-img", &host).await;
    let ns = release.namespace("img", &[]).await;
    let deny = testcluster::unique("img-deny");
    create_policy(&policy(&deny, &ns, json!({"action": "Deny"}))).await;
    release.wait_serving(&ns).await;

    let image = registry.image(&format!("{ns}/web:1"));
    push_distroless(&image).await;
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": image}]}}}});
    let out = kubectl_stdin(&["apply", "-f", "-"], &deployment.to_string()).await;
    assert!(out.status.success(), "a distroless image was refused: {}", text(&out).1);
    wait_for("the distroless pod", Duration::from_secs(60), || async {
        let d = get_json(&["deployment", "web", "-n", &ns]).await?;
        (d["status"]["readyReplicas"] == 1).then_some(())
    })
    .await;

    // The same tag now holds an image with a shell; each replica of the
    // webhook judges it afresh once its own cache entry for the tag (1 s in
    // tests) has gone.
    push_with_shell(&image).await;
    wait_until_denied_for_shell(&release, &ns, &image).await;
    let out = kubectl(&["scale", "deployment/web", "-n", &ns, "--replicas=2"]).await;
    assert!(out.status.success(), "{}", text(&out).1);

    let event = wait_for(
        "the ReplicaSet's FailedCreate Event",
        Duration::from_secs(60),
        || async {
            let events = get_json(&["events", "-n", &ns, "--field-selector", "reason=FailedCreate"]).await?;
            events["items"]
                .as_array()?
                .iter()
                .find(|e| e["involvedObject"]["kind"] == "ReplicaSet")
                .cloned()
        },
    )
    .await;
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("admission webhook \"validate.distrolessguard.dev\" denied the request")
            && message.contains("[image-has-shell]")
            && message.contains("/usr/bin/dash"),
        "{message}"
    );
    let d = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_eq!(d["status"]["readyReplicas"], 1, "the second pod was never created");

    delete_policy(&deny).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_private_image_is_read_with_the_pods_image_pull_secret_under_the_charts_rbac() {
    let registry = TestRegistry::start();
    let front = basic_auth_front(registry.addr).await;
    let release = Release::install_inspecting("distroless-guard-pull", &front.to_string()).await;
    let ns = release.namespace("pull", &[]).await;
    let deny = testcluster::unique("pull-deny");
    create_policy(&policy(&deny, &ns, json!({"action": "Deny"}))).await;
    release.wait_serving(&ns).await;
    push_with_shell(&registry.image(&format!("{ns}/web:1"))).await;
    let private = format!("{front}/{ns}/web:1");

    // The pull secret, as a developer would create it.
    let out = kubectl(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "-n",
        &ns,
        &format!("--docker-server={front}"),
        "--docker-username=bot",
        "--docker-password=s3cret",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out).1);
    let pod = |name: &str, secret: bool| {
        // Another tag without the secret: a verdict already cached for the first would answer.
        let image = if secret {
            private.clone()
        } else {
            format!("{front}/{ns}/web:other")
        };
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "web", "image": image}]}});
        if secret {
            p["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
        }
        p.to_string()
    };
    // With the secret, the operator reads the image and finds the shell.
    let out = kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &pod("with", true)).await;
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("[image-has-shell]"), "{err}");
    // Without it the registry refuses: image-unverified, a warning by default.
    let out = kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &pod("without", false)).await;
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Warning:") && err.contains("[image-unverified]"), "{err}");
    assert!(
        !release
            .audit_events()
            .iter()
            .any(|e| e.pointer("/responseStatus/code") == Some(&json!(403))),
        "the chart's RBAC refused the secret read"
    );

    delete_policy(&deny).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// A registry front that demands HTTP Basic credentials (bot:s3cret) on the
/// first request of every connection, then forwards to the real registry.
async fn basic_auth_front(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let expected = "authorization: basic Ym90OnMzY3JldA=="; // base64("bot:s3cret")
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match inbound.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let has_credentials = String::from_utf8_lossy(&head).lines().any(|l| {
                    l.to_lowercase().starts_with("authorization:")
                        && l.ends_with(&expected["authorization: basic ".len()..])
                });
                if !has_credentials {
                    let _ = inbound
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await
                    && outbound.write_all(&head).await.is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}
