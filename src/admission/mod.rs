//! From an AdmissionRequest to an AdmissionResponse, through the policy
//! engine. No HTTP here: the webhook server ([`crate::webhook`]) calls it.

pub(crate) mod images;
pub mod review;
pub(crate) mod rollouts;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use arc_swap::ArcSwap;

use jiff::Timestamp;

use crate::api::{Action, RuleId};
use crate::image::Inspector;
use crate::policy::{self, PolicySet, Scope, Subject, Verdict, Violation, Workload, WorkloadKind};
use review::{AdmissionRequest, AdmissionResponse, Operation};

/// Where namespace labels come from (namespace selectors need them).
pub trait NamespaceLabels: Send + Sync {
    fn labels(&self, namespace: &str) -> BTreeMap<String, String>;
}

/// Registry credentials from a pod's imagePullSecrets.
pub trait PullSecrets: Send + Sync {
    fn credentials<'a>(
        &'a self,
        namespace: &'a str,
        names: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Option<crate::image::credentials::Credentials>>;
}

/// The workloads in the cluster, by kind, namespace and name: what a
/// controller's new object inherits from (see [`CONTROLLER_IDENTITIES`]).
pub trait Owners: Send + Sync {
    /// The owner when it exists with this uid; may wait briefly for a watch
    /// that has not seen a just-created owner yet.
    fn owner<'a>(
        &'a self,
        namespace: &'a str,
        owner: &'a policy::Owner,
    ) -> futures_util::future::BoxFuture<'a, Option<Workload>>;
}

/// The identities of the controller-manager's workload controllers (with
/// `--use-service-account-credentials`, and the controller-manager itself
/// without it). Only their CREATEs inherit from the owner: a user could write
/// any `ownerReferences`, but cannot make requests as these identities
/// without impersonation rights.
pub const CONTROLLER_IDENTITIES: &[&str] = &[
    "system:kube-controller-manager",
    "system:serviceaccount:kube-system:deployment-controller",
    "system:serviceaccount:kube-system:replicaset-controller",
    "system:serviceaccount:kube-system:statefulset-controller",
    "system:serviceaccount:kube-system:daemon-set-controller",
    "system:serviceaccount:kube-system:replication-controller",
    "system:serviceaccount:kube-system:job-controller",
    "system:serviceaccount:kube-system:cronjob-controller",
];

/// Knows only a namespace's name, as the label `kubernetes.io/metadata.name`.
/// Used by the standalone webhook, which has no API server to ask.
pub struct NameOnly;

impl NamespaceLabels for NameOnly {
    fn labels(&self, namespace: &str) -> BTreeMap<String, String> {
        policy::namespace_name_labels(namespace)
    }
}

/// Why a request could not be reviewed at all (answered with HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request.object is missing for a {operation:?} of {kind}")]
    MissingObject { operation: Operation, kind: String },
}

/// The admission decisions, shared by every connection.
pub struct Admission {
    /// The policies in force; swapped whole when they change, read without a lock.
    policies: ArcSwap<PolicySet>,
    namespaces: Arc<dyn NamespaceLabels>,
    /// Reads images from their registries; `None` turns the image rules off.
    inspector: Option<Arc<Inspector>>,
    /// Resolves imagePullSecrets (in a cluster).
    pull_secrets: Option<Arc<dyn PullSecrets>>,
    /// The workloads controllers create objects for (in a cluster).
    owners: Option<Arc<dyn Owners>>,
    /// Who may patch which Deployment, for DistrolessRollouts (in a cluster).
    access: Option<Arc<dyn rollouts::Access>>,
}

/// What a review decided, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Warned,
    Denied,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Warned => "warned",
            Outcome::Denied => "denied",
        }
    }
}

/// What a review decided, for the response and for metrics.
pub struct Decision {
    pub response: AdmissionResponse,
    pub outcome: Outcome,
    pub violations: Vec<Violation>,
}

impl Admission {
    pub fn new(policies: PolicySet, namespaces: Arc<dyn NamespaceLabels>) -> Self {
        Admission {
            policies: ArcSwap::from_pointee(policies),
            namespaces,
            inspector: None,
            pull_secrets: None,
            owners: None,
            access: None,
        }
    }

    /// Lets DistrolessRollouts be admitted: only for users who may patch their
    /// target and read the Secrets their gates name.
    pub fn with_access(mut self, access: Arc<dyn rollouts::Access>) -> Self {
        self.access = Some(access);
        self
    }

