//! Reads images from their registry with `oci-client`: tag to digest, manifest
//! or index, platform, config, then layers top-down through the layer scanner.
//! Verdicts are cached by manifest digest, layer findings by layer digest, tags
//! for a short time; concurrent inspections of one image share one flight, and
//! every inspection can be bounded by a deadline while it finishes in the
//! background to warm the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, Shared};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::cache::{Bounded, Expiring};
use super::credentials::Credentials;
use super::layer::{self, LayerFacts, LayerLimits};
use super::view::{MergedView, uid_in_passwd};
use super::{Evidence, ImageError, ImageReport, Platform, reference};

const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ACCEPTED: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];

/// How the inspector reaches registries and what it allows.
#[derive(Clone, Debug)]
pub struct InspectorConfig {
    /// `host:port` of registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub credentials: Credentials,
    pub layer_limits: LayerLimits,
    pub max_manifest_bytes: usize,
    pub max_config_bytes: u64,
    /// Compressed bytes fetched for one image at most.
    pub max_image_bytes: u64,
    pub max_layers: usize,
    /// How long a tag keeps pointing at the digest last seen.
    pub tag_ttl: Duration,
    pub verdict_cache_entries: usize,
    pub verdict_cache_bytes: usize,
    pub layer_cache_entries: usize,
    pub layer_cache_bytes: usize,
    /// Connect and read timeout of every registry request.
    pub request_timeout: Duration,
}

