//! From an AdmissionRequest to an AdmissionResponse, through the policy engine.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use jiff::Timestamp;

use super::review::{AdmissionRequest, AdmissionResponse};
use crate::api::{Action, RuleId};
use crate::image::Inspector;
use crate::policy::{self, PolicySet, Scope, Subject, Verdict, Violation, Workload, WorkloadKind};

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
    #[error("request.object is missing for a {operation} of {kind}")]
    MissingObject { operation: String, kind: String },
}

/// The admission decisions, shared by every connection.
pub struct Admission {
    policies: RwLock<Arc<PolicySet>>,
    namespaces: Arc<dyn NamespaceLabels>,
    /// Reads images from their registries; `None` turns the image rules off.
    inspector: Option<Arc<Inspector>>,
    /// Resolves imagePullSecrets (in a cluster).
    pull_secrets: Option<Arc<dyn PullSecrets>>,
}

/// What a review decided, for the response and for metrics.
pub struct Decision {
    pub response: AdmissionResponse,
    /// allowed, denied, warned.
    pub verdict: &'static str,
    pub violations: Vec<Violation>,
}

impl Admission {
    pub fn new(policies: PolicySet, namespaces: Arc<dyn NamespaceLabels>) -> Self {
        Admission {
            policies: RwLock::new(Arc::new(policies)),
            namespaces,
            inspector: None,
            pull_secrets: None,
        }
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
        match self.policies.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_policies(&self, policies: PolicySet) {
        match self.policies.write() {
            Ok(mut p) => *p = Arc::new(policies),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policies),
        }
    }

    /// The workload in a request, `None` when this webhook has nothing to say
    /// about the request (other kinds, other subresources, deletes).
    fn workload_of(req: &mut AdmissionRequest) -> Result<Option<Workload>, ReviewError> {
        let Some(kind) = WorkloadKind::from_group_kind(&req.kind.group, &req.kind.kind) else {
            return Ok(None);
        };
        let sub = req.sub_resource.as_deref().unwrap_or_default();
        let relevant_sub = sub.is_empty() || (kind == WorkloadKind::Pod && sub == "ephemeralcontainers");
        if !relevant_sub || !matches!(req.operation.as_str(), "CREATE" | "UPDATE") {
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

    /// Evaluates a workload; with `inspect`, images are read from their
    /// registries first (under the policies' deadline) for the image rules.
    async fn judge(
        &self,
        req: &AdmissionRequest,
        workload: &Workload,
        scope: Scope<'_>,
        now: Timestamp,
        inspect: bool,
    ) -> Verdict {
        let namespace = req
            .namespace
            .as_deref()
            .or(workload.namespace.as_deref())
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        let labels = self.namespaces.labels(namespace);
        let policies = self.policies();
        let mut subject = Subject {
            workload,
            namespace,
            namespace_labels: &labels,
            scope,
            images: None,
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
            facts = inspector
                .gather(&plan.images, &plan.platform, plan.timeout, extra)
                .await;
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
            .filter(|_| req.operation == "UPDATE" && !ephemeral && has_denials)
        {
            let before: HashSet<(RuleId, String)> = self
                .judge(req, old, Scope::Full, now, true)
                .await
                .violations
                .into_iter()
                .map(|v| (v.rule, v.path))
                .collect();
            for v in verdict.violations.iter_mut().filter(|v| v.action == Action::Deny) {
                if before.contains(&(v.rule, v.path.clone())) {
                    v.action = Action::Warn;
                    v.message = format!("already present before this update: {}", v.message);
                }
            }
        }
        Ok(decide(req, &workload, verdict))
    }

    /// The mutating webhook: Pods at CREATE only, so workload templates never drift from Git.
    pub async fn mutate(&self, req: &mut AdmissionRequest, now: Timestamp) -> Result<Decision, ReviewError> {
        let Some(workload) = Self::workload_of(req)? else {
            return Ok(allowed(req));
        };
        if workload.kind != WorkloadKind::Pod || req.operation != "CREATE" || req.sub_resource.is_some() {
            return Ok(allowed(req));
        }
        let verdict = self.judge(req, &workload, Scope::Full, now, false).await;
        let ops = verdict.mutation_patch(&workload);
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
            verdict: "allowed",
            violations: Vec::new(),
        })
    }
}

fn allowed(req: &AdmissionRequest) -> Decision {
    Decision {
        response: AdmissionResponse::allow(&req.uid),
        verdict: "allowed",
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

/// One line per violation: rule id, container, field path, and the fix.
pub fn violation_line(v: &Violation) -> String {
    format!("[{}] {} (at {}; policy {})", v.rule, v.message, v.path, v.policy)
}

fn decide(req: &AdmissionRequest, workload: &Workload, verdict: Verdict) -> Decision {
    let object = format!("{} {}", workload.kind, object_name(req, workload));
    let denied: Vec<&Violation> = verdict.with_action(Action::Deny).collect();
    let mut response = if denied.is_empty() {
        AdmissionResponse::allow(&req.uid)
    } else {
        let mut message = format!(
            "{object} is denied by distroless-guard ({} violation{}):",
            denied.len(),
            if denied.len() == 1 { "" } else { "s" }
        );
        for v in &denied {
            let _ = write!(message, "\n- {}", violation_line(v));
        }
        AdmissionResponse::deny(&req.uid, 403, "Forbidden", message)
    };
    response.warnings = verdict
        .with_action(Action::Warn)
        .map(|v| format!("distroless-guard: {object}: {}", violation_line(v)))
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
    let label = if !denied.is_empty() {
        "denied"
    } else if !response.warnings.is_empty() {
        "warned"
    } else {
        "allowed"
    };
    Decision {
        response,
        verdict: label,
        violations: verdict.violations,
    }
}
