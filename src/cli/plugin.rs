//! `kubectl distroless`: the kubectl plugin's command line (the binary
//! `kubectl-distroless`, found by kubectl on the PATH). kubectl's flags and
//! conventions: `-n/--namespace`, `-A`, `--context`, `--kubeconfig`,
//! `-o json|yaml` where the output is data, exit 1 on failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;

use super::{RegistryArgs, check, inspect, inventory};
use crate::kubectl::{Connection, Error, debug, explain, rollout};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-distroless",
    bin_name = "kubectl distroless",
    version,
    about = "Debug pods that have no shell, explain denials, inspect images and drive DistrolessRollouts"
)]
struct Plugin {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Args, Debug, Clone)]
struct Global {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
}

impl Global {
    fn connection(&self) -> Connection {
        Connection {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }

    /// kubectl's own flags for the same cluster, for `kubectl attach`.
    fn kubectl_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(k) = &self.kubeconfig {
            out.push(format!("--kubeconfig={}", k.display()));
        }
        if let Some(c) = &self.context {
            out.push(format!("--context={c}"));
        }
        out
    }
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Add a debug container to a pod that has no shell, as the target's own user,
    /// compliant with the restricted Pod Security Standard.
    Debug(DebugArgs),
    /// Why a workload's pods are refused or failing: rule, cause, fix.
    Explain(ExplainArgs),
    /// Read an image from its registry: distroless?, its user under runAsNonRoot,
    /// and its :nonroot / :debug-nonroot siblings.
    Inspect(inspect::InspectArgs),
    /// The migration inventory of what runs: images, why they are not distroless,
    /// what blocks a switch, the next step.
    Inventory(PluginInventoryArgs),
    /// Drive a DistrolessRollout.
    Rollout {
        #[command(subcommand)]
        verb: RolloutVerb,
    },
    /// Check manifests offline (the same as `distroless-guard check`).
    Check(check::CheckArgs),
    /// Shell completion for kubectl (called by `kubectl_complete-distroless`).
    #[command(name = "__complete", hide = true)]
    Complete {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ProfileArg {
    Restricted,
    Netadmin,
    Sysadmin,
}

#[derive(Args, Debug)]
struct DebugArgs {
    /// The pod to debug.
    pod: String,
    /// The container whose processes and user to share (default: the first).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// The debug image (its user does not matter: the target's is set).
    #[arg(long, default_value = debug::DEFAULT_IMAGE)]
    image: String,
    /// restricted (default) works in any namespace; netadmin and sysadmin need "privileged".
    #[arg(long, value_enum, default_value_t = ProfileArg::Restricted)]
    profile: ProfileArg,
    /// Mount the target's volumes (read-only).
    #[arg(long)]
    volumes_from_target: bool,
    /// Copy the target's env and envFrom.
    #[arg(long)]
    env_from_target: bool,
    /// Add the container and print its name; do not attach.
    #[arg(long)]
    no_attach: bool,
    /// Let the API server decide even where the namespace's Pod Security level forbids the profile.
    #[arg(long)]
    force: bool,
    /// Read the target's image from its registry for its USER when no runAsUser is set.
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum DataFormat {
    Text,
    Json,
    Yaml,
}

#[derive(Args, Debug)]
struct ExplainArgs {
    /// KIND/NAME: pod, deployment, statefulset, daemonset, job, cronjob or replicaset.
    target: String,
    #[arg(short = 'o', long, value_enum, default_value_t = DataFormat::Text)]
    output: DataFormat,
}

#[derive(Args, Debug)]
struct PluginInventoryArgs {
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = inventory::InventoryFormat::Table)]
    output: inventory::InventoryFormat,
    /// Do not read images from their registries (spec rules only).
    #[arg(long)]
    no_images: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Subcommand, Debug)]