impl Default for InspectorConfig {
    fn default() -> Self {
        InspectorConfig {
            insecure_registries: Vec::new(),
            credentials: Credentials::default(),
            layer_limits: LayerLimits::default(),
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 4 << 20,
            max_image_bytes: 8 << 30,
            max_layers: 256,
            tag_ttl: Duration::from_secs(30),
            verdict_cache_entries: 8192,
            verdict_cache_bytes: 64 << 20,
            layer_cache_entries: 32768,
            layer_cache_bytes: 256 << 20,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// (manifest or index digest, platform choice) -> platform manifest digests.
type PlatformCache = Bounded<(String, Platform), Arc<Vec<String>>>;

type Flight = Shared<BoxFuture<'static, Result<Arc<Vec<Arc<ImageReport>>>, ImageError>>>;

/// A registry client and the credentials it speaks with.
#[derive(Clone)]
struct Session {
    client: Client,
    auth: RegistryAuth,
}

pub struct Inspector {
    client: Client,
    /// Clients for extra credentials (a pod's imagePullSecrets), by fingerprint:
    /// oci-client keeps one login per registry and client.
    credentialed: Mutex<HashMap<u64, Client>>,
    config: InspectorConfig,
    verdicts: Mutex<Bounded<String, Arc<ImageReport>>>,
    /// (manifest or index digest, platform choice) -> the platform manifest digests judged.
    platforms: Mutex<PlatformCache>,
    layers: Mutex<Bounded<String, Arc<LayerFacts>>>,
    tags: Mutex<Expiring<String, String>>,
    inflight: Mutex<HashMap<(String, Platform, u64), Flight>>,
    bytes_fetched: AtomicU64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<PlatformSpec>,
}

#[derive(Deserialize, Default)]
struct PlatformSpec {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl PlatformSpec {
    fn name(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct ConfigDoc {
    /// `os`, `architecture` and `variant`, as in an index entry.
    #[serde(flatten)]
    platform: PlatformSpec,
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(default, rename = "User")]
    user: Option<String>,
    #[serde(default, rename = "Labels")]
    labels: Option<HashMap<String, String>>,
    #[serde(default, rename = "Entrypoint")]
    entrypoint: Option<Vec<String>>,
    #[serde(default, rename = "Cmd")]
    cmd: Option<Vec<String>>,
}

const BASE_NAME: &str = "org.opencontainers.image.base.name";

/// Layers fetched and scanned at once, top-down.
const LAYERS_IN_PARALLEL: usize = 3;

impl Inspector {
    pub fn new(config: InspectorConfig) -> Arc<Self> {
        // rustls needs a process-wide crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Self::new_client(&config);
        Arc::new(Inspector {
            client,
            credentialed: Mutex::new(HashMap::new()),
            verdicts: Mutex::new(Bounded::new(config.verdict_cache_entries, config.verdict_cache_bytes)),
            platforms: Mutex::new(Bounded::new(config.verdict_cache_entries, config.verdict_cache_bytes)),
            layers: Mutex::new(Bounded::new(config.layer_cache_entries, config.layer_cache_bytes)),
            tags: Mutex::new(Expiring::new(config.tag_ttl, 65536)),
            inflight: Mutex::new(HashMap::new()),
            bytes_fetched: AtomicU64::new(0),
            config,
        })
    }

    /// Entries and bytes held by the verdict cache and by the layer cache.
    pub fn cache_usage(&self) -> ((usize, usize), (usize, usize)) {
        let v = Self::lock(&self.verdicts);
        let l = Self::lock(&self.layers);
        ((v.len(), v.bytes()), (l.len(), l.bytes()))
    }

    /// Compressed bytes fetched from registries since the inspector was made.
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_fetched.load(Ordering::Relaxed)
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        match m.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn new_client(config: &InspectorConfig) -> Client {
        let protocol = if config.insecure_registries.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(config.insecure_registries.clone())
        };
        Client::new(ClientConfig {
            protocol,
            read_timeout: Some(config.request_timeout),
            connect_timeout: Some(config.request_timeout),
            ..ClientConfig::default()
        })
    }

    /// The client and credentials for a reference: `extra` (a pod's pull
    /// secrets) first, then the inspector's own, else anonymous.
    fn session_for(&self, reference: &Reference, extra: Option<&Credentials>) -> Session {
        let lookup = |creds: &Credentials| {
            creds
                .for_host(reference.registry())
                .or_else(|| creds.for_host(reference.resolve_registry()))
                .map(|(u, p)| RegistryAuth::Basic(u.to_string(), p.to_string()))
        };
        if let Some((extra, auth)) = extra.and_then(|e| lookup(e).map(|a| (e, a))) {
            let mut clients = Self::lock(&self.credentialed);
            if clients.len() > 256 {
                clients.clear();
            }
            let client = clients
                .entry(extra.fingerprint())
                .or_insert_with(|| Self::new_client(&self.config))
                .clone();
            return Session { client, auth };
        }
        let auth = lookup(&self.config.credentials).unwrap_or(RegistryAuth::Anonymous);
        Session {
            client: self.client.clone(),
            auth,
        }
    }

    /// Inspects an image, sharing the work with any concurrent inspection of
    /// the same image. With a deadline, gives up waiting when it passes; the
    /// inspection goes on in the background and fills the cache.
    pub async fn inspect(
        self: &Arc<Self>,
        image: &str,
        options: &Platform,
        deadline: Option<Duration>,
    ) -> Result<Arc<Vec<Arc<ImageReport>>>, ImageError> {
        self.inspect_as(image, options, deadline, None).await
    }

    /// [`Inspector::inspect`] with extra credentials (a pod's imagePullSecrets).
    pub async fn inspect_as(
        self: &Arc<Self>,
        image: &str,
        options: &Platform,
        deadline: Option<Duration>,
        extra: Option<Arc<Credentials>>,
    ) -> Result<Arc<Vec<Arc<ImageReport>>>, ImageError> {
        // Fast path: a tag seen recently whose verdicts are cached needs no task at all.
        if let Some(hit) = self.cached_by_tag(image, options) {
            return Ok(Arc::new(hit));
        }
        let key = (
            image.to_string(),
            options.clone(),
            extra.as_ref().map_or(0, |c| c.fingerprint()),
        );
        let flight = {
            let mut inflight = Self::lock(&self.inflight);
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let this = self.clone();
                    let (image_owned, opts) = (image.to_string(), options.clone());
                    let key_done = key.clone();
                    let task = tokio::spawn(async move {
                        let result = this
                            .inspect_fetching(&image_owned, &opts, extra.as_deref())
                            .await
                            .map(Arc::new);
                        Self::lock(&this.inflight).remove(&key_done);
                        result
                    });
                    let image_err = image.to_string();
                    let f: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(ImageError::Malformed {
                                image: image_err,
                                reason: format!("inspection crashed: {e}"),
                            })
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, f.clone());
                    f
                }
            }
        };
        match deadline {
            None => flight.await,
            Some(d) => tokio::time::timeout(d, flight).await.unwrap_or_else(|_| {
                Err(ImageError::Timeout {
                    image: image.to_string(),
                    seconds: d.as_secs_f64(),
                })
            }),
        }
    }

    /// Resolves a tag to its manifest digest (cached for `tag_ttl`).
    async fn resolve_digest(
        &self,
        image: &str,
        reference: &Reference,
        session: &Session,
    ) -> Result<String, ImageError> {
        if let Some(d) = reference.digest() {
            return Ok(d.to_string());
        }
        let key = reference.whole();
        if let Some(d) = Self::lock(&self.tags).get(&key, Instant::now()) {
            return Ok(d);
        }
        let digest = session
            .client
            .fetch_manifest_digest(reference, &session.auth)
            .await
            .map_err(|e| classify(image, e))?;
        Self::lock(&self.tags).insert(key, digest.clone(), Instant::now());
        Ok(digest)
    }

    async fn fetch_manifest(
        &self,
        image: &str,
        reference: &Reference,
        session: &Session,
    ) -> Result<ManifestDoc, ImageError> {
        let (bytes, _) = session
            .client
            .pull_manifest_raw(reference, &session.auth, ACCEPTED)
            .await
            .map_err(|e| classify(image, e))?;
        self.bytes_fetched.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() > self.config.max_manifest_bytes {
            return Err(ImageError::Limit {
                image: image.into(),
                reason: format!(
                    "manifest of {} bytes (limit {})",
                    bytes.len(),
                    self.config.max_manifest_bytes
                ),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Malformed {
            image: image.into(),
            reason: format!("manifest: {e}"),
        })
    }

    /// The verdicts known for an image whose digest is known (pinned, or a tag seen within `tag_ttl`).
    fn cached_by_tag(&self, image: &str, options: &Platform) -> Option<Vec<Arc<ImageReport>>> {
        let reference = reference::parse(image).ok()?;
        let digest = match reference.digest() {
            Some(d) => d.to_string(),
            None => Self::lock(&self.tags).get(&reference.whole(), Instant::now())?,
        };
        self.cached(image, &digest, options)
    }

    /// The verdicts already known for a resolved digest, without any fetch.
    fn cached(&self, image: &str, digest: &str, options: &Platform) -> Option<Vec<Arc<ImageReport>>> {
        let platforms = Self::lock(&self.platforms).get(&(digest.to_string(), options.clone()))?;
        let mut verdicts = Self::lock(&self.verdicts);
        platforms
            .iter()
            .map(|d| verdicts.get(d).map(|r| renamed(&r, image)))
            .collect()
    }

    async fn inspect_fetching(
        &self,
        image: &str,
        options: &Platform,
        extra: Option<&Credentials>,
    ) -> Result<Vec<Arc<ImageReport>>, ImageError> {
        let reference = reference::parse(image)?;
        let session = self.session_for(&reference, extra);
        let digest = self.resolve_digest(image, &reference, &session).await?;
        if let Some(hit) = self.cached(image, &digest, options) {
            return Ok(hit);
        }
        let reports = self
            .inspect_digest(image, &reference, &session, &digest, options)
            .await?;
        let digests: Vec<String> = reports.iter().map(|r| r.digest.clone()).collect();
        let weight = digests.iter().map(|d| d.len() + 24).sum::<usize>() + digest.len() + 64;
        Self::lock(&self.platforms).insert((digest, options.clone()), Arc::new(digests), weight);
        Ok(reports)
    }

    async fn inspect_digest(
        &self,
        image: &str,
        reference: &Reference,
        session: &Session,
        digest: &str,
        options: &Platform,
    ) -> Result<Vec<Arc<ImageReport>>, ImageError> {
        let (reference, session, digest) = (reference.clone(), session.clone(), digest.to_string());
        let pinned = reference.clone_with_digest(digest.clone());
        let manifest = self.fetch_manifest(image, &pinned, &session).await?;

        let is_index = manifest.manifests.is_some()
            || matches!(
                manifest.media_type.as_deref(),
                Some(MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST)
            );
        if !is_index {
            let report = self
                .inspect_manifest(image, &reference, &session, &digest, manifest, None)
                .await?;
            if let Platform::One(want) = options
                && !platform_matches(&report.platform, want)
                && report.platform != "/"
            {
                return Err(ImageError::NoPlatform {
                    image: image.into(),
                    platform: want.clone(),
                    available: report.platform.clone(),
                });
            }
            return Ok(vec![report]);
        }

        let entries: Vec<Descriptor> = manifest
            .manifests
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.platform.as_ref().is_some_and(|p| p.os != "unknown"))
            .collect();
        let available = entries
            .iter()
            .filter_map(|d| d.platform.as_ref().map(PlatformSpec::name))
            .collect::<Vec<_>>()
            .join(", ");
        let chosen: Vec<&Descriptor> = match options {
            Platform::All => entries.iter().collect(),
            Platform::One(want) => entries
                .iter()
                .filter(|d| d.platform.as_ref().is_some_and(|p| platform_matches(&p.name(), want)))
                .take(1)
                .collect(),
        };
        if chosen.is_empty() {
            let platform = match options {
                Platform::One(p) => p.clone(),
                Platform::All => "any".into(),
            };
            return Err(ImageError::NoPlatform {
                image: image.into(),
                platform,
                available,
            });
        }
        let mut reports = Vec::new();
        for entry in chosen {
            if !matches!(
                entry.media_type.as_str(),
                MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST | ""
            ) {
                continue;
            }
            let platform_ref = reference.clone_with_digest(entry.digest.clone());
            let platform_manifest = self.fetch_manifest(image, &platform_ref, &session).await?;
            let platform = entry.platform.as_ref().map(PlatformSpec::name);
            reports.push(
                self.inspect_manifest(image, &reference, &session, &entry.digest, platform_manifest, platform)
                    .await?,
            );
        }
        Ok(reports)
    }

    async fn inspect_manifest(
        &self,
        image: &str,
        reference: &Reference,
        session: &Session,
        digest: &str,
        manifest: ManifestDoc,
        platform: Option<String>,
    ) -> Result<Arc<ImageReport>, ImageError> {
        if let Some(hit) = Self::lock(&self.verdicts).get(&digest.to_string()) {
            return Ok(renamed(&hit, image));
        }
        let malformed = |reason: &str| ImageError::Malformed {
            image: image.into(),
            reason: reason.into(),
        };
        let config_desc = manifest.config.ok_or_else(|| malformed("manifest has no config"))?;
        let layers = manifest.layers.unwrap_or_default();
        if layers.len() > self.config.max_layers {
            return Err(ImageError::Limit {
                image: image.into(),
                reason: format!("{} layers (limit {})", layers.len(), self.config.max_layers),
            });
        }
        let total: u64 = layers.iter().map(|l| l.size).sum();
        if total > self.config.max_image_bytes {
            return Err(ImageError::Limit {
                image: image.into(),
                reason: format!("{total} bytes of layers (limit {})", self.config.max_image_bytes),
            });
        }
        let config = self.fetch_config(image, reference, session, &config_desc).await?;
        let run = config.config.unwrap_or_default();
        let user = run.user.unwrap_or_default();
        let platform = platform.unwrap_or_else(|| config.platform.name());
        let base_image = manifest
            .annotations
            .as_ref()
            .and_then(|a| a.get(BASE_NAME).cloned())
            .or_else(|| run.labels.as_ref().and_then(|l| l.get(BASE_NAME).cloned()));

        // Top layer first, a few layers at a time; stop once a shell, a package
        // manager and the user are all proven (lower layers cannot change that).
        let mut scanned: Vec<(String, Arc<LayerFacts>)> = Vec::new();
        let top_down: Vec<&Descriptor> = layers.iter().rev().collect();
        for window in top_down.chunks(LAYERS_IN_PARALLEL) {
            let fetched =
                futures_util::future::join_all(window.iter().map(|d| self.layer_facts(image, reference, session, d)))
                    .await;
            for (desc, facts) in window.iter().zip(fetched) {
                scanned.insert(0, (desc.digest.clone(), facts?));
            }
            let view = MergedView::merge(&scanned);
            let settled_user = user_uid(&user, view.passwd().map(|(t, _)| t)).is_some();
            if settled_user && !view.shells().is_empty() && !view.package_managers().0.is_empty() {
                break;
            }
        }
        let view = MergedView::merge(&scanned);
        let shells = view.shells();
        let (package_managers, pm_evidence) = view.package_managers();
        let databases = view.package_databases();
        let passwd = view.passwd();
        let uid = user_uid(&user, passwd.map(|(t, _)| t));
        let mut evidence: Vec<Evidence> = shells
            .iter()
            .cloned()
            .chain(pm_evidence)
            .chain(databases.iter().cloned())
            .collect();
        let name = user.split(':').next().unwrap_or_default();
        if let Some((_, layer)) = passwd.filter(|_| !name.is_empty() && name.parse::<u32>().is_err()) {
            evidence.push(Evidence {
                path: "/etc/passwd".into(),
                layer: layer.to_string(),
            });
        }
        let report = Arc::new(ImageReport {
            image: image.to_string(),
            digest: digest.to_string(),
            platform,
            user,
            uid,
            distroless: shells.is_empty() && package_managers.is_empty(),
            shells: shells.into_iter().map(|e| e.path).collect(),
            package_managers,
            package_databases: databases.into_iter().map(|e| e.path).collect(),
            evidence,
            entrypoint: run.entrypoint.clone().unwrap_or_default(),
            cmd: run.cmd.clone().unwrap_or_default(),
            base_image,
        });
        let weight = report.weight();
        Self::lock(&self.verdicts).insert(digest.to_string(), report.clone(), weight);
        Ok(report)
    }

    async fn fetch_config(
        &self,
        image: &str,
        reference: &Reference,
        session: &Session,
        desc: &Descriptor,
    ) -> Result<ConfigDoc, ImageError> {
        if desc.size > self.config.max_config_bytes {
            return Err(ImageError::Limit {
                image: image.into(),
                reason: format!("config of {} bytes (limit {})", desc.size, self.config.max_config_bytes),
            });
        }
        let mut out = Vec::new();
        session
            .client
            .pull_blob(reference, desc.digest.as_str(), &mut out)
            .await
            .map_err(|e| classify(image, e))?;
        self.bytes_fetched.fetch_add(out.len() as u64, Ordering::Relaxed);
        serde_json::from_slice(&out).map_err(|e| ImageError::Malformed {
            image: image.into(),
            reason: format!("config: {e}"),
        })
    }

    /// A layer's findings, from the cache or by streaming it through the scanner.
    async fn layer_facts(
        &self,
        image: &str,
        reference: &Reference,
        session: &Session,
        desc: &Descriptor,
    ) -> Result<Arc<LayerFacts>, ImageError> {
        if let Some(hit) = Self::lock(&self.layers).get(&desc.digest) {
            return Ok(hit);
        }
        let sized = session
            .client
            .pull_blob_stream(reference, desc.digest.as_str())
            .await
            .map_err(|e| classify(image, e))?;
        let mut stream = sized.stream;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        let limits = self.config.layer_limits;
        let scan = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx: &mut rx,
                current: bytes::Bytes::new(),
            };
            layer::scan(reader, limits)
        });
        let mut fetch_error = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    self.bytes_fetched.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    if tx.send(bytes).await.is_err() {
                        break; // the scanner stopped (error or end of archive)
                    }
                }
                Err(e) => {
                    fetch_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let scanned = scan.await.map_err(|e| ImageError::Malformed {
            image: image.into(),
            reason: format!("layer scanner crashed: {e}"),
        })?;
        if let Some(e) = fetch_error {
            return Err(ImageError::Unreachable {
                image: image.into(),
                reason: format!("layer {}: {e}", desc.digest),
            });
        }
        let facts = Arc::new(scanned.map_err(|e| match e {
            layer::LayerError::Corrupt(_) => ImageError::Malformed {
                image: image.into(),
                reason: format!("layer {}: {e}", desc.digest),
            },
            other => ImageError::Limit {
                image: image.into(),
                reason: format!("layer {}: {other}", desc.digest),
            },
        })?);
        let weight = facts.weight();
        Self::lock(&self.layers).insert(desc.digest.clone(), facts.clone(), weight);
        Ok(facts)
    }
}

