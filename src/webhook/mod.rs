//! The admission webhook's HTTPS server: routes, TLS and its reload, health
//! and metrics endpoints. What a review decides is [`crate::admission`]'s job.

pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
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
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, warn};

use crate::admission::review::{self, AdmissionReview};
use crate::admission::{self, Admission};
use crate::metrics::Metrics;
use crate::policy::ObjectShape;

/// The largest AdmissionReview accepted. The API server limits an object to
/// 3 MiB and a review carries at most the object and its old version.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

/// Everything the HTTP handlers share.
pub struct AppState {
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl AppState {
    pub fn new(admission: Admission) -> Arc<Self> {
        Arc::new(AppState {
            admission,
            metrics: Arc::new(Metrics::default()),
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
    /// Custom resources with pod templates (the chart's `webhook.customResources`).
    ValidateResources,
}

impl Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Endpoint::Validate => "validate",
            Endpoint::Mutate => "mutate",
            Endpoint::ValidateResources => "validate-resources",
        }
    }
}

/// How a review's object is read, and who decides on it.
trait Reviewed: for<'de> serde::Deserialize<'de> + Send + Sync + Sized {
    fn decide<'a>(
        admission: &'a admission::Admission,
        endpoint: Endpoint,
        request: &'a mut review::AdmissionRequest<Self>,
        now: jiff::Timestamp,
    ) -> impl std::future::Future<Output = Result<admission::Decision, admission::ReviewError>> + Send + 'a;
}

/// Pods and the built-in workload kinds: read straight into the engine's shape.
impl Reviewed for crate::policy::ObjectShape {
    async fn decide<'a>(
        admission: &'a admission::Admission,
        endpoint: Endpoint,
        request: &'a mut review::AdmissionRequest<Self>,
        now: jiff::Timestamp,
    ) -> Result<admission::Decision, admission::ReviewError> {
        match endpoint {
            Endpoint::Mutate => admission.mutate(request),
            _ => admission.validate(request, now).await,
        }
    }
}

/// Custom resources: any shape, searched for pod specs.
impl Reviewed for serde_json::Value {
    fn decide<'a>(
        admission: &'a admission::Admission,
        _: Endpoint,
        request: &'a mut review::AdmissionRequest<Self>,
        now: jiff::Timestamp,
    ) -> impl std::future::Future<Output = Result<admission::Decision, admission::ReviewError>> + Send + 'a {
        admission.validate_resource(request, now)
    }
}

