//! `kubectl distroless`: the kubectl plugin's command line (the binary
//! `kubectl-distroless`, found by kubectl on the PATH). kubectl's flags and
//! conventions: `-n/--namespace`, `-A`, `--context`, `--kubeconfig`,
//! `-o json|yaml` where the output is data, exit 1 on failure.
//!
//! [`args`] is the command line, [`verbs`] runs each verb, [`complete`]
//! answers kubectl's completion.

mod args;
mod complete;
mod verbs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use super::{check, inspect};
use args::{Global, Plugin, Verb};
use complete::complete;
use verbs::{debug_cmd, explain_cmd, inventory_cmd, rollout_cmd};

/// The plugin's entry point.
pub(super) fn main() -> ExitCode {
    let cli = Plugin::parse();
    if let Verb::Check(args) = &cli.command {
        return super::exit(check::run(args));
    }
    if let Verb::Inspect(args) = &cli.command {
        return super::exit(inspect::run_with(args, true));
    }
    let runtime = match crate::telemetry::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    crate::image::install_crypto_provider();
    let result = runtime.block_on(async {
        match &cli.command {
            Verb::Debug(args) => debug_cmd(&cli.global, args).await.map(code),
            Verb::Explain(args) => explain_cmd(&cli.global, args).await.map(code),
            Verb::Inventory(args) => inventory_cmd(&cli.global, args).await.map(code),
            Verb::Rollout { verb } => rollout_cmd(&cli.global, verb).await,
            Verb::Complete { words } => {
                for c in complete(&cli.global, words).await {
                    println!("{c}");
                }
                println!(":4");
                Ok(ExitCode::SUCCESS)
            }
            Verb::Check(_) | Verb::Inspect(_) => unreachable!("handled above"),
        }
    });
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn code(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// `kubectl_complete-distroless`: kubectl runs it with the words typed after
/// `kubectl distroless`, the last one partial.
pub(super) fn complete_main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Global flags typed before the verb apply to the names looked up.
    let mut global = Global {
        namespace: None,
        context: None,
        kubeconfig: None,
    };
    let mut i = 0;
    while i + 2 < args.len() {
        let value = args[i + 1].clone();
        match args[i].as_str() {
            "-n" | "--namespace" => global.namespace = Some(value),
            "--context" => global.context = Some(value),
            "--kubeconfig" => global.kubeconfig = Some(PathBuf::from(value)),
            _ => {
                i += 1;
                continue;
            }
        }
        args.drain(i..i + 2);
    }
    let Ok(runtime) = crate::telemetry::runtime() else {
        println!(":4");
        return ExitCode::SUCCESS;
    };
    crate::image::install_crypto_provider();
    let candidates = runtime.block_on(complete(&global, &args));
    runtime.shutdown_background();
    for c in candidates {
        println!("{c}");
    }
    println!(":4");
    ExitCode::SUCCESS
}