/// A cached verdict, named as the image was asked for.
fn renamed(report: &Arc<ImageReport>, image: &str) -> Arc<ImageReport> {
    if report.image == image {
        return report.clone();
    }
    let mut copy = (**report).clone();
    copy.image = image.to_string();
    Arc::new(copy)
}

/// Feeds async chunks to the synchronous tar reader.
struct ChannelReader<'a> {
    rx: &'a mut tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl std::io::Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// `linux/amd64` matches `linux/amd64` and `linux/amd64/v2`; `linux/arm64/v8` only itself or `linux/arm64`.
fn platform_matches(have: &str, want: &str) -> bool {
    have == want || have.starts_with(&format!("{want}/")) || want.starts_with(&format!("{have}/"))
}

/// The UID of an image's `User`: empty is root (0); numeric is itself; a name
/// is looked up in `/etc/passwd` (`root` is 0 even without one).
pub fn user_uid(user: &str, passwd: Option<&str>) -> Option<u32> {
    let name = user.split(':').next().unwrap_or_default().trim();
    if name.is_empty() {
        return Some(0);
    }
    if let Ok(uid) = name.parse::<u32>() {
        return Some(uid);
    }
    passwd
        .and_then(|p| uid_in_passwd(p, name))
        .or((name == "root").then_some(0))
}

