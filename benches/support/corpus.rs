//! The generated manifests `check` is measured on (`benches/check.rs`) and
//! compared with Kyverno on (`benches/peers.rs`): files of 50 objects each,
//! Deployments, StatefulSets, CronJobs, Pods, Services and ConfigMaps, half
//! of the workloads breaking rules (a shell command and runAsUser 0).

use std::fmt::Write as _;
use std::path::Path;

pub fn workload(kind: &str, i: usize, bad: bool) -> String {
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

/// Writes `files` files of `per_file` objects into `dir`; (objects, workloads).
pub fn write(dir: &Path, files: usize, per_file: usize) -> (usize, usize) {
    let mut workloads = 0;
    for f in 0..files {
        let mut text = String::new();
        for j in 0..per_file {
            let i = f * per_file + j;
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
        std::fs::write(dir.join(format!("m{f:04}.yaml")), text).expect("write");
    }
    (files * per_file, workloads)
}