enum RolloutVerb {
    /// List rollouts, or describe one.
    Get {
        name: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Print again on every change.
        #[arg(short = 'w', long)]
        watch: bool,
        #[arg(short = 'o', long, value_enum, default_value_t = DataFormat::Text)]
        output: DataFormat,
    },
    /// Wait until the rollout succeeds (exit 0), rolls back (exit 1), pauses (exit 0) or times out (exit 2).
    Status {
        name: String,
        /// Seconds, or with a unit: 90s, 10m, 1h.
        #[arg(long, default_value = "10m", value_parser = duration)]
        timeout: Duration,
    },
    /// End the current step's pause or bake; --full goes to 100% at once.
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
    },
    /// Hold the rollout at its current step.
    Pause { name: String },
    /// Release a paused rollout.
    Resume { name: String },
    /// Roll back to the standard images now.
    Abort { name: String },
    /// Start a new attempt after a rollback.
    Retry { name: String },
    /// Drop the rollout and keep the standard images (aborts first if needed).
    Undo {
        name: String,
        /// Seconds, or with a unit: 90s, 10m, 1h.
        #[arg(long, default_value = "2m", value_parser = duration)]
        timeout: Duration,
    },
}

/// A timeout: seconds, or a duration jiff reads (`90s`, `10m`, `1h30m`,
/// `2 hours`, ISO 8601 `PT5M`); read by clap, so a bad one fails with the
/// usage.
fn duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let seconds = match t.parse::<f64>() {
        Ok(seconds) => seconds,
        Err(_) => t
            .parse::<jiff::SignedDuration>()
            .with_context(|| format!("{text:?} is not a duration (90s, 10m, 1h30m)"))?
            .as_secs_f64(),
    };
    anyhow::ensure!(
        seconds > 0.0 && seconds.is_finite(),
        "{text:?}: the duration must be positive"
    );
    Ok(Duration::from_secs_f64(seconds))
}

fn print_data<T: serde::Serialize>(value: &T, format: DataFormat) -> anyhow::Result<()> {
    match format {
        DataFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        DataFormat::Yaml => print!("{}", serde_saphyr::to_string(value)?),
        DataFormat::Text => unreachable!("text is printed by the caller"),
    }
    Ok(())
}

/// An error of ours with the server it concerned, when it is about reaching it.
fn with_server(e: Error, server: &str) -> anyhow::Error {
    match e {
        Error::Unreachable(m) => {
            anyhow::anyhow!("{m} (server {server}); is the cluster up and the kubeconfig current?")
        }
        other => anyhow::Error::new(other),
    }
}

async fn debug_cmd(global: &Global, args: &DebugArgs) -> anyhow::Result<bool> {
    let (client, ns, server) = global.connection().connect().await?;
    let req = debug::Request {
        pod: args.pod.clone(),
        container: args.container.clone(),
        image: args.image.clone(),
        profile: match args.profile {
            ProfileArg::Restricted => debug::Profile::Restricted,
            ProfileArg::Netadmin => debug::Profile::Netadmin,
            ProfileArg::Sysadmin => debug::Profile::Sysadmin,
        },
        volumes_from_target: args.volumes_from_target,
        env_from_target: args.env_from_target,
        force: args.force,
    };
    let inspector = crate::image::Inspector::new(args.registry.inspector_config()?)?;
    let done = debug::run(&client, &ns, &req, Some(&inspector))
        .await
        .map_err(|e| with_server(e, &server))?;
    if done.reused {
        eprintln!(
            "reusing the running debug container {} (same image, profile and options)",
            done.container
        );
    }
    for line in &done.guide {
        eprintln!("{line}");
    }
    let mut attach = vec!["attach".to_string(), "-it".into(), "-n".into(), ns.clone()];
    attach.extend(global.kubectl_args());
    attach.extend([args.pod.clone(), "-c".into(), done.container.clone()]);
    if args.no_attach {
        println!("{}", done.container);
        eprintln!("attach with: kubectl {}", attach.join(" "));
        return Ok(true);
    }
    let status = std::process::Command::new("kubectl")
        .args(&attach)
        .status()
        .context("cannot run kubectl attach (is kubectl on the PATH?)")?;
    Ok(status.success())
}

async fn explain_cmd(global: &Global, args: &ExplainArgs) -> anyhow::Result<bool> {
    let (kind, name) = explain::parse_target(&args.target)?;
    let (client, ns, server) = global.connection().connect().await?;
    let x = explain::explain(&client, &ns, &kind, &name)
        .await
        .map_err(|e| with_server(e, &server))?;
    match args.output {
        DataFormat::Text => explain::render(&x).iter().for_each(|l| println!("{l}")),
        f => print_data(&x, f)?,
    }
    Ok(true)
}

