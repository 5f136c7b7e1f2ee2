//! Talking to registries: one HTTP client, credentials per request,
//! fetching manifests and configs under size limits, streaming a layer
//! through the scanner, and turning client errors into what went wrong for
//! people.

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use oci_spec::distribution::Reference;

use super::ImageError;
use super::layer::{self, LayerFacts, LayerLimits};
use super::oci::{ACCEPTED, ConfigDoc, Descriptor, ManifestDoc};

/// The HTTP client (manifests and blobs, each read under its limit, and the
/// token exchange), and the grants obtained so far for every set of
/// credentials.
#[derive(Clone)]
pub(super) struct Clients {
    http: reqwest::Client,
    insecure: Arc<Vec<String>>,
    grants: moka::sync::Cache<GrantKey, Grant>,
}

/// A registry client and the credentials it speaks with.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) clients: Clients,
    /// The credentials configured for the registry (never sent anywhere else).
    pub(super) auth: Auth,
}

/// Credentials for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Auth {
    Anonymous,
    Basic { username: String, password: String },
}

impl Auth {
    /// What tells these credentials apart in the grant cache: a SHA-256 of
    /// them (never printed), so two tenants' pull secrets never share a grant.
    fn digest(&self) -> String {
        match self {
            Auth::Anonymous => String::new(),
            Auth::Basic { username, password } => super::credentials::digest_of([username.as_str(), password.as_str()]),
        }
    }
}

/// (credentials digest, registry, repository).
type GrantKey = (String, String, String);

/// How requests to one repository are authorized.
#[derive(Clone, Debug)]
pub(super) enum Grant {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

impl Grant {
    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Grant::Anonymous => request,
            Grant::Basic(u, p) => request.basic_auth(u, Some(p)),
            Grant::Bearer(t) => request.bearer_auth(t),
        }
    }
}

/// How long a token is used before a new one is asked for (registries give
/// at least 60 s; Docker Hub 300 s).
const GRANT_TTL: Duration = Duration::from_secs(50);

/// The most a token endpoint's answer may hold.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Grants kept at most (each is a token of a few KiB at most).
const MAX_GRANTS: u64 = 4096;

/// A client speaking plain HTTP only to `insecure` registries, with a connect
/// and read timeout on every request. Redirects are followed (blobs live on
/// CDNs), and an `Authorization` header is never carried to another host.
/// A client that cannot be built (no TLS roots, say) is an error, never a
/// client without those limits.
pub(super) fn new_clients(insecure: &[String], timeout: Duration) -> Result<Clients, reqwest::Error> {
    let http = reqwest::Client::builder()
        .read_timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("distroless-guard/", env!("CARGO_PKG_VERSION")))
        .build()?;
    Ok(Clients {
        http,
        insecure: Arc::new(insecure.to_vec()),
        grants: moka::sync::Cache::builder()
            .max_capacity(MAX_GRANTS)
            .time_to_live(GRANT_TTL)
            .build(),
    })
}

