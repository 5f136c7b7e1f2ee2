//! `kubectl distroless explain KIND/NAME`: why a workload's pods are refused
//! or failing, in one place: the policies in force judged by our engine
//! (rule → cause → fix), the admission refusals the API server recorded
//! (a ReplicaSet's `FailedCreate` Events: our webhook, Pod Security
//! Admission), the pods' container waiting reasons with a distroless hint,
//! and the DistrolessRollout moving the workload, if any.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;
use serde_json::Value;

use super::{Error, describe};
use crate::api::{DistrolessPolicy, DistrolessRollout};
use crate::policy::{CompiledPolicy, PolicySet, Scope, Subject, Workload, namespace_name_labels, wildcard_match};

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

/// The engine's view: rules broken under the policies in force.
pub(crate) fn judge(
    object: &Value,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    policies: &PolicySet,
    now: jiff::Timestamp,
) -> Result<(Vec<String>, Vec<RuleFinding>), Error> {
    let workload = Workload::from_value(object)
        .map_err(|e| Error::Api(format!("the object cannot be read as a workload: {e}")))?
        .ok_or_else(|| Error::Usage("not a workload with a pod template".into()))?;
    let subject = Subject {
        workload: &workload,
        namespace,
        namespace_labels: labels,
        scope: Scope::Full,
        images: None,
    };
    let verdict = crate::policy::evaluate(policies, &subject, now);
    let rules = verdict
        .violations
        .iter()
        .map(|v| {
            let (cause, fix) = split_fix(&v.message);
            RuleFinding {
                rule: v.rule.to_string(),
                action: format!("{:?}", v.action),
                container: v.container.clone(),
                path: v.path.clone(),
                cause,
                fix,
                policy: v.policy.clone(),
            }
        })
        .collect();
    Ok((verdict.matched, rules))
}

fn uid(v: &Value) -> Option<String> {
    v.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string)
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, owners: &BTreeSet<String>) -> bool {
    meta.owner_references.iter().flatten().any(|o| owners.contains(&o.uid))
}