async fn inventory_cmd(global: &Global, args: &PluginInventoryArgs) -> anyhow::Result<bool> {
    let (client, ns, server) = global.connection().connect().await?;
    let scope = (!args.all_namespaces).then_some(ns.as_str());
    let inspector = if args.no_images {
        None
    } else {
        Some(crate::image::Inspector::new(args.registry.inspector_config()?)?)
    };
    let source = match scope {
        Some(ns) => format!("cluster {server}, namespace {ns}"),
        None => format!("cluster {server}, every namespace"),
    };
    let inv = crate::kubectl::inventory::gather(&client, scope, &source, inspector.as_ref())
        .await
        .map_err(|e| with_server(e, &server))?;
    inventory::print(&inv, args.output)?;
    Ok(true)
}

async fn rollout_cmd(global: &Global, verb: &RolloutVerb) -> anyhow::Result<ExitCode> {
    let (client, ns, server) = global.connection().connect().await?;
    let fail = |e: Error| with_server(e, &server);
    let act = |name: &str, v: rollout::Verb, done: &str| {
        let (client, ns, name, done) = (client.clone(), ns.clone(), name.to_string(), done.to_string());
        async move {
            rollout::act(&client, &ns, &name, v).await?;
            println!("distrolessrollout.distrolessguard.dev/{name} {done}");
            Ok::<_, Error>(ExitCode::SUCCESS)
        }
    };
    Ok(match verb {
        RolloutVerb::Get {
            name: Some(name),
            watch,
            output,
            ..
        } => {
            let r = rollout::get(&client, &ns, name).await.map_err(fail)?;
            match output {
                DataFormat::Text => rollout::describe_rollout(&r).iter().for_each(|l| println!("{l}")),
                f => print_data(&r, *f)?,
            }
            if *watch {
                rollout::wait(&client, &ns, name, Duration::from_secs(u64::MAX / 4), |r| {
                    println!("{}", rollout::summary(r));
                })
                .await
                .map_err(fail)?;
            }
            ExitCode::SUCCESS
        }
        RolloutVerb::Get {
            name: None,
            all_namespaces,
            watch,
            output,
        } => {
            let scope = (!all_namespaces).then_some(ns.as_str());
            let list = rollout::list(&client, scope).await.map_err(fail)?;
            match output {
                DataFormat::Text => print_table(&list, *all_namespaces),
                f => print_data(&list, *f)?,
            }
            if *watch {
                let api: kube::Api<crate::api::DistrolessRollout> = match scope {
                    Some(ns) => kube::Api::namespaced(client.clone(), ns),
                    None => kube::Api::all(client.clone()),
                };
                use kube::runtime::{WatchStreamExt, watcher};
                let mut stream = std::pin::pin!(
                    watcher(api, watcher::Config::default())
                        .default_backoff()
                        .applied_objects()
                );
                while let Some(r) = stream.next().await {
                    if let Ok(r) = r {
                        println!("{}\t{}", kube::ResourceExt::name_any(&r), rollout::summary(&r));
                    }
                }
            }
            ExitCode::SUCCESS
        }
        RolloutVerb::Status { name, timeout } => {
            let outcome = rollout::wait(&client, &ns, name, *timeout, |r| {
                println!("{}", rollout::summary(r));
            })
            .await
            .map_err(fail)?;
            match outcome {
                rollout::Outcome::Succeeded => ExitCode::SUCCESS,
                rollout::Outcome::Paused => {
                    println!("rollout {name} is paused: `kubectl distroless rollout promote {name}` continues it");
                    ExitCode::SUCCESS
                }
                rollout::Outcome::RolledBack | rollout::Outcome::GitRevertNeeded => {
                    let r = rollout::get(&client, &ns, name).await.map_err(fail)?;
                    rollout::describe_rollout(&r).iter().for_each(|l| eprintln!("{l}"));
                    ExitCode::from(1)
                }
                rollout::Outcome::TimedOut => {
                    eprintln!("error: rollout {name} did not finish within {timeout:?}");
                    ExitCode::from(2)
                }
            }
        }
        RolloutVerb::Promote { name, full } => {
            let what = if *full { "promoted to 100%" } else { "promoted" };
            act(name, rollout::Verb::Promote { full: *full }, what)
                .await
                .map_err(fail)?
        }
        RolloutVerb::Pause { name } => act(name, rollout::Verb::Pause, "paused").await.map_err(fail)?,
        RolloutVerb::Resume { name } => act(name, rollout::Verb::Resume, "resumed").await.map_err(fail)?,
        RolloutVerb::Abort { name } => act(name, rollout::Verb::Abort, "aborted").await.map_err(fail)?,
        RolloutVerb::Retry { name } => act(name, rollout::Verb::Retry, "retried").await.map_err(fail)?,
        RolloutVerb::Undo { name, timeout } => {
            rollout::undo(&client, &ns, name, *timeout).await.map_err(fail)?;
            println!("distrolessrollout.distrolessguard.dev/{name} undone: rolled back and deleted");
            ExitCode::SUCCESS
        }
    })
}

