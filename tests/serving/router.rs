//! The webhook's routes driven in-process (`router.oneshot(request)`): no
//! socket, no TLS, the same handlers and the same AdmissionReview JSON
//! (tests/data) as over HTTPS. Fast, so every route and every kind of bad
//! input is covered here; webhook_https.rs keeps what needs the real server
//! (TLS, certificate rotation, the binary and its signals).

use std::sync::Arc;

use axum::body::Body;
use distroless_guard::admission::{Admission, NameOnly};
use distroless_guard::policy::PolicySet;
use distroless_guard::webhook::{AppState, router};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

fn data(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn state() -> Arc<AppState> {
    AppState::new(Admission::new(PolicySet::builtin_default(), Arc::new(NameOnly)))
}

async fn call(state: &Arc<AppState>, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), text)
}

async fn review(state: &Arc<AppState>, path: &str, review: &Value) -> Value {
    let (status, body, text) = call(state, "POST", path, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["response"]["uid"], review["request"]["uid"]);
    body["response"].clone()
}

#[tokio::test]
async fn validate_denies_with_the_rule_the_path_and_the_fix() {
    let s = state();
    let resp = review(&s, "/validate", &data("deployment-exec-probe.json")).await;
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("[exec-probe]") && message.contains("livenessProbe.exec"),
        "{message}"
    );
    let resp = review(&s, "/validate", &data("cronjob-shell.json")).await;
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.jobTemplate.spec.template.spec")
    );
}

#[tokio::test]
async fn validate_resources_judges_each_pod_template_inside_a_custom_resource_and_answers_bad_input_with_400() {
    let s = state();
    let jobset = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "c1", "kind": {"group": "jobset.x-k8s.io", "version": "v1alpha2", "kind": "JobSet"},
        "operation": "CREATE", "namespace": "ml", "name": "train",
        "object": {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "train", "namespace": "ml"},
            "spec": {"replicatedJobs": [{"name": "workers", "template": {"spec": {"template": {"spec": {
                "containers": [{"name": "w", "image": "trainer:1", "command": ["bash", "-c", "python train.py"]}]}}}}}]}}}});
    let resp = review(&s, "/validate-resources", &jobset).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("JobSet ml/train is denied")
            && message.contains("[shell-command]")
            && message.contains("spec.replicatedJobs[0].template.spec.template.spec.containers[0].command"),
        "{message}"
    );
    // A body that is not a review at all is a 400, as on /validate.
    let (status, _, text) = call(&s, "POST", "/validate-resources", b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
}

#[tokio::test]
async fn mutate_patches_a_pod_and_never_a_workload_template() {
    let s = state();
    let resp = review(&s, "/mutate", &data("pod-compliant.json")).await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    use base64::Engine;
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(resp["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(patch.to_string().contains("65532"), "{patch}");
    let resp = review(&s, "/mutate", &data("deployment-exec-probe.json")).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none(), "templates stay as Git has them: {resp}");
}

#[tokio::test]
async fn updates_keep_old_violations_as_warnings_and_deny_new_ones() {
    let s = state();
    let resp = review(&s, "/validate", &data("deployment-update-preexisting.json")).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("already present before this update")
    );
    let resp = review(&s, "/validate", &data("deployment-update-new-violation.json")).await;
    assert_eq!(resp["allowed"], false, "{resp}");
}

