//! `cargo xtask image --registry HOST:PORT`: the operator's image without
//! Docker (testcluster::operator_image): the release binary, files from
//! Debian packages, pushed over the registry's HTTP API (plain HTTP, so a
//! registry on this machine; push elsewhere with a tool that signs in).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

/// Builds `--bin distroless-guard` in release and returns the executable's path
/// as cargo reports it (so `CARGO_TARGET_DIR` and `--target-dir` are honoured).
pub fn release_binary() -> Result<PathBuf, String> {
    eprintln!("building the operator (cargo build --release --bin distroless-guard) ...");
    let out = crate::cargo()
        .current_dir(crate::root())
        .args([
            "build",
            "--release",
            "--bin",
            "distroless-guard",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo build --release: {e}"))?;
    if !out.status.success() {
        return Err("cargo build --release --bin distroless-guard failed (see above)".into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "distroless-guard")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo build reported no executable for distroless-guard".into())
}

pub fn run(registry: &str, repository: &str, tag: &str, binary: Option<PathBuf>) -> Result<(), String> {
    let registry: SocketAddr = registry.parse().map_err(|e| {
        format!("--registry {registry}: {e} (give HOST:PORT of a plain-HTTP registry, e.g. 127.0.0.1:5000)")
    })?;
    let binary = match binary {
        Some(b) => b,
        None => release_binary()?,
    };
    let version = env!("CARGO_PKG_VERSION");
    let work = std::env::temp_dir().join(format!("distroless-guard-image-{}", std::process::id()));
    let built = testcluster::operator_image::build(&binary, version, &testcluster::operator_image::debs_cache(), &work);
    let _ = std::fs::remove_dir_all(&work);
    let (image, report) = built.map_err(|e| e.to_string())?;
    let blobs = image.build();
    let digest =
        testcluster::oci::push(registry, repository, tag, &blobs).map_err(|e| format!("pushing to {registry}: {e}"))?;
    println!("{registry}/{repository}:{tag}@{digest}");
    eprintln!(
        "from Debian packages: {}; libraries: {}; binary {:.1} MiB (debug info stripped); image {:.1} MiB in {} layers (uncompressed)",
        report.packages.join(", "),
        if report.libraries.is_empty() {
            "none (static)".to_string()
        } else {
            report.libraries.join(", ")
        },
        report.binary_bytes as f64 / 1048576.0,
        blobs.size() as f64 / 1048576.0,
        blobs.layers.len()
    );
    Ok(())
}