    /// The review of a DistrolessRollout request (see [`rollouts`]).
    pub async fn review_rollout(&self, body: &[u8]) -> Result<AdmissionResponse, serde_json::Error> {
        rollouts::review(body, self.access.as_deref()).await
    }

    /// Lets the controller-manager's creates inherit what their owner was admitted with.
    pub fn with_owners(mut self, owners: Arc<dyn Owners>) -> Self {
        self.owners = Some(owners);
        self
    }

    /// Uses the pods' imagePullSecrets when reading their images.
    pub fn with_pull_secrets(mut self, source: Arc<dyn PullSecrets>) -> Self {
        self.pull_secrets = Some(source);
        self
    }

    /// Turns image inspection on.
    pub fn with_inspector(mut self, inspector: Arc<Inspector>) -> Self {
        self.inspector = Some(inspector);
        self
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    pub fn set_policies(&self, policies: PolicySet) {
        self.policies.store(Arc::new(policies));
    }

    /// The workload in a request, `None` when this webhook has nothing to say
    /// about the request (other kinds, other subresources, deletes).
    fn workload_of(req: &mut AdmissionRequest) -> Result<Option<Workload>, ReviewError> {
        let Some(kind) = WorkloadKind::from_group_kind(&req.kind.group, &req.kind.kind) else {
            return Ok(None);
        };
        let sub = req.sub_resource.as_deref().unwrap_or_default();
        let relevant_sub = sub.is_empty() || (kind == WorkloadKind::Pod && sub == "ephemeralcontainers");
        if !relevant_sub || !matches!(req.operation, Operation::Create | Operation::Update) {
            return Ok(None);
        }
        match req.object.take() {
            Some(object) => Ok(Some(object.into_workload(kind))),
            None => Err(ReviewError::MissingObject {
                operation: req.operation.clone(),
                kind: req.kind.kind.clone(),
            }),
        }
    }

    /// The namespace's labels when a policy's selector reads them.
    fn namespace_labels(&self, policies: &PolicySet, namespace: &str) -> BTreeMap<String, String> {
        if policies.reads_namespace_labels() {
            self.namespaces.labels(namespace)
        } else {
            BTreeMap::new()
        }
    }

    /// Evaluates a workload; with `inspect`, images are read from their
    /// registries first (under the policies' deadline) for the image rules.
    async fn judge<O>(
        &self,
        req: &AdmissionRequest<O>,
        workload: &Workload,
        scope: Scope<'_>,
        now: Timestamp,
        inspect: bool,
    ) -> Verdict {
        let namespace = namespace_of(req, workload);
        let policies = self.policies();
        let labels = self.namespace_labels(&policies, namespace);
        let mut subject = Subject {
            scope,
            ..Subject::new(workload, namespace, &labels)
        };
        let facts;
        if let Some(inspector) = self.inspector.as_ref().filter(|_| inspect)
            && let Some(plan) = policy::inspection_plan(&policies, &subject)
        {
            let names = workload.spec.pull_secret_names();
            let extra = match (&self.pull_secrets, names.is_empty()) {
                (Some(source), false) => source.credentials(namespace, &names).await.map(Arc::new),
                _ => None,
            };
            facts = images::gather(inspector, &plan.images, &plan.platform, plan.timeout, extra).await;
            subject.images = Some(&facts);
        }
        policy::evaluate(&policies, &subject, now)
    }

    /// The validating webhook.
    pub async fn validate(&self, req: &mut AdmissionRequest, now: Timestamp) -> Result<Decision, ReviewError> {
        let Some(workload) = Self::workload_of(req)? else {
            return Ok(allowed(req));
        };
        let old = req.old_object.take().map(|o| o.into_workload(workload.kind));
        let ephemeral = req.sub_resource.as_deref() == Some("ephemeralcontainers");
        let existing: Vec<String> = old
            .iter()
            .flat_map(|o| o.spec.ephemeral_containers())
            .map(|c| c.name.clone())
            .collect();
        let scope = if ephemeral {
            Scope::NewEphemeralContainers { existing: &existing }
        } else {
            Scope::Full
        };
        let mut verdict = self.judge(req, &workload, scope, now, true).await;

        // An update keeps what was already there: a violation the old object
        // had as well is a warning, so fixing one thing never needs fixing all.
        let has_denials = verdict.violations.iter().any(|v| v.action == Action::Deny);
        if let Some(old) = old
            .as_ref()
            .filter(|_| req.operation == Operation::Update && !ephemeral && has_denials)
        {
            let before = self.judge(req, old, Scope::Full, now, true).await.violations;
            warn_where_present_before(&mut verdict.violations, before);
        }
        // What a workload controller creates for its owner (a Deployment's
        // ReplicaSet, a ReplicaSet's Pod) carries the owner's pod template: a
        // violation of the pod spec that the owner has as well was admitted with
        // the owner (before the policy, or as an update of a legacy workload),
        // so it is a warning. Image rules are judged afresh: an image can change
        // under the same tag.
        let has_denials = verdict.violations.iter().any(|v| v.action == Action::Deny);
        if req.operation == Operation::Create
            && has_denials
            && CONTROLLER_IDENTITIES.contains(&req.user_info.username.as_str())
            && let (Some(owners), Some(owner)) = (&self.owners, &workload.owner)
        {
            let namespace = req.namespace.clone().or(workload.namespace.clone()).unwrap_or_default();
            if let Some(parent) = owners.owner(&namespace, owner).await {
                let inherited: HashSet<(RuleId, String)> = self
                    .judge(req, &parent, Scope::Full, now, false)
                    .await
                    .violations
                    .into_iter()
                    .filter(|v| !v.rule.reads_the_image())
                    .filter_map(|v| Some((v.rule, template_path(parent.kind, &v.path)?.to_string())))
                    .collect();
                for v in verdict.violations.iter_mut().filter(|v| v.action == Action::Deny) {
                    let Some(path) = template_path(workload.kind, &v.path) else {
                        continue;
                    };
                    if !v.rule.reads_the_image() && inherited.contains(&(v.rule, path.to_string())) {
                        v.action = Action::Warn;
                        v.message = format!(
                            "inherited from {} {} (admitted with it): {}",
                            owner.kind, owner.name, v.message
                        );
                    }
                }
            }
        }
        Ok(decide(&req.uid, || workload_label(req, &workload), verdict))
    }

    /// The validating webhook for custom resources (the chart's
    /// `webhook.customResources`): every pod spec found inside the object
    /// ([`policy::embedded`]) is judged as a Pod's, its violations named at
    /// the path it sits; an update keeps what the old object had at the same
    /// paths as warnings. Images are inspected as for Pods.
    pub async fn validate_resource(
        &self,
        req: &mut AdmissionRequest<serde_json::Value>,
        now: Timestamp,
    ) -> Result<Decision, ReviewError> {
        let sub = req.sub_resource.as_deref().unwrap_or_default();
        if !sub.is_empty() || !matches!(req.operation, Operation::Create | Operation::Update) {
            return Ok(allowed(req));
        }
        let Some(object) = req.object.take() else {
            return Err(ReviewError::MissingObject {
                operation: req.operation.clone(),
                kind: req.kind.kind.clone(),
            });
        };
        let label = || {
            let name = req.name.as_deref().filter(|n| !n.is_empty());
            let name = name.or(object.pointer("/metadata/name").and_then(|n| n.as_str()));
            match req.namespace.as_deref().filter(|n| !n.is_empty()) {
                Some(ns) => format!("{} {ns}/{}", req.kind.kind, name.unwrap_or_default()),
                None => format!("{} {}", req.kind.kind, name.unwrap_or_default()),
            }
        };
        let specs = policy::embedded::pod_specs(&object);
        let mut violations = Vec::new();
        for (pointer, path) in &specs {
            let workload = match policy::embedded::workload(&object, pointer) {
                Ok(w) => w,
                Err(e) => {
                    let message = format!(
                        "{} is denied by distroless-guard: the pod spec at {path} does not read as one: {}",
                        label(),
                        e.source
                    );
                    return Ok(Decision {
                        response: AdmissionResponse::deny(&req.uid, 400, "BadRequest", message),
                        outcome: Outcome::Denied,
                        violations: Vec::new(),
                    });
                }
            };
            let verdict = self.judge(req, &workload, Scope::Full, now, true).await;
            violations.extend(rebased(verdict.violations, path));
        }
        // As for the built-in kinds: an update keeps what was already there.
        let has_denials = violations.iter().any(|v| v.action == Action::Deny);
        if let Some(old) = req
            .old_object
            .take()
            .filter(|_| req.operation == Operation::Update && has_denials)
        {
            let mut before = Vec::new();
            for (pointer, path) in &specs {
                if let Ok(old) = policy::embedded::workload(&old, pointer) {
                    let had = self.judge(req, &old, Scope::Full, now, true).await;
                    before.extend(rebased(had.violations, path));
                }
            }
            warn_where_present_before(&mut violations, before);
        }
        let verdict = Verdict {
            violations,
            ..Verdict::default()
        };
        Ok(decide(&req.uid, label, verdict))
    }

    /// The mutating webhook: Pods at CREATE only, so workload templates never
    /// drift from Git. Nothing is awaited: images are not read for mutation.
    pub fn mutate(&self, req: &mut AdmissionRequest) -> Result<Decision, ReviewError> {
        let Some(workload) = Self::workload_of(req)? else {
            return Ok(allowed(req));
        };
        if workload.kind != WorkloadKind::Pod || req.operation != Operation::Create || req.sub_resource.is_some() {
            return Ok(allowed(req));
        }
        // Only which policies match matters here: no rule is checked.
        let policies = self.policies();
        let namespace = namespace_of(req, &workload);
        let labels = self.namespace_labels(&policies, namespace);
        let subject = Subject::new(&workload, namespace, &labels);
        let ops = policy::mutation_for(&policies, &subject)
            .map(|m| policy::mutation_patch(&workload.spec, workload.kind.spec_pointer(), &m))
            .unwrap_or_default();
        let response = match AdmissionResponse::allow(&req.uid).with_patch(&ops) {
            Ok(r) => r,
            Err(e) => AdmissionResponse::deny(
                &req.uid,
                500,
                "InternalError",
                format!("cannot encode the mutation patch: {e}"),
            ),
        };
        Ok(Decision {
            response,
            outcome: Outcome::Allowed,
            violations: Vec::new(),
        })
    }
}

/// The namespace a request's object lives in (`default` when neither the
/// request nor the object names one).
fn namespace_of<'r, O>(req: &'r AdmissionRequest<O>, workload: &'r Workload) -> &'r str {
    req.namespace
        .as_deref()
        .or(workload.namespace.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

/// A violation's field path relative to the pod spec (`containers[0].command`),
/// whatever kind carries the spec.
fn template_path(kind: WorkloadKind, path: &str) -> Option<&str> {
    path.strip_prefix(kind.spec_path())?.strip_prefix('.')
}

/// Violations of a pod spec found at `path` inside an object, named there.
fn rebased(violations: Vec<Violation>, path: &str) -> impl Iterator<Item = Violation> + '_ {
    violations.into_iter().map(move |mut v| {
        v.path = policy::embedded::rebase_path(&v.path, path);
        v
    })
}

/// Violations the object had before an update, at the same rule and path,
/// become warnings.
fn warn_where_present_before(violations: &mut [Violation], before: Vec<Violation>) {
    let before: HashSet<(RuleId, String)> = before.into_iter().map(|v| (v.rule, v.path)).collect();
    for v in violations.iter_mut().filter(|v| v.action == Action::Deny) {
        if before.contains(&(v.rule, v.path.clone())) {
            v.action = Action::Warn;
            v.message = format!("already present before this update: {}", v.message);
        }
    }
}

fn allowed<O>(req: &AdmissionRequest<O>) -> Decision {
    Decision {
        response: AdmissionResponse::allow(&req.uid),
        outcome: Outcome::Allowed,
        violations: Vec::new(),
    }
}

/// The answer to a review whose object cannot be read: denied with the
/// reason, so the user sees it, and the uid echoed.
pub fn unreadable(uid: &str, kind: &str, e: &serde_json::Error) -> AdmissionResponse {
    tracing::warn!(%uid, %kind, error = %e, "unreadable object in admission request");
    AdmissionResponse::deny(
        uid,
        400,
        "BadRequest",
        format!("distroless-guard cannot read this {kind}: {e}"),
    )
}

fn object_name(req: &AdmissionRequest, workload: &Workload) -> String {
    let name = req.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&workload.name);
    match req.namespace.as_deref().or(workload.namespace.as_deref()) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// `Deployment team/web`, for messages.
fn workload_label(req: &AdmissionRequest, workload: &Workload) -> String {
    format!("{} {}", workload.kind, object_name(req, workload))
}

fn decide(uid: &str, label: impl FnOnce() -> String, verdict: Verdict) -> Decision {
    // Named only in a message: an allowed review without warnings builds no text.
    let object = std::cell::LazyCell::new(label);
    let denied: Vec<&Violation> = verdict.with_action(Action::Deny).collect();
    let mut response = if denied.is_empty() {
        AdmissionResponse::allow(uid)
    } else {
        let mut message = format!(
            "{} is denied by distroless-guard ({} violation{}):",
            *object,
            denied.len(),
            if denied.len() == 1 { "" } else { "s" }
        );
        for v in &denied {
            let _ = write!(message, "\n- {v}");
        }
        AdmissionResponse::deny(uid, 403, "Forbidden", message)
    };
    response.warnings = verdict
        .with_action(Action::Warn)
        .map(|v| format!("distroless-guard: {}: {v}", *object))
        .collect();
    let audited: Vec<String> = verdict
        .with_action(Action::Audit)
        .map(|v| format!("{}@{}", v.rule, v.path))
        .collect();
    if !audited.is_empty() {
        response
            .audit_annotations
            .insert("audit-violations".into(), audited.join(","));
    }
    let outcome = if !denied.is_empty() {
        Outcome::Denied
    } else if !response.warnings.is_empty() {
        Outcome::Warned
    } else {
        Outcome::Allowed
    };
    Decision {
        response,
        outcome,
        violations: verdict.violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One owner, as the cluster view would hold it.
    struct OneOwner(Workload, String);

    impl Owners for OneOwner {
        fn owner<'a>(
            &'a self,
            _namespace: &'a str,
            owner: &'a policy::Owner,
        ) -> futures_util::future::BoxFuture<'a, Option<Workload>> {
            let found = (owner.name == self.0.name && owner.uid == self.1).then(|| self.0.clone());
            Box::pin(async move { found })
        }
    }

    fn admission() -> Admission {
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1", "securityContext": {"runAsUser": 0}}]}}}});
        let owner = Workload::from_value(&rs).unwrap().unwrap();
        Admission::new(PolicySet::builtin_default(), Arc::new(NameOnly))
            .with_owners(Arc::new(OneOwner(owner, "u1".into())))
    }

    fn pod_create(user: &str, owner_uid: &str, security: serde_json::Value) -> AdmissionRequest {
        serde_json::from_value(json!({
            "uid": "r1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
            "namespace": "shop", "userInfo": {"username": user},
            "object": {"metadata": {"name": "web-1-abcde", "namespace": "shop", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": owner_uid, "controller": true}]},
                "spec": {"containers": [{"name": "app", "image": "app:1", "securityContext": security}]}},
        }))
        .unwrap()
    }

    async fn verdict(req: AdmissionRequest) -> Decision {
        let mut req = req;
        admission().validate(&mut req, Timestamp::now()).await.unwrap()
    }

    #[tokio::test]
    async fn the_controller_managers_pods_inherit_what_their_replica_set_was_admitted_with() {
        let d = verdict(pod_create(
            "system:serviceaccount:kube-system:replicaset-controller",
            "u1",
            json!({"runAsUser": 0}),
        ))
        .await;
        assert!(d.response.allowed, "{:?}", d.response.status);
        assert!(
            d.response.warnings[0].contains("inherited from ReplicaSet web-1"),
            "{:?}",
            d.response.warnings
        );
    }

    #[tokio::test]
    async fn anyone_else_writing_the_same_owner_reference_is_denied() {
        let d = verdict(pod_create("alice", "u1", json!({"runAsUser": 0}))).await;
        assert!(!d.response.allowed);
        let d = verdict(pod_create(
            "system:serviceaccount:shop:default",
            "u1",
            json!({"runAsUser": 0}),
        ))
        .await;
        assert!(!d.response.allowed);
    }

    #[tokio::test]
    async fn only_what_the_owner_has_is_inherited() {
        // Another uid: not the owner the view holds (a deleted and recreated namesake).
        let d = verdict(pod_create(
            "system:serviceaccount:kube-system:replicaset-controller",
            "u2",
            json!({"runAsUser": 0}),
        ))
        .await;
        assert!(!d.response.allowed);
        // A violation the owner does not have.
        let d = verdict(pod_create(
            "system:serviceaccount:kube-system:replicaset-controller",
            "u1",
            json!({"runAsUser": 0, "runAsNonRoot": false}),
        ))
        .await;
        assert!(!d.response.allowed);
        let message = &d.response.status.as_ref().unwrap().message;
        assert!(
            message.contains("[non-root-disabled]") && !message.contains("[root-uid]"),
            "{message}"
        );
    }

    #[test]
    fn image_rules_are_never_inherited_and_paths_are_read_relative_to_the_pod_spec() {
        assert!(RuleId::ImageHasShell.reads_the_image() && !RuleId::RootUid.reads_the_image());
        assert_eq!(
            template_path(
                WorkloadKind::CronJob,
                "spec.jobTemplate.spec.template.spec.containers[0].command"
            ),
            Some("containers[0].command")
        );
        assert_eq!(
            template_path(WorkloadKind::Pod, "spec.containers[1]"),
            Some("containers[1]")
        );
        assert_eq!(template_path(WorkloadKind::Deployment, "spec.containers[1]"), None);
    }

    fn rollout(
        operation: &str,
        probe: serde_json::Value,
        old: Option<serde_json::Value>,
    ) -> AdmissionRequest<serde_json::Value> {
        let object = |probe: serde_json::Value| {
            json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "checkout", "namespace": "shop"},
                "spec": {"strategy": {"canary": {"steps": [{"setWeight": 25}]}}, "template": {"spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                    "containers": [{"name": "app", "image": "app:1", "livenessProbe": probe}]}}}})
        };
        serde_json::from_value(json!({
            "uid": "r2", "kind": {"group": "argoproj.io", "version": "v1alpha1", "kind": "Rollout"}, "operation": operation,
            "namespace": "shop", "name": "checkout", "userInfo": {"username": "alice"},
            "object": object(probe), "oldObject": old.map(object),
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_custom_resources_pod_template_is_judged_and_its_violations_named_where_they_sit() {
        let exec = json!({"exec": {"command": ["sh", "-c", "curl localhost"]}});
        let mut req = rollout("CREATE", exec.clone(), None);
        let d = admission().validate_resource(&mut req, Timestamp::now()).await.unwrap();
        assert!(!d.response.allowed);
        let message = &d.response.status.as_ref().unwrap().message;
        assert!(
            message.starts_with("Rollout shop/checkout is denied by distroless-guard")
                && message.contains("(at spec.template.spec.containers[0].livenessProbe.exec;"),
            "{message}"
        );
        // An update that keeps the probe it had: a warning, not a denial.
        let mut req = rollout("UPDATE", exec.clone(), Some(exec));
        let d = admission().validate_resource(&mut req, Timestamp::now()).await.unwrap();
        assert!(d.response.allowed, "{:?}", d.response.status);
        assert!(
            d.response.warnings[0].contains("already present before this update"),
            "{:?}",
            d.response.warnings
        );
        // An HTTP probe: nothing to say.
        let mut req = rollout("CREATE", json!({"httpGet": {"path": "/healthz", "port": 8080}}), None);
        let d = admission().validate_resource(&mut req, Timestamp::now()).await.unwrap();
        assert!(d.response.allowed && d.response.warnings.is_empty(), "{:?}", d.response);
    }

    #[tokio::test]
    async fn a_custom_resource_without_a_pod_spec_is_allowed_and_one_that_does_not_read_is_denied() {
        let mut req: AdmissionRequest<serde_json::Value> = serde_json::from_value(json!({
            "uid": "r3", "kind": {"group": "cert-manager.io", "version": "v1", "kind": "Certificate"}, "operation": "CREATE",
            "namespace": "shop", "object": {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                "metadata": {"name": "tls"}, "spec": {"secretName": "tls", "dnsNames": ["shop.example"]}}}))
        .unwrap();
        let d = admission().validate_resource(&mut req, Timestamp::now()).await.unwrap();
        assert!(d.response.allowed);
        let mut req = rollout("CREATE", json!("not a probe"), None);
        let d = admission().validate_resource(&mut req, Timestamp::now()).await.unwrap();
        assert_eq!(
            d.response.status.as_ref().map(|s| s.code),
            Some(400),
            "{:?}",
            d.response
        );
        assert!(
            d.response
                .status
                .unwrap()
                .message
                .contains("the pod spec at spec.template.spec does not read as one"),
        );
    }
}
