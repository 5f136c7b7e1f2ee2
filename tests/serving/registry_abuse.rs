//! The registry path under abuse: a hand-written registry on 127.0.0.1 that
//! answers a manifest request with gigabytes, redirects to another host, names
//! a token endpoint on another host over plain HTTP, answers with an HTML error
//! page, or stalls in the middle of a layer. The inspector reads bounded bytes,
//! sends credentials nowhere but the registry, and gives up within its deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distroless_guard::image::credentials::Credentials;
use distroless_guard::image::{ImageError, Inspector, InspectorConfig, Platform};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the hostile server does with a request: (status line and headers, body, then stall?).
#[derive(Clone)]
enum Answer {
    /// A status, headers and a whole body.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// `200`, chunked, then this many MiB of junk (or until the client leaves).
    Endless(u64),
    /// `200` with a Content-Length of `total`, `sent` bytes of `body`, then silence.
    Stall { body: Vec<u8>, sent: usize },
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    line: String,
    authorization: Option<String>,
}

#[derive(Clone, Default)]
struct Hostile {
    routes: Arc<Mutex<HashMap<String, Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Bytes of bodies written so far.
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl Hostile {
    async fn start() -> (Hostile, SocketAddr) {
        let server = Hostile::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move { s.serve(conn).await });
            }
        });
        (server, addr)
    }

    fn route(&self, path: &str, answer: Answer) {
        self.routes.lock().unwrap().insert(path.to_string(), answer);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn serve(&self, mut conn: tokio::net::TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let line = head.lines().next().unwrap_or_default().to_string();
        let authorization = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            })
            .map(|(_, v)| v.trim().to_string());
        self.seen.lock().unwrap().push(Seen {
            line: line.clone(),
            authorization,
        });
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default();
        let answer = self.routes.lock().unwrap().get(path).cloned();
        let head_only = line.starts_with("HEAD");
        match answer.unwrap_or(Answer::Full(
            404,
            vec![],
            b"{\"errors\":[{\"code\":\"NOT_FOUND\"}]}".to_vec(),
        )) {
            Answer::Full(status, headers, body) => {
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = conn.write_all(out.as_bytes()).await;
                if !head_only {
                    let _ = conn.write_all(&body).await;
                    self.written
                        .fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Answer::Endless(mib) => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                let _ = conn.write_all(head.as_bytes()).await;
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..mib {
                    let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                    if conn.write_all(&framed).await.is_err() {
                        return;
                    }
                    self.written
                        .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = conn.write_all(b"0\r\n\r\n").await;
            }
            Answer::Stall { body, sent } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body[..sent]).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    }
}

fn json(status: u16, body: &serde_json::Value) -> Answer {
    let bytes = serde_json::to_vec(body).unwrap();
    Answer::Full(
        status,
        vec![(
            "content-type".into(),
            "application/vnd.oci.image.manifest.v1+json".into(),
        )],
        bytes,
    )
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn credentials_for(host: &str) -> Credentials {
    let config = serde_json::json!({"auths": {host: {"username": "robot", "password": "s3cret"}}});
    Credentials::from_docker_config(&serde_json::to_vec(&config).unwrap()).unwrap()
}

fn inspector(insecure: &[String], credentials: Credentials, timeout: Duration) -> Arc<Inspector> {
    Inspector::new(InspectorConfig {
        insecure_registries: insecure.to_vec(),
        credentials,
        request_timeout: timeout,
        ..InspectorConfig::default()
    })
    .expect("inspector")
}

async fn inspect(insp: &Arc<Inspector>, image: &str, deadline: Duration) -> ImageError {
    insp.inspect(image, &Platform::default(), Some(deadline))
        .await
        .expect_err("a hostile registry gives no verdict")
}

#[tokio::test]
async fn a_manifest_of_gigabytes_is_cut_off_at_the_limit() {
    let (registry, addr) = Hostile::start().await;
    registry.route("/v2/", Answer::Full(200, vec![], b"{}".to_vec()));
    // 3 GiB, chunked: no length to refuse it by.
    registry.route("/v2/huge/manifests/1", Answer::Endless(3 << 10));
    registry.route(
        "/v2/announced/manifests/1",
        Answer::Full(200, vec![], vec![b' '; 5 << 20]),
    );
    let insp = inspector(&[addr.to_string()], Credentials::default(), Duration::from_secs(10));
    let err = inspect(&insp, &format!("{addr}/huge:1"), Duration::from_secs(30)).await;
    assert!(matches!(err, ImageError::Limit { .. }), "{err}");
    assert!(err.to_string().contains("manifest of more than 4194304 bytes"), "{err}");
    let written = registry.written.load(std::sync::atomic::Ordering::Relaxed);
    // The limit plus what the sockets buffer, not gigabytes.
    assert!(written < 64 << 20, "the server wrote {written} bytes");
    let err = inspect(&insp, &format!("{addr}/announced:1"), Duration::from_secs(30)).await;
    assert!(
        err.to_string().contains("5242880 bytes announced (limit 4194304)"),
        "{err}"
    );
}

#[tokio::test]
async fn credentials_go_to_the_registry_only_not_to_a_plain_http_token_endpoint_elsewhere() {
    let (elsewhere, other) = Hostile::start().await;
    elsewhere.route("/token", json(200, &serde_json::json!({"token": "stolen"})));
    let (registry, addr) = Hostile::start().await;
    // "localhost" is another host than "127.0.0.1", as far as credentials go.
    let realm = format!("http://localhost:{}/token", other.port());
    registry.route(
        "/v2/",
        Answer::Full(
            401,
            vec![(
                "www-authenticate".into(),
                format!("Bearer realm=\"{realm}\",service=\"hostile\""),
            )],
            vec![],
        ),
    );
    let host = addr.to_string();
    let insp = inspector(
        &[host.clone(), format!("localhost:{}", other.port())],
        credentials_for(&host),
        Duration::from_secs(5),
    );
    let err = inspect(&insp, &format!("{host}/app:1"), Duration::from_secs(10)).await;
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("they were not sent"), "{err}");
    assert!(
        elsewhere.seen().iter().all(|s| s.authorization.is_none()),
        "{:?}",
        elsewhere.seen()
    );
}

