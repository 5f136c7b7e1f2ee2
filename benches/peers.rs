//! Ours beside the tools people use instead, on the same input on this machine:
//!
//! - `distroless-guard check` against `kyverno apply` with
//!   `benches/data/kyverno-distroless.yaml` (our built-in rules written as a
//!   Kyverno policy) on the same generated manifests: wall time (best of 3)
//!   and peak memory of each process, and what each one flagged;
//! - `distroless-guard inspect` against syft and trivy (both SBOM tools: what
//!   they list is what one could tell a shell from) on three images pushed to
//!   a registry on 127.0.0.1: a Debian-like one (a shell and a dpkg
//!   database), a distroless-like one (neither), and busybox (Debian's real
//!   binary as `/bin/sh`, no package database).
//!
//! The peers are built once by `cargo xtask peers` (about 35 minutes on two
//! cores, into `~/.cache/distroless-guard/peers`); the bench fails, saying
//! so, when they are missing. It never runs in CI. Nothing leaves the
//! machine: the images are in the local registry and trivy runs offline.
//!
//! Last line: `RESULT peers check_ratio=.. check_rss_ratio=.. inspect_syft_ratio=.. inspect_trivy_ratio=..`
//! (each the peer's figure over ours: above 1, ours is faster or smaller).

#[path = "support/corpus.rs"]
mod corpus;
#[path = "support/images.rs"]
#[allow(dead_code)]
mod images;
#[path = "../tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use images::{Filler, debian_base, layer};
use registry::{Image, TestRegistry, push};
use serde_json::Value;

const FILES: usize = 100;
const PER_FILE: usize = 50;
const OURS: &str = env!("CARGO_BIN_EXE_distroless-guard");

/// One run of a command: wall time, the peak resident memory of the process
/// (and of the children it waited for), its exit code and output.
struct Run {
    seconds: f64,
    rss_mib: f64,
    code: i32,
    stdout: String,
    stderr: String,
}

#[allow(unsafe_code)] // libc::wait4: see SAFETY below
fn run(cmd: &mut Command) -> Run {
    let out = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let started = Instant::now();
    // Reaped by wait4 below, which also reports the peak memory.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child just spawned, which nothing else waits for.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as i32, "wait4 failed for {cmd:?}");
    let seconds = started.elapsed().as_secs_f64();
    Run {
        seconds,
        rss_mib: usage.ru_maxrss as f64 / 1024.0,
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        stdout: std::fs::read_to_string(&stdout).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr).unwrap_or_default(),
    }
}

/// The best (fastest) of `n` runs.
fn best_of(n: usize, mut make: impl FnMut() -> Command) -> Run {
    (0..n)
        .map(|_| run(&mut make()))
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .unwrap()
}

fn peer(name: &str) -> PathBuf {
    let peer = testcluster::peers::find(name).unwrap();
    let path = testcluster::peers::binary(peer);
    assert!(
        path.is_file(),
        "{name} {} is not built: run `cargo xtask peers` first (it builds the Kyverno CLI, syft and trivy \
         from their Go modules into {}, about 35 minutes on two cores, once)",
        peer.version,
        path.parent().unwrap().display()
    );
    path
}

/// `check` and `kyverno apply` on the same manifests.
fn manifests(dir: &Path, workloads: usize) -> (f64, f64) {
    let ours = best_of(3, || {
        let mut c = Command::new(OURS);
        c.args(["check", "-o", "json", "-f"]).arg(dir);
        c
    });
    assert!(
        ours.code == 1,
        "check should deny some workloads (exit {}): {}",
        ours.code,
        ours.stderr
    );
    let report: Value = serde_json::from_str(&ours.stdout).expect("check -o json");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), workloads, "every workload judged");
    let denied = results.iter().filter(|r| r["allowed"] == false).count();

    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data/kyverno-distroless.yaml");
    let kyverno = best_of(1, || {
        let mut c = Command::new(peer("kyverno"));
        c.arg("apply")
            .arg(&policy)
            .arg("--resource")
            .arg(dir)
            .arg("--remove-color");
        c
    });
    let summary = kyverno
        .stdout
        .lines()
        .find(|l| l.starts_with("pass:"))
        .unwrap_or_else(|| panic!("no summary from kyverno apply: {}\n{}", kyverno.stdout, kyverno.stderr))
        .trim()
        .to_string();
    let failed = kyverno
        .stdout
        .lines()
        .filter(|l| l.contains("-> resource") && l.ends_with("failed:"))
        .count();
    println!(
        "manifests: {FILES} files, {} objects, {workloads} workloads",
        FILES * PER_FILE
    );
    println!(
        "  distroless-guard check  {:>8.2} s {:>7.0} MiB  {denied} workloads denied",
        ours.seconds, ours.rss_mib
    );
    println!(
        "  kyverno apply           {:>8.2} s {:>7.0} MiB  {failed} workloads failed ({summary})",
        kyverno.seconds, kyverno.rss_mib
    );
    assert_eq!(failed, denied, "both should flag the same workloads");
    (kyverno.seconds / ours.seconds, kyverno.rss_mib / ours.rss_mib)
}

/// What a tool told about an image: a shell found, and how long it took.
struct Told {
    seconds: f64,
    shell: bool,
    detail: String,
}

const SHELL_PACKAGES: &[&str] = &["bash", "dash", "busybox", "zsh", "ash", "mksh"];

