//! Admission over HTTPS on 127.0.0.1: the real webhook against a minimal
//! baseline server on the same stack (rustls + hyper + axum) that only parses
//! the AdmissionReview and answers allowed. 64 keep-alive connections to
//! each, kept open; the two are measured in alternating short windows. Both
//! run with the allocator of the shipped binary (mimalloc, src/main.rs) and
//! its logging as the chart sets it (JSON, `info`): every line the webhook
//! would log is formatted, then dropped instead of written to stderr.
//!
//! What is sent is the mix the real API server sends our webhooks, from the
//! reviews it sent in `tests/data/captured` (`tests/cluster/captured.rs`
//! records them): every review to `/validate` but the delete (the chart does
//! not register deletes), and each pod creation to `/mutate` as well. Each
//! connection cycles through the mix from its own place in it. The answers
//! are a mix too (allowed, denied with messages, patched) and each answer is
//! checked to be the one the webhook gave that review at the start.
//!
//! Three rounds; each figure is the median of the rounds. A line per review
//! and endpoint gives its latency on both servers (all rounds); the last
//! line is `RESULT admission_http p50_us=.. p99_us=.. rps=.. baseline_p50_us=.. baseline_p99_us=.. baseline_rps=.. rps_ratio=.. p99_ratio=..`.

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
use distroless_guard::telemetry::LogFormat;
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
const ROUNDS: usize = 3;

/// One review as the API server sends it, to one endpoint, and what each
/// server must answer (a piece of the response body).
struct Request {
    label: String,
    path: &'static str,
    body: Bytes,
    /// What the webhook answered this review at the start.
    answer: &'static str,
    expect: &'static str,
}

#[derive(Default)]
struct Stats {
    /// (latency, index of the request in the mix).
    latencies_us: Vec<(u32, u16)>,
    requests: usize,
    elapsed: Duration,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(0)
}

