//! `distroless-guard webhook`: the admission webhook without a cluster, with
//! policies from files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tracing::{error, info};

use super::{ImageArgs, LogArgs};
use crate::admission::{Admission, NameOnly};
use crate::telemetry::LogFormat;
use crate::webhook::{self, ServeOptions};

#[derive(Args, Debug, Clone)]
pub(super) struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443", env = "DISTROLESS_GUARD_LISTEN")]
    listen: SocketAddr,
    /// PEM certificate chain; re-read when it changes.
    #[arg(long, env = "DISTROLESS_GUARD_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key; re-read when it changes.
    #[arg(long, env = "DISTROLESS_GUARD_TLS_KEY")]
    tls_key: PathBuf,
    /// DistrolessPolicy manifests; without any, the built-in default policy.
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, default_value_t = 10)]
    tls_reload_seconds: u64,
    /// How long open requests may take to finish after SIGTERM, in seconds.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_seconds: u64,
    #[command(flatten)]
    server: super::ServerArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    images: ImageArgs,
}

async fn serve(args: WebhookArgs) -> anyhow::Result<()> {
    let policies = crate::manifest::load_policies(&args.policies).context("cannot load policies")?;
    info!(policies = policies.len(), "policies loaded");
    let mut admission = Admission::new(policies, Arc::new(NameOnly));
    if let Some(config) = args
        .images
        .inspector_config()
        .context("cannot set up image inspection")?
    {
        admission = admission.with_inspector(crate::image::Inspector::new(config)?);
    }
    let options = ServeOptions {
        listen: args.listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_reload: Duration::from_secs(args.tls_reload_seconds.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        limits: args.server.limits(),
    };
    let running = webhook::start(options, admission)
        .await
        .context("cannot start the webhook")?;
    running.state.set_ready(true);
    crate::telemetry::terminated().await;
    info!("termination signal received");
    running.state.set_ready(false);
    running.shutdown().await;
    Ok(())
}

pub(super) fn run(args: WebhookArgs) -> ExitCode {
    args.log.init(LogFormat::Text);
    let runtime = match crate::telemetry::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "the webhook stopped");
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
