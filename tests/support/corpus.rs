//! The `check --fix` corpus in tests/data/fix-corpus: where it is and how a
//! fixed object's pod spec is found (the offline and the cluster tests).

use std::path::{Path, PathBuf};

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
        .filter(|p| !root().join(HARDENING).ends_with(p.file_name().unwrap()))
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
