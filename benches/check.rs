//! `check` throughput on a large manifest set, on one core: 400 files of 50
//! objects each (Deployments, StatefulSets, CronJobs, Pods, Services,
//! ConfigMaps; half of the workloads with violations), read from disk, parsed
//! and judged with the built-in policy and `--fix`, as `distroless-guard check`
//! does. Three rounds; the best is reported.
//!
//! Last line: `RESULT check files=.. objects=.. workloads=.. read_ms=.. check_ms=.. objects_per_s=..`

use std::fmt::Write as _;
use std::time::Instant;

const FILES: usize = 400;
const PER_FILE: usize = 50;

fn workload(kind: &str, i: usize, bad: bool) -> String {
    let command = if bad {
        "        command: [\"sh\", \"-c\", \"exec /app --port 8080\"]\n"
    } else {
        "        command: [\"/app\", \"--port\", \"8080\"]\n"
    };
    let security = if bad {
        "      securityContext: {runAsUser: 0}\n"
    } else {
        "      securityContext: {runAsNonRoot: true, runAsUser: 65532}\n"
    };
    let pod = format!(
        "{security}      containers:\n      - name: app\n        image: registry.example/team/app-{i}:1.{i}\n{command}        ports: [{{containerPort: 8080}}]\n        env: [{{name: MODE, value: prod}}, {{name: ID, value: \"{i}\"}}]\n        readinessProbe: {{httpGet: {{path: /ready, port: 8080}}}}\n        resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}\n"
    );
    match kind {
        "Deployment" | "StatefulSet" => format!(
            "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: app-{i}, namespace: team-{}}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  template:\n    metadata: {{labels: {{app: app-{i}}}}}\n    spec:\n{pod}",
            i % 20
        ),
        "CronJob" => format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: job-{i}, namespace: team-{}}}\nspec:\n  schedule: \"*/5 * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n{}",
            i % 20,
            pod.lines().map(|l| format!("    {l}\n")).collect::<String>()
        ),
        _ => format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: team-{}}}\nspec:\n{}",
            i % 20,
            pod.lines().map(|l| format!("{}\n", &l[4..])).collect::<String>()
        ),
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut workloads = 0;
    for f in 0..FILES {
        let mut text = String::new();
        for j in 0..PER_FILE {
            let i = f * PER_FILE + j;
            if j > 0 {
                text.push_str("---\n");
            }
            let bad = i.is_multiple_of(2);
            let doc = match i % 10 {
                0..=3 => workload("Deployment", i, bad),
                4 => workload("StatefulSet", i, bad),
                5 => workload("CronJob", i, bad),
                6 => workload("Pod", i, bad),
                7 => format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  selector: {{app: app-{i}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
                ),
                _ => {
                    let mut data = String::new();
                    for k in 0..10 {
                        let _ = writeln!(data, "  key{k}: \"value {k} of {i}\"");
                    }
                    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}}}\ndata:\n{data}")
                }
            };
            if i % 10 <= 6 {
                workloads += 1;
            }
            text.push_str(&doc);
        }
        std::fs::write(dir.path().join(format!("m{f:04}.yaml")), text).expect("write");
    }
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
        let report = distroless_guard::offline::check(&mut docs, &policies, jiff::Timestamp::now(), true, None);
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