#[tokio::test]
async fn bad_input_is_a_json_error_and_an_unreadable_object_is_denied_with_the_reason() {
    let s = state();
    let good = data("pod-compliant.json");
    let mut wrong_version = good.clone();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_request = good.clone();
    no_request.as_object_mut().unwrap().remove("request");
    let mut no_object = good.clone();
    no_object["request"].as_object_mut().unwrap().remove("object");
    for (what, body, expected) in [
        ("not json", b"{not json".to_vec(), "not an AdmissionReview"),
        ("empty", Vec::new(), "not an AdmissionReview"),
        (
            "wrong apiVersion",
            serde_json::to_vec(&wrong_version).unwrap(),
            "expected apiVersion admission.k8s.io/v1",
        ),
        ("no request", serde_json::to_vec(&no_request).unwrap(), "no request"),
        (
            "no object",
            serde_json::to_vec(&no_object).unwrap(),
            "request.object is missing",
        ),
    ] {
        let (status, body, text) = call(&s, "POST", "/validate", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {text}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains(expected),
            "{what}: {text}"
        );
    }
    let mut wrong_type = good.clone();
    wrong_type["request"]["object"]["spec"]["containers"] = json!("not a list");
    let resp = review(&s, "/validate", &wrong_type).await;
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot read this Pod"),
        "{resp}"
    );
    let (status, _, _) = call(&s, "POST", "/validate", vec![b' '; 8 << 20]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn health_readiness_and_metrics_follow_the_state() {
    let s = state();
    assert_eq!(call(&s, "GET", "/healthz", Vec::new()).await.0, StatusCode::OK);
    assert_eq!(
        call(&s, "GET", "/readyz", Vec::new()).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    s.set_ready(true);
    assert_eq!(call(&s, "GET", "/readyz", Vec::new()).await.0, StatusCode::OK);
    review(&s, "/validate", &data("deployment-exec-probe.json")).await;
    let (_, _, metrics) = call(&s, "GET", "/metrics", Vec::new()).await;
    assert!(
        metrics.contains("distroless_guard_admission_reviews_total{endpoint=\"validate\",verdict=\"denied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "distroless_guard_admission_violations_total{endpoint=\"validate\",rule=\"exec-probe\",action=\"Deny\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_rollouts_route_refuses_what_it_cannot_authorize_and_answers_bad_input_with_400() {
    // A webhook with no API server cannot ask who may patch the target.
    let s = state();
    let create = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "r1", "kind": {"group": "distrolessguard.dev", "version": "v1alpha1", "kind": "DistrolessRollout"},
        "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "alice"},
        "object": {"metadata": {"name": "web"}, "spec": {"targetRef": {"name": "web"}}}}});
    let resp = review(&s, "/rollouts", &create).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("without an API server"),
        "{resp}"
    );
    let (status, body, _) = call(&s, "POST", "/rollouts", b"{\"request\": 1}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("not an AdmissionReview"),
        "{body}"
    );
    let (_, _, metrics) = call(&s, "GET", "/metrics", Vec::new()).await;
    assert!(metrics.contains("endpoint=\"rollouts\""), "{metrics}");
}

/// A review the real API server sent (tests/data/captured, recorded by
/// tests/cluster/captured.rs), as its bytes.
fn captured(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/captured")
        .join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn answer(state: &Arc<AppState>, path: &str, name: &str) -> Value {
    let (status, body, text) = call(state, "POST", path, captured(name)).await;
    assert_eq!(status, StatusCode::OK, "{name}: {text}");
    body["response"].clone()
}

fn message(response: &Value) -> &str {
    response["status"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn reviews_captured_from_the_api_server_are_denied_warned_and_mutated_by_the_rules_they_break() {
    let s = state();
    // Denials, each with its rule, for the objects the API server encoded
    // (`&&`, `2>&1`, `<` and `>` arrive as \u0026, \u003e, \u003c).
    let pipeline = answer(&s, "/validate", "pod-shell-pipeline").await;
    assert_eq!(pipeline["allowed"], false, "{pipeline}");
    assert!(
        message(&pipeline).contains("[shell-command]") && message(&pipeline).contains("[exec-probe]"),
        "{pipeline}"
    );
    let probe = answer(&s, "/validate", "deployment-exec-probe").await;
    assert_eq!(probe["allowed"], false, "{probe}");
    assert!(message(&probe).contains("livenessProbe.exec"), "{probe}");
    let cron = answer(&s, "/validate", "cronjob-shell").await;
    assert_eq!(cron["allowed"], false, "{cron}");
    assert!(message(&cron).contains("spec.jobTemplate.spec.template.spec"), "{cron}");
    let debugger = answer(&s, "/validate", "pod-ephemeral-root-debugger").await;
    assert_eq!(debugger["allowed"], false, "{debugger}");
    assert!(
        message(&debugger).contains("spec.ephemeralContainers[0].securityContext.runAsUser"),
        "{debugger}"
    );
    // An update that only changes the image keeps the old exec probe as a warning.
    let update = answer(&s, "/validate", "deployment-update-preexisting").await;
    assert_eq!(update["allowed"], true, "{update}");
    assert!(
        update["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("already present before this update"),
        "{update}"
    );
    // A delete is allowed untouched.
    let delete = answer(&s, "/validate", "pod-delete").await;
    assert_eq!(delete["allowed"], true, "{delete}");
    let delete = answer(&s, "/mutate", "pod-delete").await;
    assert!(delete["allowed"] == true && delete.get("patch").is_none(), "{delete}");
    // Pods get the non-root defaults, whoever creates them and dry run or not;
    // a Deployment's template is left as Git has it.
    for name in ["pod-create", "pod-create-dry-run", "pod-create-by-replicaset"] {
        let mutated = answer(&s, "/mutate", name).await;
        assert_eq!(mutated["allowed"], true, "{name}: {mutated}");
        use base64::Engine;
        let patch = base64::engine::general_purpose::STANDARD
            .decode(
                mutated["patch"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: no patch: {mutated}")),
            )
            .unwrap();
        let patch = String::from_utf8(patch).unwrap();
        assert!(
            patch.contains("runAsNonRoot") && patch.contains("65532"),
            "{name}: {patch}"
        );
    }
    let template = answer(&s, "/mutate", "deployment-exec-probe").await;
    assert!(template.get("patch").is_none(), "{template}");
}
