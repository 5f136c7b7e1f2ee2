//! The audit controller at scale, on the real control plane: the chart
//! installed with Helm, the `distroless-guard` binary playing its pods (with
//! the chart's ServiceAccount), 10,000 pods created through the API server
//! (and through our webhooks) and run by kwok on fake nodes. Measures the
//! operator's resident memory idle and with the pods, the API server's, and
//! the time from a workload change to the updated policy status.
//!
//! Last line: `RESULT audit pods=.. idle_rss_mib=.. rss_mib=.. status_p50_ms=.. status_p90_ms=.. apiserver_rss_mib=..`

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use testcluster::{ControlPlane, Options};

const PODS: usize = 10_000;
const NAMESPACES: usize = 20;
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

fn policies(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("distrolessguard.dev", "v1alpha1", "DistrolessPolicy");
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, "distrolesspolicies"),
    )
}

async fn violating(client: &kube::Client) -> Option<u64> {
    let p = policies(client).get("audit").await.ok()?;
    p.data.pointer("/status/audit/violating")?.as_u64()
}

fn main() {
    cluster::run(
        Options {
            nodes: 4,
            unlimited: true,
            ..Options::default()
        },
        run,
    );
}

async fn run(cp: &'static ControlPlane) {
    let client = cp.client().await.unwrap();
    let release = cluster::install(cp).await;
    let pid = release.operators[0].pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(pid);

    let policy: DynamicObject = serde_json::from_value(json!({"apiVersion": "distrolessguard.dev/v1alpha1",
        "kind": "DistrolessPolicy", "metadata": {"name": "audit"}, "spec": {"action": "Audit"}}))
    .unwrap();
    policies(&client).create(&PostParams::default(), &policy).await.unwrap();
    for n in 0..NAMESPACES {
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("team-{n}")}})).unwrap();
        Api::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    // The default ServiceAccounts the pods need.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0..NAMESPACES {
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &format!("team-{n}"));
        while sas.get_opt("default").await.ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "no default ServiceAccount in team-{n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // 10,000 pods, half of them starting a shell, 16 creates in flight.
    let created = Instant::now();
    futures_util::stream::iter(0..PODS)
        .map(|i| {
            let client = client.clone();
            async move {
                let mut container = json!({"name": "app", "image": format!("registry.example.com/team/app:{}", i % 50),
                    "env": [{"name": "A", "value": "1"}], "resources": {"requests": {"cpu": "10m"}}});
                if i % 2 == 0 {
                    container["command"] = json!(["sh", "-c", "exec /app"]);
                }
                let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("pod-{i}"), "labels": {"app": format!("app-{}", i % 50)}},
                    "spec": {"containers": [container]}}))
                .unwrap();
                let api: Api<k8s_openapi::api::core::v1::Pod> =
                    Api::namespaced(client, &format!("team-{}", i % NAMESPACES));
                for attempt in 0.. {
                    match api.create(&PostParams::default(), &pod).await {
                        Ok(_) => break,
                        Err(e) if attempt < 5 => {
                            eprintln!("pod-{i}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("pod-{i}: {e}"),
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    println!("created {PODS} pods in {:.1} s", created.elapsed().as_secs_f64());
    let running = Instant::now();
    loop {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
        let list = pods
            .list_metadata(&kube::api::ListParams::default().fields("status.phase=Running"))
            .await
            .unwrap();
        if list.items.len() >= PODS {
            break;
        }
        assert!(
            running.elapsed() < Duration::from_secs(900),
            "only {} pods running",
            list.items.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "all {PODS} pods running on kwok nodes after {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let summarized = Instant::now();
    while violating(&client).await != Some((PODS / 2) as u64) {
        assert!(
            summarized.elapsed() < Duration::from_secs(120),
            "the operator never summarized {PODS} pods"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = rss_mib(pid);
    let apiserver = cp.pid("kube-apiserver").map(rss_mib).unwrap_or(0.0);
    println!("operator RSS: {idle:.1} MiB idle, {loaded:.1} MiB with {PODS} pods; kube-apiserver {apiserver:.0} MiB");

    // A workload change -> the updated status, many times: a suspended CronJob
    // (no pods) toggles between starting a shell and not.
    let cronjobs: Api<k8s_openapi::api::batch::v1::CronJob> = Api::namespaced(client.clone(), "team-0");
    let cron: k8s_openapi::api::batch::v1::CronJob = serde_json::from_value(json!({
        "metadata": {"name": "toggle"},
        "spec": {"schedule": "@yearly", "suspend": true, "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.example.com/job:1"}]}}}}}}))
    .unwrap();
    cronjobs.create(&PostParams::default(), &cron).await.unwrap();
    let mut expected = (PODS / 2) as u64;
    let mut latencies = Vec::new();
    for n in 0..CHANGES {
        let command: Value = if n % 2 == 0 {
            json!(["sh", "-c", "x"])
        } else {
            Value::Null
        };
        let changed = Instant::now();
        let patch = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "command": command}]}}}}}});
        cronjobs
            .patch("toggle", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
        expected = if n % 2 == 0 { expected + 1 } else { expected - 1 };
        while violating(&client).await != Some(expected) {
            assert!(
                changed.elapsed() < Duration::from_secs(30),
                "status never reflected change {n}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(changed.elapsed());
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "status latency over {CHANGES} changes: p50 {:.0} ms, p90 {:.0} ms (includes the audit's 100 ms debounce)",
        p(0.5),
        p(0.9)
    );
    let _ = release.uninstall().await;
    println!(
        "RESULT audit pods={PODS} idle_rss_mib={idle:.0} rss_mib={loaded:.0} status_p50_ms={:.0} status_p90_ms={:.0} apiserver_rss_mib={apiserver:.0}",
        p(0.5),
        p(0.9)
    );
}
