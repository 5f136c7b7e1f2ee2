//! `kubectl distroless explain KIND/NAME`: why a workload's pods are refused
//! or failing, in one place: the policies in force judged by our engine
//! (rule → cause → fix), the admission refusals the API server recorded
//! (a ReplicaSet's `FailedCreate` Events: our webhook, Pod Security
//! Admission), the pods' container waiting reasons with a distroless hint,
//! and the DistrolessRollout moving the workload, if any.
//!
//! In three parts: [`gather`] reads the cluster (the only I/O), [`judge`]
//! turns what was read into an [`Explanation`] (pure, with sync tests), and
//! [`render`] writes it for people.

mod gather;
mod judge;
mod render;

use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;

use super::Error;

pub(crate) use render::render;

/// Explains `kind/name` in `namespace`: gathered, then judged now.
pub(crate) async fn explain(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<Explanation, Error> {
    let gathered = gather::gather(client, namespace, kind, name).await?;
    judge::explain(&gathered, jiff::Timestamp::now())
}

/// The kinds `explain` knows, by the names kubectl accepts.
fn resolve(kind: &str) -> Option<(&'static str, &'static str, &'static str, &'static str)> {
    // (group, version, kind, plural)
    Some(match kind.to_ascii_lowercase().as_str() {
        "pod" | "pods" | "po" => ("", "v1", "Pod", "pods"),
        "deployment" | "deployments" | "deploy" => ("apps", "v1", "Deployment", "deployments"),
        "statefulset" | "statefulsets" | "sts" => ("apps", "v1", "StatefulSet", "statefulsets"),
        "daemonset" | "daemonsets" | "ds" => ("apps", "v1", "DaemonSet", "daemonsets"),
        "replicaset" | "replicasets" | "rs" => ("apps", "v1", "ReplicaSet", "replicasets"),
        "job" | "jobs" => ("batch", "v1", "Job", "jobs"),
        "cronjob" | "cronjobs" | "cj" => ("batch", "v1", "CronJob", "cronjobs"),
        _ => return None,
    })
}

/// The API resource of a kind name kubectl accepts (`deploy`, `pods`, ...).
pub(crate) fn api_resource(kind: &str) -> Option<ApiResource> {
    let (group, version, kind, plural) = resolve(kind)?;
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

/// `deployment/web` → (kind, name), or a usage error naming the kinds.
pub(crate) fn parse_target(target: &str) -> Result<(String, String), Error> {
    let usage = || {
        Error::Usage(format!(
            "{target:?}: expected KIND/NAME with KIND one of pod, deployment, statefulset, daemonset, job, cronjob, replicaset"
        ))
    };
    let (kind, name) = target.split_once('/').ok_or_else(usage)?;
    let (_, _, kind, _) = resolve(kind).ok_or_else(usage)?;
    if name.is_empty() {
        return Err(usage());
    }
    Ok((kind.to_string(), name.to_string()))
}

/// A rule the policies in force find broken.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RuleFinding {
    pub rule: String,
    pub action: String,
    pub container: Option<String>,
    pub path: String,
    pub cause: String,
    pub fix: String,
    pub policy: String,
}

/// A Warning Event on the workload, its ReplicaSets, Jobs or pods.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventFinding {
    pub object: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
    /// Who refused, when it was admission: `distroless-guard`, `PodSecurity` or another webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
}

/// A container that is not running as it should.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContainerFinding {
    pub pod: String,
    pub container: String,
    pub reason: String,
    pub message: String,
    pub hint: String,
}

/// The rollout moving this workload, where it stands.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolloutFinding {
    pub name: String,
    pub phase: String,
    /// The step under way, numbered from 1.
    pub step: u32,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

#[derive(Clone, Debug, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Explanation {
    pub object: String,
    pub namespace: String,
    /// Policies that match the workload, by name.
    pub policies: Vec<String>,
    /// Exemptions of those policies that apply to it.
    pub exemptions: Vec<String>,
    pub rules: Vec<RuleFinding>,
    pub events: Vec<EventFinding>,
    pub containers: Vec<ContainerFinding>,
    pub rollouts: Vec<RolloutFinding>,
    /// What could not be read (RBAC, a missing CRD), said instead of hidden.
    pub unavailable: Vec<String>,
}