/// Turns a client error into what went wrong, for people.
fn classify(image: &str, e: oci_client::errors::OciDistributionError) -> ImageError {
    use oci_client::errors::OciDistributionError as E;
    let reason = e.to_string();
    let image = image.to_string();
    match e {
        E::ImageManifestNotFoundError(_) => ImageError::NotFound { image, reason },
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => ImageError::Unauthorized { image, reason },
        E::ServerError { code: 404, .. } => ImageError::NotFound { image, reason },
        E::ServerError { code: 401 | 403, .. } => ImageError::Unauthorized { image, reason },
        E::RegistryError { ref envelope, .. } => {
            use oci_client::errors::OciErrorCode as C;
            let codes: Vec<&C> = envelope.errors.iter().map(|x| &x.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, C::ManifestUnknown | C::NameUnknown | C::BlobUnknown | C::NotFound))
            {
                ImageError::NotFound { image, reason }
            } else if codes.iter().any(|c| matches!(c, C::Unauthorized | C::Denied)) {
                ImageError::Unauthorized { image, reason }
            } else {
                ImageError::Malformed { image, reason }
            }
        }
        E::RequestError(_) | E::IoError(_) => ImageError::Unreachable { image, reason },
        _ => ImageError::Malformed { image, reason },
    }
}
