//! The admission engine, offline, over manifests: what `distroless-guard check`
//! decides (its output is written by the CLI).

use std::collections::BTreeMap;

use jiff::Timestamp;
use json_patch::PatchOperation;
use serde::Serialize;
use serde_json::Value;

use crate::manifest::{Document, Problem, ProblemKind};
use crate::policy::{self, ImageFacts, InspectionPlan, PolicySet, Subject, Violation, Workload, namespace_name_labels};

/// The namespace `kubectl apply` would use for an object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The verdict on one object of the input.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectResult {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub allowed: bool,
    pub violations: Vec<Violation>,
    /// RFC 6902 operations that mutation (and `--fix`) applies to the object.
    pub mutations: Vec<PatchOperation>,
    /// `file:line` of the object.
    pub source: String,
    /// Where the pod spec was found in an object of a kind without a built-in
    /// one (a custom resource: `spec.workerGroupSpecs[0].template.spec`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_spec_path: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub results: Vec<ObjectResult>,
    /// Files and objects that could not be read, each once (always present).
    pub unreadable: Vec<Problem>,
}

impl Report {
    pub fn allowed(&self) -> bool {
        self.results.iter().all(|r| r.allowed)
    }
}

/// An object of a workload kind whose fields do not read as one.
fn invalid(doc: &Document, e: &policy::ExtractError) -> Problem {
    Problem::new(&doc.source, Some(doc.line), ProblemKind::Invalid, e.to_string())
}

/// Labels of the namespaces defined in the input, so namespace selectors see them.
pub fn namespace_labels(docs: &[Document]) -> BTreeMap<String, BTreeMap<String, String>> {
    docs.iter()
        .filter(|d| d.kind() == "Namespace")
        .filter_map(|d| {
            let name = d.value.pointer("/metadata/name")?.as_str()?.to_string();
            let mut labels = namespace_name_labels(&name);
            if let Some(Value::Object(extra)) = d.value.pointer("/metadata/labels") {
                labels.extend(
                    extra
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))),
                );
            }
            Some((name, labels))
        })
        .collect()
}