impl Session {
    fn scheme(&self, registry: &str) -> &'static str {
        if self.clients.insecure.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        }
    }

    /// The grant for a repository: cached, or from the registry's challenge.
    /// Credentials go to the registry itself, and to its token endpoint only
    /// over HTTPS (or on the registry's own host): a challenge naming a plain
    /// HTTP endpoint elsewhere gets none.
    pub(super) async fn grant(&self, image: &str, reference: &Reference) -> Result<Grant, ImageError> {
        let key = self.grant_key(reference);
        if let Some(grant) = self.clients.grants.get(&key) {
            return Ok(grant);
        }
        let grant = self.challenge(image, &key.1, reference.repository()).await?;
        self.clients.grants.insert(key, grant.clone());
        Ok(grant)
    }

    fn grant_key(&self, reference: &Reference) -> GrantKey {
        (
            self.auth.digest(),
            reference.resolve_registry().to_string(),
            reference.repository().to_string(),
        )
    }

    fn forget(&self, reference: &Reference) {
        self.clients.grants.invalidate(&self.grant_key(reference));
    }

    async fn challenge(&self, image: &str, registry: &str, repository: &str) -> Result<Grant, ImageError> {
        let unreachable = |e: reqwest::Error| ImageError::Unreachable {
            image: image.into(),
            reason: e.to_string(),
        };
        let refused = |reason: String| ImageError::Unauthorized {
            image: image.into(),
            reason,
        };
        let basic = match &self.auth {
            Auth::Basic { username, password } => Some((username.clone(), password.clone())),
            Auth::Anonymous => None,
        };
        let base = format!("{}://{registry}/v2/", self.scheme(registry));
        let ping = self.clients.http.get(&base).send().await.map_err(unreachable)?;
        let challenge = ping
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        drop(ping);
        let Some(challenge) = challenge else {
            return Ok(basic.map_or(Grant::Anonymous, |(u, p)| Grant::Basic(u, p)));
        };
        let Some(params) = bearer_params(&challenge) else {
            // A Basic challenge: the credentials go to the registry itself.
            return Ok(basic.map_or(Grant::Anonymous, |(u, p)| Grant::Basic(u, p)));
        };
        let realm = params.get("realm").cloned().unwrap_or_default();
        let realm_url = reqwest::Url::parse(&realm)
            .map_err(|e| refused(format!("the registry's token endpoint {realm:?} is not a URL: {e}")))?;
        let same_host = realm_url
            .host_str()
            .is_some_and(|h| registry.split(':').next().is_some_and(|r| r.eq_ignore_ascii_case(h)));
        let mut request = self
            .clients
            .http
            .get(realm_url.clone())
            .query(&[("scope", format!("repository:{repository}:pull"))]);
        if let Some(service) = params.get("service") {
            request = request.query(&[("service", service)]);
        }
        if let Some((u, p)) = &basic {
            if realm_url.scheme() != "https" && !same_host {
                return Err(refused(format!(
                    "the registry sends its credentials to {realm}, plain HTTP on another host; they were not sent"
                )));
            }
            request = request.basic_auth(u, Some(p));
        }
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = read_bounded(response, MAX_TOKEN_BYTES)
            .await
            .map_err(|e| refused(format!("token endpoint {realm}: {e}")))?;
        if !status.is_success() {
            return Err(refused(format!(
                "token endpoint {realm} answered {status}{}",
                describe_body(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("token endpoint {realm} answered with no token: {e}")))?;
        token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .map(Grant::Bearer)
            .ok_or_else(|| refused(format!("token endpoint {realm} answered with no token")))
    }
}

/// The parameters of a `Bearer realm="...",service="..."` challenge.
fn bearer_params(challenge: &str) -> Option<std::collections::HashMap<String, String>> {
    let rest = challenge.trim();
    let rest = rest
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .map(|_| &rest[7..])?;
    let mut params = std::collections::HashMap::new();
    let mut chars = rest.trim();
    while !chars.is_empty() {
        let (key, after) = chars.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        chars = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(params)
}

/// Why a body was not read whole.
enum BodyError {
    TooLarge(String),
    Failed(String),
}

impl BodyError {
    fn into_image_error(self, image: &str, what: &str) -> ImageError {
        match self {
            BodyError::TooLarge(reason) => ImageError::Limit {
                image: image.into(),
                reason: format!("{what} of {reason}"),
            },
            BodyError::Failed(reason) => ImageError::Unreachable {
                image: image.into(),
                reason: format!("{what}: {reason}"),
            },
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(r) | BodyError::Failed(r) => f.write_str(r),
        }
    }
}

/// A body read up to `limit` bytes; past that, an error and no more is read.
async fn read_bounded(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if let Some(announced) = response.content_length().filter(|l| *l > limit as u64) {
        return Err(BodyError::TooLarge(format!(
            "{announced} bytes announced (limit {limit})"
        )));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Failed(crate::telemetry::error_chain(&e)))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(format!("more than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What an error body looks like, for a message: an HTML page is named as
/// such, anything else is quoted (briefly).
fn describe_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start();
    let head = trimmed.get(..trimmed.len().min(200)).unwrap_or_default();
    if head.to_ascii_lowercase().starts_with("<!doctype html") || head.to_ascii_lowercase().starts_with("<html") {
        " with an HTML page (not a registry API answer: a proxy, a login page or a wrong host?)".to_string()
    } else if head.is_empty() {
        String::new()
    } else {
        format!(": {}", head.replace('\n', " "))
    }
}

/// The digest a tag points to now: a HEAD of its manifest, or the manifest
/// itself when the registry does not say.
pub(super) async fn resolve_digest(
    image: &str,
    reference: &Reference,
    session: &Session,
    limit: usize,
    fetched: &AtomicU64,
) -> Result<String, ImageError> {
    let url = manifest_url(session, reference);
    let response = send(image, reference, session, &url, reqwest::Method::HEAD).await?;
    match response
        .headers()
        .get("docker-content-digest")
        .and_then(|h| h.to_str().ok())
    {
        Some(d) => Ok(d.to_string()),
        None => fetch_manifest(image, reference, session, limit, fetched)
            .await
            .map(|(_, d)| d),
    }
}

fn manifest_url(session: &Session, reference: &Reference) -> String {
    let registry = reference.resolve_registry();
    let target = reference.digest().or(reference.tag()).unwrap_or("latest");
    format!(
        "{}://{registry}/v2/{}/manifests/{target}",
        session.scheme(registry),
        reference.repository()
    )
}

fn blob_url(session: &Session, reference: &Reference, digest: &str) -> String {
    let registry = reference.resolve_registry();
    format!(
        "{}://{registry}/v2/{}/blobs/{digest}",
        session.scheme(registry),
        reference.repository()
    )
}

/// Sends a request with the repository's grant (asking for a new one once
/// when the registry says it has expired). A success is returned; any other
/// answer is the error it means, its body read only a little.
async fn send(
    image: &str,
    reference: &Reference,
    session: &Session,
    url: &str,
    method: reqwest::Method,
) -> Result<reqwest::Response, ImageError> {
    let mut retried = false;
    let response = loop {
        let grant = session.grant(image, reference).await?;
        let request = session
            .clients
            .http
            .request(method.clone(), url)
            .header(reqwest::header::ACCEPT, ACCEPTED.join(", "));
        let response = grant.apply(request).send().await.map_err(|e| ImageError::Unreachable {
            image: image.into(),
            reason: format!("{url}: {}", crate::telemetry::error_chain(&e)),
        })?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED && !retried {
            session.forget(reference);
            retried = true;
            continue;
        }
        break response;
    };
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = read_bounded(response, 4096).await.unwrap_or_default();
    let reason = format!("{url}: {status}{}", describe_body(&body));
    let image = image.to_string();
    Err(match status.as_u16() {
        404 => ImageError::NotFound { image, reason },
        401 | 403 => ImageError::Unauthorized { image, reason },
        500.. => ImageError::Unreachable { image, reason },
        _ => ImageError::Malformed { image, reason },
    })
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    for b in digest.iter() {
        use std::fmt::Write;
        let _ = write!(text, "{b:02x}");
    }
    text
}

/// A manifest or index and its digest. The body is read as it arrives and
/// the request dropped past `limit` bytes; the digest is checked against the
/// reference (when pinned) and the registry's `Docker-Content-Digest`.
pub(super) async fn fetch_manifest(
    image: &str,
    reference: &Reference,
    session: &Session,
    limit: usize,
    fetched: &AtomicU64,
) -> Result<(ManifestDoc, String), ImageError> {
    let malformed = |reason: String| ImageError::Malformed {
        image: image.into(),
        reason,
    };
    let response = send(
        image,
        reference,
        session,
        &manifest_url(session, reference),
        reqwest::Method::GET,
    )
    .await?;
    let header_digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let body = read_bounded(response, limit)
        .await
        .map_err(|e| e.into_image_error(image, "manifest"))?;
    fetched.fetch_add(body.len() as u64, Ordering::Relaxed);
    let computed = sha256_of(&body);
    if let Some(pinned) = reference.digest().filter(|d| d.starts_with("sha256:"))
        && pinned != computed
    {
        return Err(malformed(format!(
            "manifest digest is {computed}, not the {pinned} asked for"
        )));
    }
    let digest = match header_digest {
        Some(h) if h.starts_with("sha256:") && h != computed => {
            return Err(malformed(format!(
                "manifest digest is {computed}, the registry says {h}"
            )));
        }
        Some(h) if !h.starts_with("sha256:") => h,
        _ => computed,
    };
    let doc = serde_json::from_slice(&body)
        .map_err(|e| malformed(format!("manifest is not JSON{}: {e}", describe_body(&body))))?;
    Ok((doc, digest))
}

/// An image config, refused when its descriptor says it is above `limit` bytes.
pub(super) async fn fetch_config(
    image: &str,
    reference: &Reference,
    session: &Session,
    desc: &Descriptor,
    limit: u64,
    fetched: &AtomicU64,
) -> Result<ConfigDoc, ImageError> {
    if desc.size > limit {
        return Err(ImageError::Limit {
            image: image.into(),
            reason: format!("config of {} bytes (limit {limit})", desc.size),
        });
    }
    let url = blob_url(session, reference, &desc.digest);
    let response = send(image, reference, session, &url, reqwest::Method::GET).await?;
    let out = read_bounded(response, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|e| e.into_image_error(image, "config"))?;
    fetched.fetch_add(out.len() as u64, Ordering::Relaxed);
    if desc.digest.starts_with("sha256:") && sha256_of(&out) != desc.digest {
        return Err(ImageError::Malformed {
            image: image.into(),
            reason: format!("config digest is {}, not {}", sha256_of(&out), desc.digest),
        });
    }
    serde_json::from_slice(&out).map_err(|e| ImageError::Malformed {
        image: image.into(),
        reason: format!("config: {e}"),
    })
}

/// Streams a layer through the scanner (on a blocking thread), reading only
/// as far as the scanner needs.
pub(super) async fn scan_layer(
    image: &str,
    reference: &Reference,
    session: &Session,
    desc: &Descriptor,
    limits: LayerLimits,
    fetched: &AtomicU64,
) -> Result<LayerFacts, ImageError> {
    let url = blob_url(session, reference, &desc.digest);
    let response = send(image, reference, session, &url, reqwest::Method::GET).await?;
    let counted = response.bytes_stream().map(move |chunk| {
        chunk.inspect(|bytes| {
            fetched.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        })
    });
    // The blocking reader pulls chunks through a channel; a fetch error ends the stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(tokio_stream_of(rx)));
    let scan = tokio::task::spawn_blocking(move || layer::scan(reader, limits));
    let mut counted = std::pin::pin!(counted);
    let mut fetch_error = None;
    while let Some(chunk) = counted.next().await {
        match chunk {
            Ok(bytes) => {
                if tx.send(Ok(bytes)).await.is_err() {
                    break; // the scanner stopped (error or end of archive)
                }
            }
            Err(e) => {
                fetch_error = Some(crate::telemetry::error_chain(&e));
                let _ = tx.send(Err(std::io::Error::other("the layer download failed"))).await;
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
    scanned.map_err(|e| match e {
        layer::LayerError::Corrupt(_) => ImageError::Malformed {
            image: image.into(),
            reason: format!("layer {}: {e}", desc.digest),
        },
        other => ImageError::Limit {
            image: image.into(),
            reason: format!("layer {}: {other}", desc.digest),
        },
    })
}

/// A channel's receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Unpin + 'static {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
