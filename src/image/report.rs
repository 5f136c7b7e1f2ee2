//! What image inspection proves, as plain data: the report the image rules
//! read, the platform choice, and why an image could not be read. No I/O.

use serde::Serialize;

/// Where a finding comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub path: String,
    /// Digest of the layer the path comes from.
    pub layer: String,
}

/// What inspection proved about one image (one platform).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    /// The reference as given.
    pub image: String,
    /// Digest of the platform's image manifest.
    pub digest: String,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The configured user as written in the image config (`""` when unset).
    pub user: String,
    /// The user's UID: numeric, or mapped through the image's `/etc/passwd`;
    /// 0 when unset; `null` when a name is not in `/etc/passwd`.
    pub uid: Option<u32>,
    /// Paths of shells in the final filesystem.
    pub shells: Vec<String>,
    /// Names of package managers in the final filesystem.
    pub package_managers: Vec<String>,
    /// Package databases present (information only).
    pub package_databases: Vec<String>,
    /// No shell and no package manager.
    pub distroless: bool,
    /// Path and layer of every finding, and of `/etc/passwd` when a name was mapped.
    pub evidence: Vec<Evidence>,
    /// The image's `Entrypoint` and `Cmd` (what runs when a pod sets no `command`/`args`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// `org.opencontainers.image.base.name`, when the image says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
}

impl ImageReport {
    /// Whether the image runs as root unless the pod says otherwise.
    pub fn runs_as_root(&self) -> bool {
        self.uid == Some(0)
    }

    /// Approximate heap size, for cache accounting.
    pub fn weight(&self) -> usize {
        let strings = self
            .shells
            .iter()
            .chain(&self.package_managers)
            .chain(&self.package_databases);
        let evidence: usize = self.evidence.iter().map(|e| e.path.len() + e.layer.len() + 48).sum();
        self.image.len()
            + self.digest.len()
            + self.user.len()
            + strings.map(|s| s.len() + 24).sum::<usize>()
            + evidence
            + 256
    }
}

/// Which platform of a multi-platform image is judged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// One platform, `os/arch[/variant]`.
    One(String),
    /// Every platform of an index; each must pass.
    All,
}

/// A platform that is neither `os/arch[/variant]` nor `all`.
#[derive(Debug, thiserror::Error)]
#[error("platform must be os/arch[/variant] or all, not {0:?}")]
pub struct BadPlatform(pub String);

impl std::str::FromStr for Platform {
    type Err = BadPlatform;

    /// `all`, or `os/arch[/variant]` with non-empty parts.
    fn from_str(s: &str) -> Result<Self, BadPlatform> {
        if s == "all" {
            return Ok(Platform::All);
        }
        let parts: Vec<&str> = s.split('/').collect();
        if (2..=3).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty()) {
            Ok(Platform::One(s.to_string()))
        } else {
            Err(BadPlatform(s.to_string()))
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Platform::One(p) => f.write_str(p),
            Platform::All => f.write_str("all"),
        }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform::One("linux/amd64".into())
    }
}

/// Why an image could not be inspected.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ImageError {
    #[error("invalid image reference {image:?}: {reason}")]
    Reference { image: String, reason: String },
    #[error("image {image} not found in its registry: {reason}")]
    NotFound { image: String, reason: String },
    #[error("registry refused access to {image}: {reason}")]
    Unauthorized { image: String, reason: String },
    #[error("registry unreachable for {image}: {reason}")]
    Unreachable { image: String, reason: String },
    #[error("image {image} was not inspected within {seconds}s")]
    Timeout { image: String, seconds: f64 },
    #[error("image {image} has no manifest for platform {platform} (it has: {available})")]
    NoPlatform {
        image: String,
        platform: String,
        available: String,
    },
    #[error("image {image} is malformed: {reason}")]
    Malformed { image: String, reason: String },
    #[error("image {image} exceeds a limit: {reason}")]
    Limit { image: String, reason: String },
}