/// Gathers everything for `kind/name` in `namespace`.
pub(crate) async fn explain(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<Explanation, Error> {
    let (group, version, kind, plural) = resolve(kind).ok_or_else(|| Error::Usage(format!("unknown kind {kind}")))?;
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let objects: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let object = objects
        .get(name)
        .await
        .map_err(|e| describe(e, &format!("{} {name:?}", kind.to_ascii_lowercase()), namespace))?;
    let mut value = serde_json::to_value(&object).map_err(|e| Error::Api(e.to_string()))?;
    value["apiVersion"] = Value::String(ar.api_version.clone());
    value["kind"] = Value::String(kind.to_string());
    let mut out = Explanation {
        object: format!("{}/{name}", kind.to_ascii_lowercase()),
        namespace: namespace.to_string(),
        ..Explanation::default()
    };

    // The policies in force, judged by our engine.
    let policies = Api::<DistrolessPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await;
    match policies {
        Ok(list) => {
            let compiled: Vec<CompiledPolicy> = list
                .items
                .iter()
                .filter_map(|p| CompiledPolicy::compile(p).ok())
                .collect();
            let set = PolicySet::from_compiled(compiled).unwrap_or_default();
            let mut labels = namespace_name_labels(namespace);
            if let Ok(Some(ns)) = Api::<Namespace>::all(client.clone()).get_opt(namespace).await {
                labels.extend(ns.metadata.labels.unwrap_or_default());
            }
            let (matched, rules) = judge(&value, namespace, &labels, &set, jiff::Timestamp::now())?;
            for p in list
                .items
                .iter()
                .filter(|p| matched.iter().any(|m| Some(m) == p.metadata.name.as_ref()))
            {
                for e in p.spec.exemptions.iter().filter(|e| exemption_applies(e, namespace)) {
                    let rules: Vec<String> = e.rules.iter().map(ToString::to_string).collect();
                    out.exemptions.push(format!(
                        "policy {}: {} for {}{}: {}",
                        p.metadata.name.as_deref().unwrap_or_default(),
                        if rules.is_empty() {
                            "every rule".to_string()
                        } else {
                            rules.join(", ")
                        },
                        if e.images.is_empty() {
                            "every image".to_string()
                        } else {
                            e.images.join(", ")
                        },
                        e.expires.as_deref().map(|x| format!(" until {x}")).unwrap_or_default(),
                        e.reason
                    ));
                }
            }
            out.policies = matched;
            out.rules = rules;
        }
        Err(e) => out.unavailable.push(format!(
            "DistrolessPolicies: {}",
            describe(e, "distrolesspolicies", namespace)
        )),
    }

    // The workload's ReplicaSets / Jobs, then pods, by owner.
    let mut owners: BTreeSet<String> = uid(&value).into_iter().collect();
    let mut involved = owners.clone();
    if kind == "Deployment" {
        let rs = Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(client.clone(), namespace);
        if let Ok(list) = rs.list(&ListParams::default()).await {
            for r in list.items.iter().filter(|r| owned_by(&r.metadata, &owners)) {
                involved.extend(r.metadata.uid.clone());
            }
        }
        owners.clone_from(&involved);
    }
    if kind == "CronJob" {
        let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), namespace);
        if let Ok(list) = jobs.list(&ListParams::default()).await {
            for j in list.items.iter().filter(|j| owned_by(&j.metadata, &owners)) {
                involved.extend(j.metadata.uid.clone());
            }
        }
        owners.clone_from(&involved);
    }
    let pods: Vec<Pod> = if kind == "Pod" {
        serde_json::from_value(value.clone()).into_iter().collect()
    } else {
        match Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list
                .items
                .into_iter()
                .filter(|p| owned_by(&p.metadata, &owners))
                .collect(),
            Err(e) => {
                out.unavailable
                    .push(format!("pods: {}", describe(e, "pods", namespace)));
                Vec::new()
            }
        }
    };
    involved.extend(pods.iter().filter_map(|p| p.metadata.uid.clone()));
    for p in &pods {
        for c in p.status.iter().flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        }) {
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
            let Some(reason) = waiting
                .and_then(|w| w.reason.clone())
                .filter(|r| r != "ContainerCreating" && r != "PodInitializing")
            else {
                continue;
            };
            let mut message = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
            let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            if let Some(t) = last.and_then(|t| t.message.clone()).filter(|m| !m.is_empty()) {
                message = format!("{message}; last exit: {t}");
            }
            let hint = crate::controller::failure_hint(&reason, last.map(|t| t.exit_code), &message);
            out.containers.push(ContainerFinding {
                pod: p.metadata.name.clone().unwrap_or_default(),
                container: c.name.clone(),
                reason,
                message,
                hint,
            });
        }
    }

    // Warning Events on any of them (the ReplicaSet's FailedCreate above all).
    match Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            let mut events: Vec<&Event> = list
                .items
                .iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .filter(|e| e.involved_object.uid.as_ref().is_some_and(|u| involved.contains(u)))
                .collect();
            events.sort_by_key(|e| {
                std::cmp::Reverse(
                    e.last_timestamp
                        .clone()
                        .map(|t| t.0)
                        .or(e.event_time.clone().map(|t| t.0)),
                )
            });
            let mut seen = BTreeSet::new();
            for e in events {
                let message = e.message.clone().unwrap_or_default();
                if !seen.insert(message.clone()) || out.events.len() >= 10 {
                    continue;
                }
                if refused_by(&message).as_deref() == Some("distroless-guard") {
                    for r in rules_in_refusal(&message) {
                        if !out.rules.iter().any(|x| x.rule == r.rule && x.container == r.container) {
                            out.rules.push(r);
                        }
                    }
                }
                out.events.push(EventFinding {
                    object: format!(
                        "{}/{}",
                        e.involved_object
                            .kind
                            .as_deref()
                            .unwrap_or_default()
                            .to_ascii_lowercase(),
                        e.involved_object.name.as_deref().unwrap_or_default()
                    ),
                    reason: e.reason.clone().unwrap_or_default(),
                    refused_by: refused_by(&message),
                    count: e.count.unwrap_or(1),
                    message,
                });
            }
        }
        Err(e) => out
            .unavailable
            .push(format!("events: {}", describe(e, "events", namespace))),
    }

    // A rollout moving it.
    if kind == "Deployment" {
        match Api::<DistrolessRollout>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => {
                for r in list.items.iter().filter(|r| r.spec.target_ref.name == name) {
                    let s = r.status.clone().unwrap_or_default();
                    out.rollouts.push(RolloutFinding {
                        name: r.metadata.name.clone().unwrap_or_default(),
                        phase: s.phase.as_str().to_string(),
                        step: s.current_step + 1,
                        message: s.message.clone(),
                        failure: s.failure.as_ref().map(|f| {
                            format!(
                                "{}{}: {}",
                                f.reason,
                                f.pod.as_deref().map(|p| format!(" in pod {p}")).unwrap_or_default(),
                                f.message
                            )
                        }),
                        hint: s.failure.map(|f| f.hint).unwrap_or_default(),
                    });
                }
            }
            Err(e) => {
                let e = describe(e, "distrolessrollouts", namespace);
                if !matches!(e, Error::NoCrd(_)) {
                    out.unavailable.push(format!("distrolessrollouts: {e}"));
                }
            }
        }
    }
    Ok(out)
}

