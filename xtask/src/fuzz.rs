//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` run by cargo-fuzz
//! (libFuzzer), installed from crates.io when missing. `cargo xtask test` runs
//! each target for a few seconds from its seeds; a campaign runs longer.
//!
//! The fuzz build keeps its target directory in the cache
//! (`~/.cache/distroless-guard/fuzz-target`), so a fresh clone on the same
//! machine rebuilds only the project, not its dependencies.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const CARGO_FUZZ: &str = "0.13.2";

/// What one target did.
pub struct Run {
    pub target: String,
    pub runs: u64,
    pub coverage: u64,
    pub ok: bool,
}

fn cargo() -> Command {
    crate::cargo()
}

fn have_cargo_fuzz() -> bool {
    cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn target_dir() -> PathBuf {
    testcluster::bins::cache_root().join("fuzz-target")
}

/// The targets declared in `fuzz/Cargo.toml`.
pub fn targets(root: &Path) -> Result<Vec<String>, String> {
    let toml = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).map_err(|e| format!("fuzz/Cargo.toml: {e}"))?;
    Ok(toml
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            let line = bin.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_string())
        })
        .collect())
}

/// Installs cargo-fuzz if needed and builds every target.
pub fn build(root: &Path) -> Result<(), String> {
    if !have_cargo_fuzz() {
        eprintln!("xtask fuzz: installing cargo-fuzz {CARGO_FUZZ} from crates.io");
        let status = cargo()
            .args(["install", "--locked", "cargo-fuzz", "--version", CARGO_FUZZ])
            .status()
            .map_err(|e| format!("cargo install cargo-fuzz: {e}"))?;
        if !status.success() {
            return Err(format!("cargo install cargo-fuzz failed ({status})"));
        }
    }
    let started = Instant::now();
    let status = cargo()
        .current_dir(root.join("fuzz"))
        .args(["fuzz", "build", "--sanitizer", "none"])
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .map_err(|e| format!("cargo fuzz build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo fuzz build failed ({status})"));
    }
    eprintln!("xtask fuzz: targets built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one target for `seconds` from its seeds (and the corpus in `corpus`,
/// which grows), stopping at the first crash, which libFuzzer writes under
/// `fuzz/artifacts/<target>/`.
pub fn run(root: &Path, target: &str, seconds: u64, corpus: &Path) -> Result<Run, String> {
    std::fs::create_dir_all(corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    let seeds = root.join("fuzz/seeds").join(target);
    let out = cargo()
        .current_dir(root.join("fuzz"))
        .args(["fuzz", "run", "--sanitizer", "none", target])
        .arg(corpus)
        .arg(&seeds)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ])
        .env("CARGO_TARGET_DIR", target_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cargo fuzz run {target}: {e}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().trim_start_matches(':').trim().parse().ok())
            .unwrap_or(0)
    };
    // The last coverage figure libFuzzer printed.
    let coverage = log
        .lines()
        .rev()
        .find_map(|l| l.split("cov: ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(Run {
        target: target.to_string(),
        runs: stat("stat::number_of_executed_units"),
        coverage,
        ok: out.status.success(),
    })
}

/// `cargo xtask fuzz [--seconds N] [TARGET...]`: a campaign, its corpus kept in `fuzz/corpus/`.
pub fn campaign(seconds: u64, only: &[String]) -> Result<(), String> {
    let root = crate::root();
    build(&root)?;
    let mut failed = Vec::new();
    for target in targets(&root)? {
        if !only.is_empty() && !only.contains(&target) {
            continue;
        }
        let r = run(&root, &target, seconds, &root.join("fuzz/corpus").join(&target))?;
        println!(
            "RESULT fuzz target={} seconds={seconds} runs={} cov={} crashed={}",
            r.target, r.runs, r.coverage, !r.ok
        );
        if !r.ok {
            failed.push(r.target);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "crashes in {} (inputs under fuzz/artifacts/; add each to fuzz/regressions/<target>/)",
            failed.join(", ")
        ))
    }
}

/// The smoke run of `cargo xtask test`: every target a few seconds from its
/// seeds, the corpus thrown away. Returns (passed, failed).
pub fn smoke(seconds: u64) -> Result<(u64, u64), String> {
    let root = crate::root();
    build(&root)?;
    let (mut passed, mut failed) = (0, 0);
    for target in targets(&root)? {
        let corpus = target_dir().join("smoke-corpus").join(&target);
        let _ = std::fs::remove_dir_all(&corpus);
        let r = run(&root, &target, seconds, &corpus)?;
        let verdict = if r.ok { "ok" } else { "FAILED (a crash; see above)" };
        println!(
            "fuzz smoke {}: {} runs in {seconds} s, coverage {} ... {verdict}",
            r.target, r.runs, r.coverage
        );
        if r.ok && r.runs > 0 {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    Ok((passed, failed))
}
