//! Rollback speed on the real control plane: the chart installed with Helm,
//! the `distroless-guard` binary playing its pod, the real Deployment,
//! ReplicaSet and EndpointSlice controllers, kwok as the kubelet. Each run
//! rolls a 4-replica Deployment to a distroless image at 50% and, once the
//! canary pods serve (in the Service's EndpointSlice), makes them fail the
//! way a kubelet would report it (a kwok Stage, selected by a label the
//! bench sets): crash loop, CreateContainerConfigError, OOM kill, restarts
//! while Ready, in turn.
//!
//! Watches time each run from the moment the API server shows the failure in
//! a canary pod's status: to `status.phase: RolledBack` (detect: the
//! operator's decision, written before it acts), to every canary pod's
//! serving gate closed (the operator's action done), and from there to the
//! last canary pod leaving the ready endpoints (the EndpointSlice
//! controller's part). A time-based failure is timed too: a canary that never
//! becomes ready, `RolledBack` how long after `readyTimeoutSeconds` ran out.
//!
//! Then the same on a real node (kubelet, containerd, runc): a 2-replica
//! Deployment of the standard test image rolls to a distroless image whose
//! entrypoint is a shell, which the runtime cannot start. Detect runs from
//! the kubelet's first failed status of a canary pod to `RolledBack`;
//! rollback to the last canary pod gone; the kubelet's own part is the time
//! from a canary pod first seen to that failed status. Times are differences of the
//! watches' clocks, never clamped.
//!
//! Last lines: `RESULT rollout runs=.. detect_p50_ms=.. operator_act_p50_ms=.. endpoints_p50_ms=.. ...`
//! and `RESULT rollout ready_timeout_s=.. late_p50_ms=..` (kwok), and
//! `RESULT rollout node=real runs=.. kubelet_p50_ms=.. detect_p50_ms=.. ...` (real node).

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use serde_json::json;
use testcluster::oci::test_images;
use testcluster::stages::{Failure, Target, observed};
use testcluster::{ControlPlane, Options};

const RUNS: usize = 12;
const REAL_RUNS: usize = 6;
const REPLICAS: i32 = 4;
const TIMEOUT_RUNS: usize = 4;
const READY_TIMEOUT_S: u32 = 4;
/// The canary image whose pods never become ready (a kwok Stage).
const NOT_READY_IMAGE: &str = "registry.example.com/web:1-notready";

fn failures() -> Vec<(&'static str, Failure)> {
    vec![
        ("crash", observed::shell_in_distroless(200)),
        ("config", observed::root_image()),
        ("oom", Failure::OomKilled { every_ms: 200 }),
        ("flap", Failure::RestartsWhileReady { every_ms: 200 }),
    ]
}

fn rollouts(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("distrolessguard.dev", "v1alpha1", "DistrolessRollout");
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "distrolessrollouts"),
    )
}

/// Whether a canary pod's status shows one of the injected failures.
fn shows_failure(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.restart_count > 0 || c.state.as_ref().is_some_and(|s| s.waiting.is_some()))
}

async fn wait<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    cluster::run(
        Options {
            nodes: 2,
            real_nodes: 1,
            ..Options::default()
        },
        run,
    );
}

