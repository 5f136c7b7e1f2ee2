//! Reading an AdmissionReview, in process, on one core, with each JSON
//! library into the webhook's own types: serde_json (what the webhook reads
//! with), sonic-rs (serde-compatible, SIMD), and what the `admission_http`
//! baseline reads (the envelope, the object kept as raw JSON). The bodies
//! are the reviews the real API server sent (tests/data/captured, recorded
//! by tests/cluster/captured.rs): pods with shell pipelines and long
//! environments, Deployments, an update, a CronJob, an ephemeral container,
//! a dry run and a delete. Each reader is timed over 30 interleaved rounds;
//! the best round counts. A line per body, then the mean per review.
//!
//! Last line: `RESULT review_read bodies=.. mean_bytes=.. serde_ns=.. sonic_ns=.. baseline_ns=..`

use std::hint::black_box;
use std::time::Instant;

use distroless_guard::admission::review::{self, AdmissionReview};

/// The allocator the shipped binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 30;
const PER_ROUND: usize = 2_000;

#[derive(serde::Deserialize)]
struct MinimalReview {
    #[allow(dead_code)]
    request: Option<MinimalRequest>,
}

#[derive(serde::Deserialize)]
struct MinimalRequest {
    #[allow(dead_code)]
    uid: String,
    #[allow(dead_code)]
    object: Option<Box<serde_json::value::RawValue>>,
}

fn time(f: impl Fn()) -> f64 {
    let started = Instant::now();
    for _ in 0..PER_ROUND {
        f();
    }
    started.elapsed().as_nanos() as f64 / PER_ROUND as f64
}

fn captured() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/captured");
    let mut bodies: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path.file_stem().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("captured review"))
        })
        .collect();
    bodies.sort();
    assert!(!bodies.is_empty(), "no captured reviews in {}", dir.display());
    bodies
}

fn main() {
    let bodies = captured();
    let mut totals = [0f64; 3];
    println!(
        "{:<32} {:>7} {:>10} {:>10} {:>12}",
        "review", "bytes", "serde_ns", "sonic_ns", "baseline_ns"
    );
    for (name, body) in &bodies {
        // The libraries read the same review.
        let serde: AdmissionReview = review::parse(body).expect("serde_json");
        let sonic: AdmissionReview = sonic_rs::from_slice(body).expect("sonic-rs");
        assert_eq!(format!("{serde:?}"), format!("{sonic:?}"), "{name}: the readers differ");

        let mut best = [f64::MAX; 3];
        for _ in 0..ROUNDS {
            let round = [
                time(|| {
                    drop(black_box(
                        review::parse::<AdmissionReview>(black_box(body)).expect("serde"),
                    ))
                }),
                time(|| {
                    drop(black_box(
                        sonic_rs::from_slice::<AdmissionReview>(black_box(body)).expect("sonic"),
                    ))
                }),
                time(|| {
                    drop(black_box(
                        serde_json::from_slice::<MinimalReview>(black_box(body)).expect("baseline"),
                    ))
                }),
            ];
            for (best, ns) in best.iter_mut().zip(round) {
                *best = best.min(ns);
            }
        }
        println!(
            "{name:<32} {:>7} {:>10.0} {:>10.0} {:>12.0}",
            body.len(),
            best[0],
            best[1],
            best[2]
        );
        for (total, ns) in totals.iter_mut().zip(best) {
            *total += ns;
        }
    }
    let n = bodies.len() as f64;
    let [serde_ns, sonic_ns, baseline_ns] = totals.map(|t| (t / n).round() as u64);
    let mean_bytes = bodies.iter().map(|(_, b)| b.len()).sum::<usize>() / bodies.len();
    println!(
        "per review: sonic-rs {:.2}x serde_json's time; serde_json {:.2}x the baseline's read",
        sonic_ns as f64 / serde_ns as f64,
        serde_ns as f64 / baseline_ns as f64
    );
    println!(
        "RESULT review_read bodies={} mean_bytes={mean_bytes} serde_ns={serde_ns} sonic_ns={sonic_ns} baseline_ns={baseline_ns}",
        bodies.len()
    );
}