#[tokio::test]
async fn a_redirect_to_another_host_carries_no_credentials() {
    let (elsewhere, other) = Hostile::start().await;
    let (registry, addr) = Hostile::start().await;
    registry.route(
        "/v2/",
        Answer::Full(
            401,
            vec![("www-authenticate".into(), "Basic realm=\"registry\"".into())],
            vec![],
        ),
    );
    registry.route(
        "/v2/app/manifests/1",
        Answer::Full(
            307,
            vec![(
                "location".into(),
                format!("http://localhost:{}/cdn/manifest", other.port()),
            )],
            vec![],
        ),
    );
    let host = addr.to_string();
    let insp = inspector(
        std::slice::from_ref(&host),
        credentials_for(&host),
        Duration::from_secs(5),
    );
    let err = inspect(&insp, &format!("{host}/app:1"), Duration::from_secs(10)).await;
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    let at_registry = registry.seen();
    let manifest = at_registry.iter().find(|s| s.line.contains("/manifests/")).unwrap();
    assert!(
        manifest
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic ")),
        "the registry itself gets the credentials: {manifest:?}"
    );
    let followed = elsewhere.seen();
    assert!(
        followed.iter().any(|s| s.line.contains("/cdn/manifest")),
        "{followed:?}"
    );
    assert!(followed.iter().all(|s| s.authorization.is_none()), "{followed:?}");
}

#[tokio::test]
async fn an_html_error_page_is_named_as_one() {
    let (registry, addr) = Hostile::start().await;
    registry.route("/v2/", Answer::Full(200, vec![], vec![]));
    let page = b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1><script>lots()</script></body></html>".to_vec();
    registry.route(
        "/v2/app/manifests/1",
        Answer::Full(502, vec![("content-type".into(), "text/html".into())], page.clone()),
    );
    registry.route(
        "/v2/ok/manifests/1",
        Answer::Full(200, vec![("content-type".into(), "text/html".into())], page),
    );
    let insp = inspector(&[addr.to_string()], Credentials::default(), Duration::from_secs(5));
    let err = inspect(&insp, &format!("{addr}/app:1"), Duration::from_secs(10)).await;
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains("502") && err.to_string().contains("HTML page"),
        "{err}"
    );
    assert!(!err.to_string().contains("<script>"), "{err}");
    // A 200 whose body is a page, not a manifest.
    let err = inspect(&insp, &format!("{addr}/ok:1"), Duration::from_secs(10)).await;
    assert!(matches!(err, ImageError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("HTML page"), "{err}");
}

#[tokio::test]
async fn a_layer_that_stalls_halfway_ends_within_the_deadline() {
    let (registry, addr) = Hostile::start().await;
    registry.route("/v2/", Answer::Full(200, vec![], vec![]));
    // A real tar, so that the stall is the only thing wrong with it: the half
    // that arrives holds a valid header and part of the file, and the reader
    // waits for the rest (bytes that are not a tar would be refused as
    // malformed as soon as they arrive, whichever came first).
    let layer = crate::support::registry::Layer::new()
        .file("data", &vec![7u8; 256 * 1024])
        .tar();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"User": "65532"},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}
    }))
    .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}]
    });
    registry.route("/v2/app/manifests/1", json(200, &manifest));
    registry.route(
        &format!("/v2/app/blobs/{}", digest(&config)),
        Answer::Full(200, vec![], config),
    );
    registry.route(
        &format!("/v2/app/blobs/{}", digest(&layer)),
        Answer::Stall {
            body: layer.clone(),
            sent: layer.len() / 2,
        },
    );
    let deadline = Duration::from_secs(3);
    // The read timeout is longer than the deadline: the deadline decides.
    let insp = inspector(&[addr.to_string()], Credentials::default(), Duration::from_secs(60));
    let started = std::time::Instant::now();
    let err = inspect(&insp, &format!("{addr}/app:1"), deadline).await;
    assert!(matches!(err, ImageError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < deadline + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Without a deadline, the read timeout ends the stalled download.
    let insp = inspector(&[addr.to_string()], Credentials::default(), Duration::from_secs(1));
    let err = insp
        .inspect(&format!("{addr}/app:1"), &Platform::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("layer"), "{err}");
}
