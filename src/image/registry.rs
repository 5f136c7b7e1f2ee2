//! Talking to registries: a client per set of credentials, fetching
//! manifests and configs under size limits, streaming a layer through the
//! scanner, and turning client errors into what went wrong for people.

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::ImageError;
use super::layer::{self, LayerFacts, LayerLimits};
use super::manifest::{ACCEPTED, ConfigDoc, Descriptor, ManifestDoc};

/// A registry client and the credentials it speaks with.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) client: Client,
    pub(super) auth: RegistryAuth,
}

/// A client speaking plain HTTP only to `insecure` registries, with a connect
/// and read timeout on every request.
pub(super) fn new_client(insecure: &[String], timeout: std::time::Duration) -> Client {
    let protocol = if insecure.is_empty() {
        ClientProtocol::Https
    } else {
        ClientProtocol::HttpsExcept(insecure.to_vec())
    };
    Client::new(ClientConfig {
        protocol,
        read_timeout: Some(timeout),
        connect_timeout: Some(timeout),
        ..ClientConfig::default()
    })
}

/// The digest a tag points to now (HEAD).
pub(super) async fn resolve_digest(
    image: &str,
    reference: &Reference,
    session: &Session,
) -> Result<String, ImageError> {
    session
        .client
        .fetch_manifest_digest(reference, &session.auth)
        .await
        .map_err(|e| classify(image, e))
}

/// A manifest or index and its digest, refused above `limit` bytes.
pub(super) async fn fetch_manifest(
    image: &str,
    reference: &Reference,
    session: &Session,
    limit: usize,
    fetched: &AtomicU64,
) -> Result<(ManifestDoc, String), ImageError> {
    let (bytes, digest) = session
        .client
        .pull_manifest_raw(reference, &session.auth, ACCEPTED)
        .await
        .map_err(|e| classify(image, e))?;
    fetched.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    if bytes.len() > limit {
        return Err(ImageError::Limit {
            image: image.into(),
            reason: format!("manifest of {} bytes (limit {limit})", bytes.len()),
        });
    }
    let doc = serde_json::from_slice(&bytes).map_err(|e| ImageError::Malformed {
        image: image.into(),
        reason: format!("manifest: {e}"),
    })?;
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
    let mut out = Vec::new();
    session
        .client
        .pull_blob(reference, desc.digest.as_str(), &mut out)
        .await
        .map_err(|e| classify(image, e))?;
    fetched.fetch_add(out.len() as u64, Ordering::Relaxed);
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
    let sized = session
        .client
        .pull_blob_stream(reference, desc.digest.as_str())
        .await
        .map_err(|e| classify(image, e))?;
    let counted = sized.stream.map(move |chunk| {
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
                fetch_error = Some(e.to_string());
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

/// Turns a client error into what went wrong, for people.
pub(super) fn classify(image: &str, e: oci_client::errors::OciDistributionError) -> ImageError {
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
