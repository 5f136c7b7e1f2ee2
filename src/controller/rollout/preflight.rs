//! Before any canary pod exists: would the API server admit one (Pod
//! Security Admission, our own webhook, RBAC), will the kubelet run its
//! images (distroless, a numeric non-root user, no shell entrypoint), and is
//! there quota for it. A "no" here stops the rollout in seconds.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec, ResourceQuota};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, PostParams};

use crate::image::credentials::Credentials;
use crate::image::{ImageReport, Inspector, Platform};

/// Why a canary pod would not run (the rollout's preflight message).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("a canary pod would be refused by the API server: {0}")]
    Admission(String),
    #[error("cannot dry-run a canary pod: {0}")]
    DryRun(#[source] kube::Error),
    #[error("cannot read the distroless image: {0}")]
    Unreadable(#[source] crate::image::ImageError),
    #[error("{image} is not distroless: it contains {}", found.join(", "))]
    NotDistroless { image: String, found: Vec<String> },
    #[error(
        "{image} runs as root and the pod sets runAsNonRoot without runAsUser: the kubelet would refuse it \
         (\"container has runAsNonRoot and image will run as root\"); use its :nonroot tag or set runAsUser: 65532"
    )]
    RootImage { image: String },
    #[error(
        "{image} runs as the user {user:?}, a name: with runAsNonRoot the kubelet refuses it \
         (\"image has non-numeric user\"); set runAsUser: {uid} in the pod"
    )]
    NamedUser { image: String, user: String, uid: u32 },
    #[error("{image}'s entrypoint starts a shell ({first}), which a distroless image cannot run")]
    ShellEntrypoint { image: String, first: String },
    #[error("cannot read HorizontalPodAutoscalers: {0}")]
    Autoscalers(#[source] kube::Error),
    #[error(
        "HorizontalPodAutoscaler {hpa} scales Deployment {deployment}: canaryCapacity: FromDeployment would fight it \
         over spec.replicas; use canaryCapacity: Added (the default), which leaves the replicas to the autoscaler"
    )]
    Autoscaled { hpa: String, deployment: String },
    #[error("cannot read ResourceQuotas: {0}")]
    Quotas(#[source] kube::Error),
    #[error(
        "ResourceQuota {quota} has no room for {pods} canary pod(s): {resource} {used} used of {hard}, the canary needs {more} more"
    )]
    NoRoom {
        quota: String,
        pods: u32,
        resource: String,
        used: f64,
        hard: f64,
        more: f64,
    },
}

/// Why a canary pod would not run, or `Ok` with what was checked. Only the
/// images of `moved` containers are read (a sidecar the rollout leaves alone
/// is not the migration's business), with `credentials` from the pods'
/// imagePullSecrets.
pub(crate) async fn check(
    client: &kube::Client,
    namespace: &str,
    template: &PodTemplateSpec,
    moved: &[&str],
    canary_pods: u32,
    inspector: Option<&Arc<Inspector>>,
    credentials: Option<Arc<Credentials>>,
) -> Result<String, Refusal> {
    let mut checked = Vec::new();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            generate_name: Some("distroless-preflight-".into()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: template.metadata.as_ref().and_then(|m| m.annotations.clone()),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    match pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod,
        )
        .await
    {
        Ok(_) => checked.push("admission (server-side dry run)".to_string()),
        Err(kube::Error::Api(e)) => return Err(Refusal::Admission(e.message)),
        Err(e) => return Err(Refusal::DryRun(e)),
    }
    let spec = template.spec.clone().unwrap_or_default();
    if let Some(inspector) = inspector {
        for c in spec.containers.iter().filter(|c| moved.contains(&c.name.as_str())) {
            let Some(image) = c.image.as_deref() else { continue };
            let reports = inspector
                .inspect_as(
                    image,
                    &Platform::default(),
                    Some(Duration::from_secs(20)),
                    credentials.clone(),
                )
                .await
                .map_err(Refusal::Unreadable)?;
            for report in reports.iter() {
                image_problem(&spec, c, report)?;
            }
            checked.push(format!(
                "image {image} (distroless, uid {})",
                reports[0].uid.map_or("?".into(), |u| u.to_string())
            ));
        }
    } else {
        checked.push("images not read (the operator runs without --inspect-images)".into());
    }
    quota(client, namespace, &spec, canary_pods).await?;
    checked.push(format!("quota for {canary_pods} canary pod(s)"));
    Ok(format!("checked: {}", checked.join("; ")))
}

