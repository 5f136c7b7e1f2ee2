//! The HTTPS server: an accept loop over rustls and hyper, serving an axum
//! router, with graceful shutdown. Shared with the benchmark's baseline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// What a client may take of the server: every limit keeps one slow or
/// hostile client from starving the reviews of the API server.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// To finish the TLS handshake.
    pub handshake: Duration,
    /// HTTP/1: to send a request's headers, counted from when the server
    /// starts waiting for them, so it is also how long a kept-alive
    /// connection may sit idle.
    pub header_read: Duration,
    /// To send a request's body, once its headers are in.
    pub body_read: Duration,
    /// Open connections; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// Request headers, HTTP/1 (the read buffer) and HTTP/2 (the header list).
    pub max_header_bytes: usize,
    /// HTTP/2 streams open at once on one connection.
    pub h2_max_streams: u32,
    /// HTTP/2 streams a client may reset before the server has seen them
    /// (the "rapid reset" flood); past it the connection is closed.
    pub h2_max_pending_resets: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
            max_connections: 2048,
            max_header_bytes: 64 * 1024,
            h2_max_streams: 128,
            h2_max_pending_resets: 20,
        }
    }
}

/// Reads the whole body within `limit` (and [`super::MAX_BODY_BYTES`]), so a
/// client dripping it holds nothing past that; 408 or 413 otherwise.
async fn body_within(
    limit: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, super::MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let message = format!("request body: {e}");
            (
                hyper::StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({ "error": message })),
            )
                .into_response()
        }
        Err(_) => {
            let message = format!("the request body did not arrive within {} s", limit.as_secs_f64());
            (
                hyper::StatusCode::REQUEST_TIMEOUT,
                axum::Json(serde_json::json!({ "error": message })),
            )
                .into_response()
        }
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then waits up
/// to `grace` for open requests to finish.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ServerLimits,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let app = app.layer(axum::middleware::from_fn(move |request, next| {
        body_within(limits.body_read, request, next)
    }));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let activity = Arc::new(Activity::new());
        let service = {
            let (app, activity) = (app.clone(), activity.clone());
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                use tower::ServiceExt;
                let busy = activity.begin();
                let call = app.clone().oneshot(request.map(axum::body::Body::new));
                async move {
                    let response = call.await;
                    drop(busy);
                    response
                }
            })
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => return debug!(%peer, "tls handshake timed out"),
            };
            // The protocol is the one ALPN chose: no sniffing of the first
            // bytes, which would wait on a silent client without a timeout.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let builder = if h2 { builder.http2_only() } else { builder.http1_only() };
            activity.touch();
            let io = Watched {
                inner: tls,
                activity: activity.clone(),
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            let idle = async {
                let tick = (limits.header_read / 4).max(Duration::from_millis(50));
                loop {
                    tokio::time::sleep(tick).await;
                    if activity.idle_longer_than(limits.header_read) {
                        return;
                    }
                }
            };
            tokio::select! {
                served = watcher.watch(conn.into_owned()) => if let Err(e) = served {
                    debug!(%peer, error = %e, "connection ended with an error");
                },
                // Dropping the connection closes it.
                () = idle => debug!(%peer, "idle connection closed"),
            }
        });
    }
    drop(listener);
    info!("shutting down: no new connections, waiting for open requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!(
            grace_seconds = grace.as_secs(),
            "some connections were still open after the grace period"
        );
    }
}

/// When a connection last moved a byte, and how many requests it has open:
/// a connection with none open and nothing moving is idle.
struct Activity {
    start: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
    open: std::sync::atomic::AtomicUsize,
}

/// A request open on a connection, until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.touch();
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: std::time::Instant::now(),
            last_ms: Default::default(),
            open: Default::default(),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(self.clone())
    }

    fn idle_longer_than(&self, limit: Duration) -> bool {
        let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.open.load(std::sync::atomic::Ordering::Relaxed) == 0 && self.start.elapsed().saturating_sub(last) > limit
    }
}

/// A connection's stream, noting in its [`Activity`] every byte it moves.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds a listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
