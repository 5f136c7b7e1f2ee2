//! Registry documents as the inspector reads them: media types, image
//! manifests and indexes, image configs, and the choice of platforms in an
//! index. Pure: parsing and choosing, no I/O.

use std::collections::HashMap;

use serde::Deserialize;

use super::filesystem::uid_in_passwd;
use super::report::Platform;

pub(super) const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(super) const ACCEPTED: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub(super) media_type: String,
    pub(super) digest: String,
    #[serde(default)]
    pub(super) size: u64,
    pub(super) platform: Option<PlatformSpec>,
}

#[derive(Deserialize, Default, Debug)]
pub(super) struct PlatformSpec {
    #[serde(default)]
    pub(super) os: String,
    #[serde(default)]
    pub(super) architecture: String,
    pub(super) variant: Option<String>,
}

impl PlatformSpec {
    pub(super) fn name(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ManifestDoc {
    pub(super) media_type: Option<String>,
    pub(super) manifests: Option<Vec<Descriptor>>,
    pub(super) config: Option<Descriptor>,
    pub(super) layers: Option<Vec<Descriptor>>,
    pub(super) annotations: Option<HashMap<String, String>>,
}

#[derive(Deserialize, Default)]
pub(super) struct ConfigDoc {
    /// `os`, `architecture` and `variant`, as in an index entry.
    #[serde(flatten)]
    pub(super) platform: PlatformSpec,
    pub(super) config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
pub(super) struct RunConfig {
    #[serde(default, rename = "User")]
    pub(super) user: Option<String>,
    #[serde(default, rename = "Labels")]
    pub(super) labels: Option<HashMap<String, String>>,
    #[serde(default, rename = "Entrypoint")]
    pub(super) entrypoint: Option<Vec<String>>,
    #[serde(default, rename = "Cmd")]
    pub(super) cmd: Option<Vec<String>>,
}

pub(super) const BASE_NAME: &str = "org.opencontainers.image.base.name";

impl ManifestDoc {
    /// An index (or Docker manifest list) rather than one image's manifest.
    pub(super) fn is_index(&self) -> bool {
        self.manifests.is_some() || matches!(self.media_type.as_deref(), Some(MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST))
    }
}

/// The entries of an index to judge for `want`: every known platform for
/// `all`, else the first that matches. `Err` lists what the index has.
pub(super) fn choose_platforms<'a>(entries: &'a [Descriptor], want: &Platform) -> Result<Vec<&'a Descriptor>, String> {
    let known: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.os != "unknown"))
        .collect();
    let chosen: Vec<&Descriptor> = match want {
        Platform::All => known.clone(),
        Platform::One(want) => known
            .iter()
            .copied()
            .filter(|d| d.platform.as_ref().is_some_and(|p| platform_matches(&p.name(), want)))
            .take(1)
            .collect(),
    };
    if chosen.is_empty() {
        return Err(known
            .iter()
            .filter_map(|d| d.platform.as_ref().map(PlatformSpec::name))
            .collect::<Vec<_>>()
            .join(", "));
    }
    Ok(chosen)
}

/// Whether an index entry is an image manifest (not an attestation or another index).
pub(super) fn is_image_manifest(d: &Descriptor) -> bool {
    matches!(d.media_type.as_str(), MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST | "")
}

/// `linux/amd64` matches `linux/amd64` and `linux/amd64/v2`; `linux/arm64/v8` only itself or `linux/arm64`.
pub(super) fn platform_matches(have: &str, want: &str) -> bool {
    have == want || have.starts_with(&format!("{want}/")) || want.starts_with(&format!("{have}/"))
}

/// The UID of an image's `User`: empty is root (0); numeric is itself; a name
/// is looked up in `/etc/passwd` (`root` is 0 even without one).
pub(super) fn user_uid(user: &str, passwd: Option<&str>) -> Option<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Vec<Descriptor> {
        serde_json::from_value(serde_json::json!([
            {"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:b", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:c", "platform": {"os": "unknown", "architecture": "unknown"}},
        ]))
        .unwrap()
    }

    #[test]
    fn one_platform_is_the_first_match_and_all_skips_attestations() {
        let entries = index();
        let one = choose_platforms(&entries, &"linux/arm64".parse().unwrap()).unwrap();
        assert_eq!(one.iter().map(|d| d.digest.as_str()).collect::<Vec<_>>(), ["sha256:b"]);
        let all = choose_platforms(&entries, &Platform::All).unwrap();
        assert_eq!(all.len(), 2, "the unknown/unknown attestation is not a platform");
        let missing = choose_platforms(&entries, &"windows/amd64".parse().unwrap()).unwrap_err();
        assert_eq!(missing, "linux/amd64, linux/arm64/v8");
    }

    #[test]
    fn platforms_match_with_or_without_a_variant() {
        assert!(platform_matches("linux/amd64/v2", "linux/amd64"));
        assert!(platform_matches("linux/arm64", "linux/arm64/v8"));
        assert!(!platform_matches("linux/arm", "linux/arm64"));
    }

    #[test]
    fn a_user_is_a_uid_a_name_in_passwd_or_root_when_unset() {
        let passwd = "root:x:0:0::/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n";
        assert_eq!(user_uid("", None), Some(0));
        assert_eq!(user_uid("1000:1000", None), Some(1000));
        assert_eq!(user_uid("nonroot", Some(passwd)), Some(65532));
        assert_eq!(user_uid("nonroot", None), None);
        assert_eq!(user_uid("root", None), Some(0));
    }

    #[test]
    fn an_index_is_known_by_its_entries_or_media_type() {
        let doc: ManifestDoc = serde_json::from_value(serde_json::json!({"mediaType": MEDIA_DOCKER_LIST})).unwrap();
        assert!(doc.is_index());
        let doc: ManifestDoc =
            serde_json::from_value(serde_json::json!({"config": {"digest": "sha256:x"}, "layers": []})).unwrap();
        assert!(!doc.is_index());
    }
}
