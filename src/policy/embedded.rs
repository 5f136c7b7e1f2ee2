//! Pod specs inside objects of kinds without a built-in one (custom
//! resources: Argo Rollouts, JobSets, Ray clusters, ECK, operators' own
//! kinds), found by shape wherever they sit. `check` and the validating
//! webhook's custom-resource endpoint judge each as a Pod.

use json_patch::jsonptr::Token;
use serde_json::Value;

use super::{ExtractError, Workload};

/// The pod spec at `pointer` of an object, as a Pod with the object's name,
/// namespace and labels.
pub(crate) fn workload(object: &Value, pointer: &str) -> Result<Workload, ExtractError> {
    let meta = |field: &str| {
        object
            .pointer(&format!("/metadata/{field}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": meta("name"), "namespace": meta("namespace"), "labels": meta("labels")},
        "spec": object.pointer(pointer).cloned().unwrap_or(Value::Null),
    });
    Workload::from_value(&pod).map(|w| w.expect("a v1 Pod is a workload"))
}

/// The most pod specs looked for in one object, and how deep.
const MAX_EMBEDDED: usize = 64;
const MAX_DEPTH: usize = 32;

/// Pod specs inside an object of a kind without a built-in one (Argo
/// Rollouts, JobSets, Ray clusters, Knative Services, ECK, operators' own
/// kinds): every mapping whose `containers` is a list of named containers,
/// with an image or under a `spec` key (ECK leaves images to its operator).
/// As (JSON pointer, field path) pairs; nothing below a pod spec is searched.
pub(crate) fn pod_specs(object: &Value) -> Vec<(String, String)> {
    fn is_pod_spec(map: &serde_json::Map<String, Value>, key: &str) -> bool {
        let Some(containers) = map.get("containers").and_then(Value::as_array) else {
            return false;
        };
        let named = |c: &Value| c.get("name").is_some_and(Value::is_string);
        !containers.is_empty()
            && containers.iter().all(named)
            && (key == "spec" || containers.iter().any(|c| c.get("image").is_some_and(Value::is_string)))
    }
    fn walk(value: &Value, key: &str, pointer: String, path: String, depth: usize, out: &mut Vec<(String, String)>) {
        if depth > MAX_DEPTH || out.len() >= MAX_EMBEDDED {
            return;
        }
        match value {
            Value::Object(map) if is_pod_spec(map, key) => out.push((pointer, path)),
            Value::Object(map) => {
                for (k, v) in map {
                    walk(
                        v,
                        k,
                        format!("{pointer}/{}", Token::new(k).encoded()),
                        format!("{path}.{k}"),
                        depth + 1,
                        out,
                    );
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, key, format!("{pointer}/{i}"), format!("{path}[{i}]"), depth + 1, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if object.get("apiVersion").is_none() {
        return out;
    }
    for (k, v) in object.as_object().into_iter().flatten() {
        if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
            walk(v, k, format!("/{}", Token::new(k).encoded()), k.clone(), 1, &mut out);
        }
    }
    out
}

/// A Pod's field path (`spec.containers[0]...`) where its spec was found.
pub(crate) fn rebase_path(path: &str, to: &str) -> String {
    match path.strip_prefix("spec") {
        Some(rest) if rest.is_empty() || rest.starts_with(['.', '[']) => format!("{to}{rest}"),
        _ => path.to_string(),
    }
}
