//! `check` throughput on a large manifest set, on one core: 400 files of 50
//! objects each (Deployments, StatefulSets, CronJobs, Pods, Services,
//! ConfigMaps; half of the workloads with violations), read from disk, parsed
//! and judged with the built-in policy and `--fix`, as `distroless-guard check`
//! does. Three rounds; the best is reported.
//!
//! Last line: `RESULT check files=.. objects=.. workloads=.. read_ms=.. check_ms=.. objects_per_s=..`

#[path = "support/corpus.rs"]
mod corpus;

use std::time::Instant;

const FILES: usize = 400;
const PER_FILE: usize = 50;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, workloads) = corpus::write(dir.path(), FILES, PER_FILE);
    let policies = distroless_guard::policy::PolicySet::builtin_default();
    let paths = vec![dir.path().to_path_buf()];
    let (mut best_read, mut best_check) = (f64::MAX, f64::MAX);
    let mut objects = 0;
    let mut judged = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let loaded = distroless_guard::manifest::read(&paths).expect("read");
        let read = started.elapsed().as_secs_f64();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems.first());
        objects = loaded.docs.len();
        let mut docs = loaded.docs;
        let started = Instant::now();
        let report =
            distroless_guard::manifest::verdicts::check(&mut docs, &policies, jiff::Timestamp::now(), true, None);
        let check = started.elapsed().as_secs_f64();
        judged = report.results.len();
        best_read = best_read.min(read);
        best_check = best_check.min(check);
    }
    assert_eq!(judged, workloads, "every workload judged");
    let total = best_read + best_check;
    println!(
        "RESULT check files={FILES} objects={objects} workloads={judged} read_ms={:.0} check_ms={:.0} objects_per_s={:.0}",
        best_read * 1000.0,
        best_check * 1000.0,
        objects as f64 / total
    );
}
