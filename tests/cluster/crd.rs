//! The CRD as the real API server sees it: its schema and CEL rules compile,
//! and invalid policies are refused with the field named, as kubectl shows it.

use serde_json::json;

use crate::support::*;

pub async fn install_crd() {
    install("distrolesspolicies").await;
}

/// Applies `crds/distrolessguard.dev_<plural>.yaml` and waits until it is Established.
async fn install(plural: &str) {
    let crd = root().join(format!("crds/distrolessguard.dev_{plural}.yaml"));
    let out = kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crd.to_str().unwrap(),
    ])
    .await;
    let (_, err) = text(&out);
    assert!(out.status.success(), "the API server refused the CRD: {err}");
    assert!(!err.contains("Warning"), "the API server warns about the CRD: {err}");
    kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{plural}.distrolessguard.dev"),
        "--timeout=30s",
    ])
    .await;
}

#[tokio::test]
async fn the_api_server_accepts_the_crd_and_refuses_invalid_policies_naming_the_field() {
    install_crd().await;
    let valid = json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessPolicy",
        "metadata": {"name": testcluster::unique("crd-valid")},
        "spec": {"action": "Warn", "rules": {"exec-probe": "Deny"},
                 "exemptions": [{"reason": "vendor image, TICKET-1", "images": ["registry.example.com/vendor/*"], "expires": "2099-01-31"}]}});
    let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &valid.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);

    let cases = [
        (
            json!({"rules": {"no-such-rule": "Deny"}}),
            vec!["spec.rules", "unknown rule id"],
        ),
        (
            json!({"exemptions": [{"reason": "   ", "namespaces": ["legacy"]}]}),
            vec!["spec.exemptions[0].reason", "an exemption needs a non-empty reason"],
        ),
        (
            json!({"exemptions": [{"namespaces": ["legacy"]}]}),
            vec!["spec.exemptions[0].reason", "Required value"],
        ),
        (
            json!({"action": "Block"}),
            vec!["spec.action", "Unsupported value: \"Block\""],
        ),
        (json!({"nonRootUser": 0}), vec!["spec.nonRootUser"]),
        (
            json!({"exemptions": [{"reason": "x", "expires": "next week"}]}),
            vec!["spec.exemptions[0].expires"],
        ),
    ];
    for (spec, expected) in cases {
        let p = json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessPolicy",
            "metadata": {"name": testcluster::unique("crd-invalid")}, "spec": spec});
        let out = kubectl_stdin(&["apply", "-f", "-"], &p.to_string()).await;
        let (_, err) = text(&out);
        assert!(!out.status.success(), "the API server accepted {spec}");
        assert!(err.contains("is invalid"), "{err}");
        for e in expected {
            assert!(err.contains(e), "{spec}: expected {e:?} in: {err}");
        }
    }
}

#[tokio::test]
async fn the_api_server_refuses_empty_and_contradictory_rollout_steps_and_gate_credentials_over_http_and_takes_bare_pauses()
 {
    // No release at the same time: its rollout webhook would be asked too,
    // and refuses while its operator starts or stops.
    let _alone = exclusive().await;
    install("distrolessrollouts").await;
    let rollout = |steps: serde_json::Value| {
        json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessRollout",
            "metadata": {"name": testcluster::unique("crd-steps"), "namespace": "default"},
            "spec": {"targetRef": {"name": "web"}, "containers": [{"name": "app", "image": "reg/app:distroless"}],
                     "steps": steps}})
        .to_string()
    };
    // Argo Rollouts' shapes: a bare pause and a bare bake hold the current weight.
    let valid = rollout(json!([{"weight": 10}, {"pause": true}, {"bakeSeconds": 600}, {"weight": 100}]));
    let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &valid).await;
    assert!(out.status.success(), "{}", text(&out).1);
    for (steps, expected) in [
        (json!([{"weight": 10}, {}]), "an empty step does nothing"),
        (
            json!([{"weight": 10}, {"pause": false, "bakeSeconds": 0}]),
            "an empty step does nothing",
        ),
        (
            json!([{"staging": {"replicas": 1}, "weight": 10}]),
            "a step is either staging (no traffic) or a weight, not both",
        ),
    ] {
        let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &rollout(steps.clone())).await;
        let (_, err) = text(&out);
        assert!(!out.status.success(), "the API server accepted {steps}");
        assert!(err.contains("spec.steps[") && err.contains(expected), "{steps}: {err}");
    }
    // Gate credentials only over https, and one way of authenticating.
    for (auth, address, expected) in [
        (
            json!({"secretName": "s", "tokenKey": "t"}),
            "http://prom:9090",
            "credentials are sent only over https://",
        ),
        (
            json!({"secretName": "s", "tokenKey": "t", "usernameKey": "u", "passwordKey": "p"}),
            "https://prom:9090",
            "a bearer token or a user name and password, not both",
        ),
        (
            json!({"secretName": "s", "usernameKey": "u"}),
            "https://prom:9090",
            "go together",
        ),
    ] {
        let mut r: serde_json::Value = serde_json::from_str(&rollout(json!([{"weight": 100}]))).unwrap();
        r["spec"]["metrics"] = json!([{"name": "e", "address": address, "query": "up", "threshold": 1, "auth": auth}]);
        let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &r.to_string()).await;
        let (_, err) = text(&out);
        assert!(!out.status.success(), "the API server accepted {auth} at {address}");
        assert!(
            err.contains("spec.metrics[0]") && err.contains(expected),
            "{auth}: {err}"
        );
    }
}
