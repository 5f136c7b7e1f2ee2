//! `distroless-guard run`: the operator in a cluster. Every replica serves the
//! admission webhook; the leader (a Lease) also writes policy statuses,
//! events and webhook certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use clap::Args;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use tracing::{error, info};

use crate::controller::certs::{self, CertConfig};
use crate::controller::leader::{self, LeaseConfig};
use crate::controller::{self, Auditor, ClusterView};
use crate::webhook::{self, Admission, AppState, LogFormat};

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Kubeconfig file; without it, the in-cluster configuration (or $KUBECONFIG).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace the operator runs in (its Lease and certificate Secret live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "distroless-guard")]
    pub namespace: String,
    /// This replica's identity for leader election.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The Service in front of the webhook (certificates name `<service>.<namespace>.svc`).
    #[arg(long, env = "DISTROLESS_GUARD_SERVICE", default_value = "distroless-guard-webhook")]
    pub service_name: String,
    /// Address of the HTTPS webhook.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of plain-HTTP /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Lease used for leader election.
    #[arg(long, default_value = "distroless-guard-leader")]
    pub lease_name: String,
    /// Secret holding the self-managed CA and serving certificate.
    #[arg(long, default_value = "distroless-guard-webhook-tls")]
    pub cert_secret: String,
    /// ValidatingWebhookConfiguration whose caBundle is kept current.
    #[arg(long, default_value = "distroless-guard")]
    pub validating_webhook: String,
    /// MutatingWebhookConfiguration whose caBundle is kept current.
    #[arg(long, default_value = "distroless-guard")]
    pub mutating_webhook: String,
    /// Bring your own certificate (cert-manager): nothing is generated or patched.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How often certificate files or the Secret are checked, in seconds.
    #[arg(long, default_value_t = 10)]
    pub cert_check_seconds: u64,
    /// Lease duration in seconds (leadership moves when the leader stops renewing).
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    #[arg(long, value_enum, default_value_t = LogFormat::Json, env = "DISTROLESS_GUARD_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter: `error`, `warn`, `info`, `debug`, or per module (`distroless_guard=debug`).
    #[arg(long, env = "DISTROLESS_GUARD_LOG_LEVEL")]
    pub log_level: Option<String>,
    #[command(flatten)]
    pub images: super::ImageArgs,
}

/// Everything `run` needs to know is missing before it starts.
async fn preflight(client: &kube::Client) -> Result<(), String> {
    if client
        .list_api_group_resources("distrolessguard.dev/v1alpha1")
        .await
        .is_err()
    {
        return Err("the DistrolessPolicy CRD is not installed; install it with: \
                    distroless-guard crd | kubectl apply -f -   (or kubectl apply -f crds/)"
            .into());
    }
    let mut resources: Vec<(ApiResource, &str)> = crate::policy::WorkloadKind::ALL
        .iter()
        .map(|k| (controller::api_resource(*k), "list/watch"))
        .collect();
    resources.push((
        ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
        "list/watch",
    ));
    for (ar, verbs) in resources {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err(format!(
                    "no RBAC permission to {verbs} {} ({}): {}",
                    ar.plural, ar.api_version, e.message
                ));
            }
            Err(e) => return Err(format!("cannot list {}: {e}", ar.plural)),
        }
    }
    Ok(())
}

async fn client_for(args: &RunArgs) -> Result<kube::Client, String> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no cluster configuration: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot make a client: {e}"))
}

/// A running operator (its tasks live on the current runtime).
pub struct Running {
    pub webhook_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub state: Arc<AppState>,
    pub view: Arc<ClusterView>,
    pub leading: tokio::sync::watch::Receiver<bool>,
    webhook: webhook::RunningWebhook,
    health_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops serving: readiness off, open requests finish, listeners close.
    pub async fn shutdown(self) {
        self.state.set_ready(false);
        self.webhook.shutdown().await;
        self.health_task.abort();
    }
}

