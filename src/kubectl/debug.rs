//! `kubectl distroless debug`: an ephemeral container that can look inside a
//! pod with no shell, running as the target's own user so it passes the
//! restricted Pod Security Standard and can read the target's files.
//!
//! The pure parts (identity, security context, reuse, poisoning) are here;
//! [`run`] talks to the API server: a server-side dry run first, then the
//! real update of `pods/ephemeralcontainers`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EphemeralContainer, Namespace, Pod, SeccompProfile, SecurityContext,
};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Error, describe};
use crate::image::{ImageReport, Inspector, Platform};

/// The distroless user and group.
pub(crate) const NONROOT: i64 = 65532;
/// A debug image with a shell (busybox) whose user is numeric and non-root.
pub(crate) const DEFAULT_IMAGE: &str = "gcr.io/distroless/base-debian12:debug-nonroot";
/// Pod Security Admission's enforce label.
pub(crate) const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Who the debug container runs as, and where that came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: i64,
    pub gid: i64,
    pub source: &'static str,
}

/// `uid[:gid]` when both parts are numeric (a user name is not).
fn numeric_user(user: &str) -> Option<(i64, Option<i64>)> {
    let mut parts = user.splitn(2, ':');
    let uid = parts.next()?.parse().ok()?;
    let gid = match parts.next() {
        Some(g) => Some(g.parse().ok()?),
        None => None,
    };
    Some((uid, gid))
}

/// The target's effective UID/GID: its container's securityContext, then the
/// pod's, then the image's numeric `USER` (as read from the registry), then
/// 65532 (distroless `nonroot`).
pub(crate) fn effective_identity(pod: &Pod, container: &str, image_user: Option<&str>) -> Identity {
    let spec = pod.spec.as_ref();
    let c = spec.and_then(|s| s.containers.iter().find(|c| c.name == container));
    let csc = c.and_then(|c| c.security_context.as_ref());
    let psc = spec.and_then(|s| s.security_context.as_ref());
    let image = image_user.and_then(numeric_user);
    let (uid, source) = if let Some(u) = csc.and_then(|s| s.run_as_user) {
        (u, "the container's securityContext.runAsUser")
    } else if let Some(u) = psc.and_then(|s| s.run_as_user) {
        (u, "the pod's securityContext.runAsUser")
    } else if let Some((u, _)) = image {
        (u, "the image's USER")
    } else {
        (NONROOT, "the distroless nonroot user (nothing else sets one)")
    };
    let gid = csc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
        .or(image.and_then(|(_, g)| g))
        .unwrap_or(if uid == NONROOT { NONROOT } else { uid });
    Identity { uid, gid, source }
}

/// The debug profiles, kubectl's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    Restricted,
    Netadmin,
    Sysadmin,
}

impl Profile {
    /// The Pod Security level a namespace must allow for this profile.
    pub(crate) fn level(self) -> &'static str {
        match self {
            Profile::Restricted => "restricted",
            Profile::Netadmin | Profile::Sysadmin => "privileged",
        }
    }

    /// The debug container's securityContext.
    pub(crate) fn security_context(self, who: &Identity) -> SecurityContext {
        let mut sc = SecurityContext {
            run_as_non_root: Some(who.uid != 0),
            run_as_user: Some(who.uid),
            run_as_group: Some(who.gid),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        };
        match self {
            Profile::Restricted => {}
            Profile::Netadmin => {
                sc.capabilities = Some(Capabilities {
                    add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                    drop: None,
                });
            }
            Profile::Sysadmin => {
                sc.privileged = Some(true);
                sc.allow_privilege_escalation = None;
                sc.capabilities = None;
            }
        }
        sc
    }
}

fn rank(level: &str) -> u8 {
    match level {
        "privileged" => 0,
        "baseline" => 1,
        _ => 2, // restricted, or anything unknown: PSA treats it as the strictest it knows
    }
}

/// Whether a namespace enforcing `enforced` admits what needs `needed`.
pub(crate) fn level_allows(enforced: Option<&str>, needed: &str) -> bool {
    enforced.is_none_or(|e| rank(e) <= rank(needed))
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub pod: String,
    pub container: Option<String>,
    pub image: String,
    pub profile: Profile,
    pub volumes_from_target: bool,
    pub env_from_target: bool,
    pub force: bool,
}