async fn run(cp: &'static ControlPlane) {
    let client = cp.client().await.unwrap();
    let release = cluster::install(cp).await;
    let kinds = failures();
    for (kind, failure) in &kinds {
        let target = Target::Label("bench.distrolessguard.dev/fail".into(), (*kind).into());
        cp.create_stage(&failure.stage(&format!("bench-{kind}"), &target))
            .await
            .unwrap();
    }
    cp.create_stage(&Failure::NotReady.stage("bench-notready", &Target::Image(NOT_READY_IMAGE.into())))
        .await
        .unwrap();
    let (mut detect, mut act, mut endpoints) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let (kind, _) = &kinds[i % kinds.len()];
        let (d, a, e) = one_run(&client, &format!("run-{i}"), kind).await;
        println!("run {i} ({kind}): detect {d:.0} ms, gates closed {a:.0} ms, then out of the endpoints {e:.0} ms");
        detect.push(d);
        act.push(a);
        endpoints.push(e);
    }
    let mut late = Vec::new();
    for i in 0..TIMEOUT_RUNS {
        let l = one_timeout_run(&client, &format!("timeout-{i}")).await;
        println!("ready-timeout run {i}: RolledBack {l:.0} ms after the timeout ran out");
        late.push(l);
    }
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[(v.len() - 1) / 2], v[v.len() - 1])
    };
    let (d50, dmax) = stat(&mut detect);
    let (a50, amax) = stat(&mut act);
    let (e50, emax) = stat(&mut endpoints);
    late.sort_by(f64::total_cmp);
    let (l50, lmin, lmax) = (late[(late.len() - 1) / 2], late[0], late[late.len() - 1]);
    let kwok_line = format!(
        "RESULT rollout runs={RUNS} detect_p50_ms={d50:.0} detect_max_ms={dmax:.0} operator_act_p50_ms={a50:.0} \
         operator_act_max_ms={amax:.0} endpoints_p50_ms={e50:.0} endpoints_max_ms={emax:.0}\n\
         RESULT rollout ready_timeout_s={READY_TIMEOUT_S} runs={TIMEOUT_RUNS} late_p50_ms={l50:.0} late_min_ms={lmin:.0} late_max_ms={lmax:.0}"
    );
    println!("{kwok_line}");

    // On the real node.
    let app = cp.bins().path(testcluster::bins::TEST_APP);
    let standard = cp
        .push_image("bench/app", "standard", &test_images::standard(&app).unwrap())
        .unwrap();
    let mut broken = test_images::distroless(&app).unwrap();
    broken.entrypoint = vec!["/bin/sh".into(), "-c".into(), "exec /app serve".into()];
    let broken = cp.push_image("bench/app", "broken", &broken).unwrap();
    let (mut kubelet, mut detect, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..REAL_RUNS {
        let (k, d, r) = one_real_run(&client, &format!("real-{i}"), &standard, &broken).await;
        println!(
            "real run {i}: kubelet {k:.0} ms (canary pod seen to its failed status), detect {d:.0} ms, rollback {r:.0} ms"
        );
        kubelet.push(k);
        detect.push(d);
        gone.push(r);
    }
    let _ = release.uninstall().await;
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[(v.len() - 1) / 2], v[v.len() - 1])
    };
    let (k50, kmax) = stat(&mut kubelet);
    let (d50, dmax) = stat(&mut detect);
    let (r50, rmax) = stat(&mut gone);
    println!("{kwok_line}");
    println!(
        "RESULT rollout node=real runs={REAL_RUNS} kubelet_p50_ms={k50:.0} kubelet_max_ms={kmax:.0} detect_p50_ms={d50:.0} \
         detect_max_ms={dmax:.0} rollback_p50_ms={r50:.0} rollback_max_ms={rmax:.0}"
    );
}

/// Creates namespace `ns` and waits for its default ServiceAccount (pods need it).
async fn create_namespace(client: &kube::Client, ns: &str) {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    wait("the default ServiceAccount", Duration::from_secs(60), || async {
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
        sas.get_opt("default").await.ok().flatten()
    })
    .await;
}

async fn delete_namespace(client: &kube::Client, ns: &str) {
    Api::<Namespace>::all(client.clone())
        .delete(ns, &Default::default())
        .await
        .unwrap();
}

/// A rollout `web` of the Deployment `web` to `image` at 50% (a long bake), with `failure` settings.
async fn create_rollout(client: &kube::Client, ns: &str, image: &str, failure: serde_json::Value) {
    let rollout: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessRollout", "metadata": {"name": "web"},
        "spec": {"targetRef": {"name": "web"}, "containers": [{"name": "app", "image": image}],
                 "steps": [{"weight": 50, "bakeSeconds": 600}, {"weight": 100}], "failure": failure}}))
    .unwrap();
    rollouts(client, ns)
        .create(&PostParams::default(), &rollout)
        .await
        .unwrap();
}

/// What a watch task returns, waited for at most `timeout`.
async fn within<T>(timeout: Duration, task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(timeout, task)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what} ({timeout:?})"))
        .unwrap()
}

/// When the rollout watched through `rollouts` first shows `RolledBack`.
fn when_rolled_back(rollouts: Api<DynamicObject>) -> tokio::task::JoinHandle<Instant> {
    let stream = watcher(rollouts, watcher::Config::default());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(r)) = stream.next().await {
            if r.data.pointer("/status/phase").and_then(|p| p.as_str()) == Some("RolledBack") {
                return Instant::now();
            }
        }
        panic!("the rollout watch ended");
    })
}

/// Whether the real kubelet reports a canary container that could not start.
fn kubelet_failed(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            let waiting = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref());
            let start_error = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.reason.as_deref() == Some("StartError"));
            start_error || matches!(waiting, Some("RunContainerError" | "CrashLoopBackOff"))
        })
}

