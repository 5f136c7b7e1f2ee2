//! `distroless-guard inventory` (manifests, offline) and the output formats
//! it shares with `kubectl distroless inventory`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::ImageArgs;
use crate::inventory::Inventory;
use crate::manifest;
use crate::policy::Workload;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum InventoryFormat {
    Table,
    Json,
    Html,
}

#[derive(Args, Debug)]
pub(super) struct InventoryArgs {
    /// Files or directories (searched recursively for .yaml, .yml, .json); `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// DistrolessPolicy manifests; without any, the built-in default policy.
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = InventoryFormat::Table)]
    output: InventoryFormat,
    #[command(flatten)]
    images: ImageArgs,
}

/// Prints an inventory in a format.
pub(super) fn print(inv: &Inventory, format: InventoryFormat) -> anyhow::Result<()> {
    match format {
        InventoryFormat::Table => print!("{}", crate::inventory::table(inv)),
        InventoryFormat::Json => println!("{}", serde_json::to_string_pretty(inv)?),
        InventoryFormat::Html => print!("{}", crate::inventory::html(inv)),
    }
    Ok(())
}

pub(super) fn run(args: &InventoryArgs) -> anyhow::Result<bool> {
    let policies = manifest::load_policies(&args.policies)?;
    let loaded = manifest::read(&args.files)?;
    let docs = loaded.docs;
    let mut problems = loaded.problems;
    let mut workloads = Vec::new();
    for d in &docs {
        match Workload::from_value(&d.value) {
            Ok(Some(w)) => workloads.push(w),
            Ok(None) => {}
            Err(e) => problems.push(manifest::Problem::new(
                &d.source,
                Some(d.line),
                manifest::ProblemKind::Invalid,
                e.to_string(),
            )),
        }
    }
    super::check::report_unreadable(&problems, false)?;
    let namespaces = crate::manifest::verdicts::namespace_labels(&docs);
    let facts = match args.images.inspector_config()? {
        Some(config) => {
            let runtime = crate::telemetry::runtime().context("cannot start the async runtime")?;
            let inspector = crate::image::Inspector::new(config)?;
            let facts =
                runtime.block_on(async { crate::kubectl::inventory::read_images(&inspector, &workloads).await });
            runtime.shutdown_background();
            Some(facts)
        }
        None => None,
    };
    let source: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
    let inv = crate::inventory::build(
        &format!("manifests: {}", source.join(", ")),
        &workloads,
        &namespaces,
        &policies,
        facts.as_ref(),
        jiff::Timestamp::now(),
    );
    print(&inv, args.output)?;
    Ok(inv.totals.done == inv.totals.workloads)
}