/// The namespace an object is judged in, and that namespace's labels.
fn placement(
    workload: &Workload,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> (String, BTreeMap<String, String>) {
    let namespace = workload
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let labels = namespaces
        .get(&namespace)
        .cloned()
        .unwrap_or_else(|| namespace_name_labels(&namespace));
    (namespace, labels)
}

/// A pod spec in an object: a workload kind's own, or one found inside an
/// object of another kind (a custom resource).
struct Found {
    workload: Workload,
    /// For a found one: its JSON pointer and its field path for people.
    embedded: Option<(String, String)>,
}

/// The pod specs an object carries: a workload's own, else every one found
/// inside it ([`policy::embedded::pod_specs`]), each read as a Pod's; an object of a
/// workload kind whose fields do not read is a problem.
fn pod_specs(doc: &Document) -> Result<Vec<Found>, Problem> {
    match Workload::from_value(&doc.value) {
        Ok(Some(workload)) => Ok(vec![Found {
            workload,
            embedded: None,
        }]),
        Err(e) => Err(invalid(doc, &e)),
        Ok(None) => policy::embedded::pod_specs(&doc.value)
            .into_iter()
            .map(|(pointer, path)| {
                let workload = policy::embedded::workload(&doc.value, &pointer).map_err(|e| {
                    Problem::new(
                        &doc.source,
                        Some(doc.line),
                        ProblemKind::Invalid,
                        format!("the pod spec at {path} does not read as one: {}", e.source),
                    )
                })?;
                Ok(Found {
                    workload,
                    embedded: Some((pointer, path)),
                })
            })
            .collect(),
    }
}

/// A Pod's patch (`/spec/...`) applied where its spec was found.
fn rebase_ops(ops: Vec<PatchOperation>, to: &str) -> Vec<PatchOperation> {
    let mut json = serde_json::to_value(&ops).expect("patch operations serialize");
    for op in json.as_array_mut().into_iter().flatten() {
        for field in ["path", "from"] {
            if let Some(Value::String(p)) = op.get_mut(field)
                && let Some(rest) = p.strip_prefix("/spec")
                && (rest.is_empty() || rest.starts_with('/'))
            {
                *p = format!("{to}{rest}");
            }
        }
    }
    serde_json::from_value(json).expect("rebased operations read back")
}

/// What image inspection `check --inspect-images` must do first, one plan per pod spec.
/// Objects that do not read are left to [`check`] to report.
pub fn inspection_plans(docs: &[Document], policies: &PolicySet) -> Vec<InspectionPlan> {
    let namespaces = namespace_labels(docs);
    let mut plans = Vec::new();
    for found in docs.iter().filter_map(|d| pod_specs(d).ok()).flatten() {
        let (namespace, labels) = placement(&found.workload, &namespaces);
        let subject = Subject::new(&found.workload, &namespace, &labels);
        plans.extend(policy::inspection_plan(policies, &subject));
    }
    plans
}

/// Evaluates every pod spec in `docs`: those of the workload kinds, and those
/// found inside objects of other kinds (custom resources), each a result
/// naming where it was found; objects without one are skipped. With `fix`,
/// the documents are mutated in place and the verdict is on the fixed object.
/// `images` holds what image inspection found, when it ran.
pub fn check(
    docs: &mut [Document],
    policies: &PolicySet,
    now: Timestamp,
    fix: bool,
    images: Option<&ImageFacts>,
) -> Report {
    let namespaces = namespace_labels(docs);
    let mut report = Report::default();
    for doc in docs.iter_mut() {
        let location = doc.location();
        let found = match pod_specs(doc) {
            Ok(found) => found,
            Err(problem) => {
                report.unreadable.push(problem);
                continue;
            }
        };
        for Found { mut workload, embedded } in found {
            let (namespace, ns_labels) = placement(&workload, &namespaces);
            let judge = |w: &Workload| {
                let subject = Subject::new(w, &namespace, &ns_labels).with_images(images);
                policy::evaluate(policies, &subject, now)
            };
            let reread = |value: &Value| match &embedded {
                None => Workload::from_value(value).ok().flatten(),
                Some((pointer, _)) => policy::embedded::workload(value, pointer).ok(),
            };
            let mut verdict = judge(&workload);
            let mut mutations = verdict.mutation_patch(&workload);
            if let Some((pointer, _)) = &embedded {
                mutations = rebase_ops(mutations, pointer);
            }
            if fix && !mutations.is_empty() {
                let mut fixed = doc.value.clone();
                match json_patch::patch(&mut fixed, &mutations) {
                    // The patch was computed from this very document; failing to apply it is a bug.
                    Err(e) => {
                        tracing::error!(error = %e, %location, "mutation patch does not apply to its own document");
                    }
                    Ok(()) => {
                        doc.value = fixed;
                        doc.changed = true;
                        doc.fixes.extend(mutations.iter().cloned());
                        if let Some(w) = reread(&doc.value) {
                            workload = w;
                            verdict = judge(&workload);
                        }
                    }
                }
            }
            let allowed = verdict.allowed();
            let mut violations = verdict.violations;
            if let Some((_, path)) = &embedded {
                for v in &mut violations {
                    v.path = policy::embedded::rebase_path(&v.path, path);
                }
            }
            let field = |name: &str| {
                doc.value
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            report.results.push(ObjectResult {
                api_version: field("apiVersion"),
                kind: match embedded {
                    None => workload.kind.to_string(),
                    Some(_) => field("kind"),
                },
                namespace,
                name: workload.name.clone(),
                allowed,
                violations,
                mutations: if fix { Vec::new() } else { mutations },
                source: location.clone(),
                pod_spec_path: embedded.map(|(_, path)| path),
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspection_plans_one_plan_per_pod_spec_with_its_images_and_none_for_other_objects() {
        let text = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: 'registry.example/web:2'}
      - {name: proxy, image: 'registry.example/proxy:1'}
      - {name: again, image: 'registry.example/web:2'}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {a: b}
---
apiVersion: v1
kind: Pod
metadata: {name: job, namespace: shop}
spec:
  containers:
  - {name: job, image: 'registry.example/job:1'}
";
        let docs = crate::manifest::parse("shop.yaml", text).unwrap();
        let plans = inspection_plans(&docs, &PolicySet::builtin_default());
        let images: Vec<Vec<String>> = plans.into_iter().map(|p| p.images).collect();
        assert_eq!(
            images,
            [
                vec!["registry.example/proxy:1".to_string(), "registry.example/web:2".into()],
                vec!["registry.example/job:1".into()],
            ]
        );
        // No policy reads images: nothing to inspect.
        assert!(inspection_plans(&docs, &PolicySet::default()).is_empty());
    }

    #[test]
    fn check_without_fix_leaves_every_document_as_it_was_and_with_fix_records_what_it_changed() {
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: shop}
spec:
  containers:
  - {name: app, image: 'registry.example/app:1'}
";
        let original = crate::manifest::parse("app.yaml", text).unwrap();
        let mut docs = original.clone();
        check(&mut docs, &PolicySet::builtin_default(), Timestamp::now(), false, None);
        assert_eq!(docs[0].value, original[0].value);
        assert!(!docs[0].changed && docs[0].fixes.is_empty());

        check(&mut docs, &PolicySet::builtin_default(), Timestamp::now(), true, None);
        assert!(docs[0].changed && !docs[0].fixes.is_empty());
        assert_eq!(
            docs[0].value["spec"]["securityContext"]["runAsNonRoot"], true,
            "{}",
            docs[0].value
        );
    }
}
