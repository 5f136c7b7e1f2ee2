//! `distroless-guard inspect IMAGE`: read an image from its registry and say
//! whether it is distroless, with evidence.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::OutputFormat;
use crate::image::credentials::Credentials;
use crate::image::{ImageReport, InspectOptions, Inspector, InspectorConfig};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Image reference (`nginx`, `registry:5000/team/app:1.2`, `app@sha256:...`).
    pub image: String,
    /// Platform of a multi-platform image, `os/arch[/variant]`, or `all`.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Registry (`host:port`) spoken to over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Docker config with registry credentials (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json when present).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Credentials from an explicit docker config, or the default location when it exists.
pub fn docker_credentials(explicit: Option<&PathBuf>) -> Result<Credentials, String> {
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
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Credentials::from_docker_config(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn platform_option(platform: &str) -> InspectOptions {
    if platform == "all" {
        InspectOptions::AllPlatforms
    } else {
        InspectOptions::Platform(platform.to_string())
    }
}

fn write_text(report: &ImageReport) {
    let verdict = if report.distroless {
        "distroless"
    } else {
        "NOT distroless"
    };
    println!("{} ({}, {})", report.image, report.platform, report.digest);
    println!("  verdict:   {verdict}");
    let uid = report.uid.map_or_else(|| "unknown".to_string(), |u| u.to_string());
    let user = if report.user.is_empty() {
        "(unset: root)".to_string()
    } else {
        report.user.clone()
    };
    println!(
        "  user:      {user}, uid {uid}{}",
        if report.runs_as_root() { " (root)" } else { "" }
    );
    let list = |v: &[String]| {
        if v.is_empty() { "none".to_string() } else { v.join(", ") }
    };
    println!("  shells:    {}", list(&report.shells));
    println!("  package managers: {}", list(&report.package_managers));
    println!("  package databases: {}", list(&report.package_databases));
    if let Some(base) = &report.base_image {
        println!("  base image: {base}");
    }
    for e in &report.evidence {
        println!("  evidence:  {} (layer {})", e.path, e.layer);
    }
}

pub fn run(args: &InspectArgs) -> Result<bool, String> {
    let credentials = docker_credentials(args.docker_config.as_ref())?;
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        return Err(format!(
            "--timeout must be a positive number of seconds, not {}",
            args.timeout
        ));
    }
    let inspector = Inspector::new(InspectorConfig {
        insecure_registries: args.insecure_registries.clone(),
        credentials,
        ..InspectorConfig::default()
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let options = platform_option(&args.platform);
    let deadline = Duration::from_secs_f64(args.timeout);
    let reports = runtime
        .block_on(inspector.inspect(&args.image, &options, Some(deadline)))
        .map_err(|e| e.to_string())?;
    // Do not wait for background work (a registry that hangs) on the way out.
    runtime.shutdown_background();
    match args.output {
        OutputFormat::Json => {
            let plain: Vec<&ImageReport> = reports.iter().map(|r| r.as_ref()).collect();
            let text = if plain.len() == 1 {
                serde_json::to_string_pretty(plain[0])
            } else {
                serde_json::to_string_pretty(&plain)
            };
            println!("{}", text.map_err(|e| e.to_string())?);
        }
        OutputFormat::Text => reports.iter().for_each(|r| write_text(r)),
    }
    Ok(reports.iter().all(|r| r.distroless))
}
