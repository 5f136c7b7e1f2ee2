//! A real OCI registry for tests: Debian's `docker-registry` (CNCF
//! distribution) started as a plain process on a free 127.0.0.1 port, and a
//! builder for images the tests make themselves (layer tars, config,
//! manifest, index), pushed with oci-client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use testcluster::process::Process;

pub const REGISTRY_BINARY: &str = "docker-registry";

/// The header each test registry adds to its answers, with a value of its own,
/// so the harness knows the registry answering is the one it started.
const IDENTITY_HEADER: &str = "X-Distroless-Guard-Test-Registry";

/// A running registry; stopped when dropped (and killed with the test
/// process: it runs under `testcluster::process`'s parent-death signal).
pub struct TestRegistry {
    pub addr: SocketAddr,
    process: Option<Process>,
    _dir: tempfile::TempDir,
}

/// The status of `GET path` and the value of the identity header, if any.
fn probe(addr: SocketAddr, path: &str) -> Option<(u16, Option<String>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let identity = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case(IDENTITY_HEADER)
            .then(|| value.trim().to_string())
    });
    Some((status, identity))
}

impl TestRegistry {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Held by this process until it ends (see testcluster::free_port).
        let port = testcluster::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let identity = format!("{}-{port}", std::process::id());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  headers:\n    {IDENTITY_HEADER}: [\"{identity}\"]\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut command = Command::new(REGISTRY_BINARY);
        command.arg("serve").arg(&config);
        let log = dir.path().join("registry.log");
        let mut process = Process::spawn("registry", command, &log).unwrap_or_else(|e| {
            panic!("cannot start {REGISTRY_BINARY} ({e}); install it with: apt-get install docker-registry")
        });
        let started = Instant::now();
        loop {
            match probe(addr, "/v2/") {
                Some((200, Some(id))) if id == identity => break,
                Some((status, id)) if id.as_deref() != Some(identity.as_str()) => {
                    panic!("{addr} answered {status} but is not the registry this test started (identity {id:?})")
                }
                _ => {}
            }
            if let Some(status) = process.exited() {
                panic!(
                    "{REGISTRY_BINARY} on {addr} exited ({status}) before it served:\n{}",
                    testcluster::process::tail(&log, 20).join("\n")
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "registry on {addr} did not come up:\n{}",
                testcluster::process::tail(&log, 20).join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TestRegistry {
            addr,
            process: Some(process),
            _dir: dir,
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// Stops the registry now (for "registry down" tests).
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a layer is compressed.
#[derive(Clone, Copy, Debug)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A layer built entry by entry.
#[derive(Default)]
pub struct Layer {
    builder: Option<tar::Builder<Vec<u8>>>,
}

impl Layer {
    pub fn new() -> Self {
        Layer {
            builder: Some(tar::Builder::new(Vec::new())),
        }
    }

    fn append(mut self, path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>, mode: u32) -> Self {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        let builder = self.builder.as_mut().unwrap();
        match link {
            Some(target) => builder.append_link(&mut header, path, target).unwrap(),
            None => builder.append_data(&mut header, path, data).unwrap(),
        }
        self
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.append(path, tar::EntryType::Regular, data, None, 0o755)
    }

    /// A file whose name is written into the header as is, even `../..` names
    /// a careful tar writer refuses (hostile layers have them).
    pub fn raw_file(mut self, name: &str, data: &[u8]) -> Self {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o755);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.as_mut().unwrap().append(&header, data).unwrap();
        self
    }

    pub fn dir(self, path: &str) -> Self {
        self.append(path, tar::EntryType::Directory, &[], None, 0o755)
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.append(path, tar::EntryType::Symlink, &[], Some(target), 0o777)
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.append(path, tar::EntryType::Link, &[], Some(target), 0o755)
    }

    pub fn whiteout(self, path: &str) -> Self {
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
        let name = if dir.is_empty() {
            format!(".wh.{base}")
        } else {
            format!("{dir}/.wh.{base}")
        };
        self.file(&name, b"")
    }

    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    pub fn tar(mut self) -> Vec<u8> {
        self.builder.take().unwrap().into_inner().unwrap()
    }
}

pub fn compress(tar: &[u8], how: Compression) -> (Vec<u8>, &'static str) {
    match how {
        Compression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(tar).unwrap();
            (enc.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Compression::Zstd => (
            ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

pub fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A layer ready to push: its blob and media type.
#[derive(Clone)]
pub struct Blob {
    pub data: Vec<u8>,
    pub media_type: String,
}

impl Blob {
    pub fn layer(tar: Vec<u8>, how: Compression) -> Self {
        let (data, media_type) = compress(&tar, how);
        Blob {
            data,
            media_type: media_type.to_string(),
        }
    }

    pub fn digest(&self) -> String {
        digest(&self.data)
    }
}

/// An image: layers bottom first, and the config's user.
pub struct Image {
    pub layers: Vec<Blob>,
    pub user: Option<String>,
    pub os: String,
    pub arch: String,
    pub annotations: Value,
}

impl Image {
    pub fn new(layers: Vec<Blob>) -> Self {
        Image {
            layers,
            user: None,
            os: "linux".into(),
            arch: "amd64".into(),
            annotations: json!({}),
        }
    }

    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn platform(mut self, os: &str, arch: &str) -> Self {
        self.os = os.into();
        self.arch = arch.into();
        self
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations[key] = json!(value);
        self
    }
}

fn client() -> oci_client::Client {
    oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

async fn push_blob(client: &oci_client::Client, reference: &Reference, data: &[u8]) -> String {
    let d = digest(data);
    client.push_blob(reference, data.to_vec(), &d).await.unwrap();
    d
}

/// Pushes an image under `reference` (e.g. `127.0.0.1:5000/app:1`); returns the manifest digest.
pub async fn push(reference: &str, image: &Image) -> String {
    push_sized(reference, image).await.0
}

async fn push_sized(reference: &str, image: &Image) -> (String, usize) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reference: Reference = reference.parse().unwrap();
    let client = client();
    client
        .store_auth_if_needed(reference.resolve_registry(), &RegistryAuth::Anonymous)
        .await;
    let diff_ids: Vec<String> = image.layers.iter().map(|l| l.digest()).collect();
    let mut config = json!({"architecture": image.arch, "os": image.os,
        "config": {"Entrypoint": ["/app"], "Labels": {"org.opencontainers.image.source": "https://example.com/app"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    if let Some(user) = &image.user {
        config["config"]["User"] = json!(user);
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = push_blob(&client, &reference, &config_bytes).await;
    let mut layers = Vec::new();
    for layer in &image.layers {
        let d = push_blob(&client, &reference, &layer.data).await;
        layers.push(json!({"mediaType": layer.media_type, "digest": d, "size": layer.data.len()}));
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": layers, "annotations": image.annotations});
    push_manifest(
        &client,
        &reference,
        &manifest,
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await
}

async fn push_manifest(
    client: &oci_client::Client,
    reference: &Reference,
    manifest: &Value,
    media_type: &str,
) -> (String, usize) {
    let bytes = serde_json::to_vec(manifest).unwrap();
    let (d, size) = (digest(&bytes), bytes.len());
    client
        .push_manifest_raw(reference, bytes, http::HeaderValue::from_str(media_type).unwrap())
        .await
        .unwrap();
    (d, size)
}

/// Pushes a multi-platform index whose entries are the given images; returns the index digest.
pub async fn push_index(reference: &str, images: &[Image]) -> String {
    let parsed: Reference = reference.parse().unwrap();
    let mut entries = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let platform_ref = format!("{}/{}:platform-{i}", parsed.registry(), parsed.repository());
        let (d, size) = push_sized(&platform_ref, image).await;
        entries.push(
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": size,
            "platform": {"os": image.os, "architecture": image.arch}}),
        );
    }
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let client = client();
    client
        .store_auth_if_needed(parsed.resolve_registry(), &RegistryAuth::Anonymous)
        .await;
    push_manifest(&client, &parsed, &index, "application/vnd.oci.image.index.v1+json")
        .await
        .0
}

/// A front that forwards to a registry and records the request line
/// (`GET /v2/...`) of every request it passes, to count what a client asks.
pub struct CountingFront {
    pub addr: SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[allow(dead_code)]
impl CountingFront {
    /// Starts on a free port in front of `upstream` (needs a tokio runtime).
    pub async fn start(upstream: SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                    });
                    // Registry reads have no body: every head ends a request.
                    let mut pending = Vec::new();
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let n = match in_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&pending[..end]).to_string();
                            if let Some(line) = head.lines().next() {
                                seen.lock().unwrap().push(line.to_string());
                            }
                            pending.drain(..end + 4);
                        }
                        if out_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    back.abort();
                });
            }
        });
        CountingFront { addr, requests }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The request lines so far (`GET /v2/team/app/manifests/1 HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}
