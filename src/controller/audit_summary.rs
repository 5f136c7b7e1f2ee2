//! The audit summary of one policy over the workloads that exist: a pure
//! function of (policy, workloads, namespace labels, now), evaluated with the
//! same engine as admission.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;

use crate::api::{AuditSummary, ImageCounts, WorkloadViolations};
use crate::policy::{
    self, CompiledPolicy, ImageFacts, ImageStatus, PolicySet, Subject, Violation, Workload, namespace_name_labels,
};

/// How many violating workloads the status lists.
pub(crate) const TOP_VIOLATIONS: usize = 20;

/// Where a pod spec found inside a custom resource sits: the object's kind
/// and the field path of the spec (`spec.workerGroupSpecs[0].template.spec`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EmbeddedIn {
    /// The resource, as `plural.group` (what a relist replaces).
    pub resource: String,
    pub api_version: String,
    pub kind: String,
    pub path: String,
}

/// A workload as the audit sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditObject {
    pub uid: String,
    pub workload: Workload,
    /// Owned by a workload controller (a Deployment's ReplicaSet, a ReplicaSet's
    /// Pod...): counted through its owner, not on its own.
    pub controlled: bool,
    /// A pod spec inside a custom resource, judged as a Pod's: the object's
    /// kind and where the spec sits. `None` for the built-in kinds.
    pub embedded: Option<std::sync::Arc<EmbeddedIn>>,
}

impl AuditObject {
    /// `apiVersion` and `kind` of the object, as an Event or a report names it.
    pub(crate) fn api_version_kind(&self) -> (std::borrow::Cow<'_, str>, &str) {
        match &self.embedded {
            Some(e) => (e.api_version.as_str().into(), e.kind.as_str()),
            None => {
                let kind = self.workload.kind;
                let api_version = match kind.group() {
                    "" => "v1".into(),
                    group => format!("{group}/v1").into(),
                };
                (api_version, kind.as_str())
            }
        }
    }

    /// What one Event or set of findings is about: the object's uid, and for
    /// a pod spec inside a custom resource, its path too (an object may hold
    /// several).
    pub(crate) fn identity(&self) -> std::borrow::Cow<'_, str> {
        match &self.embedded {
            Some(e) => format!("{}#{}", self.uid, e.path).into(),
            None => self.uid.as_str().into(),
        }
    }

    pub fn namespace(&self) -> &str {
        self.workload.namespace.as_deref().unwrap_or("default")
    }

    /// The engine's view of it, in a namespace with these labels.
    pub(crate) fn subject<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
        images: Option<&'a ImageFacts>,
    ) -> Subject<'a> {
        Subject::new(&self.workload, self.namespace(), labels).with_images(images)
    }
}

/// A namespace's labels as watched, or the ones every namespace has when it is not known yet.
pub(crate) fn labels_of<'a>(
    namespaces: &'a HashMap<String, BTreeMap<String, String>>,
    namespace: &str,
) -> std::borrow::Cow<'a, BTreeMap<String, String>> {
    match namespaces.get(namespace) {
        Some(l) => std::borrow::Cow::Borrowed(l),
        None => std::borrow::Cow::Owned(namespace_name_labels(namespace)),
    }
}

/// One violating workload, with the violations (for events).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Violating<'a> {
    pub object: &'a AuditObject,
    pub violations: Vec<Violation>,
}

