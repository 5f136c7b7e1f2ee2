//! The admission engine, offline, over manifests: what `distroless-guard check`
//! decides (its output is written by the CLI).

use std::collections::BTreeMap;

use jiff::Timestamp;
use json_patch::PatchOperation;
use serde::Serialize;
use serde_json::Value;

use crate::manifest::{Document, Problem, ProblemKind};
use crate::policy::{
    self, ImageFacts, InspectionPlan, PolicySet, Scope, Subject, Violation, Workload, namespace_name_labels,
};

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

/// What image inspection `check --inspect-images` must do first, one plan per workload.
/// Objects that do not read are left to [`check`] to report.
pub fn inspection_plans(docs: &[Document], policies: &PolicySet) -> Vec<InspectionPlan> {
    let namespaces = namespace_labels(docs);
    let mut plans = Vec::new();
    for doc in docs {
        let Ok(Some(workload)) = Workload::from_value(&doc.value) else {
            continue;
        };
        let (namespace, labels) = placement(&workload, &namespaces);
        let subject = Subject {
            workload: &workload,
            namespace: &namespace,
            namespace_labels: &labels,
            scope: Scope::Full,
            images: None,
        };
        plans.extend(policy::inspection_plan(policies, &subject));
    }
    plans
}

/// Evaluates every workload in `docs`; other kinds are skipped. With `fix`,
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
        let mut workload = match Workload::from_value(&doc.value) {
            Ok(Some(workload)) => workload,
            Ok(None) => continue,
            Err(e) => {
                report.unreadable.push(invalid(doc, &e));
                continue;
            }
        };
        let (namespace, ns_labels) = placement(&workload, &namespaces);
        let judge = |w: &Workload| {
            let subject = Subject {
                workload: w,
                namespace: &namespace,
                namespace_labels: &ns_labels,
                scope: Scope::Full,
                images,
            };
            policy::evaluate(policies, &subject, now)
        };
        let mut verdict = judge(&workload);
        let mutations = verdict.mutation_patch(&workload);
        if fix && !mutations.is_empty() {
            let mut fixed = doc.value.clone();
            match json_patch::patch(&mut fixed, &mutations) {
                // The patch was computed from this very document; failing to apply it is a bug.
                Err(e) => tracing::error!(error = %e, %location, "mutation patch does not apply to its own document"),
                Ok(()) => {
                    doc.value = fixed;
                    doc.changed = true;
                    if let Ok(Some(w)) = Workload::from_value(&doc.value) {
                        workload = w;
                        verdict = judge(&workload);
                    }
                }
            }
        }
        report.results.push(ObjectResult {
            api_version: doc
                .value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            kind: workload.kind.to_string(),
            namespace,
            name: workload.name.clone(),
            allowed: verdict.allowed(),
            violations: verdict.violations,
            mutations: if fix { Vec::new() } else { mutations },
            source: location,
        });
    }
    report
}