/// One rollout on the real node to an image the runtime cannot start:
/// (first failed status → RolledBack, → last canary pod gone), in ms.
async fn one_real_run(client: &kube::Client, ns: &str, standard: &str, broken: &str) -> (f64, f64, f64) {
    create_namespace(client, ns).await;
    let placement = testcluster::node::real_node_placement();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "app", "image": standard,
                                  "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}],
                                       "nodeSelector": placement["nodeSelector"], "tolerations": placement["tolerations"]}}}}))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    wait(
        "the Deployment's pods on the real node",
        Duration::from_secs(120),
        || async {
            let d = deployments.get("web").await.ok()?;
            (d.status?.ready_replicas? == 2).then_some(())
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let failed_at = Arc::new(Mutex::new(None::<Instant>));
    let seen_at = Arc::new(Mutex::new(None::<Instant>));
    let all_gone = {
        let failed_at = failed_at.clone();
        let seen_at = seen_at.clone();
        let pods = pods.clone();
        let stream = watcher(
            pods.clone(),
            watcher::Config::default().labels("distrolessguard.dev/rollout=web"),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.default_backoff().applied_objects());
            let canary = ListParams::default().labels("distrolessguard.dev/rollout=web");
            loop {
                let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
                if let Ok(Some(Ok(p))) = next {
                    seen_at.lock().get_or_insert(Instant::now());
                    if kubelet_failed(&p) {
                        failed_at.lock().get_or_insert(Instant::now());
                    }
                }
                if failed_at.lock().is_some() {
                    let live = pods.list(&canary).await.map(|l| l.items.len()).unwrap_or(usize::MAX);
                    if live == 0 {
                        return Instant::now();
                    }
                }
            }
        })
    };
    let rolled_back = when_rolled_back(rollouts(client, ns));
    create_rollout(client, ns, broken, json!({})).await;
    let timeout = Duration::from_secs(120);
    let rolled_back = within(timeout, rolled_back, "RolledBack").await;
    let gone = within(timeout, all_gone, "the canary pods gone").await;
    let failed = failed_at.lock().expect("failure time");
    // Seen before it failed: the kubelet's time.
    let kubelet = signed_ms(failed, seen_at.lock().expect("a canary pod seen"));
    delete_namespace(client, ns).await;
    (kubelet, signed_ms(rolled_back, failed), signed_ms(gone, failed))
}

/// A namespace `ns` with a `REPLICAS`-pod Deployment `web` (kwok's nodes)
/// behind a Service, ready, and a rollout of it to `image` at 50%.
async fn rollout_at_half(client: &kube::Client, ns: &str, image: &str, failure: serde_json::Value) {
    create_namespace(client, ns).await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "app", "image": "registry.example.com/web:1", "ports": [{"containerPort": 8080}]}]}}}}))
    .unwrap();
    let service: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    wait("the Deployment's pods", Duration::from_secs(60), || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.ready_replicas? == REPLICAS).then_some(())
    })
    .await;
    create_rollout(client, ns, image, failure).await;
}

/// When every canary pod watched through `pods` has its serving gate closed
/// (the operator's own action on a rollback), once one was open.
fn when_gates_closed(pods: Api<Pod>) -> tokio::task::JoinHandle<Instant> {
    let stream = watcher(
        pods.clone(),
        watcher::Config::default().labels("distrolessguard.dev/rollout=web"),
    );
    tokio::spawn(async move {
        let open = |p: &Pod| {
            p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "distrolessguard.dev/serving" && c.status == "True")
            })
        };
        let mut was_open = false;
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(p)) = stream.next().await {
            was_open |= open(&p);
            if was_open {
                let canary = ListParams::default().labels("distrolessguard.dev/rollout=web");
                let Ok(list) = pods.list(&canary).await else {
                    continue;
                };
                if !list.items.iter().any(open) {
                    return Instant::now();
                }
            }
        }
        panic!("the canary pod watch ended");
    })
}