/// Who refused a pod, from the API server's message.
pub(crate) fn refused_by(message: &str) -> Option<String> {
    if message.contains("violates PodSecurity") {
        return Some("PodSecurity".into());
    }
    let start = message.find("admission webhook \"")? + "admission webhook \"".len();
    let webhook = &message[start..];
    let webhook = &webhook[..webhook.find('"')?];
    if webhook.ends_with("distrolessguard.dev") {
        Some("distroless-guard".into())
    } else {
        Some(format!("webhook {webhook}"))
    }
}

/// The rules our webhook named in a refusal the API server recorded (image
/// rules among them, which only admission can judge): `[rule-id] cause. Fix: fix`.
pub(crate) fn rules_in_refusal(message: &str) -> Vec<RuleFinding> {
    let ids: Vec<String> = crate::api::RuleId::ALL.iter().map(|r| format!("[{r}]")).collect();
    let mut starts: Vec<(usize, &str)> = ids
        .iter()
        .flat_map(|id| message.match_indices(id.as_str()).map(|(i, _)| (i, id.as_str())))
        .collect();
    starts.sort();
    let mut out = Vec::new();
    for (k, (i, id)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(message.len(), |(j, _)| *j);
        let body = message[i + id.len()..end].trim().trim_end_matches([';', ',']);
        let (cause, fix) = split_fix(body);
        let container = cause
            .split_once("container \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(name, _)| name.to_string());
        out.push(RuleFinding {
            rule: id.trim_matches(['[', ']']).to_string(),
            action: "Deny".into(),
            container,
            path: String::new(),
            cause,
            fix,
            policy: "(named in the admission refusal)".into(),
        });
    }
    out
}

/// Our messages end with " Fix: ..."; the rest is the cause.
fn split_fix(message: &str) -> (String, String) {
    let (cause, fix) = crate::policy::cause_and_fix(message);
    (cause.trim_end_matches(['.', ' ']).to_string(), fix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_kubectls_kind_names() {
        assert_eq!(parse_target("deploy/web").unwrap(), ("Deployment".into(), "web".into()));
        assert_eq!(parse_target("cj/nightly").unwrap().0, "CronJob");
        assert!(matches!(parse_target("web"), Err(Error::Usage(_))));
        assert!(matches!(parse_target("service/web"), Err(Error::Usage(_))));
    }

    #[test]
    fn refusals_name_who_refused() {
        assert_eq!(
            refused_by("admission webhook \"validate.distrolessguard.dev\" denied the request: [shell-command] ...")
                .as_deref(),
            Some("distroless-guard")
        );
        assert_eq!(
            refused_by("pods \"x\" is forbidden: violates PodSecurity \"restricted:latest\": ...").as_deref(),
            Some("PodSecurity")
        );
        assert_eq!(
            refused_by("admission webhook \"other.example.com\" denied the request").as_deref(),
            Some("webhook other.example.com")
        );
        assert_eq!(refused_by("Back-off restarting failed container"), None);
    }

    #[test]
    fn the_rules_of_a_refusal_are_read_back() {
        let m = "pods \"web-1\" is forbidden: admission webhook \"validate.distrolessguard.dev\" denied the request: \
                 [image-has-shell] container \"web\": image r/web:1 has a shell (/usr/bin/dash). Fix: build FROM distroless; \
                 [root-uid] container \"side\" runs as UID 0. Fix: set runAsUser: 65532";
        let rules = rules_in_refusal(m);
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(
            (rules[0].rule.as_str(), rules[0].container.as_deref()),
            ("image-has-shell", Some("web"))
        );
        assert_eq!(rules[0].fix, "build FROM distroless");
        assert_eq!(
            (rules[1].rule.as_str(), rules[1].fix.as_str()),
            ("root-uid", "set runAsUser: 65532")
        );
    }
}