impl Stats {
    fn sorted(&self, request: Option<u16>) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .latencies_us
            .iter()
            .filter(|(_, i)| request.is_none_or(|r| r == *i))
            .map(|(l, _)| *l)
            .collect();
        v.sort_unstable();
        v
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn absorb(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.requests += other.requests;
        self.elapsed += other.elapsed;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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

    /// Every connection posts the mix back to back for `length`, each from
    /// its own place in it; the latencies and the requests go into `stats`
    /// when given. `baseline`: the answers are the baseline's.
    async fn window(&mut self, mix: &Arc<Vec<Request>>, baseline: bool, length: Duration, stats: Option<&mut Stats>) {
        let started = Instant::now();
        let stop = started + length;
        let tasks: Vec<_> = self
            .conns
            .drain(..)
            .enumerate()
            .map(|(c, mut conn)| {
                let mix = mix.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut next = c;
                    while Instant::now() < stop {
                        let i = next % mix.len();
                        next += 1;
                        let r = &mix[i];
                        let expect = if baseline { BASELINE_ANSWER } else { r.expect };
                        let sent = Instant::now();
                        let (status, out) = conn.post(r.path, r.body.clone()).await;
                        latencies.push((sent.elapsed().as_micros() as u32, i as u16));
                        assert!(
                            status.is_success() && contains(&out, expect),
                            "{} {}: unexpected answer {}",
                            r.path,
                            r.label,
                            String::from_utf8_lossy(&out)
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

const BASELINE_ANSWER: &str = "\"allowed\":true";

fn contains(body: &[u8], piece: &str) -> bool {
    body.windows(piece.len()).any(|w| w == piece.as_bytes())
}

/// The baseline: parse the AdmissionReview, answer allowed. Same TLS and HTTP
/// stack and the same response type, so the difference is the policy work:
/// reading the pod spec, evaluating every rule, building messages and
/// patches, recording metrics.
fn baseline_router() -> Router {
    async fn allow(body: Bytes) -> impl axum::response::IntoResponse {
        let uid = serde_json::from_slice::<MinimalReview>(&body)
            .ok()
            .and_then(|r| r.request)
            .map(|r| r.uid)
            .unwrap_or_default();
        axum::Json(AdmissionResponse::allow(&uid).into_review())
    }
    Router::new()
        .route("/validate", post(allow))
        .route("/mutate", post(allow))
}

/// The captured reviews as the API server sends them to the chart's
/// webhooks (see the module doc).
fn captured_mix() -> Vec<(String, &'static str, Bytes)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/captured");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/data/captured")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut mix = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("review");
        let review: Value = serde_json::from_str(&text).expect("json");
        let request = &review["request"];
        let operation = request["operation"].as_str().unwrap_or_default();
        if operation == "DELETE" {
            continue;
        }
        let label = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let body = Bytes::from(text);
        let pod_create = request["kind"]["kind"] == "Pod" && operation == "CREATE" && request["subResource"].is_null();
        if pod_create {
            mix.push((label.clone(), "/mutate", body.clone()));
        }
        mix.push((label, "/validate", body));
    }
    mix
}

/// What the webhook answers each request of the mix: allowed, warned,
/// denied or patched, and a piece of the body that says so.
async fn classify(conn: &mut HttpsConn, mix: Vec<(String, &'static str, Bytes)>) -> Vec<Request> {
    let mut out = Vec::new();
    for (label, path, body) in mix {
        let (status, answer) = conn.post(path, body.clone()).await;
        assert!(status.is_success(), "{path} {label}: {status}");
        let review: Value = serde_json::from_slice(&answer).expect("an AdmissionReview");
        let response = &review["response"];
        let (answer, expect) = if response["allowed"] == false {
            ("denied", "\"allowed\":false")
        } else if response["patch"].is_string() {
            ("patched", "\"patch\":")
        } else if response["warnings"].as_array().is_some_and(|w| !w.is_empty()) {
            ("warned", "\"warnings\":")
        } else {
            ("allowed", "\"allowed\":true")
        };
        out.push(Request {
            label,
            path,
            body,
            answer,
            expect,
        });
    }
    out
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    distroless_guard::telemetry::init_logging_to(LogFormat::Json, Some("info"), std::io::sink, false);
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

        let mut real_side = Side::open(real.local_addr, &ca).await;
        let mut base_side = Side::open(baseline_addr, &ca).await;
        let mix = Arc::new(classify(&mut real_side.conns[0], captured_mix()).await);
        let bytes: usize = mix.iter().map(|r| r.body.len()).sum();
        println!(
            "{} requests in the mix (mean body {} bytes), {CONNECTIONS} connections each, {ROUNDS} rounds of {WINDOWS} alternating windows of {} ms per server (+{} s warm-up)",
            mix.len(),
            bytes / mix.len(),
            WINDOW.as_millis(),
            WARMUP.as_secs()
        );
        real_side.window(&mix, false, WARMUP, None).await;
        base_side.window(&mix, true, WARMUP, None).await;
        let (mut ours_all, mut base_all) = (Stats::default(), Stats::default());
        let mut figures: [Vec<f64>; 8] = Default::default();
        for round in 0..ROUNDS {
            let (mut ours, mut base) = (Stats::default(), Stats::default());
            for w in 0..WINDOWS {
                // Pairs of windows: ours first, then the baseline first twice, ...
                if (w + 1) % 4 < 2 {
                    real_side.window(&mix, false, WINDOW, Some(&mut ours)).await;
                    base_side.window(&mix, true, WINDOW, Some(&mut base)).await;
                } else {
                    base_side.window(&mix, true, WINDOW, Some(&mut base)).await;
                    real_side.window(&mix, false, WINDOW, Some(&mut ours)).await;
                }
            }
            let (o, b) = (ours.sorted(None), base.sorted(None));
            let round_figures = [
                percentile(&o, 0.5) as f64,
                percentile(&o, 0.99) as f64,
                ours.rps(),
                percentile(&b, 0.5) as f64,
                percentile(&b, 0.99) as f64,
                base.rps(),
                ours.rps() / base.rps(),
                percentile(&o, 0.99) as f64 / percentile(&b, 0.99) as f64,
            ];
            println!(
                "round {}: rps {:.0} vs {:.0} ({:.2}x), p99 {} vs {} us ({:.2}x)",
                round + 1,
                round_figures[2],
                round_figures[5],
                round_figures[6],
                round_figures[1],
                round_figures[4],
                round_figures[7]
            );
            for (all, f) in figures.iter_mut().zip(round_figures) {
                all.push(f);
            }
            ours_all.absorb(ours);
            base_all.absorb(base);
        }
        println!("{:<34} {:<9} {:<8} {:>7} {:>7} {:>12} {:>12}", "review", "endpoint", "answer", "p50_us", "p99_us", "base_p50_us", "base_p99_us");
        for (i, r) in mix.iter().enumerate() {
            let (o, b) = (ours_all.sorted(Some(i as u16)), base_all.sorted(Some(i as u16)));
            println!(
                "{:<34} {:<9} {:<8} {:>7} {:>7} {:>12} {:>12}",
                r.label,
                r.path,
                r.answer,
                percentile(&o, 0.5),
                percentile(&o, 0.99),
                percentile(&b, 0.5),
                percentile(&b, 0.99)
            );
        }
        let [p50, p99, rps, bp50, bp99, brps, rps_ratio, p99_ratio] = figures.map(median);
        println!("median of {ROUNDS} rounds: rps ratio {rps_ratio:.2} (goal >= 0.85), p99 ratio {p99_ratio:.2} (goal <= 1.25)");
        println!(
            "RESULT admission_http p50_us={p50:.0} p99_us={p99:.0} rps={rps:.0} baseline_p50_us={bp50:.0} baseline_p99_us={bp99:.0} baseline_rps={brps:.0} rps_ratio={rps_ratio:.2} p99_ratio={p99_ratio:.2}"
        );
        real.shutdown().await;
    });
}
