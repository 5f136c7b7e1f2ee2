//! `distroless-guard inspect IMAGE`: read an image from its registry and say
//! whether it is distroless, with evidence.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::{OutputFormat, RegistryArgs};
use crate::image::{ImageReport, Inspector, Platform};

#[derive(Args, Debug)]
pub(super) struct InspectArgs {
    /// Image reference (`nginx`, `registry:5000/team/app:1.2`, `app@sha256:...`).
    image: String,
    /// Platform of a multi-platform image, `os/arch[/variant]`, or `all`.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
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

/// Whether the image (every platform judged) is distroless.
pub(super) fn run(args: &InspectArgs) -> anyhow::Result<bool> {
    run_with(args, false)
}

/// As [`run`]; with `kubelet`, also what the kubelet makes of the user under
/// `runAsNonRoot`, and which `:nonroot` / `:debug-nonroot` siblings exist
/// (`kubectl distroless inspect`).
pub(super) fn run_with(args: &InspectArgs, kubelet: bool) -> anyhow::Result<bool> {
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds, not {}", args.timeout);
    }
    let options: Platform = args.platform.parse()?;
    let config = args.registry.inspector_config()?;
    let runtime = crate::telemetry::runtime().context("cannot start the async runtime")?;
    let deadline = Duration::from_secs_f64(args.timeout);
    let inspector = Inspector::new(config)?;
    let result = runtime.block_on(async {
        let reports = inspector.inspect(&args.image, &options, Some(deadline)).await?;
        let mut siblings = Vec::new();
        if kubelet {
            for sibling in crate::kubectl::sibling_tags(&args.image) {
                let found = inspector.digest_of(&sibling, deadline).await.ok();
                siblings.push((sibling, found));
            }
        }
        Ok::<_, crate::image::ImageError>((reports, siblings))
    });
    // Do not wait for background work (a registry that hangs) on the way out.
    runtime.shutdown_background();
    let (reports, siblings) = result?;
    let plain: Vec<&ImageReport> = reports.iter().map(|r| r.as_ref()).collect();
    match args.output {
        OutputFormat::Json if kubelet => {
            let doc = serde_json::json!({
                "images": plain,
                "underRunAsNonRoot": plain.first().map(|r| crate::kubectl::kubelet_verdict(r)),
                "siblings": siblings.iter().map(|(tag, digest)| serde_json::json!({"image": tag, "digest": digest})).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Json => {
            let text = if plain.len() == 1 {
                serde_json::to_string_pretty(plain[0])
            } else {
                serde_json::to_string_pretty(&plain)
            };
            println!("{}", text?);
        }
        OutputFormat::Text => {
            reports.iter().for_each(|r| write_text(r));
            if kubelet {
                if let Some(r) = plain.first() {
                    println!("  under runAsNonRoot: {}", crate::kubectl::kubelet_verdict(r));
                }
                for (tag, digest) in &siblings {
                    match digest {
                        Some(d) => println!("  sibling:   {tag} exists ({d})"),
                        None => println!("  sibling:   {tag} not found"),
                    }
                }
            }
        }
    }
    Ok(reports.iter().all(|r| r.distroless))
}
