//! Admission over HTTPS on 127.0.0.1: the real webhook against a minimal
//! baseline server on the same stack (rustls + hyper + axum) that only parses
//! the AdmissionReview and answers allowed. 64 keep-alive connections to
//! each, kept open; the two are measured in alternating short windows. Both
//! run with the allocator of the shipped binary (mimalloc, src/main.rs).
//!
//! Last line: `RESULT admission_http p50_us=.. p99_us=.. rps=.. baseline_p50_us=.. baseline_p99_us=.. baseline_rps=..`

#[path = "../tests/support/tls.rs"]
#[allow(dead_code)]
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use distroless_guard::admission::review::AdmissionResponse;
use distroless_guard::admission::{Admission, NameOnly};
use distroless_guard::policy::PolicySet;
use distroless_guard::webhook::{self, ServeOptions};
use serde_json::Value;
use tls::{HttpsConn, TestCa};

/// The allocator the shipped binary uses (src/main.rs), for both servers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTIONS: usize = 64;
const WARMUP: Duration = Duration::from_secs(1);
/// Each server is measured for `WINDOWS` x `WINDOW`, in short windows that
/// alternate between the two (ABBA), so a slow second of a noisy machine
/// falls on both alike rather than on whichever ran in that stretch.
const WINDOW: Duration = Duration::from_millis(250);
const WINDOWS: usize = 20;

struct Stats {
    latencies_us: Vec<u32>,
    requests: usize,
    elapsed: Duration,
}

impl Stats {
    fn new() -> Self {
        Stats {
            latencies_us: Vec::new(),
            requests: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn percentile(&mut self, p: f64) -> u32 {
        self.latencies_us.sort_unstable();
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(idx).copied().unwrap_or(0)
    }

    fn rps(&self) -> u64 {
        (self.requests as f64 / self.elapsed.as_secs_f64()) as u64
    }
}

/// One server's keep-alive connections, open for the whole run.
struct Side {
    conns: Vec<HttpsConn>,
}

impl Side {
    async fn open(addr: SocketAddr, ca: &TestCa) -> Self {
        let config = ca.client_config();
        let mut conns = Vec::new();
        for _ in 0..CONNECTIONS {
            conns.push(HttpsConn::connect(addr, config.clone()).await.expect("connect"));
        }
        Side { conns }
    }

    /// Every connection posts `body` back to back for `length`; the
    /// latencies and the requests go into `stats` when `record`.
    async fn window(&mut self, body: &Bytes, expect: &'static str, length: Duration, stats: Option<&mut Stats>) {
        let started = Instant::now();
        let stop = started + length;
        let tasks: Vec<_> = self
            .conns
            .drain(..)
            .map(|mut conn| {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < stop {
                        let sent = Instant::now();
                        let (status, out) = conn.post("/validate", body.clone()).await;
                        latencies.push(sent.elapsed().as_micros() as u32);
                        assert!(
                            status.is_success() && out.windows(expect.len()).any(|w| w == expect.as_bytes()),
                            "unexpected answer"
                        );
                    }
                    (conn, latencies)
                })
            })
            .collect();
        let mut latencies_us = Vec::new();
        for t in tasks {
            let (conn, latencies) = t.await.expect("load task");
            self.conns.push(conn);
            latencies_us.extend(latencies);
        }
        if let Some(stats) = stats {
            // Until the last answer of the window: no request is left out.
            stats.elapsed += started.elapsed();
            stats.requests += latencies_us.len();
            stats.latencies_us.extend(latencies_us);
        }
    }
}

/// What the baseline reads: the whole review is parsed and validated as
/// JSON, the object kept as raw JSON text, as any webhook must at least do.
#[derive(serde::Deserialize)]
struct MinimalReview {
    request: Option<MinimalRequest>,
}

#[derive(serde::Deserialize)]
struct MinimalRequest {
    uid: String,
    #[allow(dead_code)]
    object: Option<Box<serde_json::value::RawValue>>,
}

/// The baseline: parse the AdmissionReview, answer allowed. Same TLS and HTTP
/// stack and the same response type, so the difference is the policy work:
/// reading the pod spec, evaluating every rule, recording metrics.
fn baseline_router() -> Router {
    Router::new().route(
        "/validate",
        post(|body: Bytes| async move {
            let uid = serde_json::from_slice::<MinimalReview>(&body)
                .ok()
                .and_then(|r| r.request)
                .map(|r| r.uid)
                .unwrap_or_default();
            axum::Json(AdmissionResponse::allow(&uid).into_review())
        }),
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("bench CA");
        let (cert, key) = ca.serving_cert(1).write(dir.path());
        let options = ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: cert.clone(),
            tls_key: key.clone(),
            tls_reload: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
            limits: Default::default(),
        };
        let real = webhook::start(options, Admission::new(PolicySet::builtin_default(), Arc::new(NameOnly)))
            .await
            .expect("webhook");

        let certs = Arc::new(webhook::tls::ReloadingCert::load(&cert, &key).expect("certs"));
        let tls = webhook::tls::server_config(certs).expect("tls config");
        let listener = webhook::server::bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let baseline_addr = listener.local_addr().expect("addr");
        tokio::spawn(webhook::server::serve_tls(listener, tls, baseline_router(), std::future::pending(), Duration::from_secs(1), Default::default()));

        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pod-compliant.json");
        let review: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("review")).expect("json");
        let body = Bytes::from(serde_json::to_vec(&review).expect("encode"));
        println!(
            "review body: {} bytes, {CONNECTIONS} connections each, {WINDOWS} alternating windows of {} ms per server (+{} s warm-up)",
            body.len(),
            WINDOW.as_millis(),
            WARMUP.as_secs()
        );

        let mut real_side = Side::open(real.local_addr, &ca).await;
        let mut base_side = Side::open(baseline_addr, &ca).await;
        let expect = "\"allowed\":true";
        real_side.window(&body, expect, WARMUP, None).await;
        base_side.window(&body, expect, WARMUP, None).await;
        let (mut ours, mut base) = (Stats::new(), Stats::new());
        for w in 0..WINDOWS {
            // Pairs of windows: ours first, then the baseline first twice, ...
            if (w + 1) % 4 < 2 {
                real_side.window(&body, expect, WINDOW, Some(&mut ours)).await;
                base_side.window(&body, expect, WINDOW, Some(&mut base)).await;
            } else {
                base_side.window(&body, expect, WINDOW, Some(&mut base)).await;
                real_side.window(&body, expect, WINDOW, Some(&mut ours)).await;
            }
        }
        let (p50, p99, rps) = (ours.percentile(0.5), ours.percentile(0.99), ours.rps());
        let (bp50, bp99, brps) = (base.percentile(0.5), base.percentile(0.99), base.rps());
        println!("rps ratio {:.2} (goal >= 0.90), p99 ratio {:.2} (goal <= 1.25)", rps as f64 / brps as f64, p99 as f64 / bp99 as f64);
        println!("RESULT admission_http p50_us={p50} p99_us={p99} rps={rps} baseline_p50_us={bp50} baseline_p99_us={bp99} baseline_rps={brps}");
        real.shutdown().await;
    });
}
