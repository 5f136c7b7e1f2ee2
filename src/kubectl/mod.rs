//! What `kubectl distroless` does, without its command line: connecting as
//! kubectl does, debugging a pod with no shell, explaining a denial, driving
//! a DistrolessRollout. Errors say what to do, in the words of kubectl.

pub(crate) mod debug;
pub(crate) mod explain;
pub(crate) mod inventory;
pub(crate) mod rollout;

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why a plugin command could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The command line names something that cannot be.
    #[error("{0}")]
    Usage(String),
    /// The cluster (or a check before it) said no; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    /// The DistrolessRollout or DistrolessPolicy CRD is not installed.
    #[error("{0}")]
    NoCrd(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Api(String),
}

/// How to reach the cluster: kubectl's flags.
#[derive(Clone, Debug, Default)]
pub(crate) struct Connection {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
}

impl Connection {
    /// A client, and the namespace to use (the flag, else the context's, else `default`).
    /// Exec and OIDC credential plugins work through kube's config loading.
    pub(crate) async fn connect(&self) -> Result<(kube::Client, String, String), Error> {
        let kubeconfig = match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("cannot read the kubeconfig {}: {e}", path.display())))?,
            None => Kubeconfig::read().map_err(|e| {
                Error::Config(format!(
                    "no kubeconfig ($KUBECONFIG or ~/.kube/config): {e}; pass --kubeconfig FILE"
                ))
            })?,
        };
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| Error::Config(format!("the kubeconfig cannot be used: {e}")))?;
        let server = config.cluster_url.to_string();
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config)
            .map_err(|e| Error::Config(format!("cannot build a client for {server}: {e}")))?;
        Ok((client, namespace, server))
    }
}

/// A kube error in the words a kubectl user expects: what was not found
/// where, which verb on which resource RBAC refuses, a missing CRD, an API
/// server that cannot be reached.
pub(crate) fn describe(e: kube::Error, what: &str, namespace: &str) -> Error {
    match e {
        kube::Error::Api(status) => {
            // A missing object is `<kind> "<name>" not found`; a missing type is
            // "404 page not found" or "the server could not find the requested resource".
            if status.code == 404 && !status.message.contains("\" not found") {
                return Error::NoCrd(format!(
                    "the API server does not know {what}: is distroless-guard installed? \
                     (helm install distroless-guard charts/distroless-guard, or \
                     distroless-guard crd | kubectl apply -f -)"
                ));
            }
            match status.code {
                404 => Error::NotFound(format!("{what} not found in namespace {namespace}")),
                403 => Error::Forbidden(format!("forbidden: {}", status.message)),
                401 => Error::Forbidden(format!(
                    "unauthorized: the API server does not accept these credentials ({})",
                    status.message
                )),
                _ => Error::Api(format!("{what}: {} ({})", status.message, status.reason)),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause = s.to_string();
                source = s.source();
            }
            Error::Unreachable(format!("cannot reach the API server: {cause}"))
        }
        other => Error::Api(format!("{what}: {other}")),
    }
}

/// What the kubelet and Pod Security Admission make of an image's user under
/// `runAsNonRoot: true` (the restricted profile).
pub(crate) fn kubelet_verdict(report: &crate::image::ImageReport) -> String {
    let numeric = report.user.split(':').next().is_some_and(|u| u.parse::<u32>().is_ok());
    if report.user.is_empty() || report.uid == Some(0) {
        return "refused under runAsNonRoot unless the pod sets runAsUser: the kubelet reports \
                CreateContainerConfigError \"container has runAsNonRoot and image will run as root\""
            .into();
    }
    if !numeric {
        return format!(
            "refused under runAsNonRoot unless the pod sets runAsUser: the user {:?} is a name, and the kubelet \
             reports \"image has non-numeric user ({}), cannot verify user is non-root\"; set runAsUser: {}",
            report.user,
            report.user,
            report.uid.unwrap_or(65532)
        );
    }
    "runs under runAsNonRoot as it is (numeric non-root user); Pod Security Admission's restricted profile \
     checks the pod's fields, not the image: the pod still needs runAsNonRoot: true"
        .into()
}

/// The `:nonroot` and `:debug-nonroot` tags next to an image (distroless's
/// naming), and `<tag>-nonroot`, to look for in its repository.
pub(crate) fn sibling_tags(image: &str) -> Vec<String> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match without_digest[slash..].rfind(':') {
        Some(i) => (&without_digest[..slash + i], &without_digest[slash + i + 1..]),
        None => (without_digest, "latest"),
    };
    let mut tags = vec!["nonroot".to_string(), "debug-nonroot".to_string()];
    if !tag.contains("nonroot") && tag != "latest" {
        tags.push(format!("{tag}-nonroot"));
    }
    tags.retain(|t| t != tag);
    tags.into_iter().map(|t| format!("{repo}:{t}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_tags_follow_distroless_naming() {
        assert_eq!(
            sibling_tags("gcr.io/distroless/static-debian12"),
            [
                "gcr.io/distroless/static-debian12:nonroot",
                "gcr.io/distroless/static-debian12:debug-nonroot"
            ]
        );
        assert_eq!(
            sibling_tags("localhost:5000/app:1.2@sha256:abc"),
            [
                "localhost:5000/app:nonroot",
                "localhost:5000/app:debug-nonroot",
                "localhost:5000/app:1.2-nonroot"
            ]
        );
        assert_eq!(sibling_tags("app:nonroot"), ["app:debug-nonroot"]);
    }
}
