//! Reads images from their registry: tag to digest, manifest
//! or index, platform, config, then layers top-down through the layer scanner.
//! Verdicts are cached by manifest digest, layer findings by layer digest, tags
//! for a short time; concurrent inspections of one image share one flight, and
//! every inspection can be bounded by a deadline while it finishes in the
//! background to warm the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oci_spec::distribution::Reference;
use tracing::{Instrument, debug, info_span};

use super::cache::{self, Bounded};
use super::credentials::Credentials;
use super::filesystem::MergedView;
use super::flight::Flights;
use super::layer::{LayerFacts, LayerLimits};
use super::oci::{self, BASE_NAME, Descriptor, ManifestDoc, RunConfig, user_uid};
use super::registry::{self, Auth, Session};
use super::{Evidence, ImageError, ImageReport, Platform, reference};

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

/// The registry HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the registry HTTP client")]
pub struct ClientError(#[source] reqwest::Error);

/// (manifest or index digest, platform choice) -> platform manifest digests.
type PlatformCache = Bounded<(String, Platform), Arc<Vec<String>>>;

/// The reports of one inspection: one per platform judged.
pub type Reports = Arc<Vec<Arc<ImageReport>>>;

pub struct Inspector {
    clients: registry::Clients,
    config: InspectorConfig,
    verdicts: Bounded<String, Arc<ImageReport>>,
    /// (manifest or index digest, platform choice) -> the platform manifest digests judged.
    platforms: PlatformCache,
    layers: Bounded<String, Arc<LayerFacts>>,
    tags: moka::sync::Cache<String, String>,
    /// (image, platform, credentials digest) -> the inspection under way.
    flights: Flights<(String, Platform, String), Result<Reports, ImageError>>,
    bytes_fetched: AtomicU64,
}

/// Layers fetched and scanned at once, top-down.
const LAYERS_IN_PARALLEL: usize = 3;

impl Inspector {
    /// An inspector. The process's rustls crypto provider must be installed
    /// (the binaries do it in `main`; `install_crypto_provider` here does it
    /// too). Fails only when the HTTP client cannot be built.
    pub fn new(config: InspectorConfig) -> Result<Arc<Self>, ClientError> {
        install_crypto_provider();
        let clients =
            registry::new_clients(&config.insecure_registries, config.request_timeout).map_err(ClientError)?;
        Ok(Arc::new(Inspector {
            clients,
            verdicts: Bounded::new(config.verdict_cache_entries, config.verdict_cache_bytes),
            platforms: Bounded::new(config.verdict_cache_entries, config.verdict_cache_bytes),
            layers: Bounded::new(config.layer_cache_entries, config.layer_cache_bytes),
            tags: cache::expiring(config.tag_ttl, 65536),
            flights: Flights::default(),
            bytes_fetched: AtomicU64::new(0),
            config,
        }))
    }

    /// Entries and bytes held by the verdict cache and by the layer cache.
    pub fn cache_usage(&self) -> ((usize, usize), (usize, usize)) {
        let (v, l) = (&self.verdicts, &self.layers);
        ((v.len(), v.bytes()), (l.len(), l.bytes()))
    }

    /// Compressed bytes fetched from registries since the inspector was made.
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_fetched.load(Ordering::Relaxed)
    }

    /// The client and credentials for a reference: `extra` (a pod's pull
    /// secrets) first, then the inspector's own, else anonymous.
    fn session_for(&self, reference: &Reference, extra: Option<&Credentials>) -> Session {
        let lookup = |creds: &Credentials| {
            creds
                .for_host(reference.registry())
                .or_else(|| creds.for_host(reference.resolve_registry()))
                .map(|(u, p)| Auth::Basic {
                    username: u.to_string(),
                    password: p.to_string(),
                })
        };
        let auth = extra
            .and_then(lookup)
            .or_else(|| lookup(&self.config.credentials))
            .unwrap_or(Auth::Anonymous);
        Session {
            clients: self.clients.clone(),
            auth,
        }
    }

    /// Inspects an image, sharing the work with any concurrent inspection of
    /// the same image. With a deadline, gives up waiting when it passes; the
    /// inspection goes on in the background and fills the cache.
    pub async fn inspect(
        self: &Arc<Self>,
        image: &str,
        platform: &Platform,
        deadline: Option<Duration>,
    ) -> Result<Reports, ImageError> {
        self.inspect_as(image, platform, deadline, None).await
    }

    /// [`Inspector::inspect`] with extra credentials (a pod's imagePullSecrets).
    pub async fn inspect_as(
        self: &Arc<Self>,
        image: &str,
        platform: &Platform,
        deadline: Option<Duration>,
        extra: Option<Arc<Credentials>>,
    ) -> Result<Reports, ImageError> {
        // Fast path: a tag seen recently whose verdicts are cached needs no task at all.
        if let Some(hit) = self.cached_by_tag(image, platform) {
            debug!(%image, "inspection cache hit");
            return Ok(Arc::new(hit));
        }
        let key = (
            image.to_string(),
            platform.clone(),
            extra.as_ref().map(|c| c.digest()).unwrap_or_default(),
        );
        let this = self.clone();
        let (owned, wanted) = (image.to_string(), platform.clone());
        let span = info_span!("inspect", %image, %platform, digest = tracing::field::Empty);
        let flight = self.flights.join(key, move || {
            async move {
                this.inspect_fetching(&owned, &wanted, extra.as_deref())
                    .await
                    .map(Arc::new)
            }
            .instrument(span)
        });
        let crashed = |died: Arc<tokio::task::JoinError>| ImageError::Malformed {
            image: image.to_string(),
            reason: format!("inspection crashed: {died}"),
        };
        match deadline {
            None => flight.await.unwrap_or_else(|e| Err(crashed(e))),
            Some(d) => match tokio::time::timeout(d, flight).await {
                Ok(done) => done.unwrap_or_else(|e| Err(crashed(e))),
                Err(_) => {
                    debug!(%image, seconds = d.as_secs_f64(), "inspection deadline passed; it goes on in the background");
                    Err(ImageError::Timeout {
                        image: image.to_string(),
                        seconds: d.as_secs_f64(),
                    })
                }
            },
        }
    }

    /// The manifest digest an image reference names now (a tag is resolved
    /// with one manifest request; no layer is read). An error when it does not exist.
    pub async fn digest_of(&self, image: &str, deadline: Duration) -> Result<String, ImageError> {
        let reference = reference::parse(image)?;
        let session = self.session_for(&reference, None);
        match tokio::time::timeout(deadline, self.resolve_digest(image, &reference, &session)).await {
            Ok(r) => r,
            Err(_) => Err(ImageError::Timeout {
                image: image.to_string(),
                seconds: deadline.as_secs_f64(),
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
        if let Some(d) = self.tags.get(&key) {
            return Ok(d);
        }
        let digest = registry::resolve_digest(
            image,
            reference,
            session,
            self.config.max_manifest_bytes,
            &self.bytes_fetched,
        )
        .await?;
        self.tags.insert(key, digest.clone());
        Ok(digest)
    }

    async fn fetch_manifest(
        &self,
        image: &str,
        reference: &Reference,
        session: &Session,
    ) -> Result<(ManifestDoc, String), ImageError> {
        registry::fetch_manifest(
            image,
            reference,
            session,
            self.config.max_manifest_bytes,
            &self.bytes_fetched,
        )
        .await
    }

    /// The verdicts known for an image whose digest is known (pinned, or a tag seen within `tag_ttl`).
    fn cached_by_tag(&self, image: &str, platform: &Platform) -> Option<Vec<Arc<ImageReport>>> {
        let reference = reference::parse(image).ok()?;
        let digest = match reference.digest() {
            Some(d) => d.to_string(),
            None => self.tags.get(&reference.whole())?,
        };
        self.cached(image, &digest, platform)
    }

    /// The verdicts already known for a resolved digest, without any fetch.
    fn cached(&self, image: &str, digest: &str, platform: &Platform) -> Option<Vec<Arc<ImageReport>>> {
        let platforms = self.platforms.get(&(digest.to_string(), platform.clone()))?;
        platforms
            .iter()
            .map(|d| self.verdicts.get(d).map(|r| renamed(&r, image)))
            .collect()
    }

    async fn inspect_fetching(
        &self,
        image: &str,
        platform: &Platform,
        extra: Option<&Credentials>,
    ) -> Result<Vec<Arc<ImageReport>>, ImageError> {
        let reference = reference::parse(image)?;
        let session = self.session_for(&reference, extra);
        // A tag not seen lately: one GET of its manifest both resolves the
        // digest and serves the inspection (no HEAD first).
        let known = reference
            .digest()
            .map(str::to_string)
            .or_else(|| self.tags.get(&reference.whole()));
        let (digest, prefetched) = match known {
            Some(d) => (d, None),
            None => {
                let (doc, digest) = self.fetch_manifest(image, &reference, &session).await?;
                self.tags.insert(reference.whole(), digest.clone());
                (digest, Some(doc))
            }
        };
        tracing::Span::current().record("digest", digest.as_str());
        if let Some(hit) = self.cached(image, &digest, platform) {
            return Ok(hit);
        }
        let reports = self
            .inspect_digest(image, &reference, &session, &digest, platform, prefetched)
            .await?;
        let digests: Vec<String> = reports.iter().map(|r| r.digest.clone()).collect();
        let weight = digests.iter().map(|d| d.len() + 24).sum::<usize>() + digest.len() + 64;
        self.platforms
            .insert((digest, platform.clone()), Arc::new(digests), weight);
        Ok(reports)
    }

    async fn inspect_digest(
        &self,
        image: &str,
        reference: &Reference,
        session: &Session,
        digest: &str,
        platform: &Platform,
        prefetched: Option<ManifestDoc>,
    ) -> Result<Vec<Arc<ImageReport>>, ImageError> {
        let manifest = match prefetched {
            Some(m) => m,
            None => {
                let pinned = reference.clone_with_digest(digest.to_string());
                self.fetch_manifest(image, &pinned, session).await?.0
            }
        };
        if !manifest.is_index() {
            let report = self
                .inspect_manifest(image, reference, session, digest, manifest, None)
                .await?;
            if let Platform::One(want) = platform
                && !oci::platform_matches(&report.platform, want)
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
        let entries: Vec<Descriptor> = manifest.manifests.unwrap_or_default();
        let chosen = oci::choose_platforms(&entries, platform).map_err(|available| ImageError::NoPlatform {
            image: image.into(),
            platform: match platform {
                Platform::One(p) => p.clone(),
                Platform::All => "any".into(),
            },
            available,
        })?;
        let mut reports = Vec::new();
        for entry in chosen.into_iter().filter(|d| oci::is_image_manifest(d)) {
            let platform_ref = reference.clone_with_digest(entry.digest.clone());
            let (platform_manifest, _) = self.fetch_manifest(image, &platform_ref, session).await?;
            let name = entry.platform.as_ref().map(oci::PlatformSpec::name);
            reports.push(
                self.inspect_manifest(image, reference, session, &entry.digest, platform_manifest, name)
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
        if let Some(hit) = self.verdicts.get(&digest.to_string()) {
            return Ok(renamed(&hit, image));
        }
        let config_desc = manifest.config.ok_or_else(|| ImageError::Malformed {
            image: image.into(),
            reason: "manifest has no config".into(),
        })?;
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
        let config = registry::fetch_config(
            image,
            reference,
            session,
            &config_desc,
            self.config.max_config_bytes,
            &self.bytes_fetched,
        )
        .await?;
        let run = config.config.unwrap_or_default();
        let user = run.user.clone().unwrap_or_default();
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
        let report = Arc::new(build_report(
            image,
            digest,
            platform,
            &run,
            base_image,
            &MergedView::merge(&scanned),
        ));
        let weight = report.weight();
        self.verdicts.insert(digest.to_string(), report.clone(), weight);
        Ok(report)
    }

    /// A layer's findings, from the cache or by streaming it through the scanner.
    async fn layer_facts(
        &self,
        image: &str,
        reference: &Reference,
        session: &Session,
        desc: &Descriptor,
    ) -> Result<Arc<LayerFacts>, ImageError> {
        if let Some(hit) = self.layers.get(&desc.digest) {
            return Ok(hit);
        }
        let facts = Arc::new(
            registry::scan_layer(
                image,
                reference,
                session,
                desc,
                self.config.layer_limits,
                &self.bytes_fetched,
            )
            .await?,
        );
        let weight = facts.weight();
        self.layers.insert(desc.digest.clone(), facts.clone(), weight);
        Ok(facts)
    }
}

/// The report of one platform's image: what the merged layers prove, with evidence.
fn build_report(
    image: &str,
    digest: &str,
    platform: String,
    run: &RunConfig,
    base_image: Option<String>,
    view: &MergedView<'_>,
) -> ImageReport {
    let user = run.user.clone().unwrap_or_default();
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
    ImageReport {
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
    }
}

/// rustls needs a process-wide crypto provider; installing it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{self, LayerLimits};

    fn layer_of(entries: &[(&str, &[u8])], links: &[(&str, &str)]) -> Arc<LayerFacts> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        for (path, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        Arc::new(layer::scan(bytes.as_slice(), LayerLimits::default()).unwrap())
    }

    #[test]
    fn a_report_says_distroless_only_without_shell_or_package_manager_and_maps_the_user() {
        let base = layer_of(
            &[
                ("etc/passwd", b"nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n"),
                ("app", b"ELF"),
            ],
            &[],
        );
        let scanned = vec![("sha256:base".to_string(), base)];
        let run = RunConfig {
            user: Some("nonroot".into()),
            ..RunConfig::default()
        };
        let r = build_report(
            "img",
            "sha256:d",
            "linux/amd64".into(),
            &run,
            None,
            &MergedView::merge(&scanned),
        );
        assert!(r.distroless);
        assert_eq!(r.uid, Some(65532));
        assert_eq!(
            r.evidence,
            vec![Evidence {
                path: "/etc/passwd".into(),
                layer: "sha256:base".into()
            }]
        );

        let shell = layer_of(
            &[("usr/bin/dash", b"ELF"), ("usr/bin/apt", b"ELF")],
            &[("usr/bin/sh", "dash")],
        );
        let scanned = vec![
            ("sha256:base".to_string(), scanned[0].1.clone()),
            ("sha256:top".to_string(), shell),
        ];
        let r = build_report(
            "img",
            "sha256:d",
            "linux/amd64".into(),
            &run,
            None,
            &MergedView::merge(&scanned),
        );
        assert!(!r.distroless);
        assert_eq!(r.package_managers, ["apt"]);
        assert!(r.shells.iter().any(|s| s == "/usr/bin/sh"), "{:?}", r.shells);
    }
}