async fn handle_review<O: Reviewed>(
    state: &AppState,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Response {
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
    let review: AdmissionReview<O> = match review::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            // A review whose envelope is fine but whose object is not readable
            // is answered (denied with the reason), not rejected.
            if let Ok(header) = review::parse::<review::ReviewHeader>(&body) {
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
    // Everything logged while deciding (a slow registry, say) carries the
    // request. Only debug events are logged in there, so the span is a debug
    // one too: at the default level it costs nothing (it cost 3-4% of the
    // requests per second in `admission_http`, formatting five fields each time).
    let span = tracing::debug_span!(
        "review",
        endpoint = name,
        uid = %request.uid,
        kind = %request.kind.kind,
        namespace = request.namespace.as_deref().unwrap_or_default(),
        name = request.name.as_deref().unwrap_or_default(),
    );
    let decision = O::decide(&state.admission, endpoint, &mut request, now)
        .instrument(span)
        .await;
    let decision = match decision {
        Ok(d) => d,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e.to_string()),
    };
    for v in &decision.violations {
        state.metrics.violation(name, v.rule, v.action);
    }
    if decision.outcome != admission::Outcome::Allowed {
        info!(
            endpoint = name,
            uid = %request.uid,
            kind = %request.kind.kind,
            namespace = request.namespace.as_deref().unwrap_or_default(),
            name = request.name.as_deref().unwrap_or_default(),
            outcome = decision.outcome.as_str(),
            violations = decision.violations.len(),
            "admission decision"
        );
    }
    state
        .metrics
        .observe(name, decision.outcome.as_str(), started.elapsed());
    axum::Json(decision.response.into_review()).into_response()
}

/// `/rollouts`: who may create or change a DistrolessRollout.
async fn handle_rollout(state: &AppState, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let bad = |status: StatusCode, message: String| {
        warn!(endpoint = "rollouts", %status, %message, "bad admission request");
        state.metrics.observe("rollouts", "error", started.elapsed());
        json_error(status, message)
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return bad(rejection.status(), rejection.body_text()),
    };
    match state.admission.review_rollout(&body).await {
        Ok(response) => {
            let outcome = if response.allowed { "allowed" } else { "denied" };
            if !response.allowed {
                let message = response.status.as_ref().map(|s| s.message.as_str()).unwrap_or_default();
                info!(endpoint = "rollouts", uid = %response.uid, %message, "rollout denied");
            }
            state.metrics.observe("rollouts", outcome, started.elapsed());
            axum::Json(response.into_review()).into_response()
        }
        Err(e) => bad(StatusCode::BAD_REQUEST, format!("body is not an AdmissionReview: {e}")),
    }
}

/// The router: `/validate`, `/mutate`, `/validate-resources`, `/rollouts`, `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    type Shared = State<Arc<AppState>>;
    type Body = Result<Bytes, BytesRejection>;
    Router::new()
        .route(
            "/rollouts",
            post(|State(s): Shared, body: Body| async move { handle_rollout(&s, body).await }),
        )
        .route(
            "/validate",
            post(|State(s): Shared, body: Body| async move {
                handle_review::<ObjectShape>(&s, Endpoint::Validate, body).await
            }),
        )
        .route(
            "/mutate",
            post(|State(s): Shared, body: Body| async move {
                handle_review::<ObjectShape>(&s, Endpoint::Mutate, body).await
            }),
        )
        .route(
            "/validate-resources",
            post(|State(s): Shared, body: Body| async move {
                handle_review::<serde_json::Value>(&s, Endpoint::ValidateResources, body).await
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone())
        .merge(health_router(state))
}

/// `/healthz` (alive), `/readyz` (ready to review) and `/metrics` (Prometheus text).
pub fn health_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<AppState>>| async move {
                if s.is_ready() {
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
    pub limits: server::ServerLimits,
}

/// Why the webhook server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot serve on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts the HTTPS webhook server; it serves until [`RunningWebhook::shutdown`].
pub async fn start(options: ServeOptions, admission: Admission) -> Result<RunningWebhook, ServeError> {
    let certs = Arc::new(tls::ReloadingCert::load(&options.tls_cert, &options.tls_key)?);
    start_with_certs(
        options.listen,
        certs,
        options.tls_reload,
        options.shutdown_grace,
        options.limits,
        AppState::new(admission),
    )
    .await
    .map_err(|source| ServeError::Bind {
        addr: options.listen,
        source,
    })
}

/// Starts the HTTPS webhook server with a certificate source that may change.
pub async fn start_with_certs(
    listen: SocketAddr,
    certs: Arc<tls::ReloadingCert>,
    tls_reload: Duration,
    shutdown_grace: Duration,
    limits: server::ServerLimits,
    state: Arc<AppState>,
) -> Result<RunningWebhook, std::io::Error> {
    let tls = tls::server_config(certs.clone()).map_err(std::io::Error::other)?;
    let listener = server::bind(listen).await?;
    let local_addr = listener.local_addr()?;
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
        limits,
    ));
    let metrics = state.metrics.clone();
    let reloader = tokio::spawn(async move {
        let mut tick = tokio::time::interval(tls_reload);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match certs.reload_if_changed() {
                Ok(true) => {
                    metrics.tls_reload(true);
                    info!("tls certificate changed on disk and was reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.tls_reload(false);
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
