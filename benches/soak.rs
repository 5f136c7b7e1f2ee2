//! The webhook over a long run: a steady load over HTTPS on 127.0.0.1 that
//! mixes the reviews of `tests/data/captured` (sent by the real API server) and
//! of `tests/data` (hand-written): Pods, Deployments, CronJobs, updates,
//! deletions, dry runs, ephemeral containers, with and without violations; and
//! bad input (not JSON, the wrong apiVersion, no request, a truncated body),
//! with the serving certificate rotated on disk half-way. Connections are
//! re-opened now and then, as the API server does. `SOAK_MINUTES` (default 10, at least 3) sets the length.
//!
//! Goals: no error on a valid review, resident memory growing less than 5%
//! after the first minute (the warm-up), the last minute's p99 within 20% of
//! the second minute's (the first minute's, warm-up included, is printed too
//! but compared with nothing).
//!
//! Last line: `RESULT soak minutes=.. requests=.. errors=.. rss_start_mib=.. rss_end_mib=.. p99_first_us=.. p99_second_us=.. p99_last_us=..`

#[path = "../tests/support/tls.rs"]
#[allow(dead_code)]
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use distroless_guard::admission::{Admission, NameOnly};
use distroless_guard::policy::PolicySet;
use distroless_guard::webhook::{self, ServeOptions};
use tls::{HttpsConn, TestCa};

/// The allocator the shipped binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Connections, each sending one request every `PACE`: 8 x 250/s = 2,000 requests a second.
const CONNECTIONS: usize = 8;
const PACE: Duration = Duration::from_millis(4);
/// What every answer to a valid review holds.
const ANSWER: &[u8] = br#""kind":"AdmissionReview""#;
/// A connection is re-opened after this many requests.
const REQUESTS_PER_CONNECTION: u64 = 5_000;

/// What to send and whether it is a valid review (answered 200 with an
/// AdmissionReview) or bad input (answered 4xx).
fn bodies() -> Vec<(Bytes, bool)> {
    let mut out = Vec::new();
    // The hand-written reviews beside the ones the real API server sent.
    for dir in ["tests/data", "tests/data/captured"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push((Bytes::from(std::fs::read(&path).expect("review")), true));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let first = out[0].0.clone();
    out.push((Bytes::from_static(b"not json at all"), false));
    out.push((
        Bytes::from_static(
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
        ),
        false,
    ));
    out.push((
        Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
        false,
    ));
    out.push((first.slice(..first.len() / 2), false));
    out
}

/// The DER bytes of a PEM certificate.
fn der_of(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).expect("PEM")
}

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// Latencies of one minute, counted in buckets of `BUCKET_US` up to
/// `MAX_US`: fixed memory, all of it touched up front, so the bench's own
/// bookkeeping does not grow the resident memory it measures.
struct Minute {
    buckets: Vec<AtomicU32>,
}

const BUCKET_US: u64 = 5;
const MAX_US: u64 = 500_000;

impl Minute {
    fn new() -> Self {
        Minute {
            buckets: (0..=MAX_US / BUCKET_US).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).min(MAX_US);
        self.buckets[(us / BUCKET_US) as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The 99th percentile, to `BUCKET_US` (the bucket's upper edge).
    fn p99(&self) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| u64::from(b.load(Ordering::Relaxed)))
            .collect();
        let total: u64 = counts.iter().sum();
        let rank = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank.max(1) {
                return (i as u64 + 1) * BUCKET_US;
            }
        }
        0
    }
}

fn main() {
    distroless_guard::image::install_crypto_provider();
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10)
        .max(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Arc::new(TestCa::new("soak CA"));
        let (cert_path, key_path) = ca.serving_cert(1).write(dir.path());
        let options = ServeOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            tls_cert: cert_path.clone(),
            tls_key: key_path.clone(),
            tls_reload: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
            limits: Default::default(),
        };
        let server = webhook::start(options, Admission::new(PolicySet::builtin_default(), Arc::new(NameOnly)))
            .await
            .expect("webhook");
        server.state.set_ready(true);
        let addr = server.local_addr;
        let bodies = Arc::new(bodies());
        let started = Instant::now();
        let total = Duration::from_secs(minutes * 60);
        let requests = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        // Latencies of valid reviews, per minute.
        let per_minute: Arc<Vec<Minute>> = Arc::new((0..minutes).map(|_| Minute::new()).collect());
        let mut tasks = Vec::new();
        for c in 0..CONNECTIONS {
            let (ca, bodies, requests, errors, per_minute) =
                (ca.clone(), bodies.clone(), requests.clone(), errors.clone(), per_minute.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = c as u64;
                let mut tick = tokio::time::interval(PACE);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                'connections: while started.elapsed() < total {
                    let Ok(mut conn) = HttpsConn::connect(addr, ca.client_config()).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    for _ in 0..REQUESTS_PER_CONNECTION {
                        tick.tick().await;
                        if started.elapsed() >= total {
                            break 'connections;
                        }
                        let (body, valid) = &bodies[(n % bodies.len() as u64) as usize];
                        n += 1;
                        let sent = Instant::now();
                        let answer = conn.request("POST", "/validate", body.clone()).await;
                        let took = sent.elapsed();
                        requests.fetch_add(1, Ordering::Relaxed);
                        match answer {
                            Ok((status, out)) if *valid => {
                                if status.is_success() && out.windows(ANSWER.len()).any(|w| w == ANSWER) {
                                    let minute = (sent.duration_since(started).as_secs() / 60) as usize;
                                    if let Some(m) = per_minute.get(minute) {
                                        m.record(took);
                                    }
                                } else {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok((status, _)) => {
                                if !status.is_client_error() {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                if *valid {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                                continue 'connections;
                            }
                        }
                    }
                }
            }));
        }
        // Half-way, the certificate is rotated on disk, as cert-manager would.
        let mut rss_start = 0;
        let mut rotated: Option<Vec<u8>> = None;
        while started.elapsed() < total {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let elapsed = started.elapsed();
            if rss_start == 0 && elapsed >= Duration::from_secs(60) {
                rss_start = rss_mib();
            }
            if rotated.is_none() && elapsed >= total / 2 {
                let next = ca.serving_cert(2);
                std::fs::write(&key_path, &next.key_pem).expect("key");
                std::fs::write(&cert_path, &next.cert_pem).expect("cert");
                rotated = Some(der_of(&next.cert_pem));
                eprintln!("soak: certificate rotated at {} s", elapsed.as_secs());
            }
            eprintln!(
                "soak: {} s, {} requests, {} errors, rss {} MiB",
                elapsed.as_secs(),
                requests.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed),
                rss_mib()
            );
        }
        for t in tasks {
            let _ = t.await;
        }
        let rss_end = rss_mib();
        // The rotated certificate is what a new connection gets.
        let conn = HttpsConn::connect(addr, ca.client_config()).await.expect("connect");
        if Some(conn.peer_cert.as_ref()) != rotated.as_deref() {
            errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: the rotated certificate is not served");
        }
        let first = per_minute[0].p99();
        let second = per_minute[1].p99();
        let last = per_minute[minutes as usize - 1].p99();
        server.shutdown().await;
        println!(
            "RESULT soak minutes={minutes} requests={} errors={} rss_start_mib={rss_start} rss_end_mib={rss_end} p99_first_us={first} p99_second_us={second} p99_last_us={last}",
            requests.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
        );
    });
}