/// The ephemeral container for a request against `target`, named after a
/// hash of its spec so the same request finds the same container again.
pub(crate) fn container(req: &Request, target: &Container, who: &Identity) -> EphemeralContainer {
    let mut c = EphemeralContainer {
        name: String::new(),
        image: Some(req.image.clone()),
        target_container_name: Some(target.name.clone()),
        stdin: Some(true),
        tty: Some(true),
        security_context: Some(req.profile.security_context(who)),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..EphemeralContainer::default()
    };
    if req.env_from_target {
        c.env.clone_from(&target.env);
        c.env_from.clone_from(&target.env_from);
    }
    if req.volumes_from_target {
        c.volume_mounts = target.volume_mounts.as_ref().map(|mounts| {
            mounts
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    // Read-only: the debug container never writes into the target's volumes.
                    m.read_only = Some(true);
                    m.mount_propagation = None;
                    m.recursive_read_only = None;
                    m
                })
                .collect()
        });
    }
    let digest = Sha256::digest(serde_json::to_vec(&c).unwrap_or_default());
    c.name = format!("debugger-{}", &hex(&digest)[..6]);
    c
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What to do about a container of the same spec already in the pod.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// None there: add it under this name.
    Add(String),
    /// One is there and not terminated: attach to it.
    Reuse(String),
}

/// Reuse a debug container of the same spec unless it has exited (an exited
/// ephemeral container cannot be restarted: a new name is taken then).
pub(crate) fn existing(pod: &Pod, name: &str) -> Existing {
    let specs: BTreeSet<&str> = pod
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    let terminated = |n: &str| {
        pod.status
            .as_ref()
            .and_then(|s| s.ephemeral_container_statuses.as_ref())
            .into_iter()
            .flatten()
            .any(|s| s.name == n && s.state.as_ref().is_some_and(|st| st.terminated.is_some()))
    };
    if specs.contains(name) && !terminated(name) {
        return Existing::Reuse(name.to_string());
    }
    let mut candidate = name.to_string();
    let mut n = 2;
    while specs.contains(candidate.as_str()) {
        if !terminated(&candidate) {
            return Existing::Reuse(candidate);
        }
        candidate = format!("{name}-{n}");
        n += 1;
    }
    Existing::Add(candidate)
}

/// Why a securityContext breaks `level`, if it does (the container's own
/// context with the pod's as fallback, as Pod Security Admission reads them).
fn breaks(level: &str, sc: Option<&SecurityContext>, pod: &Pod) -> Option<String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    const BASELINE_CAPS: &[&str] = &[
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let added: Vec<String> = sc
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    if rank(level) >= 1 {
        if privileged {
            return Some("privileged: true".into());
        }
        if let Some(cap) = added.iter().find(|c| !BASELINE_CAPS.contains(&c.as_str())) {
            return Some(format!("adds the capability {cap}"));
        }
    }
    if rank(level) >= 2 {
        let non_root = sc
            .and_then(|s| s.run_as_non_root)
            .or(psc.and_then(|s| s.run_as_non_root));
        if non_root != Some(true) {
            return Some("no runAsNonRoot: true".into());
        }
        if sc.and_then(|s| s.run_as_user).or(psc.and_then(|s| s.run_as_user)) == Some(0) {
            return Some("runAsUser: 0".into());
        }
        if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            return Some("no allowPrivilegeEscalation: false".into());
        }
        let drops_all = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        if !drops_all {
            return Some("capabilities do not drop ALL".into());
        }
        if let Some(cap) = added.iter().find(|c| c.as_str() != "NET_BIND_SERVICE") {
            return Some(format!("adds the capability {cap}"));
        }
        let seccomp = sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .or(psc.and_then(|s| s.seccomp_profile.as_ref()))
            .map(|p| p.type_.as_str());
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            return Some("no seccompProfile RuntimeDefault or Localhost".into());
        }
    }
    None
}

