//! Reading an AdmissionReview, in process, on one core: the webhook's reader
//! (`admission::scan::read`, the one-pass reader with serde_json behind it),
//! serde_json's typed reader into the same types, and what the
//! `admission_http` baseline reads (the envelope, the object kept as raw
//! JSON). The body is the `admission_http` bench's, compacted as the API
//! server sends it. Each is timed over 30 rounds, interleaved; the best round
//! counts.
//!
//! Last line: `RESULT review_read bytes=.. read_ns=.. serde_ns=.. baseline_ns=..`

use std::hint::black_box;
use std::time::Instant;

use distroless_guard::admission::review::AdmissionReview;
use distroless_guard::admission::scan;

/// The allocator the shipped binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 30;
const PER_ROUND: usize = 5_000;

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

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pod-compliant.json");
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).expect("review")).expect("json");
    let body = serde_json::to_vec(&value).expect("encode");
    // The three read the same review (and the webhook's reader does not fall back).
    let read = scan::read(&body).expect("read");
    let typed: AdmissionReview = serde_json::from_slice(&body).expect("serde");
    assert_eq!(format!("{read:?}"), format!("{typed:?}"));
    assert!(scan::review(&body).is_some(), "the one-pass reader gave up");

    let mut best = [f64::MAX; 3];
    for _ in 0..ROUNDS {
        let round = [
            time(|| drop(black_box(scan::read(black_box(&body)).expect("read")))),
            time(|| {
                drop(black_box(
                    serde_json::from_slice::<AdmissionReview>(black_box(&body)).expect("serde"),
                ))
            }),
            time(|| {
                drop(black_box(
                    serde_json::from_slice::<MinimalReview>(black_box(&body)).expect("baseline"),
                ))
            }),
        ];
        for (best, ns) in best.iter_mut().zip(round) {
            *best = best.min(ns);
        }
    }
    let [read_ns, serde_ns, baseline_ns] = best.map(|ns| ns.round() as u64);
    println!(
        "reader {:.2}x serde_json's typed reader, {:.2}x the baseline's read",
        read_ns as f64 / serde_ns as f64,
        read_ns as f64 / baseline_ns as f64
    );
    println!(
        "RESULT review_read bytes={} read_ns={read_ns} serde_ns={serde_ns} baseline_ns={baseline_ns}",
        body.len()
    );
}
