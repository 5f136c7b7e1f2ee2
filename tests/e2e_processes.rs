//! End to end on one machine: the in-memory API server (a test double, run as
//! its own process from `examples/apiserver.rs`) and the `distroless-guard run`
//! binary as separate processes; objects are created and read with the real
//! `kubectl`, as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::process::Killed;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `cargo test` builds the examples next to the binaries.
fn apiserver_example() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_distroless-guard"));
    let path = bin.parent().unwrap().join("examples").join("apiserver");
    assert!(
        path.exists(),
        "{} is missing; `cargo test` builds it (cargo build --example apiserver)",
        path.display()
    );
    path
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is installed")
}

/// Starts the API server double as a process (with the repository's CRDs and
/// optional Service routes); returns it and the kubeconfig it wrote.
fn start_double(dir: &Path, routes: &[String]) -> (Killed, PathBuf) {
    let kubeconfig = dir.join("kubeconfig");
    let child = Command::new(apiserver_example())
        .args(["--port", "0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .args(routes.iter().flat_map(|r| ["--route-service".to_string(), r.clone()]))
        .arg("--crds")
        .arg(root().join("crds"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !kubeconfig.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the API server double did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Killed(child), kubeconfig)
}

/// Starts the `distroless-guard run` binary against the double, serving the webhook on `listen`.
fn start_operator(kubeconfig: &Path, listen: &str) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_distroless-guard"))
        .args(["run", "--kubeconfig"])
        .arg(kubeconfig)
        .args([
            "--identity",
            "e2e",
            "--listen",
            listen,
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Killed(child)
}

#[test]
fn kubectl_sees_the_audit_status_written_by_the_operator_process() {
    let dir = tempfile::tempdir().unwrap();
    let (_apiserver, kubeconfig) = start_double(dir.path(), &[]);
    let _operator = start_operator(&kubeconfig, "127.0.0.1:0");
    let policy = root().join("examples/policies/audit.yaml");
    let out = kubectl(
        &kubeconfig,
        &["create", "--validate=false", "-f", policy.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifests = root().join("examples/manifests");
    let out = kubectl(
        &kubeconfig,
        &["create", "--validate=false", "-f", manifests.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let started = Instant::now();
    let status = loop {
        let out = kubectl(&kubeconfig, &["get", "dpol", "audit", "-o", "yaml"]);
        let doc: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap_or_default();
        if doc.pointer("/status/audit/matched") == Some(&serde_json::json!(5)) {
            break doc["status"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no audit status; last: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let audit = &status["audit"];
    assert_eq!(
        (audit["compliant"].as_u64(), audit["violating"].as_u64()),
        (Some(2), Some(3)),
        "{status:#}"
    );
    assert_eq!(audit["byRule"]["shell-command"], 2);
    assert_eq!(status["conditions"][0]["status"], "True");
}

const WEBHOOKS: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: distroless-guard}
webhooks:
- name: validate.distrolessguard.dev
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
  clientConfig: {service: {namespace: distroless-guard, name: distroless-guard-webhook, path: /validate}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: distroless-guard}
webhooks:
- name: mutate.distrolessguard.dev
  admissionReviewVersions: [v1]
  sideEffects: None
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
  clientConfig: {service: {namespace: distroless-guard, name: distroless-guard-webhook, path: /mutate}}
---
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: strict}
spec:
  action: Deny
  match: {namespaceSelector: {matchLabels: {distroless-guard.dev/enforce: "true"}}}
---
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: lenient}
spec:
  action: Warn
  match: {namespaceSelector: {matchLabels: {mode: warn}}}
---
apiVersion: v1
kind: Namespace
metadata: {name: trial, labels: {mode: warn}}
---
apiVersion: v1
kind: Namespace
metadata: {name: strict, labels: {distroless-guard.dev/enforce: "true"}}
"#;

const ROOT_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: root-pod}\nspec:\n  containers:\n  - {name: app, image: registry.example.com/app:1, securityContext: {runAsUser: 0}}\n";

#[test]
fn kubectl_users_see_denials_warnings_and_mutation_from_the_operator_process() {
    let dir = tempfile::tempdir().unwrap();
    let webhook_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let webhook_addr = format!("127.0.0.1:{webhook_port}");
    let route = format!("distroless-guard/distroless-guard-webhook={webhook_addr}");
    let (_apiserver, kubeconfig) = start_double(dir.path(), &[route]);
    let setup = dir.path().join("setup.yaml");
    std::fs::write(&setup, WEBHOOKS).unwrap();
    let out = kubectl(
        &kubeconfig,
        &["create", "--validate=false", "-f", setup.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _operator = start_operator(&kubeconfig, &webhook_addr);
    let pod = dir.path().join("root-pod.yaml");
    std::fs::write(&pod, ROOT_POD).unwrap();

    // Denied, with the rule id and the fix in kubectl's error (once the operator is ready).
    let started = Instant::now();
    let denied = loop {
        let out = kubectl(
            &kubeconfig,
            &[
                "create",
                "--validate=false",
                "-n",
                "strict",
                "-f",
                pod.to_str().unwrap(),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("denied the request") {
            break stderr;
        }
        if out.status.success() {
            kubectl(&kubeconfig, &["delete", "-n", "strict", "pod", "root-pod"]);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never denied: {stderr}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(denied.contains("Error from server (Forbidden)"), "{denied}");
    assert!(
        denied.contains("[root-uid]") && denied.contains("set securityContext.runAsUser to 65532"),
        "{denied}"
    );

    // Warn mode: admitted, and kubectl prints the warning.
    let out = kubectl(
        &kubeconfig,
        &["create", "--validate=false", "-n", "trial", "-f", pod.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Warning: distroless-guard:") && stderr.contains("[root-uid]"),
        "{stderr}"
    );

    // A bare pod is mutated: the non-root user shows in `kubectl get -o yaml`.
    let bare = dir.path().join("bare.yaml");
    std::fs::write(&bare, "apiVersion: v1\nkind: Pod\nmetadata: {name: bare}\nspec:\n  containers:\n  - {name: app, image: registry.example.com/app:1}\n").unwrap();
    let out = kubectl(
        &kubeconfig,
        &[
            "create",
            "--validate=false",
            "-n",
            "strict",
            "-f",
            bare.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl(&kubeconfig, &["get", "-n", "strict", "pod", "bare", "-o", "yaml"]);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        yaml.contains("runAsUser: 65532") && yaml.contains("fsGroup: 65532") && yaml.contains("runAsNonRoot: true"),
        "{yaml}"
    );
}
