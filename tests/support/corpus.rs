//! The `check --fix` corpus in tests/data/fix-corpus: where it is and how a
//! fixed object's pod spec is found (the offline and the cluster tests).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub const CORPUS: &str = "tests/data/fix-corpus";
pub const HARDENING: &str = "tests/data/fix-corpus/hardening-policy.yaml";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The corpus' manifests (not its policy), sorted.
pub fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(CORPUS))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name() != Path::new(HARDENING).file_name())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the corpus is in {CORPUS}");
    files
}

/// The pod spec of a fixed object, where its kind keeps it (`None`: no pod spec).
pub fn pod_spec(object: &Value) -> Option<&Value> {
    let kind = object["kind"].as_str()?;
    let pointer = match kind {
        "Pod" => "/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "Rollout" => "/spec/template/spec",
        _ => return None,
    };
    object.pointer(pointer)
}

/// `check -f FILE --fix [--policy P]`: what it prints (exit 0 or 1).
pub fn fix(file: &Path, policy: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
    cmd.args(["check", "--fix", "-f"]).arg(file).current_dir(root());
    if let Some(p) = policy {
        cmd.args(["--policy", p]);
    }
    let out = crate::command::output(cmd);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}: {:?} {}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The objects `check` reads from `text`.
pub fn objects_in(text: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fixed.yaml");
    std::fs::write(&file, text).unwrap();
    distroless_guard::manifest::read(&[file])
        .unwrap()
        .docs
        .into_iter()
        .map(|d| d.value)
        .collect()
}
