//! `cargo xtask`: the project's own tasks.
//!
//! - `bins`: build the control-plane binaries (Kubernetes, etcd, kwok, Helm) from
//!   their Go modules into the cache, once.
//! - `cluster up --dir DIR [--install-chart]` / `cluster down --dir DIR`: a real
//!   control plane on this machine, without Docker.
//! - `test`: install what the tests need, then run every test.
//! - `image --registry HOST:PORT`: the operator's image from the release binary
//!   and Debian packages, without Docker, pushed to a plain-HTTP registry.
//! - `crds`: regenerate `crds/` and the chart's `crds/` from the Rust types.
//! - `fuzz [--seconds N] [TARGET...]`: a fuzzing campaign over `fuzz/`'s targets.
//! - `mutants [--in-diff REV] [-f FILE...]`: mutation testing of the pure cores
//!   with cargo-mutants (`.cargo/mutants.toml` says what and how).
//! - `peers [NAME...]`: build the Kyverno CLI, syft and trivy into the cache for
//!   `cargo bench --bench peers` (never in CI).

mod cluster;
mod fuzz;
mod image;
mod mutants;
mod peers;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "distroless-guard project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the control-plane binaries into the cache (skipped when already built).
    Bins {
        /// Print only the directory holding the binaries.
        #[arg(long)]
        print_dir: bool,
    },
    /// A real control plane on this machine (etcd, kube-apiserver, controller-manager,
    /// scheduler, kwok nodes).
    Cluster {
        #[command(subcommand)]
        action: cluster::Action,
    },
    /// Install what the tests need (Debian packages, the Python tools, the control-plane
    /// binaries), then run every test. Extra arguments go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Build the operator's image without Docker (release binary, files from Debian
    /// packages, user 65532, no shell) and push it to a plain-HTTP registry.
    Image {
        /// HOST:PORT of the registry (plain HTTP, e.g. 127.0.0.1:5000).
        #[arg(long)]
        registry: String,
        #[arg(long, default_value = "distroless-guard")]
        repository: String,
        #[arg(long, default_value = "dev")]
        tag: String,
        /// Use this binary instead of building the release one.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Regenerate the CRD files (crds/ and the chart's crds/) from the Rust types.
    Crds,
    /// Fuzz every target of fuzz/ (or those named) for N seconds each with cargo-fuzz,
    /// keeping the corpus in fuzz/corpus/; prints a RESULT line per target.
    Fuzz {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        targets: Vec<String>,
    },
    /// Mutation testing of the pure cores with cargo-mutants (installed when missing);
    /// prints a RESULT line and fails when a mutant is missed.
    Mutants {
        /// Only the mutants on lines changed since this revision (e.g. HEAD~1).
        #[arg(long)]
        in_diff: Option<String>,
        /// Only these files (else the examine_globs of .cargo/mutants.toml).
        #[arg(short = 'f', long = "file")]
        files: Vec<String>,
    },
    /// Build the peers `cargo bench --bench peers` compares with (the Kyverno CLI,
    /// syft, trivy) from their Go modules into the cache (about 35 minutes, once).
    Peers {
        /// Only these (kyverno, syft, trivy).
        names: Vec<String>,
    },
}

/// The repository root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Builds the control-plane binaries unless the cache already holds them.
pub fn bins(quiet: bool) -> Result<testcluster::bins::Bins, String> {
    let source = root().join("crates/testcluster/go");
    let mut log = |line: &str| {
        if !quiet {
            eprintln!("xtask bins: {line}");
        }
    };
    let built = testcluster::bins::build(&source, &mut log).map_err(|e| e.to_string())?;
    if !quiet {
        if built.cached {
            eprintln!("xtask bins: cached in {}", built.bins.dir().display());
        } else {
            eprintln!(
                "xtask bins: built in {:.0} s into {}",
                built.seconds,
                built.bins.dir().display()
            );
        }
    }
    Ok(built.bins)
}

/// A `cargo` command as if typed in a shell. `cargo xtask` runs this program
/// through `cargo run`, which sets `CARGO_MANIFEST_DIR`, `CARGO_PKG_*` and
/// the like for it; build scripts that watch those (ring's does, through
/// `rerun-if-env-changed`) would see them change between a `cargo build` from
/// the shell and one from here, and rebuild ring and everything above it,
/// minutes on 2 cores, every time the two alternate. So they are removed.
pub fn cargo() -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let injected = key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
            .contains(&key.as_ref());
        if injected {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Writes the CRDs the product generates into both places that ship them.
fn crds() -> Result<(), String> {
    let root = root();
    let status = cargo()
        .current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--bin",
            "distroless-guard",
            "--",
            "crd",
            "--out-dir",
            "crds",
        ])
        .args(["--out-dir", "charts/distroless-guard/crds"])
        .status()
        .map_err(|e| format!("cargo run: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("distroless-guard crd failed ({status})"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Bins { print_dir } => bins(print_dir).map(|b| {
            if print_dir {
                println!("{}", b.dir().display());
            }
        }),
        Task::Cluster { action } => cluster::run(action),
        Task::Test { cargo_args } => test::run(&cargo_args),
        Task::Image {
            registry,
            repository,
            tag,
            binary,
        } => image::run(&registry, &repository, &tag, binary),
        Task::Crds => crds(),
        Task::Fuzz { seconds, targets } => fuzz::campaign(seconds, &targets),
        Task::Mutants { in_diff, files } => mutants::run(in_diff.as_deref(), &files),
        Task::Peers { names } => peers::run(&names),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
