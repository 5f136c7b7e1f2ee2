//! The audit's image inventory at scale, on the real control plane and a
//! real registry (Debian's `docker-registry`, behind a front that counts
//! requests): 2,000 workloads (suspended CronJobs: audited, no pods) over
//! 200 distinct images, the chart installed with image inspection and one
//! replica played by the release binary.
//!
//! - cold: from the policy's creation to a status with every image read
//!   (registry reads included);
//! - warm: the mean time an audit pass spends evaluating everything
//!   (`distroless_guard_audit_evaluation_seconds`) over passes with every
//!   verdict cached, caused by namespace label changes;
//! - registry requests during the cold pass for the images (manifests and
//!   blobs), against what the verdicts need (one manifest, one config and one
//!   layer per image); the registry client's `GET /v2/` version checks are
//!   printed apart.
//!
//! Last line: `RESULT inventory workloads=.. images=.. cold_ms=.. warm_ms=.. registry_requests=..`

#[path = "support/cluster.rs"]
mod cluster;
#[path = "../tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use testcluster::{ControlPlane, Options};

use registry::{Blob, Compression, CountingFront, Image, Layer, TestRegistry, push};

const WORKLOADS: usize = 2_000;
const IMAGES: usize = 200;
const WARM_PASSES: usize = 20;

fn main() {
    cluster::run(
        Options {
            nodes: 1,
            unlimited: true,
            ..Options::default()
        },
        run,
    );
}

fn policies(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("distrolessguard.dev", "v1alpha1", "DistrolessPolicy");
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, "distrolesspolicies"),
    )
}

/// (sum, count) of the evaluation histogram on the operator's /metrics.
async fn evaluation(health: std::net::SocketAddr) -> (f64, f64) {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", &format!("http://{health}/metrics")])
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("distroless_guard_audit_evaluation_seconds_sum"),
        value("distroless_guard_audit_evaluation_seconds_count"),
    )
}

async fn run(cp: &'static ControlPlane) {
    let registry = TestRegistry::start();
    let front = CountingFront::start(registry.addr).await;
    for i in 0..IMAGES {
        let layer = Layer::new()
            .file("app", format!("ELF {i}").as_bytes())
            .file("etc/passwd", b"nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n")
            .tar();
        let image = registry.image(&format!("inv/app{i}:1"));
        push(
            &image,
            &Image::new(vec![Blob::layer(layer, Compression::Gzip)]).user("65532"),
        )
        .await;
    }
    let release = cluster::install_with(
        cp,
        &[
            "imageInspection.enabled=true".into(),
            // A local registry: the politeness limit (10/s by default) would be all the cold pass measures.
            "imageInspection.auditRegistryRate=200".into(),
            format!("imageInspection.insecureRegistries={{{}}}", front.host()),
        ],
    )
    .await;
    let health = release.operators[0].health;
    let client = cp.client().await.unwrap();
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "inventory"}})).unwrap();
    Api::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let cronjobs: Api<k8s_openapi::api::batch::v1::CronJob> = Api::namespaced(client.clone(), "inventory");
    let created = Instant::now();
    futures_util::stream::iter(0..WORKLOADS)
        .map(|i| {
            let cronjobs = cronjobs.clone();
            let image = format!("{}/inv/app{}:1", front.host(), i % IMAGES);
            async move {
                let cj = serde_json::from_value(json!({"metadata": {"name": format!("job-{i}")},
                    "spec": {"schedule": "@yearly", "suspend": true, "jobTemplate": {"spec": {"template": {"spec": {
                        "restartPolicy": "Never", "containers": [{"name": "c", "image": image}]}}}}}}))
                .unwrap();
                for attempt in 0.. {
                    match cronjobs.create(&PostParams::default(), &cj).await {
                        Ok(_) => break,
                        Err(e) if attempt < 5 => {
                            eprintln!("job-{i}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("job-{i}: {e}"),
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    println!(
        "created {WORKLOADS} CronJobs in {:.1} s",
        created.elapsed().as_secs_f64()
    );
    assert!(front.requests().is_empty(), "nothing read before a policy exists");

    // Cold: the policy appears; every image is read once.
    let policy: DynamicObject = serde_json::from_value(json!({"apiVersion": "distrolessguard.dev/v1alpha1",
        "kind": "DistrolessPolicy", "metadata": {"name": "inventory"},
        "spec": {"action": "Audit", "match": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "inventory"}}}}}))
    .unwrap();
    let cold = Instant::now();
    policies(&client).create(&PostParams::default(), &policy).await.unwrap();
    loop {
        let p = policies(&client).get("inventory").await.unwrap();
        let images = p.data.pointer("/status/audit/images").cloned().unwrap_or_default();
        if p.data.pointer("/status/audit/matched") == Some(&json!(WORKLOADS))
            && images["pending"] == 0
            && images["distroless"] == IMAGES
        {
            break;
        }
        assert!(
            cold.elapsed() < Duration::from_secs(300),
            "the cold pass never finished: {images}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cold_ms = cold.elapsed().as_secs_f64() * 1e3;
    let requests = front.requests();
    let image_requests = requests.iter().filter(|r| r.contains("/v2/inv/")).count();
    let pings = requests.len() - image_requests;
    let needed = IMAGES * 3;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for r in &requests {
        let mut parts = r.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let kind = if path.contains("/manifests/") {
            "manifests"
        } else if path.contains("/blobs/") {
            "blobs"
        } else {
            path
        };
        *kinds.entry(format!("{method} {kind}")).or_default() += 1;
    }
    println!(
        "cold pass {cold_ms:.0} ms; {} registry requests: {image_requests} for the images ({needed} needed: ratio {:.2}) and {pings} \
         `GET /v2/` version checks the registry client makes before each request to a registry without tokens: {kinds:?}",
        requests.len(),
        image_requests as f64 / needed as f64
    );

    // Warm: passes with every verdict cached.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sum0, count0) = evaluation(health).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for i in 0..WARM_PASSES {
        let patch = json!({"metadata": {"labels": {"pass": i.to_string()}}});
        namespaces
            .patch("inventory", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sum1, count1) = evaluation(health).await;
    let passes = count1 - count0;
    assert!(passes >= 1.0, "no warm pass ran");
    let warm_ms = (sum1 - sum0) / passes * 1e3;
    assert_eq!(front.requests().len(), requests.len(), "warm passes read nothing");
    println!("warm: {passes} passes, mean evaluation {warm_ms:.1} ms");
    let _ = release.uninstall().await;
    println!(
        "RESULT inventory workloads={WORKLOADS} images={IMAGES} cold_ms={cold_ms:.0} warm_ms={warm_ms:.0} registry_requests={image_requests}"
    );
}