/// One rollout to a failing canary: (failure shown → RolledBack, failure
/// shown → every serving gate closed, gates closed → out of the endpoints).
/// Signed, in ms: each instant is taken by a watch of its own, and a later
/// event may be seen first; a negative figure says so instead of a 0.
async fn one_run(client: &kube::Client, ns: &str, kind: &str) -> (f64, f64, f64) {
    rollout_at_half(client, ns, "registry.example.com/web:1-distroless", json!({})).await;
    let rollouts = rollouts(client, ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let canary = ListParams::default().labels("distrolessguard.dev/rollout=web");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let ready_ips = |list: Vec<EndpointSlice>| -> BTreeSet<String> {
        list.into_iter()
            .flat_map(|s| s.endpoints.into_iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses)
            .collect()
    };
    let by_service = ListParams::default().labels("kubernetes.io/service-name=web");
    let canary_ips: BTreeSet<String> = wait("the canary pods serving", Duration::from_secs(60), || async {
        let list = pods.list(&canary).await.ok()?.items;
        let ips: BTreeSet<String> = list.iter().filter_map(|p| p.status.as_ref()?.pod_ip.clone()).collect();
        let serving = ready_ips(slices.list(&by_service).await.ok()?.items);
        // 50%: as many canary pods as the Deployment has.
        (ips.len() == REPLICAS as usize && ips.is_subset(&serving)).then_some(ips)
    })
    .await;

    // Three watches, then the failure.
    let failed_at = Arc::new(Mutex::new(None::<Instant>));
    let shown = {
        let failed_at = failed_at.clone();
        let stream = watcher(
            pods.clone(),
            watcher::Config::default().labels("distrolessguard.dev/rollout=web"),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.applied_objects());
            while let Some(Ok(p)) = stream.next().await {
                if shows_failure(&p) {
                    failed_at.lock().get_or_insert(Instant::now());
                    return;
                }
            }
        })
    };
    let rolled_back = when_rolled_back(rollouts.clone());
    let closed = when_gates_closed(pods.clone());
    let out_of_endpoints = {
        let stream = watcher(
            slices.clone(),
            watcher::Config::default().labels("kubernetes.io/service-name=web"),
        );
        let slices = slices.clone();
        let canary_ips = canary_ips.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.applied_objects());
            while let Some(Ok(_)) = stream.next().await {
                let by_service = ListParams::default().labels("kubernetes.io/service-name=web");
                let Ok(list) = slices.list(&by_service).await else {
                    continue;
                };
                let serving = ready_ips(list.items);
                if serving.is_disjoint(&canary_ips) {
                    return Instant::now();
                }
            }
            panic!("the EndpointSlice watch ended");
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let label = json!({"metadata": {"labels": {"bench.distrolessguard.dev/fail": kind}}});
    for p in pods.list(&canary).await.unwrap().items {
        let name = p.metadata.name.unwrap_or_default();
        // The first failing pod may roll the canary back before the others are labelled.
        let _ = pods.patch(&name, &PatchParams::default(), &Patch::Merge(&label)).await;
    }
    let timeout = Duration::from_secs(60);
    within(timeout, shown, "a failure shown").await;
    let rolled_back = within(timeout, rolled_back, "RolledBack").await;
    let gone = within(timeout, out_of_endpoints, "the canary out of the endpoints").await;
    let closed = within(timeout, closed, "the serving gates closed").await;
    let failed = failed_at.lock().expect("failure time");
    let detect = signed_ms(rolled_back, failed);
    let act = signed_ms(closed, failed);
    let endpoints = signed_ms(gone, closed);
    delete_namespace(client, ns).await;
    (detect, act, endpoints)
}

/// One rollout whose canary never becomes ready (a time-based failure,
/// `readyTimeoutSeconds`): how long after the timeout ran out, counted from
/// the first canary pod seen, the rollout was `RolledBack`, in ms (negative:
/// before; pods' ages are whole seconds since their creation second).
async fn one_timeout_run(client: &kube::Client, ns: &str) -> f64 {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let rolled_back = when_rolled_back(rollouts(client, ns));
    let first_seen = {
        let stream = watcher(
            pods.clone(),
            watcher::Config::default().labels("distrolessguard.dev/rollout=web"),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.default_backoff().applied_objects());
            let _ = stream.next().await;
            Instant::now()
        })
    };
    rollout_at_half(
        client,
        ns,
        NOT_READY_IMAGE,
        json!({"readyTimeoutSeconds": READY_TIMEOUT_S}),
    )
    .await;
    let timeout = Duration::from_secs(60);
    let first_seen = within(timeout, first_seen, "a canary pod").await;
    let rolled_back = within(timeout, rolled_back, "RolledBack").await;
    delete_namespace(client, ns).await;
    let deadline = first_seen + Duration::from_secs(READY_TIMEOUT_S.into());
    if rolled_back >= deadline {
        rolled_back.duration_since(deadline).as_secs_f64() * 1e3
    } else {
        -(deadline.duration_since(rolled_back).as_secs_f64() * 1e3)
    }
}

/// `later - earlier` in ms, negative when `later` came first.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(earlier.duration_since(later).as_secs_f64() * 1e3),
    }
}
