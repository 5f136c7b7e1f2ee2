//! End to end on one machine: the in-memory API server (a test double, run as
//! its own process from `examples/apiserver.rs`) and the `distroless-guard run`
//! binary as separate processes; objects are created and read with the real
//! `kubectl`, as a user would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

#[test]
fn kubectl_sees_the_audit_status_written_by_the_operator_process() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let _apiserver = Killed(
        Command::new(apiserver_example())
            .args(["--port", "0", "--kubeconfig-out"])
            .arg(&kubeconfig)
            .arg("--crds")
            .arg(root().join("crds"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !kubeconfig.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the API server double did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _operator = Killed(
        Command::new(env!("CARGO_BIN_EXE_distroless-guard"))
            .args(["run", "--kubeconfig"])
            .arg(&kubeconfig)
            .args([
                "--identity",
                "e2e",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
