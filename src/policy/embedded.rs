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

/// Where the pod specs of common custom resources sit, by API group and
/// kind (`*`: every item of a list, or every value of a map). For these the
/// paths are exact: a pod spec there counts even when the shape alone would
/// not say so (Knative's unnamed containers, ECK's image-less ones), and
/// nothing elsewhere in the object is taken for one.
const KNOWN: &[(&str, &str, &[&str])] = &[
    ("argoproj.io", "Rollout", &["spec/template/spec"]),
    ("serving.knative.dev", "Service", &["spec/template/spec"]),
    ("serving.knative.dev", "Configuration", &["spec/template/spec"]),
    ("serving.knative.dev", "Revision", &["spec"]),
    (
        "jobset.x-k8s.io",
        "JobSet",
        &["spec/replicatedJobs/*/template/spec/template/spec"],
    ),
    (
        "leaderworkerset.x-k8s.io",
        "LeaderWorkerSet",
        &[
            "spec/leaderWorkerTemplate/leaderTemplate/spec",
            "spec/leaderWorkerTemplate/workerTemplate/spec",
        ],
    ),
    (
        "ray.io",
        "RayCluster",
        &[
            "spec/headGroupSpec/template/spec",
            "spec/workerGroupSpecs/*/template/spec",
        ],
    ),
    (
        "ray.io",
        "RayJob",
        &[
            "spec/rayClusterSpec/headGroupSpec/template/spec",
            "spec/rayClusterSpec/workerGroupSpecs/*/template/spec",
            "spec/submitterPodTemplate/spec",
        ],
    ),
    (
        "ray.io",
        "RayService",
        &[
            "spec/rayClusterConfig/headGroupSpec/template/spec",
            "spec/rayClusterConfig/workerGroupSpecs/*/template/spec",
        ],
    ),
    ("kubeflow.org", "MPIJob", &["spec/mpiReplicaSpecs/*/template/spec"]),
    (
        "kubeflow.org",
        "PyTorchJob",
        &["spec/pytorchReplicaSpecs/*/template/spec"],
    ),
    ("kubeflow.org", "TFJob", &["spec/tfReplicaSpecs/*/template/spec"]),
    (
        "elasticsearch.k8s.elastic.co",
        "Elasticsearch",
        &["spec/nodeSets/*/podTemplate/spec"],
    ),
    ("kibana.k8s.elastic.co", "Kibana", &["spec/podTemplate/spec"]),
    (
        "beat.k8s.elastic.co",
        "Beat",
        &["spec/deployment/podTemplate/spec", "spec/daemonSet/podTemplate/spec"],
    ),
    (
        "agent.k8s.elastic.co",
        "Agent",
        &[
            "spec/deployment/podTemplate/spec",
            "spec/daemonSet/podTemplate/spec",
            "spec/statefulSet/podTemplate/spec",
        ],
    ),
    ("core.strimzi.io", "StrimziPodSet", &["spec/pods/*/spec"]),
];

/// The known paths of an object's kind, if it is one of [`KNOWN`].
fn known_paths(object: &Value) -> Option<&'static [&'static str]> {
    let api_version = object.get("apiVersion")?.as_str()?;
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = object.get("kind")?.as_str()?;
    KNOWN
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)
        .map(|(_, _, paths)| *paths)
}

/// The pod specs at a known path pattern: mappings with a `containers` list.
fn at_pattern(value: &Value, segments: &[&str], pointer: String, path: String, out: &mut Vec<(String, String)>) {
    if out.len() >= MAX_EMBEDDED {
        return;
    }
    let Some((first, rest)) = segments.split_first() else {
        if value.get("containers").is_some_and(Value::is_array) {
            out.push((pointer, path));
        }
        return;
    };
    let dot = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (*first, value) {
        ("*", Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                at_pattern(v, rest, format!("{pointer}/{i}"), format!("{path}[{i}]"), out);
            }
        }
        ("*", Value::Object(map)) => {
            for (k, v) in map {
                at_pattern(v, rest, format!("{pointer}/{}", Token::new(k).encoded()), dot(k), out);
            }
        }
        (key, Value::Object(map)) => {
            if let Some(v) = map.get(key) {
                at_pattern(
                    v,
                    rest,
                    format!("{pointer}/{}", Token::new(key).encoded()),
                    dot(key),
                    out,
                );
            }
        }
        _ => {}
    }
}

