//! The plugin's command line as clap reads it: kubectl's global flags and
//! each verb's arguments.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use super::super::{RegistryArgs, check, inspect, inventory};
use crate::kubectl::{Connection, debug};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-distroless",
    bin_name = "kubectl distroless",
    version,
    about = "Debug pods that have no shell, explain denials, inspect images and drive DistrolessRollouts"
)]
pub(super) struct Plugin {
    #[command(flatten)]
    pub(super) global: Global,
    #[command(subcommand)]
    pub(super) command: Verb,
}

#[derive(Args, Debug, Clone)]
pub(super) struct Global {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub(super) namespace: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub(super) context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    pub(super) kubeconfig: Option<PathBuf>,
}

impl Global {
    pub(super) fn connection(&self) -> Connection {
        Connection {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }

    /// kubectl's own flags for the same cluster, for `kubectl attach`.
    pub(super) fn kubectl_args(&self) -> Vec<String> {
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
pub(super) enum Verb {
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
pub(super) enum ProfileArg {
    Restricted,
    Netadmin,
    Sysadmin,
}

#[derive(Args, Debug)]
pub(super) struct DebugArgs {
    /// The pod to debug.
    pub(super) pod: String,
    /// The container whose processes and user to share (default: the first).
    #[arg(short = 'c', long)]
    pub(super) container: Option<String>,
    /// The debug image (its user does not matter: the target's is set).
    #[arg(long, default_value = debug::DEFAULT_IMAGE)]
    pub(super) image: String,
    /// restricted (default) works in any namespace; netadmin and sysadmin need "privileged".
    #[arg(long, value_enum, default_value_t = ProfileArg::Restricted)]
    pub(super) profile: ProfileArg,
    /// Mount the target's volumes (read-only).
    #[arg(long)]
    pub(super) volumes_from_target: bool,
    /// Copy the target's env and envFrom.
    #[arg(long)]
    pub(super) env_from_target: bool,
    /// Add the container and print its name; do not attach.
    #[arg(long)]
    pub(super) no_attach: bool,
    /// Let the API server decide even where the namespace's Pod Security level forbids the profile.
    #[arg(long)]
    pub(super) force: bool,
    /// Read the target's image from its registry for its USER when no runAsUser is set.
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum DataFormat {
    Text,
    Json,
    Yaml,
}

#[derive(Args, Debug)]
pub(super) struct ExplainArgs {
    /// KIND/NAME: pod, deployment, statefulset, daemonset, job, cronjob or replicaset.
    pub(super) target: String,
    #[arg(short = 'o', long, value_enum, default_value_t = DataFormat::Text)]
    pub(super) output: DataFormat,
}

#[derive(Args, Debug)]
pub(super) struct PluginInventoryArgs {
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub(super) all_namespaces: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = inventory::InventoryFormat::Table)]
    pub(super) output: inventory::InventoryFormat,
    /// Do not read images from their registries (spec rules only).
    #[arg(long)]
    pub(super) no_images: bool,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

#[derive(Subcommand, Debug)]
pub(super) enum RolloutVerb {
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
pub(super) fn duration(text: &str) -> anyhow::Result<Duration> {
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
