//! The pure policy engine: pod specs from workloads, rules, verdicts and
//! mutation patches. The webhook and the CLI call the same [`evaluate`].

pub(crate) mod embedded;
mod image_rules;
pub(crate) mod model;
mod mutate;
mod rules;
pub(crate) mod selector;
mod set;
pub(crate) mod shell;
pub(crate) mod workload;

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use json_patch::PatchOperation;
use serde::Serialize;

pub use image_rules::{ImageFacts, ImageStatus, check_images};
pub use mutate::{MutationSettings, mutation_patch};
pub use rules::{Finding, Scope, check_pod_spec};
pub use set::{CompiledExemption, CompiledPolicy, PolicyError, PolicySet, SYSTEM_NAMESPACES};
pub use workload::{ExtractError, ObjectShape, Owner, Workload, WorkloadKind};

use crate::api::{Action, DEFAULT_NON_ROOT_USER, RuleId};

/// The label the API server puts on every namespace, with its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The namespace labels known when only the name is known.
pub fn namespace_name_labels(namespace: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())])
}

/// What is evaluated, and where.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    pub workload: &'a Workload,
    /// The namespace the object lives (or will live) in.
    pub namespace: &'a str,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub scope: Scope<'a>,
    /// What image inspection found; `None` when images were not inspected.
    pub images: Option<&'a ImageFacts>,
}

impl<'a> Subject<'a> {
    /// The whole pod spec of `workload` in `namespace`, images not inspected.
    pub fn new(workload: &'a Workload, namespace: &'a str, namespace_labels: &'a BTreeMap<String, String>) -> Self {
        Subject {
            workload,
            namespace,
            namespace_labels,
            scope: Scope::Full,
            images: None,
        }
    }

    /// With what image inspection found (`None`: not inspected).
    pub fn with_images(self, images: Option<&'a ImageFacts>) -> Self {
        Subject { images, ..self }
    }
}

/// A rule broken, with the action the policies chose for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: RuleId,
    pub action: Action,
    /// The container at fault, `null` for pod-level fields.
    pub container: Option<String>,
    pub path: String,
    pub message: String,
    /// The policy whose action applies (the first by name among the strictest).
    pub policy: String,
}

/// A violation's message is "cause. Fix: fix"; the two parts (the fix empty when it has none).
pub fn cause_and_fix(message: &str) -> (&str, &str) {
    message.split_once(" Fix: ").unwrap_or((message, ""))
}

/// One line for people: rule id, what is wrong and the fix, field path, policy.
impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {} (at {}; policy {})",
            self.rule, self.message, self.path, self.policy
        )
    }
}

/// The outcome of evaluating one object against every policy in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Names of the policies that matched the object, in name order.
    pub matched: Vec<String>,
    pub violations: Vec<Violation>,
    /// What mutation does for this object, when any policy matched.
    pub mutation: Option<MutationSettings>,
}

impl Verdict {
    /// No violation has the action `Deny`.
    pub fn allowed(&self) -> bool {
        !self.violations.iter().any(|v| v.action == Action::Deny)
    }

    pub fn with_action(&self, action: Action) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.action == action)
    }

    /// The mutation patch for the workload's pod spec (empty when no policy matched).
    pub fn mutation_patch(&self, workload: &Workload) -> Vec<PatchOperation> {
        self.mutation
            .as_ref()
            .map(|m| mutation_patch(&workload.spec, workload.kind.spec_pointer(), m))
            .unwrap_or_default()
    }
}

/// The policies that apply to the subject, in name order.
pub fn matching<'p>(policies: &'p PolicySet, subject: &Subject<'_>) -> Vec<&'p CompiledPolicy> {
    policies
        .policies()
        .iter()
        .filter(|p| p.matches(subject.namespace, subject.namespace_labels, &subject.workload.labels))
        .collect()
}

/// What to inspect before evaluating a subject: its images, the platform
/// choice and the deadline. `None` when no matching policy checks images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectionPlan {
    pub images: Vec<String>,
    pub platform: crate::image::Platform,
    pub timeout: std::time::Duration,
}

/// Plans image inspection: the shortest timeout and, when any policy asks
/// for `all`, every platform; otherwise the platform of the first policy.
pub fn inspection_plan(policies: &PolicySet, subject: &Subject<'_>) -> Option<InspectionPlan> {
    let inspecting: Vec<&CompiledPolicy> = matching(policies, subject)
        .into_iter()
        .filter(|p| p.inspects_images())
        .collect();
    let first = inspecting.first()?;
    let mut images: Vec<String> = rules::containers(&subject.workload.spec, subject.scope)
        .iter()
        .filter_map(|c| c.container.image.clone())
        .filter(|i| !i.is_empty())
        .collect();
    images.sort();
    images.dedup();
    if images.is_empty() {
        return None;
    }
    let platform = if inspecting.iter().any(|p| p.platform == crate::image::Platform::All) {
        crate::image::Platform::All
    } else {
        first.platform.clone()
    };
    let seconds = inspecting
        .iter()
        .map(|p| p.spec.timeout_seconds)
        .min()
        .unwrap_or(3)
        .max(1);
    Some(InspectionPlan {
        images,
        platform,
        timeout: std::time::Duration::from_secs(u64::from(seconds)),
    })
}

/// What mutation does for the subject: the merged settings of the policies
/// that match it, `None` when none does. The same as [`evaluate`]'s
/// `mutation`, without checking a rule (the mutating webhook reads no
/// violation).
pub fn mutation_for(policies: &PolicySet, subject: &Subject<'_>) -> Option<MutationSettings> {
    MutationSettings::merge(matching(policies, subject).into_iter().map(|p| &p.spec))
}

/// Evaluates one object against every policy in force. Several matching
/// policies: for each finding, the strictest action wins (Deny > Warn >
/// Audit); a policy that ignores the rule or exempts the finding has no say;
/// among equally strict policies the first by name is named.
pub fn evaluate(policies: &PolicySet, subject: &Subject<'_>, now: Timestamp) -> Verdict {
    let today: Date = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let matched = matching(policies, subject);
    if matched.is_empty() {
        return Verdict::default();
    }
    let mutation = MutationSettings::merge(matched.iter().map(|p| &p.spec));
    let uid = mutation.as_ref().map_or(DEFAULT_NON_ROOT_USER, |m| m.uid);
    let (spec, spec_path) = (&subject.workload.spec, subject.workload.kind.spec_path());
    let mut findings = check_pod_spec(spec, spec_path, subject.scope, uid);
    if let Some(facts) = subject.images {
        findings.extend(check_images(spec, spec_path, subject.scope, facts, uid));
    }

    let violations = findings
        .into_iter()
        .filter_map(|f| {
            let (action, policy) = matched
                .iter()
                .filter(|p| p.exemption_for(f.rule, subject.namespace, &f.images, today).is_none())
                .filter_map(|p| p.action_for(f.rule).map(|a| (a, p.name.as_str())))
                .fold(None, |best: Option<(Action, &str)>, (a, name)| match best {
                    Some((b, _)) if b >= a => best,
                    _ => Some((a, name)),
                })?;
            Some(Violation {
                rule: f.rule,
                action,
                container: f.container,
                path: f.path,
                message: f.message,
                policy: policy.to_string(),
            })
        })
        .collect();

    Verdict {
        matched: matched.iter().map(|p| p.name.clone()).collect(),
        violations,
        mutation,
    }
}
