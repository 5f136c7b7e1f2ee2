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
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Username and password per registry host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    by_host: BTreeMap<String, (String, String)>,
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
    pub fn from_docker_config(json: &[u8]) -> Result<Self, String> {
        let config: DockerConfig = serde_json::from_slice(json).map_err(|e| format!("not a docker config: {e}"))?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in config.auths {
            let pair = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| format!("auth for {key} is not base64: {e}"))?;
                    let text = String::from_utf8(decoded).map_err(|_| format!("auth for {key} is not UTF-8"))?;
                    let (user, pass) = text
                        .split_once(':')
                        .ok_or_else(|| format!("auth for {key} is not user:password"))?;
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

    /// A stable fingerprint of these credentials (never printed).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.by_host.hash(&mut h);
        h.finish()
    }
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
        assert!(err.contains("r.io") && err.contains("base64"), "{err}");
    }
}
