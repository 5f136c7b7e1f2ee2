//! The command line of the `distroless-guard` binary: clap arguments, output
//! and exit codes. Nothing else in the crate imports this module, and no clap
//! type leaves it.

mod check;
mod inspect;
mod inventory;
mod plugin;
mod run;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::image::InspectorConfig;
use crate::image::credentials::Credentials;
use crate::telemetry::LogFormat;

#[derive(Parser, Debug)]
#[command(
    name = "distroless-guard",
    version,
    about = "Make distroless, non-root workloads the default in Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check manifests offline with the admission engine (exit 0 allowed, 1 denied, 2 error).
    Check(check::CheckArgs),
    /// Read an image from its registry: shells, package managers, user, with evidence
    /// (exit 0 distroless, 1 not distroless, 2 error).
    Inspect(inspect::InspectArgs),
    /// The migration inventory of manifests: per workload, its images (distroless or
    /// not, and why), what blocks a switch, the next step (exit 0 when all are done).
    Inventory(inventory::InventoryArgs),
    /// Serve the admission webhook over HTTPS, with policies from files.
    Webhook(webhook::WebhookArgs),
    /// Run in a cluster: the webhook on every replica, the audit controller and
    /// certificates on the leader.
    Run(Box<run::RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD).
    Crd(CrdArgs),
}

#[derive(Args, Debug)]
struct CrdArgs {
    /// Write each CRD to `<dir>/<group>_<plural>.yaml` instead of printing them;
    /// repeatable.
    #[arg(long = "out-dir", value_name = "DIR")]
    out_dirs: Vec<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

/// How to reach registries: shared by every command that reads images.
#[derive(Args, Debug, Clone)]
struct RegistryArgs {
    /// Registry (`host:port`) spoken to over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Docker config with registry credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json when present).
    #[arg(long)]
    docker_config: Option<PathBuf>,
    /// How long a tag's digest is trusted before the registry is asked again, in seconds.
    #[arg(long, default_value_t = 30)]
    image_tag_ttl_seconds: u64,
}

impl RegistryArgs {
    /// The inspector configuration these flags describe.
    fn inspector_config(&self) -> anyhow::Result<InspectorConfig> {
        Ok(InspectorConfig {
            insecure_registries: self.insecure_registries.clone(),
            credentials: docker_credentials(self.docker_config.as_ref())?,
            tag_ttl: std::time::Duration::from_secs(self.image_tag_ttl_seconds),
            ..Default::default()
        })
    }
}

/// Image inspection in `check`, `webhook` and `run`: off unless asked.
#[derive(Args, Debug, Clone)]
struct ImageArgs {
    /// Read every image from its registry and apply the image rules
    /// (image-has-shell, image-has-package-manager, image-root-user, image-unverified).
    #[arg(long)]
    inspect_images: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

impl ImageArgs {
    /// The inspector configuration, `None` without `--inspect-images`.
    fn inspector_config(&self) -> anyhow::Result<Option<InspectorConfig>> {
        self.inspect_images
            .then(|| self.registry.inspector_config())
            .transpose()
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

/// What one client may take of the webhook server (`webhook` and `run`).
#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// Seconds a client may take for the TLS handshake, for a request's headers
    /// (also how long a kept-alive HTTP/1 connection may sit idle), and for its body.
    #[arg(long, default_value_t = 10)]
    client_timeout_seconds: u64,
    /// Open connections to the webhook at once; past it, new ones wait.
    #[arg(long, default_value_t = 2048)]
    max_connections: usize,
}

impl ServerArgs {
    fn limits(&self) -> crate::webhook::server::ServerLimits {
        let t = std::time::Duration::from_secs(self.client_timeout_seconds.max(1));
        crate::webhook::server::ServerLimits {
            handshake: t,
            header_read: t,
            body_read: t,
            max_connections: self.max_connections.max(1),
            ..Default::default()
        }
    }
}

/// Logging flags shared by the long-running commands.
#[derive(Args, Debug, Clone)]
struct LogArgs {
    /// `json` (in a cluster) or `text`.
    #[arg(long, value_enum, env = "DISTROLESS_GUARD_LOG_FORMAT")]
    log_format: Option<LogFormatArg>,
    /// Log filter: `error`, `warn`, `info`, `debug`, or per module (`distroless_guard=debug`).
    #[arg(long, env = "DISTROLESS_GUARD_LOG_LEVEL")]
    log_level: Option<String>,
}

impl LogArgs {
    fn init(&self, default: LogFormat) {
        let format = match self.log_format {
            Some(LogFormatArg::Text) => LogFormat::Text,
            Some(LogFormatArg::Json) => LogFormat::Json,
            None => default,
        };
        crate::telemetry::init_logging(format, self.log_level.as_deref());
    }
}

/// Credentials from an explicit docker config, or the default location when it exists.
fn docker_credentials(explicit: Option<&PathBuf>) -> anyhow::Result<Credentials> {
    let path = match explicit {
        Some(p) => p.clone(),
        None => {
            let dir = std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
            match dir.map(|d| d.join("config.json")).filter(|p| p.exists()) {
                Some(p) => p,
                None => return Ok(Credentials::default()),
            }
        }
    };
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    Credentials::from_docker_config(&bytes).with_context(|| path.display().to_string())
}

/// Prints the CRDs this operator owns, as one multi-document YAML stream, or
/// writes one file per CRD into each directory given.
fn crd(args: &CrdArgs) -> anyhow::Result<()> {
    if args.out_dirs.is_empty() {
        print!("{}", crate::api::crd_yaml()?);
        return Ok(());
    }
    let crds = crate::api::crds()?;
    for dir in &args.out_dirs {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        for (file, yaml) in &crds {
            let path = dir.join(file);
            std::fs::write(&path, yaml).with_context(|| path.display().to_string())?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// `Ok(true)`: exit 0; `Ok(false)`: exit 1 (something denied, not distroless);
/// `Err`: exit 2 with the error and its causes on one line.
fn exit(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// For a command whose output may go to a reader that stops early
/// (`inspect IMAGE | head`): the default action of SIGPIPE, so the process
/// ends quietly as `cat` would, instead of panicking on "Broken pipe". Not
/// for the long-running servers, whose logs must never end them.
#[allow(unsafe_code)] // libc::signal: see SAFETY below
fn end_quietly_when_the_reader_goes() {
    #[cfg(unix)]
    // SAFETY: called once at start, before any thread exists; restoring a
    // signal's default disposition has no other effect on the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `kubectl-distroless`, the kubectl plugin.
pub fn plugin_main() -> ExitCode {
    end_quietly_when_the_reader_goes();
    plugin::main()
}

/// `kubectl_complete-distroless`, its completion for kubectl.
pub fn plugin_complete_main() -> ExitCode {
    plugin::complete_main()
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Webhook(_) | Command::Run(_)) {
        end_quietly_when_the_reader_goes();
    }
    match cli.command {
        Command::Check(args) => exit(check::run(&args)),
        Command::Inspect(args) => exit(inspect::run(&args)),
        Command::Inventory(args) => exit(inventory::run(&args)),
        Command::Webhook(args) => webhook::run(args),
        Command::Run(args) => run::run(*args),
        Command::Crd(args) => exit(crd(&args).map(|()| true)),
    }
}
