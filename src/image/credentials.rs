//! Registry credentials from a docker config (`~/.docker/config.json`) or a
//! `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson`: one format.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Username and password per registry host. `Debug` names the hosts, never
/// the secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_host: BTreeMap<String, (String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why a docker config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("not a docker config: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("auth for {0} is not base64")]
    NotBase64(String),
    #[error("auth for {0} is not UTF-8")]
    NotUtf8(String),
    #[error("auth for {0} is not user:password")]
    NoColon(String),
}

/// The registry host of an `auths` key: `https://index.docker.io/v1/` is `docker.io`.
fn host_of(key: &str) -> String {
    let without_scheme = key.split("://").last().unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

impl Credentials {
    /// Reads a docker config JSON document.
    pub fn from_docker_config(json: &[u8]) -> Result<Self, CredentialsError> {
        let config: DockerConfig = serde_json::from_slice(json)?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in config.auths {
            let pair = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| CredentialsError::NotBase64(key.clone()))?;
                    let text = String::from_utf8(decoded).map_err(|_| CredentialsError::NotUtf8(key.clone()))?;
                    let (user, pass) = text
                        .split_once(':')
                        .ok_or_else(|| CredentialsError::NoColon(key.clone()))?;
                    (user.to_string(), pass.to_string())
                }
                (None, Some(user), Some(pass)) => (user, pass),
                _ => continue,
            };
            by_host.insert(host_of(&key), pair);
        }
        Ok(Credentials { by_host })
    }

    /// Adds every entry of `other`, replacing entries for the same host.
    pub fn extend(&mut self, other: Credentials) {
        self.by_host.extend(other.by_host);
    }

    /// The username and password for a registry host.
    pub fn for_host(&self, host: &str) -> Option<(&str, &str)> {
        self.by_host.get(host).map(|(u, p)| (u.as_str(), p.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// A SHA-256 of these credentials (never printed), which tells two
    /// tenants' pull secrets apart where a 64-bit hash could collide.
    pub fn digest(&self) -> String {
        digest_of(
            self.by_host
                .iter()
                .flat_map(|(host, (user, password))| [host.as_str(), user.as_str(), password.as_str()]),
        )
    }
}

/// A SHA-256 (hex) of secret parts, each length-prefixed so that no two
/// different lists of parts give the same input.
pub(super) fn digest_of<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_fields_and_docker_hub_aliases_are_understood() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "registry.example.com:5000": {"username": "bot", "password": "s3cret"},
            "ghcr.io": {}}}"#;
        let c = Credentials::from_docker_config(json).unwrap();
        assert_eq!(c.for_host("docker.io"), Some(("user", "pass")));
        assert_eq!(c.for_host("registry.example.com:5000"), Some(("bot", "s3cret")));
        assert_eq!(c.for_host("ghcr.io"), None);
    }

    #[test]
    fn bad_auth_is_a_clear_error() {
        let err = Credentials::from_docker_config(br#"{"auths": {"r.io": {"auth": "%%%"}}}"#).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("r.io") && err.contains("base64"), "{err}");
    }
}