/// Whether an exemption covers this namespace.
fn exemption_applies(e: &crate::api::Exemption, namespace: &str) -> bool {
    e.namespaces.is_empty() || e.namespaces.iter().any(|p| wildcard_match(p, namespace))
}

/// The explanation, for people.
pub(crate) fn render(x: &Explanation) -> Vec<String> {
    let mut out = vec![format!("{} in namespace {}", x.object, x.namespace)];
    if x.policies.is_empty() {
        out.push("  no DistrolessPolicy matches it".into());
    } else {
        out.push(format!("  policies: {}", x.policies.join(", ")));
    }
    for e in &x.exemptions {
        out.push(format!("  exemption: {e}"));
    }
    if !x.rules.is_empty() {
        out.push(String::new());
        out.push("Rules broken (rule → cause → fix):".into());
        for r in &x.rules {
            out.push(format!(
                "  [{}] {}{}{}",
                r.rule,
                r.action.to_uppercase(),
                r.container
                    .as_deref()
                    .map(|c| format!(" container {c:?}"))
                    .unwrap_or_default(),
                if r.path.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", r.path)
                }
            ));
            out.push(format!("      cause: {}", r.cause));
            if !r.fix.is_empty() {
                out.push(format!("      fix:   {}", r.fix));
            }
            out.push(format!("      policy: {}", r.policy));
        }
    }
    if !x.events.is_empty() {
        out.push(String::new());
        out.push("What the API server recorded (Warning Events):".into());
        for e in &x.events {
            let by = e
                .refused_by
                .as_deref()
                .map(|b| format!(", refused by {b}"))
                .unwrap_or_default();
            out.push(format!("  {} {} (x{}{by}): {}", e.object, e.reason, e.count, e.message));
        }
    }
    if !x.containers.is_empty() {
        out.push(String::new());
        out.push("Containers not running:".into());
        for c in &x.containers {
            out.push(format!(
                "  pod {} container {}: {}: {}",
                c.pod, c.container, c.reason, c.message
            ));
            if !c.hint.is_empty() {
                out.push(format!("      hint: {}", c.hint));
            }
        }
    }
    for r in &x.rollouts {
        out.push(String::new());
        out.push(format!(
            "DistrolessRollout {}: {} at step {}: {}",
            r.name, r.phase, r.step, r.message
        ));
        if let Some(f) = &r.failure {
            out.push(format!("  failed: {f}"));
        }
        if !r.hint.is_empty() {
            out.push(format!("  hint: {}", r.hint));
        }
    }
    for u in &x.unavailable {
        out.push(format!("  (not readable: {u})"));
    }
    if x.rules.is_empty()
        && x.events.is_empty()
        && x.containers.is_empty()
        && x.rollouts.iter().all(|r| r.failure.is_none())
    {
        out.push("  nothing wrong found: no rule broken, no Warning Event, every container running".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn the_engine_gives_rule_cause_and_fix_per_container() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "app:1", "command": ["sh", "-c", "exec /app"]}]}}}});
        let (matched, rules) = judge(
            &deployment,
            "shop",
            &namespace_name_labels("shop"),
            &PolicySet::builtin_default(),
            jiff::Timestamp::now(),
        )
        .unwrap();
        assert!(!matched.is_empty());
        let shell = rules
            .iter()
            .find(|r| r.rule == "shell-command")
            .expect("the shell rule");
        assert_eq!(shell.container.as_deref(), Some("app"));
        assert!(!shell.fix.is_empty() && !shell.cause.contains("Fix:"), "{shell:?}");
        assert!(
            render(&Explanation {
                object: "deployment/web".into(),
                rules,
                ..Explanation::default()
            })
            .iter()
            .any(|l| l.contains("fix:"))
        );
    }
}
