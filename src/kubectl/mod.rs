//! What `kubectl distroless` does, without its command line: connecting as
//! kubectl does, debugging a pod with no shell, explaining a denial, driving
//! a DistrolessRollout. Errors say what to do, in the words of kubectl.

pub(crate) mod debug;
pub(crate) mod explain;
pub(crate) mod inventory;
pub(crate) mod rollout;

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why a plugin command could not do what was asked. What the cluster said
/// is kept typed (its status, or kube's error as the source); what a verb
/// decided itself is its sentence for people.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The command line names something that cannot be.
    #[error("{0}")]
    Usage(String),
    /// A check before acting, or the cluster's state, said no; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The work was started and did not finish in the time given.
    #[error("{0}")]
    TimedOut(String),
    #[error("{what} not found in namespace {namespace}")]
    NotFound { what: String, namespace: String },
    #[error("forbidden: {message}")]
    Forbidden { message: String },
    #[error("unauthorized: the API server does not accept these credentials ({message})")]
    Unauthorized { message: String },
    /// The DistrolessRollout or DistrolessPolicy CRD is not installed.
    #[error(
        "the API server does not know {what}: is distroless-guard installed? \
         (helm install distroless-guard charts/distroless-guard, or distroless-guard crd | kubectl apply -f -)"
    )]
    NoCrd { what: String },
    /// Said through its innermost cause (the OS's words), not as a chain.
    #[error("cannot reach the API server: {}", innermost(error))]
    Unreachable { error: kube::Error },
    #[error("{}", match path {
        Some(path) => format!("cannot read the kubeconfig {}", path.display()),
        None => "no kubeconfig ($KUBECONFIG or ~/.kube/config); pass --kubeconfig FILE".to_string(),
    })]
    Kubeconfig {
        path: Option<PathBuf>,
        source: kube::config::KubeconfigError,
    },
    #[error("the kubeconfig cannot be used")]
    KubeconfigUnusable { source: kube::config::KubeconfigError },
    #[error("cannot build a client for {server}")]
    Client { server: String, source: kube::Error },
    /// Any other answer of the API server about `what`: its message and reason.
    #[error("{what}: {}", api_message(error))]
    Api { what: String, error: kube::Error },
    /// An object that does not read as the kind it claims.
    #[error("{what} cannot be read")]
    Shape { what: String, source: serde_json::Error },
    #[error("{what} cannot be read as a workload")]
    NotAWorkload {
        what: String,
        source: crate::policy::ExtractError,
    },
    #[error("the watch of {what} ended")]
    WatchEnded { what: String },
}

/// The last cause in an error's chain: for a connection, the OS's words.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A status's message and reason, else kube's words.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
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
            Some(path) => Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                path: Some(path.clone()),
                source,
            })?,
            None => Kubeconfig::read().map_err(|source| Error::Kubeconfig { path: None, source })?,
        };
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|source| Error::KubeconfigUnusable { source })?;
        let server = config.cluster_url.to_string();
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).map_err(|source| Error::Client {
            server: server.clone(),
            source,
        })?;
        Ok((client, namespace, server))
    }
}

/// A kube error in the words a kubectl user expects: what was not found
/// where, which verb on which resource RBAC refuses, a missing CRD, an API
/// server that cannot be reached.
pub(crate) fn describe(e: kube::Error, what: &str, namespace: &str) -> Error {
    match &e {
        // A missing object is `<kind> "<name>" not found`; a missing type is
        // "404 page not found" or "the server could not find the requested resource".
        kube::Error::Api(status) if status.code == 404 && !status.message.contains("\" not found") => {
            Error::NoCrd { what: what.to_string() }
        }
        kube::Error::Api(status) if status.code == 404 => Error::NotFound {
            what: what.to_string(),
            namespace: namespace.to_string(),
        },
        kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
            message: status.message.clone(),
        },
        kube::Error::Api(status) if status.code == 401 => Error::Unauthorized {
            message: status.message.clone(),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => Error::Unreachable { error: e },
        _ => Error::Api {
            what: what.to_string(),
            error: e,
        },
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
    use kube::core::Status;

    fn api(code: u16, message: &str, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
    }

    #[test]
    fn api_server_answers_become_typed_errors_in_kubectls_words() {
        let e = describe(api(404, "pods \"web\" not found", "NotFound"), "pod \"web\"", "shop");
        assert!(
            matches!(&e, Error::NotFound { namespace, .. } if namespace == "shop"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "pod \"web\" not found in namespace shop");

        let e = describe(
            api(404, "the server could not find the requested resource", "NotFound"),
            "distrolessrollouts",
            "shop",
        );
        assert!(matches!(e, Error::NoCrd { .. }), "{e:?}");
        assert!(e.to_string().contains("is distroless-guard installed?"), "{e}");

        let e = describe(
            api(403, "pods is forbidden: User \"dev\" cannot list", "Forbidden"),
            "pods",
            "shop",
        );
        assert_eq!(e.to_string(), "forbidden: pods is forbidden: User \"dev\" cannot list");
        let e = describe(api(401, "Unauthorized", "Unauthorized"), "pods", "shop");
        assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");

        let e = describe(
            api(409, "the object has been modified", "Conflict"),
            "distrolessrollout \"r\"",
            "shop",
        );
        assert!(
            matches!(&e, Error::Api { error: kube::Error::Api(s), .. } if s.code == 409),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "distrolessrollout \"r\": the object has been modified (Conflict)"
        );
    }

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
