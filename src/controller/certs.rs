//! Webhook certificates without cert-manager: a CA and a serving certificate
//! for `<service>.<namespace>.svc`, kept in a Secret so every replica serves
//! the same one. The leader creates and rotates them and writes the CA into
//! the `caBundle` of the webhook configurations; every replica reloads the
//! serving certificate from the Secret without a restart.
//!
//! A timer, not a kube-runtime `Controller` or watcher: what it keeps is one
//! Secret that changes only at a rotation, which the leader's own round
//! starts well before `rotate_before` runs out. A watch would only shorten a
//! follower's reload from `interval` to the moment, at the price of one more
//! long-lived watch per replica.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{Timestamp, ToSpan};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::FIELD_MANAGER;

/// Annotation on the Secret: when the serving certificate expires (RFC 3339).
/// Setting it to the past forces a rotation.
pub(crate) const NOT_AFTER: &str = "distrolessguard.dev/not-after";

#[derive(Clone, Debug)]
pub(crate) struct CertConfig {
    pub namespace: String,
    pub secret: String,
    pub service: String,
    pub validating_webhook: Option<String>,
    pub mutating_webhook: Option<String>,
    /// Serving certificate lifetime.
    pub validity: Duration,
    /// Rotate when less than this is left.
    pub rotate_before: Duration,
    /// How often the leader checks.
    pub interval: Duration,
}

impl CertConfig {
    pub(crate) fn dns_names(&self) -> Vec<String> {
        let (s, n) = (&self.service, &self.namespace);
        vec![
            s.clone(),
            format!("{s}.{n}"),
            format!("{s}.{n}.svc"),
            format!("{s}.{n}.svc.cluster.local"),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

struct Pair {
    cert_pem: String,
    key_pem: String,
}

/// The CA's parameters: the same for the CA made and for signing with it later.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "distroless-guard webhook CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time_now() - time::Duration::hours(1);
    params.not_after = time_now() + time::Duration::days(3650);
    Ok(params)
}

fn new_ca() -> Result<(Pair, Issuer<'static, KeyPair>), rcgen::Error> {
    let params = ca_params()?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let pair = Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    Ok((pair, Issuer::new(params, key)))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn serving(config: &CertConfig, ca: &Issuer<'static, KeyPair>) -> Result<Pair, rcgen::Error> {
    let mut params = CertificateParams::new(config.dns_names())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}.svc", config.service, config.namespace),
    );
    params.not_before = time_now() - time::Duration::minutes(5);
    params.not_after = time_now() + time::Duration::seconds(config.validity.as_secs() as i64);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn data(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret.data.as_ref()?.get(key).map(|b| b.0.clone())
}

/// Whether the Secret's serving certificate must be (re)issued.
fn needs_rotation(secret: &Secret, config: &CertConfig, now: Timestamp) -> bool {
    let complete = ["ca.crt", "ca.key", "tls.crt", "tls.key"]
        .iter()
        .all(|k| data(secret, k).is_some_and(|d| !d.is_empty()));
    let not_after = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NOT_AFTER))
        .and_then(|t| t.parse::<Timestamp>().ok());
    let left = not_after.map(|t| t.duration_since(now));
    !complete || left.is_none_or(|l| l.as_secs() < config.rotate_before.as_secs() as i64)
}

/// Creates or rotates the Secret when needed (leader only) and makes sure the
/// webhook configurations trust its CA. Returns the Secret in force.
pub(crate) async fn reconcile(client: &kube::Client, config: &CertConfig) -> Result<Secret, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let api_err = |what: &str| {
        let what = what.to_string();
        move |source| CertError::Api {
            what: what.clone(),
            source,
        }
    };
    let now = Timestamp::now();
    let existing = secrets
        .get_opt(&config.secret)
        .await
        .map_err(api_err("the certificate Secret"))?;
    let secret = match existing {
        Some(s) if !needs_rotation(&s, config, now) => s,
        existing => {
            // Keep the CA while it can be read back; a new CA is made only when there is none.
            let (ca_pair, issuer) = match existing
                .as_ref()
                .and_then(|s| Some((data(s, "ca.crt")?, data(s, "ca.key")?)))
            {
                Some((cert, key)) => {
                    let key_pem = String::from_utf8_lossy(&key).into_owned();
                    let cert_pem = String::from_utf8_lossy(&cert).into_owned();
                    match KeyPair::from_pem(&key_pem).and_then(|k| Ok(Issuer::new(ca_params()?, k))) {
                        Ok(issuer) => (Pair { cert_pem, key_pem }, issuer),
                        Err(_) => new_ca()?,
                    }
                }
                None => new_ca()?,
            };
            let leaf = serving(config, &issuer)?;
            let not_after = now + (config.validity.as_secs() as i64).seconds();
            let mut data = BTreeMap::new();
            for (k, v) in [
                ("ca.crt", &ca_pair.cert_pem),
                ("ca.key", &ca_pair.key_pem),
                ("tls.crt", &leaf.cert_pem),
                ("tls.key", &leaf.key_pem),
            ] {
                data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
            }
            // An existing Secret (for example the one the Helm chart creates, so
            // that uninstalling removes it) keeps its type, labels and other
            // annotations; only the data and the expiry annotation are ours.
            let mut secret = existing.unwrap_or_else(|| Secret {
                metadata: ObjectMeta {
                    name: Some(config.secret.clone()),
                    namespace: Some(config.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".into(),
                        FIELD_MANAGER.into(),
                    )])),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                ..Secret::default()
            });
            secret
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(NOT_AFTER.into(), not_after.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            secret.data = Some(data);
            let written = if secret.metadata.resource_version.is_some() {
                secrets.replace(&config.secret, &PostParams::default(), &secret).await
            } else {
                secrets.create(&PostParams::default(), &secret).await
            };
            let written = written.map_err(api_err("the certificate Secret"))?;
            info!(secret = %config.secret, %not_after, "webhook serving certificate issued");
            written
        }
    };
    if let Some(ca) = data(&secret, "ca.crt") {
        patch_ca_bundles(client, config, &ca).await?;
    }
    Ok(secret)
}

