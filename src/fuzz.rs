//! Entry points for the fuzz targets in `fuzz/` and for the tests that replay
//! what they found (`tests/offline/fuzz_regressions.rs`): each takes raw bytes
//! from outside the process, runs the code that reads them, and checks what
//! must hold whatever the input. A panic here is a bug in the product.
//! Not a stable API.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use crate::admission::{Admission, NameOnly};
use crate::policy::PolicySet;

/// The policies the admission target runs with: the built-in default plus the
/// examples (selectors, exceptions, image rules, every action).
/// The example policies; a target fails at its first input when they stop
/// reading or compiling, rather than fuzz fewer rules unnoticed.
fn policies() -> PolicySet {
    let mut policies = Vec::new();
    for (name, text) in [
        ("enforce.yaml", include_str!("../examples/policies/enforce.yaml")),
        ("audit.yaml", include_str!("../examples/policies/audit.yaml")),
    ] {
        let docs = crate::manifest::parse(name, text).unwrap_or_else(|e| panic!("examples/policies/{name}: {e}"));
        for doc in docs.into_iter().filter(|d| d.kind() == "DistrolessPolicy") {
            let policy = serde_json::from_value::<crate::api::DistrolessPolicy>(doc.value)
                .unwrap_or_else(|e| panic!("examples/policies/{name}: {e}"));
            policies.push(policy);
        }
    }
    assert!(!policies.is_empty(), "examples/policies holds no DistrolessPolicy");
    PolicySet::new(&policies).unwrap_or_else(|e| panic!("examples/policies do not compile: {e}"))
}

struct Webhook {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn webhook() -> &'static Webhook {
    static WEBHOOK: OnceLock<Webhook> = OnceLock::new();
    WEBHOOK.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let admission = Admission::new(policies(), Arc::new(NameOnly));
        let state = crate::webhook::AppState::new(admission);
        state.set_ready(true);
        Webhook {
            runtime,
            router: crate::webhook::router(state),
        }
    })
}

/// An AdmissionReview body, posted to `/validate` or `/mutate` (the first byte
/// chooses) through the webhook's router, as the API server would. Every
/// answer is a 200 with an AdmissionReview, or a 4xx with a JSON error.
pub fn admission_review(data: &[u8]) {
    use tower::ServiceExt;
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let path = if first % 2 == 0 { "/validate" } else { "/mutate" };
    let w = webhook();
    let request = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a request");
    let (status, bytes) = w.runtime.block_on(async {
        let response = w
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .expect("a response body");
        (status, bytes)
    });
    let answer: serde_json::Value = serde_json::from_slice(&bytes).expect("every answer is JSON");
    if status.is_success() {
        assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
        let response = &answer["response"];
        assert!(response["allowed"].is_boolean(), "{answer}");
        if let Some(patch) = response["patch"].as_str() {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .expect("the patch is base64");
            serde_json::from_slice::<json_patch::Patch>(&decoded).expect("the patch is RFC 6902");
        }
    } else {
        assert!(status.is_client_error(), "{status}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
}

/// A manifest file's text: read as `check` reads it, then checked with `--fix`;
/// what `--fix` wrote must read back and need no further mutation.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mut docs, _) = crate::manifest::parse_lenient("fuzz.yaml", text);
    let policies = PolicySet::builtin_default();
    let now = jiff::Timestamp::UNIX_EPOCH;
    let _ = crate::manifest::verdicts::check(&mut docs.clone(), &policies, now, false, None);
    let fixed = crate::manifest::verdicts::check(&mut docs, &policies, now, true, None);
    let again = crate::manifest::verdicts::check(&mut docs, &policies, now, false, None);
    assert_eq!(
        fixed.results.len(),
        again.results.len(),
        "a fixed file reads as as many objects as before"
    );
    for (a, b) in fixed.results.iter().zip(&again.results) {
        assert_eq!(a.allowed, b.allowed, "a fixed object's verdict is stable: {}", a.source);
    }
}

/// A policy file: parsed, deserialized and compiled as `--policy` and the
/// operator do. A policy that compiles can judge a pod.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (docs, _) = crate::manifest::parse_lenient("policy.yaml", text);
    let policies: Vec<crate::api::DistrolessPolicy> = docs
        .into_iter()
        .filter_map(|d| serde_json::from_value(d.value).ok())
        .collect();
    if let Ok(set) = PolicySet::new(&policies) {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "registry.example/app:1", "command": ["sh", "-c", "x"]}]}
        });
        let mut docs = vec![crate::manifest::Document {
            source: "pod.yaml".into(),
            line: 1,
            value: pod,
            raw: 0,
            changed: false,
            fixes: Vec::new(),
        }];
        let _ = crate::manifest::verdicts::check(&mut docs, &set, jiff::Timestamp::UNIX_EPOCH, true, None);
    }
}

/// An image reference: a reference that parses normalizes to one that parses
/// to itself.
pub fn image_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = crate::image::reference::normalize(text) {
        assert_eq!(
            crate::image::reference::normalize(&normal).ok().as_deref(),
            Some(normal.as_str()),
            "normalizing {text:?} is not idempotent"
        );
    }
}

/// A layer blob (gzip, zstd or plain tar), scanned under small limits: it
/// ends in facts or an error, and the facts stay within the limits.
pub fn layer(data: &[u8]) {
    let limits = crate::image::LayerLimits {
        max_tar_bytes: 8 << 20,
        max_ratio: 100,
        bomb_floor: 1 << 20,
        max_entries: 1_000,
        max_passwd_bytes: 64 << 10,
    };
    if let Ok(facts) = crate::image::scan_layer(data, limits) {
        assert!(facts.tar_bytes <= limits.max_tar_bytes);
        assert!(facts.entries.len() <= limits.max_entries);
        assert!(
            facts
                .passwd
                .as_ref()
                .is_none_or(|p| p.len() as u64 <= limits.max_passwd_bytes)
        );
        for (path, _) in &facts.entries {
            assert!(!path.split('/').any(|p| p == ".."), "{path}");
        }
    }
}

/// A docker config (a pull secret's `.dockerconfigjson`).
pub fn docker_config(data: &[u8]) {
    if let Ok(creds) = crate::image::credentials::Credentials::from_docker_config(data) {
        for host in ["docker.io", "registry.example", ""] {
            let _ = creds.for_host(host);
        }
        let _ = creds.digest();
    }
}

/// A label selector (JSON) against labels (the rest of the input): a selector
/// that validates can be matched.
pub fn label_selector(data: &[u8]) {
    let mut parts = data.splitn(2, |b| *b == b'\n');
    let (Some(selector), labels) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(selector) =
        serde_json::from_slice::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(selector)
    else {
        return;
    };
    let labels: BTreeMap<String, String> = labels.and_then(|l| serde_json::from_slice(l).ok()).unwrap_or_default();
    if let Ok(compiled) = crate::policy::selector::compile(&selector) {
        use crate::policy::selector::SelectorExt;
        let matched = compiled.matches(&labels);
        let empty = selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
            && selector.match_expressions.as_ref().is_none_or(Vec::is_empty);
        assert!(!empty || matched, "an empty selector matches everything");
    }
}