/// Runs the operator until SIGTERM.
pub async fn serve(args: RunArgs) -> Result<(), String> {
    let running = start(args).await?;
    webhook::terminated().await;
    info!("termination signal received");
    running.shutdown().await;
    Ok(())
}

/// Starts everything: watches, leader election, certificates, webhook, audit, health.
pub async fn start(args: RunArgs) -> Result<Running, String> {
    let client = client_for(&args).await?;
    preflight(&client).await?;
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("distroless-guard-{}", std::process::id()));

    let view = Arc::new(ClusterView::default());
    let mut admission = Admission::new(crate::policy::PolicySet::default(), view.clone()).with_owners(view.clone());
    if let Some(inspector) = args.images.inspector()? {
        let secrets = Arc::new(controller::pull_secrets::SecretPullSecrets::new(client.clone()));
        admission = admission.with_inspector(inspector).with_pull_secrets(secrets);
    }
    let state = AppState::new(admission);
    let sink_state = state.clone();
    controller::start_watches(client.clone(), view.clone(), move |set| {
        info!(policies = set.len(), "policies loaded");
        sink_state.admission.set_policies(set);
    });

    let lease = LeaseConfig {
        duration: Duration::from_secs(args.lease_seconds.max(2)),
        retry: Duration::from_secs((args.lease_seconds / 5).max(1)),
        ..LeaseConfig::new(&args.namespace, &args.lease_name, &identity)
    };
    let (leading, _lease_task) = leader::spawn(client.clone(), lease);
    let leading_out = leading.clone();
    state.metrics.track_leader(leading.clone());

    let check = Duration::from_secs(args.cert_check_seconds.max(1));
    let certs = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Arc::new(webhook::tls::ReloadingCert::load(cert, key).map_err(|e| e.to_string())?),
        _ => {
            let config = CertConfig {
                namespace: args.namespace.clone(),
                secret: args.cert_secret.clone(),
                service: args.service_name.clone(),
                validating_webhook: Some(args.validating_webhook.clone()),
                mutating_webhook: Some(args.mutating_webhook.clone()),
                validity: Duration::from_secs(90 * 24 * 3600),
                rotate_before: Duration::from_secs(30 * 24 * 3600),
                interval: check,
            };
            certs::run(client.clone(), config, leading.clone()).await?
        }
    };
    let running = webhook::start_with_certs(args.listen, certs, check, Duration::from_secs(10), state.clone()).await?;

    let mut auditor = Auditor::new(client.clone(), view.clone(), leading, &identity);
    let audit_metrics = state.clone();
    auditor.on_pass = Some(Box::new(move |ok| audit_metrics.metrics.audit_pass(ok)));
    let gauges = state.clone();
    auditor.on_summary = Some(Box::new(move |policy, summary| {
        gauges.metrics.audit_summary(policy, summary)
    }));
    tokio::spawn(auditor.run());

    let ready_state = state.clone();
    let ready_view = view.clone();
    tokio::spawn(async move {
        while !ready_view.synced() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ready_state.set_ready(true);
        info!("caches synced; ready");
    });

    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get({
                let s = state.clone();
                move || async move {
                    if s.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get({
                let s = state.clone();
                move || async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        s.metrics.encode(),
                    )
                }
            }),
        );
    let listener = webhook::server::bind(args.metrics_listen)
        .await
        .map_err(|e| e.to_string())?;
    let health_addr = listener.local_addr().map_err(|e| e.to_string())?;
    info!(addr = %health_addr, "health and metrics serving HTTP");
    let health_task = tokio::spawn(async move {
        let _ = axum::serve(listener, health).await;
    });
    Ok(Running {
        webhook_addr: running.local_addr,
        health_addr,
        state,
        view,
        leading: leading_out,
        webhook: running,
        health_task,
    })
}

/// `distroless-guard run`.
pub fn main(args: RunArgs) -> ExitCode {
    webhook::init_logging_at(args.log_format, args.log_level.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "cannot run");
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