async fn patch_ca_bundles(client: &kube::Client, config: &CertConfig, ca: &[u8]) -> Result<(), CertError> {
    let configs = [
        (
            ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
            &config.validating_webhook,
        ),
        (
            ApiResource::erase::<MutatingWebhookConfiguration>(&()),
            &config.mutating_webhook,
        ),
    ];
    for (resource, name) in configs {
        if let Some(name) = name {
            patch_ca_bundle(client, &resource, name, ca).await?;
        }
    }
    Ok(())
}

/// Writes `ca` into every webhook's `clientConfig.caBundle` of one webhook
/// configuration (validating or mutating: the field is the same), when it differs.
async fn patch_ca_bundle(
    client: &kube::Client,
    resource: &ApiResource,
    name: &str,
    ca: &[u8],
) -> Result<(), CertError> {
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca);
    let what = || format!("{} {name}", resource.kind);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let Some(current) = api
        .get_opt(name)
        .await
        .map_err(|source| CertError::Api { what: what(), source })?
    else {
        return Ok(());
    };
    let webhooks = current
        .data
        .get("webhooks")
        .and_then(|w| w.as_array())
        .cloned()
        .unwrap_or_default();
    let up_to_date = webhooks
        .iter()
        .all(|w| w.pointer("/clientConfig/caBundle").and_then(|b| b.as_str()) == Some(&bundle));
    if up_to_date {
        return Ok(());
    }
    // A merge patch replaces lists whole: send every webhook, each with the new bundle.
    let patched: Vec<_> = webhooks
        .into_iter()
        .map(|mut w| {
            json_patch::merge(&mut w, &json!({"clientConfig": {"caBundle": bundle}}));
            w
        })
        .collect();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"webhooks": patched})),
    )
    .await
    .map_err(|source| CertError::Api { what: what(), source })?;
    info!(kind = %resource.kind, %name, "caBundle written");
    Ok(())
}

/// The serving certificate and key, PEM, as the Secret holds them.
pub(crate) type ServingPair = (Vec<u8>, Vec<u8>);

/// Waits until the Secret holds a serving pair (the leader, per `leader`,
/// creates it meanwhile) and returns it.
pub(crate) async fn first_pair(
    client: &kube::Client,
    config: &CertConfig,
    leader: &watch::Receiver<bool>,
) -> ServingPair {
    loop {
        if let Some(pair) = step(client, config, leader).await {
            return pair;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every `config.interval`: the leader rotates and distributes; every replica
/// hands the Secret's current pair to `serve` (which keeps what it already has).
pub(crate) async fn keep(
    client: kube::Client,
    config: CertConfig,
    leader: watch::Receiver<bool>,
    serve: impl Fn(&ServingPair) + Send,
) {
    loop {
        tokio::time::sleep(config.interval).await;
        if let Some(pair) = step(&client, &config, &leader).await {
            serve(&pair);
        }
    }
}

/// One round: the leader reconciles; every replica reads the serving pair.
async fn step(
    client: &kube::Client,
    config: &CertConfig,
    leader: &watch::Receiver<bool>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    if *leader.borrow()
        && let Err(e) = reconcile(client, config).await
    {
        warn!(error = %e, "certificate reconcile failed");
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    match secrets.get_opt(&config.secret).await {
        Ok(Some(s)) => Some((data(&s, "tls.crt")?, data(&s, "tls.key")?)),
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "cannot read the certificate Secret");
            None
        }
    }
}
