//! `cargo xtask peers`: the tools people use instead of ours (the Kyverno CLI,
//! syft, trivy), built from their Go modules into the cache, so that
//! `cargo bench --bench peers` can measure them beside `check` and `inspect`
//! on the same input. Never run in CI: about 35 minutes on 2 cores, once.
//!
//! Each is built inside its own module's directory (as downloaded by
//! `go mod download`): Kyverno's go.mod has a `replace` directive, which
//! `go install module@version` refuses, and building in place keeps every
//! version exactly as the project pinned it.

use std::path::Path;
use std::time::Instant;

use testcluster::bins::{download, go, run as output};
use testcluster::peers::{PEERS, Peer, binary};

fn build(peer: &Peer, out: &Path) -> Result<(), String> {
    let dir =
        download(&std::env::temp_dir(), &format!("{}@{}", peer.module, peer.version)).map_err(|e| e.to_string())?;
    let tmp = out.with_extension("tmp");
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut cmd = go();
    cmd.current_dir(&dir)
        .envs(peer.env.iter().copied())
        .arg("build")
        .arg(format!("-p={jobs}"))
        .arg("-trimpath")
        .arg(format!("-ldflags=-s -w {}", peer.ldflags))
        .arg("-o")
        .arg(&tmp)
        .arg(peer.package);
    output(&mut cmd, &format!("go build {} in {}", peer.package, dir.display())).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}

/// Builds every peer not yet in the cache; prints where each one is.
pub fn run(only: &[String]) -> Result<(), String> {
    for peer in PEERS {
        if !only.is_empty() && !only.iter().any(|o| o == peer.name) {
            continue;
        }
        let out = binary(peer);
        if out.is_file() {
            eprintln!("xtask peers: {} {} cached: {}", peer.name, peer.version, out.display());
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        eprintln!("xtask peers: building {} {} (minutes)", peer.name, peer.version);
        let started = Instant::now();
        build(peer, &out)?;
        eprintln!(
            "xtask peers: built {} in {:.0} s: {}",
            peer.name,
            started.elapsed().as_secs_f64(),
            out.display()
        );
    }
    Ok(())
}
