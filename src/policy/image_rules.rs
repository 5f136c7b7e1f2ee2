//! The image rules: what inspection proved about each container's image.
//! Inspection itself (registry I/O) happens before; this is pure.

use std::collections::HashMap;
use std::sync::Arc;

use super::model::PodSpec;
use super::rules::{Finding, Scope, containers};
use crate::api::RuleId;
use crate::image::ImageReport;

/// What is known of one image when the rules run.
#[derive(Clone, Debug)]
pub enum ImageStatus {
    /// One report per platform judged.
    Inspected(Arc<Vec<Arc<ImageReport>>>),
    /// The registry could not be read in time; the reason.
    Failed(String),
}

/// Image reference as written in the pod -> what inspection found.
pub type ImageFacts = HashMap<String, ImageStatus>;

fn evidence_of(report: &ImageReport, paths: &[String]) -> String {
    let shown: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| {
            let layer = report
                .evidence
                .iter()
                .find(|e| &e.path == p)
                .map(|e| e.layer.as_str())
                .unwrap_or("?");
            let short = layer.get(..19).unwrap_or(layer);
            format!("{p} in layer {short}")
        })
        .collect();
    let more = paths.len().saturating_sub(3);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Findings of `image-has-shell`, `image-has-package-manager`,
/// `image-root-user` and `image-unverified` for images in `facts`.
pub fn check_images(spec: &PodSpec, spec_path: &str, scope: Scope<'_>, facts: &ImageFacts, uid: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    for c in containers(spec, scope) {
        let Some(image) = c.container.image.as_deref() else {
            continue;
        };
        let Some(status) = facts.get(image) else { continue };
        let path = c.path(spec_path, "image");
        let reports = match status {
            ImageStatus::Failed(reason) => {
                out.push(c.finding(
                    RuleId::ImageUnverified,
                    path,
                    format!(
                        "container {:?}: image {image} could not be verified ({reason}). Fix: make the registry reachable \
                         from the cluster and the image pullable with the pod's imagePullSecrets, then retry",
                        c.name()
                    ),
                ));
                continue;
            }
            ImageStatus::Inspected(reports) => reports,
        };
        if let Some(r) = reports.iter().find(|r| !r.shells.is_empty()) {
            out.push(c.finding(
                RuleId::ImageHasShell,
                path.clone(),
                format!(
                    "container {:?}: image {image} ({}) contains a shell ({}); a shell in the image lets an attacker \
                     who gets code execution run anything. Fix: build the final stage FROM a distroless base \
                     (e.g. gcr.io/distroless/static-debian12:nonroot) or scratch, copying only the binary",
                    c.name(),
                    r.platform,
                    evidence_of(r, &r.shells)
                ),
            ));
        }
        if let Some(r) = reports.iter().find(|r| !r.package_managers.is_empty()) {
            let paths: Vec<String> = r
                .evidence
                .iter()
                .filter(|e| r.package_managers.iter().any(|pm| e.path.ends_with(&format!("/{pm}"))))
                .map(|e| e.path.clone())
                .collect();
            out.push(c.finding(
                RuleId::ImageHasPackageManager,
                path.clone(),
                format!(
                    "container {:?}: image {image} ({}) contains a package manager ({}: {}), which can install tools \
                     at run time. Fix: use a distroless or scratch final stage without {}",
                    c.name(),
                    r.platform,
                    r.package_managers.join(", "),
                    evidence_of(r, &paths),
                    r.package_managers.join("/")
                ),
            ));
        }
        let run_as = c
            .container
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_user);
        let non_root_set = run_as.is_some_and(|u| u != 0);
        if let Some(r) = reports.iter().find(|r| r.runs_as_root()).filter(|_| !non_root_set) {
            let user = if r.user.is_empty() {
                "no USER (root)".to_string()
            } else {
                format!("USER {}", r.user)
            };
            out.push(c.finding(
                RuleId::ImageRootUser,
                path.clone(),
                format!(
                    "container {:?}: image {image} runs as root ({user}) and the pod does not set a non-root \
                         runAsUser. Fix: set securityContext.runAsUser to {uid}, or USER {uid} in the Dockerfile",
                    c.name()
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::report::Evidence;

    fn report(paths: &[&str]) -> ImageReport {
        ImageReport {
            image: "registry.example/app:1".into(),
            digest: "sha256:aa".into(),
            platform: "linux/amd64".into(),
            user: String::new(),
            uid: Some(0),
            shells: paths.iter().map(|p| p.to_string()).collect(),
            package_managers: Vec::new(),
            package_databases: Vec::new(),
            distroless: false,
            evidence: paths
                .iter()
                .map(|p| Evidence {
                    path: p.to_string(),
                    layer: "sha256:0123456789abcdef0123".into(),
                })
                .collect(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            base_image: None,
        }
    }

    #[test]
    fn evidence_names_up_to_three_paths_with_their_layer_and_counts_the_rest() {
        let paths = ["/bin/sh", "/bin/bash", "/bin/dash", "/usr/bin/ash", "/bin/zsh"];
        let all: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let r = report(&paths);
        assert_eq!(
            evidence_of(&r, &all),
            "/bin/sh in layer sha256:0123456789ab, /bin/bash in layer sha256:0123456789ab, \
             /bin/dash in layer sha256:0123456789ab and 2 more"
        );
        assert_eq!(
            evidence_of(&r, &all[..3]),
            "/bin/sh in layer sha256:0123456789ab, /bin/bash in layer sha256:0123456789ab, \
             /bin/dash in layer sha256:0123456789ab"
        );
        assert_eq!(evidence_of(&r, &["/bin/other".to_string()]), "/bin/other in layer ?");
    }
}