/// `canaryCapacity: FromDeployment` scales the Deployment itself: refused
/// when a HorizontalPodAutoscaler owns its replicas.
pub(crate) async fn no_autoscaler(client: &kube::Client, namespace: &str, deployment: &str) -> Result<(), Refusal> {
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(Refusal::Autoscalers)?;
    let scaling = hpas.items.iter().find(|h| {
        let t = &h.spec.scale_target_ref;
        t.kind == "Deployment"
            && t.name == deployment
            && t.api_version.as_deref().is_none_or(|v| v.starts_with("apps/"))
    });
    match scaling {
        Some(h) => Err(Refusal::Autoscaled {
            hpa: h.metadata.name.clone().unwrap_or_default(),
            deployment: deployment.to_string(),
        }),
        None => Ok(()),
    }
}

/// What the kubelet (or the point of the migration) would object to in this
/// container's image.
pub(crate) fn image_problem(spec: &PodSpec, c: &Container, report: &ImageReport) -> Result<(), Refusal> {
    let image = report.image.clone();
    if !report.distroless {
        let found: Vec<String> = report.shells.iter().chain(&report.package_managers).cloned().collect();
        return Err(Refusal::NotDistroless { image, found });
    }
    let run_as_user = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or(spec.security_context.as_ref().and_then(|s| s.run_as_user));
    let non_root = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or(spec.security_context.as_ref().and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if non_root && run_as_user.is_none() {
        let numeric = report.user.split(':').next().is_some_and(|u| u.parse::<u32>().is_ok());
        if report.uid == Some(0) {
            return Err(Refusal::RootImage { image });
        }
        if !numeric {
            return Err(Refusal::NamedUser {
                image,
                user: report.user.clone(),
                uid: report.uid.unwrap_or(65532),
            });
        }
    }
    if c.command.as_ref().is_none_or(|c| c.is_empty()) {
        let argv: Vec<String> = report.entrypoint.iter().chain(&report.cmd).cloned().collect();
        if let Some(first) = argv.first()
            && crate::image::SHELL_NAMES.contains(&first.rsplit('/').next().unwrap_or_default())
        {
            return Err(Refusal::ShellEntrypoint {
                image,
                first: first.clone(),
            });
        }
    }
    Ok(())
}

/// A quantity as a number of milli-units (CPU) or bytes (memory); `None` when unreadable.
pub(crate) fn quantity(q: &Quantity) -> Option<f64> {
    let s = q.0.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    let factor = match unit {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(n * factor)
}

/// One canary pod's requests and limits, by quota resource name.
fn per_pod(spec: &PodSpec) -> Vec<(String, f64)> {
    let mut out: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for c in &spec.containers {
        let Some(r) = &c.resources else { continue };
        for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (res, q) in map.iter().flatten() {
                if let Some(v) = quantity(q) {
                    *out.entry(format!("{kind}.{res}")).or_default() += v;
                    if kind == "requests" {
                        *out.entry(res.clone()).or_default() += v;
                    }
                }
            }
        }
    }
    out.insert("pods".into(), 1.0);
    out.insert("count/pods".into(), 1.0);
    out.into_iter().collect()
}

async fn quota(client: &kube::Client, namespace: &str, spec: &PodSpec, canary_pods: u32) -> Result<(), Refusal> {
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), namespace);
    let list = match quotas.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(()),
        Err(e) => return Err(Refusal::Quotas(e)),
    };
    let need = per_pod(spec);
    for q in list.items {
        let status = q.status.unwrap_or_default();
        for (res, per) in &need {
            let hard = status.hard.as_ref().and_then(|h| h.get(res)).and_then(quantity);
            let used = status
                .used
                .as_ref()
                .and_then(|u| u.get(res))
                .and_then(quantity)
                .unwrap_or(0.0);
            if let Some(hard) = hard {
                let more = per * f64::from(canary_pods);
                if used + more > hard + 1e-9 {
                    return Err(Refusal::NoRoom {
                        quota: q.metadata.name.unwrap_or_default(),
                        pods: canary_pods,
                        resource: res.clone(),
                        used,
                        hard,
                        more,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(user: &str, uid: Option<u32>, shells: &[&str], entrypoint: &[&str]) -> ImageReport {
        ImageReport {
            image: "reg/app:1".into(),
            digest: "sha256:d".into(),
            platform: "linux/amd64".into(),
            user: user.into(),
            uid,
            shells: shells.iter().map(|s| s.to_string()).collect(),
            package_managers: Vec::new(),
            package_databases: Vec::new(),
            distroless: shells.is_empty(),
            evidence: Vec::new(),
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: Vec::new(),
            base_image: None,
        }
    }

    fn spec(pod_security: serde_json::Value) -> (PodSpec, Container) {
        let spec: PodSpec = serde_json::from_value(
            json!({"securityContext": pod_security, "containers": [{"name": "app", "image": "reg/app:1"}]}),
        )
        .unwrap();
        let c = spec.containers[0].clone();
        (spec, c)
    }

    #[test]
    fn the_kubelets_objections_are_found_before_any_pod_exists() {
        let (s, c) = spec(json!({"runAsNonRoot": true}));
        let err = image_problem(&s, &c, &report("", Some(0), &[], &["/app"])).unwrap_err();
        assert!(matches!(err, Refusal::RootImage { .. }), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("image will run as root") && err.contains(":nonroot"),
            "{err}"
        );
        let err = image_problem(&s, &c, &report("nonroot", Some(65532), &[], &["/app"])).unwrap_err();
        assert!(matches!(err, Refusal::NamedUser { uid: 65532, .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("non-numeric user") && err.contains("65532"), "{err}");
        assert!(image_problem(&s, &c, &report("65532", Some(65532), &[], &["/app"])).is_ok());
        let (s, c) = spec(json!({"runAsNonRoot": true, "runAsUser": 65532}));
        assert!(
            image_problem(&s, &c, &report("nonroot", Some(65532), &[], &["/app"])).is_ok(),
            "runAsUser settles it"
        );
    }

    #[test]
    fn a_shell_in_the_image_or_its_entrypoint_is_refused() {
        let (s, c) = spec(json!({}));
        let err = image_problem(&s, &c, &report("65532", Some(65532), &["/bin/sh"], &["/app"])).unwrap_err();
        assert!(
            matches!(&err, Refusal::NotDistroless { found, .. } if found == &["/bin/sh"]),
            "{err:?}"
        );
        assert!(err.to_string().contains("not distroless: it contains /bin/sh"), "{err}");
        let err = image_problem(&s, &c, &report("65532", Some(65532), &[], &["/bin/sh", "-c", "app"])).unwrap_err();
        assert!(
            matches!(&err, Refusal::ShellEntrypoint { first, .. } if first == "/bin/sh"),
            "{err:?}"
        );
        assert!(err.to_string().contains("entrypoint starts a shell"), "{err}");
    }

    #[test]
    fn quantities_are_read_in_their_units() {
        assert_eq!(quantity(&Quantity("250m".into())), Some(0.25));
        assert_eq!(quantity(&Quantity("64Mi".into())), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity(&Quantity("2".into())), Some(2.0));
        assert_eq!(quantity(&Quantity("1x".into())), None);
    }
}
