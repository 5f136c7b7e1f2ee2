//! The subcommands of the `distroless-guard` binary.

pub mod check;
pub mod inspect;
pub mod manifest;
pub mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;

use crate::api::DistrolessPolicy;
use crate::policy::PolicySet;

#[derive(Parser, Debug)]
#[command(
    name = "distroless-guard",
    version,
    about = "Make distroless, non-root workloads the default in Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check manifests offline with the admission engine (exit 0 allowed, 1 denied, 2 error).
    Check(CheckArgs),
    /// Read an image from its registry: shells, package managers, user, with evidence
    /// (exit 0 distroless, 1 not distroless, 2 error).
    Inspect(inspect::InspectArgs),
    /// Serve the admission webhook over HTTPS, with policies from files.
    Webhook(crate::webhook::WebhookArgs),
    /// Run in a cluster: the webhook on every replica, the audit controller and
    /// certificates on the leader.
    Run(Box<run::RunArgs>),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Files or directories (searched recursively for .yaml, .yml, .json); `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// DistrolessPolicy manifests to apply; without any, the built-in default policy
    /// (every rule denies, UID 65532) is used.
    #[arg(long = "policy")]
    pub policies: Vec<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Print the manifests with mutation applied, as YAML, instead of a report.
    #[arg(long)]
    pub fix: bool,
    #[command(flatten)]
    pub images: ImageArgs,
}

/// Image inspection options shared by `check` and `webhook`.
#[derive(Args, Debug, Clone, Default)]
pub struct ImageArgs {
    /// Read every image from its registry and apply the image rules
    /// (image-has-shell, image-has-package-manager, image-root-user, image-unverified).
    #[arg(long)]
    pub inspect_images: bool,
    /// Registry (`host:port`) spoken to over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Docker config with registry credentials (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
    /// How long a tag's digest is trusted before the registry is asked again, in seconds.
    #[arg(long, default_value_t = 30)]
    pub image_tag_ttl_seconds: u64,
}

impl ImageArgs {
    /// The inspector these options ask for, `None` without `--inspect-images`.
    pub fn inspector(&self) -> Result<Option<std::sync::Arc<crate::image::Inspector>>, String> {
        if !self.inspect_images {
            return Ok(None);
        }
        let credentials = inspect::docker_credentials(self.docker_config.as_ref())?;
        Ok(Some(crate::image::Inspector::new(crate::image::InspectorConfig {
            insecure_registries: self.insecure_registries.clone(),
            credentials,
            tag_ttl: std::time::Duration::from_secs(self.image_tag_ttl_seconds),
            ..Default::default()
        })))
    }
}

/// Inspects what the plans name, each under its own deadline.
fn gather_images(
    inspector: &std::sync::Arc<crate::image::Inspector>,
    plans: Vec<crate::policy::InspectionPlan>,
) -> Result<crate::policy::ImageFacts, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let facts = runtime.block_on(async {
        let mut facts = crate::policy::ImageFacts::new();
        for plan in plans {
            let missing: Vec<String> = plan.images.into_iter().filter(|i| !facts.contains_key(i)).collect();
            facts.extend(inspector.gather(&missing, &plan.platform, plan.timeout, None).await);
        }
        facts
    });
    runtime.shutdown_background();
    Ok(facts)
}

/// Loads DistrolessPolicy objects from files; the built-in default when none are given.
pub fn load_policies(paths: &[PathBuf]) -> Result<PolicySet, String> {
    if paths.is_empty() {
        return Ok(PolicySet::builtin_default());
    }
    let docs = manifest::load(paths).map_err(|e| e.to_string())?;
    let policies = docs
        .iter()
        .filter(|d| d.kind() == "DistrolessPolicy")
        .map(|d| {
            serde_json::from_value::<DistrolessPolicy>(d.value.clone())
                .map_err(|e| format!("{}: not a valid DistrolessPolicy: {e}", d.location()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if policies.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(format!("no DistrolessPolicy found in {}", names.join(", ")));
    }
    PolicySet::new(&policies).map_err(|e| e.to_string())
}

fn run_check(args: &CheckArgs) -> Result<bool, String> {
    let policies = load_policies(&args.policies)?;
    let mut docs = manifest::load(&args.files).map_err(|e| e.to_string())?;
    let facts = match args.images.inspector()? {
        Some(inspector) => {
            let plans = check::inspection_plans(&docs, &policies).map_err(|e| e.to_string())?;
            Some(gather_images(&inspector, plans)?)
        }
        None => None,
    };
    let report = check::check(&mut docs, &policies, jiff::Timestamp::now(), args.fix, facts.as_ref())
        .map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    let written = if args.fix {
        check::write_fixed(&mut stdout, &docs)
    } else if args.output == OutputFormat::Json {
        serde_json::to_writer_pretty(&mut stdout, &report)
            .map_err(std::io::Error::other)
            .and_then(|()| std::io::Write::write_all(&mut stdout, b"\n"))
    } else {
        check::write_text(&mut stdout, &report)
    };
    written.map_err(|e| format!("cannot write output: {e}"))?;
    Ok(report.allowed())
}

/// Prints the CRDs this operator owns, as one multi-document YAML stream.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&DistrolessPolicy::crd()).unwrap_or_else(|e| format!("# cannot render CRD: {e}\n"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => match run_check(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Inspect(args) => match inspect::run(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Webhook(args) => crate::webhook::main(args),
        Command::Run(args) => run::main(*args),
        Command::Crd => {
            print!("{}", crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
