//! The audit controller at scale, on the real control plane: the chart
//! installed with Helm, the `distroless-guard` binary playing its pods (with
//! the chart's ServiceAccount), and N pods (10,000 unless given:
//! `cargo bench --bench audit -- 50000`), 500 per namespace, created through
//! the API server and run by kwok on fake nodes.
//!
//! The order: the operator alone on the empty cluster (its idle memory), then
//! uninstalled; the pods, and the API server's memory without the operator
//! (the baseline); the operator installed again, the time from `helm install`
//! to its first status counting every pod; its memory and the API server's with it; then the time from a
//! workload change to the updated policy status, many times.
//!
//! `cargo bench --bench audit -- 50000 paged` has the watches list in pages
//! (`streaming`: streamed; unset: as the operator chooses for the server).
//!
//! Last line: `RESULT audit pods=.. idle_rss_mib=.. rss_mib=.. rss_peak_mib=.. status_p50_ms=.. status_p90_ms=..
//! apiserver_rss_mib=.. apiserver_rss_baseline_mib=.. apiserver_start_peak_mib=.. first_summary_s=..
//! initial_list=.. took_s=..`

#[path = "support/cluster.rs"]
mod cluster;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use testcluster::{ControlPlane, Options};

const PODS_PER_NAMESPACE: usize = 500;
const CHANGES: usize = 60;

/// The arguments after `--` (cargo passes `--bench` too): a pod count, and
/// `paged` or `streaming` for how the operator's watches list (unset: the
/// operator chooses by the API server's version).
fn arguments() -> (usize, Option<String>) {
    let mut pods = 10_000;
    let mut list = None;
    for a in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
        match a.as_str() {
            "paged" | "streaming" => list = Some(a),
            _ => pods = a.parse().unwrap_or_else(|_| {
                panic!(
                    "{a:?} is neither a pod count nor paged/streaming; e.g. cargo bench --bench audit -- 50000 paged"
                )
            }),
        }
    }
    (pods, list)
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A memory figure of /proc/PID/status, in MiB (`VmHWM:` is the peak RSS).
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
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

/// A process's memory once it has settled: the API server's Go runtime hands
/// freed pages back over minutes, and the operator writes its first pass's
/// Events for a while after its first status, so one sample says more about
/// timing than about what is held. Sampled every 2 s until the last 20 s vary
/// by less than 2% (at most 5 minutes); the lowest of those.
async fn settled_rss(name: &str, pid: u32) -> f64 {
    let started = Instant::now();
    let mut samples: Vec<f64> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        samples.push(rss_mib(pid));
        let window = &samples[samples.len().saturating_sub(10)..];
        let (low, high) = window
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), v| (l.min(*v), h.max(*v)));
        if (window.len() == 10 && high - low < 0.02 * high) || started.elapsed() > Duration::from_secs(300) {
            println!(
                "{name} settled at {low:.0} MiB after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            return low;
        }
    }
}