fn print_table(list: &[crate::api::DistrolessRollout], namespaces: bool) {
    let mut rows = vec![
        vec!["NAME", "PHASE", "STEP", "WEIGHT", "EFFECTIVE", "REASON"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    if namespaces {
        rows[0].insert(0, "NAMESPACE".into());
    }
    for r in list {
        let s = r.status.clone().unwrap_or_default();
        let mut row = vec![
            kube::ResourceExt::name_any(r),
            s.phase.as_str().to_string(),
            format!(
                "{}/{}",
                (s.current_step as usize + 1).min(r.spec.steps.len()),
                r.spec.steps.len()
            ),
            format!("{}%", s.desired_weight),
            format!("{}%", s.effective_weight),
            s.failure.map(|f| f.reason.to_string()).unwrap_or_default(),
        ];
        if namespaces {
            row.insert(0, r.metadata.namespace.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    if list.is_empty() {
        eprintln!("No distrolessrollouts found.");
        return;
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("   ").trim_end());
    }
}

const VERBS: &[&str] = &["debug", "explain", "inspect", "inventory", "rollout", "check"];
const ROLLOUT_VERBS: &[&str] = &["get", "status", "promote", "pause", "resume", "abort", "retry", "undo"];
const KINDS: &[&str] = &[
    "pod/",
    "deployment/",
    "statefulset/",
    "daemonset/",
    "job/",
    "cronjob/",
    "replicaset/",
];

/// Cobra's completion protocol, which kubectl speaks with plugins: one
/// candidate per line, then `:4` (no file completion). Names come from the
/// cluster when it can be reached, and nothing breaks when it cannot.
async fn complete(global: &Global, words: &[String]) -> Vec<String> {
    let current = words.last().cloned().unwrap_or_default();
    let positional: Vec<&str> = words[..words.len().saturating_sub(1)]
        .iter()
        .map(String::as_str)
        .filter(|w| !w.starts_with('-'))
        .collect();
    let names = |ar: Option<kube::core::ApiResource>| async move {
        let Some(ar) = ar else { return Vec::new() };
        let Ok((client, ns, _)) = global.connection().connect().await else {
            return Vec::new();
        };
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(client, &ns, &ar);
        api.list_metadata(&Default::default())
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|o| o.metadata.name)
                    .collect::<Vec<String>>()
            })
            .unwrap_or_default()
    };
    let candidates: Vec<String> = match positional.as_slice() {
        [] => VERBS.iter().map(|s| s.to_string()).collect(),
        ["rollout"] => ROLLOUT_VERBS.iter().map(|s| s.to_string()).collect(),
        ["rollout", _] => {
            names(Some(kube::core::ApiResource::erase::<crate::api::DistrolessRollout>(
                &(),
            )))
            .await
        }
        ["debug"] => names(explain::api_resource("pod")).await,
        ["explain"] => match current.split_once('/') {
            Some((kind, _)) => names(explain::api_resource(kind))
                .await
                .into_iter()
                .map(|n| format!("{kind}/{n}"))
                .collect(),
            None => KINDS.iter().map(|s| s.to_string()).collect(),
        },
        _ => Vec::new(),
    };
    candidates.into_iter().filter(|c| c.starts_with(&current)).collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_seconds_units_and_compound_durations_and_refuse_the_rest() {
        let secs = |t: &str| duration(t).map(|d| d.as_secs_f64()).ok();
        assert_eq!(secs("90"), Some(90.0));
        assert_eq!(secs("90s"), Some(90.0));
        assert_eq!(secs("10m"), Some(600.0));
        assert_eq!(secs("1h30m"), Some(5400.0));
        assert_eq!(secs("2 hours"), Some(7200.0));
        assert_eq!(secs("PT5M"), Some(300.0));
        for bad in ["0", "-5s", "soon", "", "inf"] {
            assert!(duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