/// The summary for one policy, and the violating workloads.
pub(crate) fn summarize<'a>(
    policy: &CompiledPolicy,
    objects: impl IntoIterator<Item = &'a AuditObject>,
    namespaces: &HashMap<String, BTreeMap<String, String>>,
    now: Timestamp,
    images: Option<&ImageFacts>,
) -> (AuditSummary, Vec<Violating<'a>>, Vec<&'a AuditObject>) {
    let single = PolicySet::from_compiled(vec![policy.clone()]).unwrap_or_default();
    let mut summary = AuditSummary {
        last_evaluated: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
        ..Default::default()
    };
    let mut violating = Vec::new();
    let mut compliant = Vec::new();
    let mut seen_images: BTreeMap<&str, ImageState> = BTreeMap::new();
    for object in objects.into_iter().filter(|o| !o.controlled) {
        let namespace = object.namespace();
        let labels = labels_of(namespaces, namespace);
        let subject = object.subject(&labels, images);
        let verdict = policy::evaluate(&single, &subject, now);
        if verdict.matched.is_empty() {
            continue;
        }
        summary.matched += 1;
        if let Some(facts) = images {
            for c in object.workload.spec.all_containers() {
                if let Some(image) = c.image.as_deref() {
                    seen_images
                        .entry(image)
                        .or_insert_with(|| ImageState::of(facts.get(image)));
                }
            }
        }
        if verdict.violations.is_empty() {
            summary.compliant += 1;
            compliant.push(object);
            continue;
        }
        summary.violating += 1;
        let rules: BTreeSet<crate::api::RuleId> = verdict.violations.iter().map(|v| v.rule).collect();
        for r in &rules {
            *summary.by_rule.entry(*r).or_default() += 1;
        }
        summary.top_violations.push(WorkloadViolations {
            kind: object.api_version_kind().1.to_string(),
            namespace: namespace.to_string(),
            name: object.workload.name.clone(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
        });
        let mut violations = verdict.violations;
        if let Some(e) = &object.embedded {
            for v in &mut violations {
                v.path = policy::embedded::rebase_path(&v.path, &e.path);
            }
        }
        violating.push(Violating { object, violations });
    }
    summary
        .top_violations
        .sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    summary.top_violations.truncate(TOP_VIOLATIONS);
    if images.is_some() {
        let mut counts = ImageCounts::default();
        for state in seen_images.values() {
            match state {
                ImageState::Distroless => counts.distroless += 1,
                ImageState::NotDistroless => counts.not_distroless += 1,
                ImageState::Unverified => counts.unverified += 1,
                ImageState::Pending => counts.pending += 1,
            }
        }
        summary.images = Some(counts);
    }
    (summary, violating, compliant)
}

/// What the audit knows of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImageState {
    Distroless,
    NotDistroless,
    Unverified,
    Pending,
}

impl ImageState {
    pub(crate) fn of(status: Option<&ImageStatus>) -> Self {
        match status {
            None => ImageState::Pending,
            Some(ImageStatus::Failed(_)) => ImageState::Unverified,
            Some(ImageStatus::Inspected(reports)) if reports.iter().all(|r| r.distroless) => ImageState::Distroless,
            Some(ImageStatus::Inspected(_)) => ImageState::NotDistroless,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DistrolessPolicy;
    use serde_json::json;

    fn object(kind: &str, api: &str, name: &str, ns: &str, spec: serde_json::Value, controlled: bool) -> AuditObject {
        let value = json!({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec});
        AuditObject {
            uid: name.into(),
            workload: Workload::from_value(&value).unwrap().unwrap(),
            controlled,
            embedded: None,
        }
    }

    #[test]
    fn pods_owned_by_a_controller_count_once_through_it() {
        let policy: DistrolessPolicy = serde_saphyr::from_str(
            "apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: audit}\nspec: {action: Audit, match: {excludeNamespaces: [kube-system]}}\n",
        )
        .unwrap();
        let policy = CompiledPolicy::compile(&policy).unwrap();
        let bad =
            json!({"template": {"spec": {"containers": [{"name": "c", "image": "i", "command": ["sh", "-c", "x"]}]}}});
        let good = json!({"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}});
        let objects = vec![
            object("Deployment", "apps/v1", "web", "shop", bad.clone(), false),
            object(
                "Pod",
                "v1",
                "web-abc",
                "shop",
                json!({"containers": [{"name": "c", "image": "i", "command": ["sh"]}]}),
                true,
            ),
            object("StatefulSet", "apps/v1", "db", "shop", good, false),
            object("Deployment", "apps/v1", "dns", "kube-system", bad, false),
        ];
        let (summary, violating, compliant) =
            summarize(&policy, &objects, &HashMap::new(), Timestamp::UNIX_EPOCH, None);
        assert_eq!((summary.matched, summary.compliant, summary.violating), (2, 1, 1));
        assert_eq!(summary.by_rule, BTreeMap::from([(crate::api::RuleId::ShellCommand, 1)]));
        assert_eq!(summary.top_violations[0].name, "web");
        assert_eq!(
            compliant.iter().map(|o| o.workload.name.as_str()).collect::<Vec<_>>(),
            ["db"]
        );
        assert_eq!(violating[0].violations[0].action, crate::api::Action::Audit);
        assert_eq!(
            summary.last_evaluated,
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::UNIX_EPOCH
            ))
        );
    }
}
