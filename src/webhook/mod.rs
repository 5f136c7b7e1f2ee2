//! The admission webhook: HTTPS server, AdmissionReview in and out, TLS.

pub mod admission;
pub mod metrics;
pub mod review;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::{Args, ValueEnum};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub use admission::{Admission, NameOnly, NamespaceLabels, Owners};
pub use metrics::Metrics;
use review::AdmissionReview;

/// The largest AdmissionReview accepted. The API server limits an object to
/// 3 MiB and a review carries at most the object and its old version.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443", env = "DISTROLESS_GUARD_LISTEN")]
    pub listen: SocketAddr,
    /// PEM certificate chain; re-read when it changes.
    #[arg(long, env = "DISTROLESS_GUARD_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key; re-read when it changes.
    #[arg(long, env = "DISTROLESS_GUARD_TLS_KEY")]
    pub tls_key: PathBuf,
    /// DistrolessPolicy manifests; without any, the built-in default policy.
    #[arg(long = "policy")]
    pub policies: Vec<PathBuf>,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, default_value_t = 10)]
    pub tls_reload_seconds: u64,
    /// How long open requests may take to finish after SIGTERM, in seconds.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "DISTROLESS_GUARD_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub images: crate::cli::ImageArgs,
}

/// Everything the HTTP handlers share.
pub struct AppState {
    pub admission: Admission,
    pub metrics: Metrics,
    ready: AtomicBool,
}

impl AppState {
    pub fn new(admission: Admission) -> Arc<Self> {
        Arc::new(AppState {
            admission,
            metrics: Metrics::default(),
            ready: AtomicBool::new(false),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[derive(Clone, Copy)]
enum Endpoint {
    Validate,
    Mutate,
}

impl Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Endpoint::Validate => "validate",
            Endpoint::Mutate => "mutate",
        }
    }
}

async fn handle_review(state: &AppState, endpoint: Endpoint, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let name = endpoint.as_str();
    let bad = |status: StatusCode, message: String| {
        warn!(endpoint = name, %status, %message, "bad admission request");
        state.metrics.observe(name, "error", started.elapsed());
        json_error(status, message)
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return bad(rejection.status(), rejection.body_text()),
    };
    let review: AdmissionReview = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            // A review whose envelope is fine but whose object is not readable
            // is answered (denied with the reason), not rejected.
            if let Ok(header) = serde_json::from_slice::<review::ReviewHeader>(&body) {
                let response = admission::unreadable(&header.request.uid, &header.request.kind.kind, &e);
                state.metrics.observe(name, "error", started.elapsed());
                return axum::Json(response.into_review()).into_response();
            }
            return bad(StatusCode::BAD_REQUEST, format!("body is not an AdmissionReview: {e}"));
        }
    };
    if review.api_version != review::API_VERSION || review.kind != review::KIND {
        return bad(
            StatusCode::BAD_REQUEST,
            format!(
                "expected apiVersion {} kind {}, got apiVersion {:?} kind {:?}",
                review::API_VERSION,
                review::KIND,
                review.api_version,
                review.kind
            ),
        );
    }
    let Some(mut request) = review.request else {
        return bad(StatusCode::BAD_REQUEST, "AdmissionReview has no request".into());
    };
    let now = jiff::Timestamp::now();
    let decision = match endpoint {
        Endpoint::Validate => state.admission.validate(&mut request, now).await,
        Endpoint::Mutate => state.admission.mutate(&mut request, now).await,
    };
    let decision = match decision {
        Ok(d) => d,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e.to_string()),
    };
    for v in &decision.violations {
        state.metrics.violation(name, v.rule.as_str(), v.action.as_str());
    }
    if decision.verdict != "allowed" {
        info!(
            endpoint = name,
            uid = %request.uid,
            kind = %request.kind.kind,
            namespace = request.namespace.as_deref().unwrap_or_default(),
            name = request.name.as_deref().unwrap_or_default(),
            verdict = decision.verdict,
            violations = decision.violations.len(),
            "admission decision"
        );
    }
    state.metrics.observe(name, decision.verdict, started.elapsed());
    axum::Json(decision.response.into_review()).into_response()
}