/// An earlier ephemeral container that breaks the namespace's enforced level:
/// ephemeral containers can never be removed, and Pod Security Admission
/// judges the whole pod on every update, so no debug container can be added
/// to this pod any more.
pub(crate) fn poisoned(pod: &Pod, enforced: Option<&str>) -> Option<String> {
    let level = enforced?;
    if rank(level) == 0 {
        return None;
    }
    pod.spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| breaks(level, c.security_context.as_ref(), pod).map(|why| (c.name.clone(), why)))
        .map(|(name, why)| {
            format!(
                "pod {} already has the ephemeral container {name:?}, which breaks the namespace's \
                 \"{level}\" Pod Security level ({why}); ephemeral containers cannot be removed, so the \
                 API server will refuse every further debug container in this pod. Delete the pod (its \
                 controller recreates it) and debug the new one",
                pod.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

/// What the user reads once the container is there.
pub(crate) fn guide(pod: &str, name: &str, target: &Container, who: &Identity, pod_obj: &Pod) -> Vec<String> {
    let mut lines = vec![
        format!(
            "debug container {name} in pod {pod}: UID {} GID {} ({}), sharing the process namespace of container {}",
            who.uid, who.gid, who.source, target.name
        ),
        "  the target's files:       ls /proc/1/root/   (read through the target's process; nothing is written there)"
            .into(),
        "  the target's environment: tr '\\0' '\\n' < /proc/1/environ".into(),
        "  the target's processes:   ps, or ls /proc".into(),
    ];
    let target_uid = target.security_context.as_ref().and_then(|s| s.run_as_user).or(pod_obj
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.run_as_user));
    if let Some(t) = target_uid.filter(|t| *t != who.uid) {
        lines.push(format!(
            "  caveat: the target runs as UID {t}, the debug container as {}: /proc/1/root may be unreadable",
            who.uid
        ));
    }
    if pod_obj.spec.as_ref().and_then(|s| s.host_users) == Some(false) {
        lines.push(
            "  caveat: the pod uses a user namespace (hostUsers: false): UIDs inside differ from the node's".into(),
        );
    }
    lines
}

/// The image's `USER`, read from its registry (`None` when it cannot be read).
pub(crate) async fn image_user(inspector: &Arc<Inspector>, image: &str) -> Option<String> {
    let reports = inspector
        .inspect(image, &Platform::default(), Some(Duration::from_secs(20)))
        .await
        .ok()?;
    let report: &ImageReport = reports.first()?;
    // A name mapped through /etc/passwd counts as its UID.
    if numeric_user(&report.user).is_some() {
        return Some(report.user.clone());
    }
    report.uid.map(|u| u.to_string())
}

/// What `run` did.
pub(crate) struct Debugged {
    pub container: String,
    pub reused: bool,
    pub guide: Vec<String>,
}

/// Adds (or finds) the debug container: checks the profile against the
/// namespace, the pod for poisoning, then a server-side dry run, then the update.
pub(crate) async fn run(
    client: &kube::Client,
    namespace: &str,
    req: &Request,
    inspector: Option<&Arc<Inspector>>,
) -> Result<Debugged, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods
        .get(&req.pod)
        .await
        .map_err(|e| describe(e, &format!("pod {:?}", req.pod), namespace))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let target = match &req.container {
        Some(name) => spec.containers.iter().find(|c| &c.name == name).ok_or_else(|| {
            let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
            Error::Usage(format!(
                "pod {} has no container {name:?} (it has: {})",
                req.pod,
                names.join(", ")
            ))
        })?,
        None => spec
            .containers
            .first()
            .ok_or_else(|| Error::Usage(format!("pod {} has no containers", req.pod)))?,
    };
    let ns: Option<Namespace> = Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
        .unwrap_or(None);
    let enforced = ns
        .as_ref()
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(ENFORCE_LABEL))
        .cloned();
    if !level_allows(enforced.as_deref(), req.profile.level()) && !req.force {
        return Err(Error::Refused(format!(
            "the {:?} profile needs the \"{}\" Pod Security level, and namespace {namespace} enforces \"{}\"; \
             use --profile restricted, or --force to let the API server decide",
            req.profile,
            req.profile.level(),
            enforced.unwrap_or_default()
        )));
    }
    if let Some(why) = poisoned(&pod, enforced.as_deref()) {
        return Err(Error::Refused(why));
    }
    let image_user = match (inspector, target.image.as_deref()) {
        (Some(i), Some(image)) if target.security_context.as_ref().and_then(|s| s.run_as_user).is_none() => {
            image_user(i, image).await
        }
        _ => None,
    };
    let who = effective_identity(&pod, &target.name, image_user.as_deref());
    let mut wanted = container(req, target, &who);
    let name = match existing(&pod, &wanted.name) {
        Existing::Reuse(name) => {
            return Ok(Debugged {
                guide: guide(&req.pod, &name, target, &who, &pod),
                container: name,
                reused: true,
            });
        }
        Existing::Add(name) => name,
    };
    wanted.name.clone_from(&name);
    let patch = json!({"spec": {"ephemeralContainers": [wanted]}});
    // Nothing permanent until the API server (PSA, webhooks, RBAC) has said yes.
    pods.patch_ephemeral_containers(&req.pod, &PatchParams::default().dry_run(), &Patch::Strategic(&patch))
        .await
        .map_err(|e| refusal(e, &req.pod, namespace))?;
    pods.patch_ephemeral_containers(&req.pod, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map_err(|e| refusal(e, &req.pod, namespace))?;
    Ok(Debugged {
        guide: guide(&req.pod, &name, target, &who, &pod),
        container: name,
        reused: false,
    })
}

/// An API refusal of the debug container, with what to change.
fn refusal(e: kube::Error, pod: &str, namespace: &str) -> Error {
    let text = e.to_string();
    if text.contains("PodSecurity") {
        return Error::Refused(format!(
            "the API server's Pod Security Admission refused the debug container (nothing was added): {text}; \
             use --profile restricted (the default)"
        ));
    }
    if text.contains("denied the request") {
        return Error::Refused(format!(
            "an admission webhook refused the debug container (nothing was added): {text}"
        ));
    }
    describe(e, &format!("pod {pod:?} (pods/ephemeralcontainers)"), namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn the_identity_comes_from_the_container_then_the_pod_then_the_image_then_nonroot() {
        let c = |sc: serde_json::Value| json!({"name": "app", "image": "i", "securityContext": sc});
        let both = pod(json!({"securityContext": {"runAsUser": 2000, "runAsGroup": 2001},
                               "containers": [c(json!({"runAsUser": 1000, "runAsGroup": 1001}))]}));
        assert_eq!(
            effective_identity(&both, "app", Some("3000:3001")),
            Identity {
                uid: 1000,
                gid: 1001,
                source: "the container's securityContext.runAsUser"
            }
        );
        let pod_only = pod(json!({"securityContext": {"runAsUser": 2000}, "containers": [c(json!({}))]}));
        let who = effective_identity(&pod_only, "app", Some("3000:3001"));
        assert_eq!(
            (who.uid, who.gid),
            (2000, 3001),
            "the image's group when nobody sets one"
        );
        let image = pod(json!({"containers": [c(json!({}))]}));
        assert_eq!(
            (
                effective_identity(&image, "app", Some("3000")).uid,
                effective_identity(&image, "app", Some("3000")).gid
            ),
            (3000, 3000)
        );
        let named = effective_identity(&image, "app", Some("nonroot"));
        assert_eq!((named.uid, named.gid), (NONROOT, NONROOT), "a user name is not numeric");
        assert_eq!(effective_identity(&image, "app", None).uid, NONROOT);
    }

    #[test]
    fn the_restricted_profile_is_restricted_and_the_others_need_privileged() {
        let who = Identity {
            uid: 1000,
            gid: 1000,
            source: "",
        };
        let p = pod(json!({"containers": [{"name": "app"}]}));
        let sc = Profile::Restricted.security_context(&who);
        assert_eq!(breaks("restricted", Some(&sc), &p), None);
        assert!(
            breaks("baseline", Some(&Profile::Netadmin.security_context(&who)), &p)
                .unwrap()
                .contains("NET_ADMIN")
        );
        assert!(
            breaks("baseline", Some(&Profile::Sysadmin.security_context(&who)), &p)
                .unwrap()
                .contains("privileged")
        );
        assert!(level_allows(None, "privileged"));
        assert!(level_allows(Some("privileged"), "privileged"));
        assert!(!level_allows(Some("baseline"), "privileged"));
        assert!(level_allows(Some("restricted"), "restricted"));
    }

    #[test]
    fn a_container_of_the_same_spec_is_reused_unless_it_exited() {
        let req = Request {
            pod: "p".into(),
            container: None,
            image: DEFAULT_IMAGE.into(),
            profile: Profile::Restricted,
            volumes_from_target: false,
            env_from_target: false,
            force: false,
        };
        let target: Container = serde_json::from_value(json!({"name": "app"})).unwrap();
        let who = Identity {
            uid: NONROOT,
            gid: NONROOT,
            source: "",
        };
        let a = container(&req, &target, &who);
        assert_eq!(
            a.name,
            container(&req, &target, &who).name,
            "the same request, the same name"
        );
        let mut other = req.clone();
        other.profile = Profile::Netadmin;
        assert_ne!(a.name, container(&other, &target, &who).name);
        let with = |status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"},
                "spec": {"containers": [{"name": "app"}], "ephemeralContainers": [{"name": a.name}]},
                "status": {"ephemeralContainerStatuses": [{"name": a.name, "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": status}]}}))
            .unwrap()
        };
        assert_eq!(
            existing(&with(json!({"running": {}})), &a.name),
            Existing::Reuse(a.name.clone())
        );
        assert_eq!(
            existing(&with(json!({"terminated": {"exitCode": 0}})), &a.name),
            Existing::Add(format!("{}-2", a.name))
        );
        assert_eq!(
            existing(&pod(json!({"containers": []})), &a.name),
            Existing::Add(a.name.clone())
        );
    }

    #[test]
    fn a_non_compliant_ephemeral_container_poisons_the_pod_under_restricted() {
        let p = pod(json!({"containers": [{"name": "app"}],
            "ephemeralContainers": [{"name": "debugger-x", "image": "busybox"}]}));
        let why = poisoned(&p, Some("restricted")).unwrap();
        assert!(
            why.contains("debugger-x") && why.contains("runAsNonRoot") && why.contains("Delete the pod"),
            "{why}"
        );
        assert_eq!(
            poisoned(&p, Some("baseline")),
            None,
            "baseline allows a plain container"
        );
        assert_eq!(poisoned(&p, None), None);
    }
}
