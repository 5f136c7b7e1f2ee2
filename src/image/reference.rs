//! Image references, normalized the way Kubernetes and Docker do.

use oci_spec::distribution::Reference;

use super::ImageError;

/// Parses an image reference: `nginx` is `docker.io/library/nginx:latest`,
/// a first component with a dot, a colon or `localhost` is a registry host,
/// `@sha256:...` pins a digest (a tag beside it is kept but not used).
pub(crate) fn parse(image: &str) -> Result<Reference, ImageError> {
    let trimmed = image.trim();
    if trimmed.is_empty() {
        return Err(ImageError::Reference {
            image: image.into(),
            reason: "empty".into(),
        });
    }
    let reference = trimmed.parse::<Reference>().map_err(|e| ImageError::Reference {
        image: image.into(),
        reason: e.to_string(),
    })?;
    // Docker reads a first component with capitals as a registry host; the
    // parser reads it as a repository, which a repository may not be. Such a
    // reference must name itself the same way when written out again.
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) && reference.whole().parse::<Reference>().is_err() {
        return Err(ImageError::Reference {
            image: image.into(),
            reason: "a repository name must be lowercase".into(),
        });
    }
    Ok(reference)
}

/// Whether a running image is the one asked for: the same repository as
/// Kubernetes resolves it (`nginx` is `docker.io/library/nginx`), and the
/// asked digest, or else the same tag; a tag pinned to a digest
/// (`app:1@sha256:...`, as GitOps tools and image-resolving webhooks write
/// it) is still that tag. References that do not parse compare as written.
pub(crate) fn same_image(running: &str, wanted: &str) -> bool {
    if running == wanted {
        return true;
    }
    let (Ok(r), Ok(w)) = (parse(running), parse(wanted)) else {
        return false;
    };
    if r.registry() != w.registry() || r.repository() != w.repository() {
        return false;
    }
    match w.digest() {
        Some(digest) => r.digest() == Some(digest),
        None => {
            r.tag().unwrap_or("latest") == w.tag().unwrap_or("latest") && (r.tag().is_some() || r.digest().is_none())
        }
    }
}

/// The fully qualified form, e.g. `docker.io/library/nginx:latest` (what the
/// image_reference fuzz target checks is stable).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn normalize(image: &str) -> Result<String, ImageError> {
    parse(image).map(|r| r.whole())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_image_is_the_one_asked_for_by_repository_and_tag_or_digest() {
        const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert!(same_image("reg/app:nonroot", "reg/app:nonroot"));
        assert!(
            same_image(&format!("reg/app:nonroot@{D}"), "reg/app:nonroot"),
            "a pinned tag"
        );
        assert!(
            same_image(&format!("reg/app@{D}"), &format!("reg/app:nonroot@{D}")),
            "the asked digest"
        );
        assert!(same_image("docker.io/library/nginx:1", "nginx:1"));
        assert!(same_image("nginx", "nginx:latest"));
        assert!(
            !same_image(&format!("reg/app@{D}"), "reg/app:nonroot"),
            "a digest alone says no tag"
        );
        assert!(!same_image("reg/app:1.0", "reg/app:nonroot"));
        assert!(!same_image("other/app:nonroot", "reg/app:nonroot"));
        assert!(
            !same_image("reg/app:nonroot", &format!("reg/app:nonroot@{D}")),
            "the digest asked is not known"
        );
    }

    #[test]
    fn capitals_in_the_repository_are_refused_not_moved_to_docker_hub() {
        // Found by the image_reference fuzz target (fuzz/regressions/image_reference/).
        assert!(parse("Upas/app").is_err());
        assert!(parse("docker.io/Team/app").is_err());
        assert_eq!(
            normalize("Registry.Example:5000/app:V1").unwrap(),
            "Registry.Example:5000/app:V1"
        );
    }

    #[test]
    fn short_names_expand_like_docker() {
        assert_eq!(normalize("nginx").unwrap(), "docker.io/library/nginx:latest");
        assert_eq!(normalize("bitnami/redis:7").unwrap(), "docker.io/bitnami/redis:7");
    }

    #[test]
    fn registry_hosts_with_ports_and_localhost_are_kept() {
        let r = parse("127.0.0.1:5000/team/app:1.2").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "team/app", Some("1.2"))
        );
        assert_eq!(parse("localhost/app").unwrap().registry(), "localhost");
        assert_eq!(
            parse("gcr.io/distroless/static:nonroot").unwrap().repository(),
            "distroless/static"
        );
    }

    #[test]
    fn digests_pin_the_image_even_beside_a_tag() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let r = parse(&format!("registry.example.com/app@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d));
        let r = parse(&format!("registry.example.com/app:1.0@{d}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (Some("1.0"), Some(d)));
    }

    #[test]
    fn nonsense_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("UPPER/Case").is_err());
        assert!(parse("app@sha256:short").is_err());
    }
}