/// With `DISTROLESS_GUARD_HEAP_PROFILE` set (and `--features heap-profile`):
/// SIGUSR2 has the operator write its dhat profile, then the live bytes at that
/// moment are printed per allocation site: the first frame of ours and what
/// it called.
#[allow(unsafe_code)] // libc::kill: see SAFETY below
async fn heap_profile(pid: u32) {
    let Ok(file) = std::env::var("DISTROLESS_GUARD_HEAP_PROFILE") else {
        return;
    };
    let _ = std::fs::remove_file(&file);
    // SAFETY: kill(2) on the operator's pid; no memory is shared.
    unsafe { libc::kill(pid as i32, libc::SIGUSR2) };
    let asked = Instant::now();
    let profile: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(v) = serde_json::from_str(&text)
        {
            break v;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(300),
            "no heap profile in {file}: was the operator built with --features heap-profile?"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let frames: Vec<&str> = profile["ftbl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect();
    // Our frames read `0x..: function (src/<module>/file.rs:line:col)`; the
    // standard library's are trimmed to `src/vec/mod.rs` too, so ours are
    // told by the modules under src/.
    let modules: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .map(|name| format!("(src/{name}"))
        .collect();
    let function = |frame: &str| frame.split_once(": ").map_or(frame, |(_, f)| f).to_string();
    let mut sites: std::collections::HashMap<String, (f64, f64)> = std::collections::HashMap::new();
    for pp in profile["pps"].as_array().unwrap() {
        let stack: Vec<&str> = pp["fs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| frames.get(i.as_u64()? as usize).copied())
            .collect();
        let ours = stack
            .iter()
            .position(|f| modules.iter().any(|m| f.contains(m.as_str())));
        let site = match ours {
            // Our frame, and what it called (which says what was allocated).
            Some(i) if i > 0 => format!("{}  <- {}", function(stack[i]), function(stack[i - 1])),
            Some(i) => function(stack[i]),
            None => format!("(libraries) {}", stack.get(12).map(|f| function(f)).unwrap_or_default()),
        };
        let site: String = site.chars().take(200).collect();
        let e = sites.entry(site).or_default();
        e.0 += pp["eb"].as_f64().unwrap_or(0.0);
        e.1 += pp["gb"].as_f64().unwrap_or(0.0);
    }
    let mut sites: Vec<_> = sites.into_iter().collect();
    sites.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    let mib = |b: f64| b / 1048576.0;
    let live: f64 = sites.iter().map(|s| s.1.0).sum();
    let peak: f64 = sites.iter().map(|s| s.1.1).sum();
    println!(
        "heap: {:.1} MiB live now, {:.1} MiB at the peak; live bytes by site:",
        mib(live),
        mib(peak)
    );
    for (site, (now, at_peak)) in sites.iter().take(15) {
        println!(
            "  {:>7.2} MiB now {:>7.2} MiB at peak  {site}",
            mib(*now),
            mib(*at_peak)
        );
    }
}

async fn run(cp: &'static ControlPlane) {
    let started = Instant::now();
    let (pods_total, initial_list) = arguments();
    let sets: Vec<String> = initial_list
        .iter()
        .map(|l| format!("watches.initialList={l}"))
        .collect();
    let namespaces = pods_total.div_ceil(PODS_PER_NAMESPACE);
    let client = cp.client().await.unwrap();
    let release = cluster::install(cp).await;
    let pid = release.operators[0].pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(pid);

    let policy: DynamicObject = serde_json::from_value(json!({"apiVersion": "distrolessguard.dev/v1alpha1",
        "kind": "DistrolessPolicy", "metadata": {"name": "audit"}, "spec": {"action": "Audit"}}))
    .unwrap();
    policies(&client).create(&PostParams::default(), &policy).await.unwrap();
    release.uninstall().await.expect("helm uninstall");
    for n in 0..namespaces {
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("team-{n}")}})).unwrap();
        Api::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    // The default ServiceAccounts the pods need.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0..namespaces {
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &format!("team-{n}"));
        while sas.get_opt("default").await.ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "no default ServiceAccount in team-{n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The pods, half of them starting a shell, 16 creates in flight. Without
    // the operator, so they carry the non-root context its webhook would add.
    let created = Instant::now();
    futures_util::stream::iter(0..pods_total)
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
                    "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532},
                             "containers": [container]}}))
                .unwrap();
                let api: Api<k8s_openapi::api::core::v1::Pod> =
                    Api::namespaced(client, &format!("team-{}", i % namespaces));
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
    println!("created {pods_total} pods in {:.1} s", created.elapsed().as_secs_f64());
    let running = Instant::now();
    loop {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
        let list = pods
            .list_metadata(&kube::api::ListParams::default().fields("status.phase=Running"))
            .await
            .unwrap();
        if list.items.len() >= pods_total {
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
        "all {pods_total} pods running on kwok nodes after {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let apiserver_pid = cp.pid("kube-apiserver").unwrap_or(0);
    let baseline = settled_rss("kube-apiserver", apiserver_pid).await;
    println!("kube-apiserver without the operator: {baseline:.0} MiB");

    // From `helm install` to its first status counting the pods from before.
    // The API server's memory is sampled meanwhile: the operator's initial
    // lists are what it serves then.
    let summarized = Instant::now();
    let peak = std::sync::Arc::new(std::sync::Mutex::new(0.0f64));
    let sampling = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                let now = rss_mib(apiserver_pid);
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let release = cluster::install_with(cp, &sets).await;
    let pid = release.operators[0].pid();
    while violating(&client).await != Some((pods_total / 2) as u64) {
        assert!(
            summarized.elapsed() < Duration::from_secs(300),
            "the operator never summarized {pods_total} pods"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampling.abort();
    let apiserver_peak = *peak.lock().unwrap();
    let first_summary = summarized.elapsed().as_secs_f64();
    let loaded = settled_rss("the operator", pid).await;
    let loaded_peak = status_mib(pid, "VmHWM:");
    let apiserver = settled_rss("kube-apiserver", apiserver_pid).await;
    heap_profile(pid).await;
    println!(
        "operator RSS: {idle:.1} MiB idle, {loaded:.1} MiB with {pods_total} pods ({loaded_peak:.0} MiB at most; \
         first summary after {first_summary:.1} s); \
         kube-apiserver {apiserver:.0} MiB ({:+.0}% over {baseline:.0} MiB without the operator; \
         {apiserver_peak:.0} MiB at most while the operator started)",
        (apiserver / baseline - 1.0) * 100.0
    );

    // A workload change -> the updated status, many times: a suspended CronJob
    // (no pods) toggles between starting a shell and not.
    let cronjobs: Api<k8s_openapi::api::batch::v1::CronJob> = Api::namespaced(client.clone(), "team-0");
    let cron: k8s_openapi::api::batch::v1::CronJob = serde_json::from_value(json!({
        "metadata": {"name": "toggle"},
        "spec": {"schedule": "@yearly", "suspend": true, "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.example.com/job:1"}]}}}}}}))
    .unwrap();
    cronjobs.create(&PostParams::default(), &cron).await.unwrap();
    let mut expected = (pods_total / 2) as u64;
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
        "RESULT audit pods={pods_total} idle_rss_mib={idle:.0} rss_mib={loaded:.0} rss_peak_mib={loaded_peak:.0} status_p50_ms={:.0} status_p90_ms={:.0} \
         apiserver_rss_mib={apiserver:.0} apiserver_rss_baseline_mib={baseline:.0} apiserver_start_peak_mib={apiserver_peak:.0} \
         first_summary_s={first_summary:.1} initial_list={} took_s={:.0}",
        p(0.5),
        p(0.9),
        initial_list.as_deref().unwrap_or("auto"),
        started.elapsed().as_secs_f64()
    );
}