/// Pod specs inside an object of a kind without a built-in one: at the
/// known paths of the common custom resources ([`KNOWN`]); for any other
/// kind (operators' own), every mapping whose `containers` is a list of
/// named containers, with an image or under a `spec` key (ECK leaves images
/// to its operator). As (JSON pointer, field path) pairs; nothing below a
/// pod spec is searched.
pub(crate) fn pod_specs(object: &Value) -> Vec<(String, String)> {
    if let Some(patterns) = known_paths(object) {
        let mut out = Vec::new();
        for pattern in patterns {
            let segments: Vec<&str> = pattern.split('/').collect();
            at_pattern(object, &segments, String::new(), String::new(), &mut out);
        }
        return out;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_kinds_are_read_at_their_paths_even_where_the_shape_alone_would_not_say() {
        // Knative's single container is often unnamed; the generic finder
        // wants names, the known path does not.
        let knative = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "hello"},
            "spec": {"template": {"spec": {"containers": [{"image": "ghcr.io/knative/helloworld-go"}]}}}});
        assert_eq!(
            pod_specs(&knative),
            [("/spec/template/spec".to_string(), "spec.template.spec".to_string())]
        );
        // MPIJob's replica specs are a map: each value's template.
        let mpi = json!({"apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob", "metadata": {"name": "pi"},
            "spec": {"mpiReplicaSpecs": {
                "Launcher": {"template": {"spec": {"containers": [{"name": "l", "image": "mpi"}]}}},
                "Worker": {"template": {"spec": {"containers": [{"name": "w", "image": "mpi"}]}}}}}});
        let paths: Vec<String> = pod_specs(&mpi).into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            paths,
            [
                "spec.mpiReplicaSpecs.Launcher.template.spec",
                "spec.mpiReplicaSpecs.Worker.template.spec"
            ]
        );
        // StrimziPodSet holds whole Pods; a LeaderWorkerSet two templates.
        let pods = json!({"apiVersion": "core.strimzi.io/v1beta2", "kind": "StrimziPodSet", "metadata": {"name": "kafka"},
            "spec": {"pods": [{"metadata": {"name": "kafka-0"}, "spec": {"containers": [{"name": "kafka", "image": "strimzi/kafka"}]}}]}});
        assert_eq!(pod_specs(&pods)[0].1, "spec.pods[0].spec");
        let lws = json!({"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": {"name": "llm"},
            "spec": {"leaderWorkerTemplate": {
                "leaderTemplate": {"spec": {"containers": [{"name": "leader", "image": "vllm"}]}},
                "workerTemplate": {"spec": {"containers": [{"name": "worker", "image": "vllm"}]}}}}});
        assert_eq!(pod_specs(&lws).len(), 2);
    }

    #[test]
    fn a_known_kind_takes_nothing_outside_its_paths_for_a_pod_spec() {
        // A Rollout's analysis template-like field with containers is not its pod spec.
        let rollout = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}},
                     "strategy": {"canary": {"analysis": {"job": {"containers": [{"name": "probe", "image": "curl"}]}}}}}});
        assert_eq!(pod_specs(&rollout).len(), 1);
        // The same object under another group is read by shape: both found.
        let mut other = rollout.clone();
        other["apiVersion"] = json!("example.com/v1");
        assert_eq!(pod_specs(&other).len(), 2);
    }

    /// The pointers the shape finder gives for `body` in an unknown kind.
    fn found(body: serde_json::Value) -> Vec<String> {
        let mut object = json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"}});
        object
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        pod_specs(&object).into_iter().map(|(pointer, _)| pointer).collect()
    }

    #[test]
    fn a_mapping_is_a_pod_spec_only_with_named_containers_and_an_image_or_under_a_spec_key() {
        let named = json!([{"name": "a"}]);
        // ECK's shape: named containers with no image, under `spec`.
        assert_eq!(found(json!({"spec": {"containers": named}})), ["/spec"]);
        // The same under another key is not a pod spec; with an image it is.
        assert!(found(json!({"workers": {"containers": named}})).is_empty());
        assert_eq!(
            found(json!({"workers": {"containers": [{"name": "a", "image": "app:1"}]}})),
            ["/workers"]
        );
        // No containers, or one without a name, is not a pod spec anywhere.
        assert!(found(json!({"spec": {"containers": []}})).is_empty());
        assert!(
            found(json!({"spec": {"containers": [{"image": "app:1"}, {"name": "b", "image": "app:1"}]}})).is_empty()
        );
    }

    #[test]
    fn the_shape_finder_reads_down_to_its_depth_limit_and_stops_at_its_count_limit() {
        let spec = json!({"containers": [{"name": "a", "image": "app:1"}]});
        // A top-level field is depth 1: nested `depth` mappings deep.
        let nested = |depth: usize| {
            let mut value = spec.clone();
            for _ in 1..depth {
                value = json!({"x": value});
            }
            json!({ "x": value })
        };
        assert_eq!(
            found(nested(MAX_DEPTH)).len(),
            1,
            "a pod spec at the depth limit is read"
        );
        assert!(
            found(nested(MAX_DEPTH + 1)).is_empty(),
            "nothing below the depth limit is read"
        );
        // Lists count as levels too.
        let listed = |depth: usize| {
            let mut value = spec.clone();
            for _ in 1..depth {
                value = json!([value]);
            }
            json!({ "x": value })
        };
        assert_eq!(found(listed(MAX_DEPTH)), [format!("/x{}", "/0".repeat(MAX_DEPTH - 1))]);
        assert!(
            found(listed(MAX_DEPTH + 1)).is_empty(),
            "nothing below the depth limit is read"
        );
        let many = json!({"items": vec![spec; MAX_EMBEDDED + 10]});
        assert_eq!(found(many).len(), MAX_EMBEDDED);
    }

    #[test]
    fn a_field_path_is_rebased_only_when_it_starts_with_the_spec_field_itself() {
        assert_eq!(rebase_path("spec", "spec.template.spec"), "spec.template.spec");
        assert_eq!(
            rebase_path("spec.containers[0].image", "spec.job.spec"),
            "spec.job.spec.containers[0].image"
        );
        assert_eq!(rebase_path("spec[0]", "spec.x"), "spec.x[0]");
        assert_eq!(
            rebase_path("specification.containers", "spec.x"),
            "specification.containers"
        );
    }
}
