//! The audit controller at scale: the `distroless-guard run` binary against
//! the in-memory API server (a test double) holding 10,000 pods. Measures the
//! operator process's resident memory, and the time from a workload change to
//! the updated policy status (over many changes).
//!
//! Last line: `RESULT audit pods=.. idle_rss_mib=.. rss_mib=.. status_p50_ms=.. status_p90_ms=..`

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PODS: usize = 10_000;
const CHANGES: usize = 60;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn violating(server: &apiserver::ApiServer) -> Option<u64> {
    server
        .get("distrolessguard.dev", "distrolesspolicies", "", "audit")?
        .pointer("/status/audit/violating")?
        .as_u64()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(apiserver::ApiServer::start());
    let crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/distrolessguard.dev_distrolesspolicies.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    server.install_crd(crd).unwrap();
    let client = {
        let _guard = rt.enter();
        server.client()
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_distroless-guard"))
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--identity",
            "bench",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_mib(child.id());

    rt.block_on(async {
        use kube::api::{Api, DynamicObject, PostParams};
        let policy: kube::api::DynamicObject =
            serde_json::from_value(json!({"apiVersion": "distrolessguard.dev/v1alpha1",
            "kind": "DistrolessPolicy", "metadata": {"name": "audit"}, "spec": {"action": "Audit"}}))
            .unwrap();
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("distrolessguard.dev", "v1alpha1", "DistrolessPolicy"),
            "distrolesspolicies",
        );
        Api::<DynamicObject>::all_with(client.clone(), &ar)
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
        let started = Instant::now();
        for i in 0..PODS {
            let ns = format!("team-{}", i % 100);
            let mut container = json!({"name": "app", "image": format!("registry.example.com/team/app:{}", i % 50),
                "env": [{"name": "A", "value": "1"}], "resources": {"requests": {"cpu": "10m"}}});
            if i % 2 == 0 {
                container["command"] = json!(["sh", "-c", "exec /app"]);
            }
            let pod: kube::api::DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i}"), "labels": {"app": format!("app-{}", i % 50)}},
                "spec": {"containers": [container]}}))
            .unwrap();
            let api: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                &ns,
                &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
            );
            api.create(&PostParams::default(), &pod).await.unwrap();
        }
        println!("created {PODS} pods in {:.1}s", started.elapsed().as_secs_f64());
    });
    let started = Instant::now();
    while violating(&server) != Some((PODS / 2) as u64) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the operator never summarized {PODS} pods"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let loaded = rss_mib(child.id());
    println!("operator RSS: {idle:.1} MiB idle, {loaded:.1} MiB with {PODS} pods");

    // Workload change -> updated status, many times.
    let mut latencies = Vec::new();
    rt.block_on(async {
        use kube::api::{Api, Patch, PatchParams};
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "team-1");
        let mut expected = (PODS / 2) as u64;
        for n in 0..CHANGES {
            // pod-1 is compliant; toggling its command makes it violate and back.
            let command = if n % 2 == 0 {
                json!(["sh", "-c", "x"])
            } else {
                json!(null)
            };
            let changed = Instant::now();
            api.patch(
                "pod-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"containers": [{"name": "app", "image": "i", "command": command}]}})),
            )
            .await
            .unwrap();
            expected = if n % 2 == 0 { expected + 1 } else { expected - 1 };
            while violating(&server) != Some(expected) {
                assert!(
                    changed.elapsed() < Duration::from_secs(30),
                    "status never reflected change {n}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            latencies.push(changed.elapsed());
        }
    });
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "status latency over {CHANGES} changes: p50 {:.0} ms, p90 {:.0} ms (includes the 100 ms debounce)",
        p(0.5),
        p(0.9)
    );
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "RESULT audit pods={PODS} idle_rss_mib={idle:.0} rss_mib={loaded:.0} status_p50_ms={:.0} status_p90_ms={:.0}",
        p(0.5),
        p(0.9)
    );
}
