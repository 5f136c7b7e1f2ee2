//! Registry credentials from a pod's imagePullSecrets
//! (`kubernetes.io/dockerconfigjson` Secrets), read through the API and kept
//! for a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tracing::warn;

use crate::admission::PullSecrets;
use crate::image::credentials::Credentials;

/// How long a Secret read is reused.
const TTL: Duration = Duration::from_secs(60);

/// (namespace, name) -> when read, and the credentials it held.
type Cache = HashMap<(String, String), (Instant, Option<Credentials>)>;

pub(crate) struct SecretPullSecrets {
    client: kube::Client,
    cache: Mutex<Cache>,
}

impl SecretPullSecrets {
    pub(crate) fn new(client: kube::Client) -> Self {
        SecretPullSecrets {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn one(&self, namespace: &str, name: &str) -> Option<Credentials> {
        let key = (namespace.to_string(), name.to_string());
        let cached = self.cache.lock().ok()?.get(&key).cloned();
        if let Some((_, creds)) = cached.filter(|(at, _)| at.elapsed() < TTL) {
            return creds;
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let creds = match api.get_opt(name).await {
            Ok(Some(secret)) => secret
                .data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
                .and_then(|b| match Credentials::from_docker_config(&b.0) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warn!(%namespace, secret = %name, error = %e, "imagePullSecret is not a docker config");
                        None
                    }
                }),
            Ok(None) => None,
            Err(e) => {
                warn!(%namespace, secret = %name, error = %e, "cannot read an imagePullSecret");
                return None;
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 4096 {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), creds.clone()));
        }
        creds
    }
}

impl PullSecrets for SecretPullSecrets {
    fn credentials<'a>(&'a self, namespace: &'a str, names: &'a [String]) -> BoxFuture<'a, Option<Credentials>> {
        async move {
            let mut merged = Credentials::default();
            for name in names {
                if let Some(c) = self.one(namespace, name).await {
                    merged.extend(c);
                }
            }
            (!merged.is_empty()).then_some(merged)
        }
        .boxed()
    }
}