fn inspect_ours(image: &str, registry: &str) -> Told {
    let r = best_of(3, || {
        let mut c = Command::new(OURS);
        c.args(["inspect", "-o", "json", "--insecure-registry", registry, image]);
        c
    });
    assert!(r.code <= 1, "inspect {image}: exit {}: {}", r.code, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("inspect -o json: {e}: {}", r.stdout));
    let first = v.as_array().and_then(|a| a.first()).unwrap_or(&v);
    let shells: Vec<String> = first["shells"]
        .as_array()
        .map(|s| s.iter().map(|x| x.to_string()).collect())
        .unwrap_or_default();
    Told {
        seconds: r.seconds,
        shell: !shells.is_empty(),
        detail: format!("shells {}", shells.join(", ")),
    }
}

fn packages_told(r: &Run, names: Vec<String>, tool: &str) -> Told {
    let shells: Vec<&String> = names.iter().filter(|n| SHELL_PACKAGES.contains(&n.as_str())).collect();
    Told {
        seconds: r.seconds,
        shell: !shells.is_empty(),
        detail: format!(
            "{} packages listed, shells among them: {shells:?} ({tool})",
            names.len()
        ),
    }
}

fn inspect_syft(image: &str) -> Told {
    let r = best_of(3, || {
        let mut c = Command::new(peer("syft"));
        c.args(["scan", "-q", "-o", "json"])
            .arg(format!("registry:{image}"))
            .env("SYFT_REGISTRY_INSECURE_USE_HTTP", "true")
            .env("SYFT_CHECK_FOR_APP_UPDATE", "false");
        c
    });
    assert_eq!(r.code, 0, "syft {image}: {}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("syft -o json");
    let names = v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str().map(String::from))
        .collect();
    packages_told(&r, names, "syft")
}

fn inspect_trivy(image: &str, cache: &Path) -> Told {
    let r = best_of(3, || {
        let mut c = Command::new(peer("trivy"));
        c.args([
            "image",
            "--quiet",
            "--image-src",
            "remote",
            "--insecure",
            "--format",
            "cyclonedx",
        ])
        .args([
            "--offline-scan",
            "--skip-db-update",
            "--skip-java-db-update",
            "--skip-check-update",
        ])
        .arg("--cache-dir")
        .arg(cache)
        .arg(image);
        c
    });
    assert_eq!(r.code, 0, "trivy {image}: {}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("trivy --format cyclonedx");
    let names = v["components"]
        .as_array()
        .map(|c| c.iter().filter_map(|a| a["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    packages_told(&r, names, "trivy")
}

fn main() {
    let started = Instant::now();
    let (kyverno, syft, trivy) = (peer("kyverno"), peer("syft"), peer("trivy"));
    let version = |bin: &Path, arg: &str| {
        let out = Command::new(bin).arg(arg).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("Version") || l.contains('.'))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    println!(
        "peers: kyverno {} | syft {} | trivy {}",
        version(&kyverno, "version"),
        version(&syft, "version"),
        version(&trivy, "--version")
    );

    let dir = tempfile::tempdir().unwrap();
    let (_, workloads) = corpus::write(dir.path(), FILES, PER_FILE);
    let (check_ratio, check_rss_ratio) = manifests(dir.path(), workloads);

    let registry = TestRegistry::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut fill = Filler(0x2545_f491_4f6c_dd1d);
    let debian = registry.image("peers/debian-like:1");
    let distroless = registry.image("peers/distroless-like:1");
    let busybox = registry.image("peers/busybox:1");
    let busybox_binary =
        std::fs::read("/bin/busybox").expect("/bin/busybox: install Debian's busybox-static (cargo xtask test does)");
    runtime.block_on(async {
        let app = |fill: &mut Filler| layer(fill, "app", 8, 256 << 10, |l| l.file("app/server", b"ELF app"));
        let base = layer(&mut fill, "usr/lib/x86_64-linux-gnu", 1500, 8 << 10, debian_base);
        push(&debian, &Image::new(vec![base, app(&mut fill)]).user("app")).await;
        let base = layer(&mut fill, "usr/lib", 200, 8 << 10, |l| {
            l.file(
                "etc/passwd",
                b"root:x:0:0::/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n",
            )
            .file(
                "var/lib/dpkg/status.d/base",
                b"Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4+deb12u5\n",
            )
        });
        push(&distroless, &Image::new(vec![base, app(&mut fill)]).user("nonroot")).await;
        let base = registry::Layer::new()
            .file("bin/busybox", &busybox_binary)
            .symlink("bin/sh", "busybox")
            .symlink("bin/ls", "busybox")
            .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n");
        let base = registry::Blob::layer(base.tar(), registry::Compression::Gzip);
        push(&busybox, &Image::new(vec![base, app(&mut fill)])).await;
    });

    let trivy_cache = tempfile::tempdir().unwrap();
    let mut ratios = (Vec::new(), Vec::new());
    println!("images (best of 3 runs each):");
    for (image, has_shell) in [(&debian, true), (&distroless, false), (&busybox, true)] {
        let ours = inspect_ours(image, &registry.host());
        let s = inspect_syft(image);
        let t = inspect_trivy(image, trivy_cache.path());
        assert_eq!(ours.shell, has_shell, "inspect on {image}: {}", ours.detail);
        println!("  {image}");
        for (tool, told) in [("distroless-guard inspect", &ours), ("syft", &s), ("trivy", &t)] {
            println!(
                "    {tool:<25} {:>7.3} s  shell: {} ({})  {}",
                told.seconds,
                if told.shell { "yes" } else { "no" },
                if told.shell == has_shell { "right" } else { "WRONG" },
                told.detail
            );
        }
        ratios.0.push(s.seconds / ours.seconds);
        ratios.1.push(t.seconds / ours.seconds);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "RESULT peers check_ratio={check_ratio:.1} check_rss_ratio={check_rss_ratio:.1} inspect_syft_ratio={:.1} inspect_trivy_ratio={:.1}",
        mean(&ratios.0),
        mean(&ratios.1)
    );
}