/// The router: `/validate`, `/mutate`, `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/validate",
            post(
                |State(s): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>| async move {
                    handle_review(&s, Endpoint::Validate, body).await
                },
            ),
        )
        .route(
            "/mutate",
            post(
                |State(s): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>| async move {
                    handle_review(&s, Endpoint::Mutate, body).await
                },
            ),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<AppState>>| async move {
                if s.ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Arc<AppState>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    s.metrics.encode(),
                )
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A webhook server running in the background.
pub struct RunningWebhook {
    pub local_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<()>,
    reloader: JoinHandle<()>,
}

impl RunningWebhook {
    /// Stops accepting, lets open requests finish, and returns when done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let _ = self.server.await;
        self.reloader.abort();
    }
}

/// How the webhook server is set up.
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub tls_reload: Duration,
    pub shutdown_grace: Duration,
}

/// Starts the HTTPS webhook server; it serves until [`RunningWebhook::shutdown`].
pub async fn start(options: ServeOptions, admission: Admission) -> Result<RunningWebhook, String> {
    let certs = Arc::new(tls::ReloadingCert::load(&options.tls_cert, &options.tls_key).map_err(|e| e.to_string())?);
    start_with_certs(
        options.listen,
        certs,
        options.tls_reload,
        options.shutdown_grace,
        AppState::new(admission),
    )
    .await
}

/// Starts the HTTPS webhook server with a certificate source that may change.
pub async fn start_with_certs(
    listen: SocketAddr,
    certs: Arc<tls::ReloadingCert>,
    tls_reload: Duration,
    shutdown_grace: Duration,
    state: Arc<AppState>,
) -> Result<RunningWebhook, String> {
    let tls = tls::server_config(certs.clone()).map_err(|e| e.to_string())?;
    let listener = server::bind(listen).await.map_err(|e| e.to_string())?;
    let local_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = router(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(server::serve_tls(
        listener,
        tls,
        app,
        async {
            let _ = rx.await;
        },
        shutdown_grace,
    ));
    let reloader = tokio::spawn(async move {
        let mut tick = tokio::time::interval(tls_reload);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match certs.reload_if_changed() {
                Ok(true) => info!("tls certificate changed on disk and was reloaded"),
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "tls certificate files changed but cannot be used; serving the previous one")
                }
            }
        }
    });
    info!(addr = %local_addr, "webhook serving HTTPS");
    Ok(RunningWebhook {
        local_addr,
        state,
        shutdown: tx,
        server,
        reloader,
    })
}

/// Logs as JSON (in-cluster) or readable text, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    init_logging_at(format, None);
}

/// Logs at `level` (a `RUST_LOG`-style filter such as `info` or
/// `distroless_guard=debug`); `RUST_LOG` wins when `level` is `None`.
pub fn init_logging_at(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(l) => {
            tracing_subscriber::EnvFilter::try_new(l).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        }
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `distroless-guard webhook`.
pub fn main(args: WebhookArgs) -> ExitCode {
    init_logging(args.log_format);
    let policies = match crate::cli::load_policies(&args.policies) {
        Ok(p) => p,
        Err(e) => {
            error!(error = %e, "cannot load policies");
            return ExitCode::from(2);
        }
    };
    info!(policies = policies.len(), "policies loaded");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let options = ServeOptions {
            listen: args.listen,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            tls_reload: Duration::from_secs(args.tls_reload_seconds.max(1)),
            shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        };
        let mut admission = Admission::new(policies, Arc::new(NameOnly));
        match args.images.inspector() {
            Ok(Some(inspector)) => admission = admission.with_inspector(inspector),
            Ok(None) => {}
            Err(e) => {
                error!(error = %e, "cannot set up image inspection");
                return ExitCode::from(2);
            }
        }
        let running = match start(options, admission).await {
            Ok(r) => {
                r.state.set_ready(true);
                Ok(r)
            }
            Err(e) => Err(e),
        };
        let running = match running {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot start the webhook");
                return ExitCode::FAILURE;
            }
        };
        terminated().await;
        info!("termination signal received");
        running.state.set_ready(false);
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}
