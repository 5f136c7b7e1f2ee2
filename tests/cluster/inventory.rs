//! The migration inventory on the real control plane and a real registry:
//! the audit reads the images of what already runs and applies the image
//! rules to it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::registry::{Blob, Compression, Image, Layer, TestRegistry, push};
use crate::support::*;

async fn push_images(registry: &TestRegistry, ns: &str) -> [String; 4] {
    let distroless = registry.image(&format!("{ns}/api:1-distroless"));
    let app = Layer::new().file("app", b"ELF").tar();
    push(
        &distroless,
        &Image::new(vec![Blob::layer(app, Compression::Gzip)]).user("65532"),
    )
    .await;
    let debian = registry.image(&format!("{ns}/api:1-debian"));
    let base = Layer::new()
        .symlink("bin", "usr/bin")
        .file("usr/bin/dash", b"ELF")
        .symlink("usr/bin/sh", "dash")
        .file("usr/bin/apt-get", b"ELF")
        .file("var/lib/dpkg/status", b"Package: base-files\n")
        .tar();
    push(
        &debian,
        &Image::new(vec![Blob::layer(base, Compression::Gzip)]).user("65532"),
    )
    .await;
    let alpine = registry.image(&format!("{ns}/api:1-alpine"));
    let base = Layer::new()
        .file("bin/busybox", b"ELF")
        .symlink("bin/sh", "/bin/busybox")
        .file("sbin/apk", b"ELF")
        .tar();
    push(
        &alpine,
        &Image::new(vec![Blob::layer(base, Compression::Gzip)]).user("65532"),
    )
    .await;
    let missing = registry.image(&format!("{ns}/api:never-pushed"));
    [distroless, debian, alpine, missing]
}

fn deployment(ns: &str, name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
        "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                 "containers": [{"name": "api", "image": image}]}}}})
}

#[tokio::test]
async fn the_audit_reads_running_images_and_counts_shells_package_managers_and_unreadable_images() {
    let registry = TestRegistry::start();
    let release = Release::install_inspecting("distroless-guard-inv", &registry.host()).await;
    let ns = release.namespace("inv", &[]).await;
    let [distroless, debian, alpine, missing] = push_images(&registry, &ns).await;
    for (name, image) in [
        ("distroless", &distroless),
        ("debian", &debian),
        ("alpine", &alpine),
        ("missing", &missing),
    ] {
        let out = kubectl_stdin(&["apply", "-f", "-"], &deployment(&ns, name, image).to_string()).await;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let name = testcluster::unique("inv-audit");
    create_policy(&policy(&name, &ns, json!({"action": "Audit"}))).await;
    let audit = wait_for("the image counts", Duration::from_secs(90), || async {
        let p = get_json(&["distrolesspolicy", &name]).await?;
        let images = p.pointer("/status/audit/images")?.clone();
        (images["pending"] == 0 && images["distroless"] == 1).then(|| p["status"]["audit"].clone())
    })
    .await;
    assert_eq!(
        audit["images"],
        json!({"distroless": 1, "notDistroless": 2, "unverified": 1, "pending": 0}),
        "{audit:#}"
    );
    assert_eq!(
        (
            audit["matched"].clone(),
            audit["compliant"].clone(),
            audit["violating"].clone()
        ),
        (json!(4), json!(1), json!(3)),
        "{audit:#}"
    );
    assert_eq!(audit["byRule"]["image-has-shell"], 2, "{audit:#}");
    assert_eq!(audit["byRule"]["image-has-package-manager"], 2, "{audit:#}");
    assert_eq!(
        audit["byRule"]["image-unverified"], 1,
        "an unreadable image is never compliant: {audit:#}"
    );
    // The Event on the Debian-based workload names the shell's path.
    let event = wait_event(&ns, "the violation Event of the debian workload", |e| {
        e["regarding"]["name"] == "debian" && e["reason"] == "DistrolessViolation"
    })
    .await;
    assert!(event["note"].as_str().unwrap().contains("/usr/bin/dash"), "{event:#}");

    // The same findings as a PolicyReport, with the evidence path and the fix.
    let report = wait_for("the namespace's PolicyReport", Duration::from_secs(30), || async {
        let r = get_json(&["policyreports.wgpolicyk8s.io", &release.name, "-n", &ns]).await?;
        (r["summary"]["pass"] == 1).then_some(r)
    })
    .await;
    let results = report["results"].as_array().unwrap();
    let shell = results
        .iter()
        .find(|r| r["rule"] == "image-has-shell" && r["resources"][0]["name"] == "debian")
        .unwrap_or_else(|| panic!("no image-has-shell result for debian: {report:#}"));
    assert_eq!(
        (
            shell["result"].clone(),
            shell["severity"].clone(),
            shell["policy"].clone()
        ),
        (json!("fail"), json!("high"), json!(name))
    );
    assert!(
        shell["message"].as_str().unwrap().contains("/usr/bin/dash") && shell["properties"]["fix"].is_string(),
        "{shell:#}"
    );
    assert!(
        results
            .iter()
            .any(|r| r["rule"] == "image-unverified" && r["resources"][0]["name"] == "missing")
    );
    assert!(
        results
            .iter()
            .any(|r| r["result"] == "pass" && r["resources"][0]["name"] == "distroless")
    );
    let cluster = get_json(&["clusterpolicyreports.wgpolicyk8s.io", &release.name])
        .await
        .unwrap();
    // Five findings here (image-unverified is a warning by default, onError: Warn).
    let findings = cluster["summary"]["fail"].as_u64().unwrap() + cluster["summary"]["warn"].as_u64().unwrap();
    assert!(findings >= 5, "{cluster:#}");
    // The inventory a platform team reads, from the cluster with the user's
    // credentials: the same verdicts, with the evidence.
    let out = crate::plugin::plugin(&[
        "inventory",
        "-n",
        &ns,
        "-o",
        "json",
        "--insecure-registry",
        &registry.host(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out).1);
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = |name: &str| {
        inv["namespaces"][0]["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(state("distroless")["state"], "done", "{inv:#}");
    assert_eq!(state("debian")["state"], "notDistroless");
    assert!(
        state("debian")["images"][0]["why"]
            .to_string()
            .contains("/usr/bin/dash"),
        "{inv:#}"
    );
    assert!(
        state("debian")["nextStep"]
            .as_str()
            .unwrap()
            .contains("DistrolessRollout"),
        "{inv:#}"
    );
    assert_eq!(state("alpine")["state"], "notDistroless");
    assert_eq!(state("missing")["state"], "unverified");
    assert_eq!(inv["totals"]["workloads"], 4);
    // And the same as a metric for a migration dashboard.
    let metrics = wait_for("the workloads metric", Duration::from_secs(30), || async {
        for o in &release.operators {
            let mut curl = std::process::Command::new("curl");
            curl.args(["-sf", "--max-time", "10", &format!("http://{}/metrics", o.health)]);
            let out = output(curl).await;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if text.contains(&format!(
                "distroless_guard_workloads{{namespace=\"{ns}\",state=\"not_distroless\"}} 2"
            )) {
                return Some(text);
            }
        }
        None
    })
    .await;
    assert!(
        metrics.contains(&format!(
            "distroless_guard_workloads{{namespace=\"{ns}\",state=\"done\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "distroless_guard_workloads{{namespace=\"{ns}\",state=\"unverified\"}} 1"
    )));

    // A deleted workload leaves the report with the next pass.
    kubectl_ok(&["delete", "deployment", "alpine", "-n", &ns]).await;
    wait_for(
        "the deleted workload's results gone",
        Duration::from_secs(30),
        || async {
            let r = get_json(&["policyreports.wgpolicyk8s.io", &release.name, "-n", &ns]).await?;
            (!r["results"]
                .as_array()?
                .iter()
                .any(|x| x["resources"][0]["name"] == "alpine"))
            .then_some(())
        },
    )
    .await;

    // The registry goes away: new images are unverified, the audit goes on.
    let mut registry = registry;
    registry.stop();
    let late = format!("{}/{ns}/late:1", registry.host());
    let out = kubectl_stdin(&["apply", "-f", "-"], &deployment(&ns, "late", &late).to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    let audit = wait_for("the late image unverified", Duration::from_secs(90), || async {
        let p = get_json(&["distrolesspolicy", &name]).await?;
        (p.pointer("/status/audit/images/unverified")? == 2).then(|| p["status"]["audit"].clone())
    })
    .await;
    assert_eq!(audit["matched"], 4, "{audit:#}");
    // Fixed: the debian workload moves to the distroless image.
    kubectl_ok(&[
        "set",
        "image",
        "deployment/debian",
        "-n",
        &ns,
        &format!("api={distroless}"),
    ])
    .await;
    wait_for(
        "the fixed workload counted compliant",
        Duration::from_secs(60),
        || async {
            let p = get_json(&["distrolesspolicy", &name]).await?;
            (p.pointer("/status/audit/compliant")? == 2).then_some(())
        },
    )
    .await;
    delete_policy(&name).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_thousand_workloads_over_fifty_images_read_each_image_once() {
    use crate::registry::CountingFront;
    use futures_util::StreamExt;
    let registry = TestRegistry::start();
    let front = CountingFront::start(registry.addr).await;
    let release = Release::install_inspecting("distroless-guard-once", &front.host()).await;
    let ns = release.namespace("once", &[]).await;
    // Fifty distinct images (pushed straight to the registry, not through the front).
    for i in 0..50 {
        let layer = Layer::new().file("app", format!("ELF {i}").as_bytes()).tar();
        push(
            &registry.image(&format!("once/app{i}:1")),
            &Image::new(vec![Blob::layer(layer, Compression::Gzip)]).user("65532"),
        )
        .await;
    }
    // A thousand suspended CronJobs (audited, no pods), twenty per image,
    // created before any policy: admission reads no image, only the audit does.
    let client = client().await;
    let cronjobs: kube::Api<k8s_openapi::api::batch::v1::CronJob> = kube::Api::namespaced(client, &ns);
    futures_util::stream::iter(0..1000)
        .map(|i| {
            let cronjobs = cronjobs.clone();
            let image = format!("{}/once/app{}:1", front.host(), i % 50);
            async move {
                let cj = serde_json::from_value(json!({"metadata": {"name": format!("job-{i}")},
                    "spec": {"schedule": "@yearly", "suspend": true, "jobTemplate": {"spec": {"template": {"spec": {
                        "restartPolicy": "Never", "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                        "containers": [{"name": "c", "image": image}]}}}}}}))
                .unwrap();
                cronjobs.create(&Default::default(), &cj).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    assert!(front.requests().is_empty(), "{:?}", front.requests());
    let name = testcluster::unique("once-audit");
    create_policy(&policy(&name, &ns, json!({"action": "Audit"}))).await;
    let audit = wait_for(
        "fifty images read for a thousand workloads",
        Duration::from_secs(120),
        || async {
            let p = get_json(&["distrolesspolicy", &name]).await?;
            let a = p.pointer("/status/audit")?.clone();
            (a["matched"] == 1000 && a["images"]["distroless"] == 50 && a["images"]["pending"] == 0).then_some(a)
        },
    )
    .await;
    assert_eq!(audit["compliant"], 1000, "{audit:#}");
    let per_image = |requests: &[String]| {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for r in requests {
            if let Some(repo) = r
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.strip_prefix("/v2/once/"))
                .and_then(|p| p.split('/').next())
            {
                *counts.entry(repo.to_string()).or_default() += 1;
            }
        }
        counts
    };
    let first = front.requests();
    let counts = per_image(&first);
    assert_eq!(counts.len(), 50, "{counts:?}");
    // One inspection of a one-layer image: the manifest (by tag), the config, the layer.
    assert!(counts.values().all(|n| *n == 3), "{counts:?}");
    // More passes of the image reader within the refresh interval read
    // nothing again. (The passes are caused by namespace label changes:
    // workload updates would go through admission, which reads images on its
    // own.) Each touch waits for a pass that began after it: the reader's own
    // counter is the proof it had its chance.
    let passes = "distroless_guard_image_audit_passes_total";
    let reads_before = metric_sum(&release, "distroless_guard_image_audit_reads_total").await;
    for i in 0..5 {
        let before = metric_sum(&release, passes).await;
        kubectl_ok(&["label", "namespace", &ns, &format!("touched={i}"), "--overwrite"]).await;
        wait_for(
            "an image-reader pass after the touch",
            Duration::from_secs(30),
            || async { (metric_sum(&release, passes).await > before).then_some(()) },
        )
        .await;
    }
    assert_eq!(
        front.requests().len(),
        first.len(),
        "an image was read again within the refresh interval"
    );
    assert_eq!(
        metric_sum(&release, "distroless_guard_image_audit_reads_total").await,
        reads_before
    );
    delete_policy(&name).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_registry_that_never_answers_makes_its_images_unverified_without_holding_up_the_audit() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let registry = TestRegistry::start();
    let host = registry.host();
    let release = Release::install(
        "distroless-guard-slow",
        &[
            "--set",
            "imageInspection.enabled=true",
            "--set",
            &format!("imageInspection.insecureRegistries={{{host},{silent}}}"),
            "--set",
            "imageInspection.auditTimeoutSeconds=3",
        ],
    )
    .await;
    let ns = release.namespace("slow", &[]).await;
    let [distroless, ..] = push_images(&registry, &ns).await;
    let stuck = format!("{silent}/{ns}/stuck:1");
    for (name, image) in [("stuck", &stuck), ("fine", &distroless)] {
        let out = kubectl_stdin(&["apply", "-f", "-"], &deployment(&ns, name, image).to_string()).await;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let name = testcluster::unique("slow-audit");
    create_policy(&policy(&name, &ns, json!({"action": "Audit"}))).await;
    // The readable image is judged while the other one still hangs.
    wait_for("the readable image judged", Duration::from_secs(30), || async {
        let p = get_json(&["distrolesspolicy", &name]).await?;
        (p.pointer("/status/audit/images/distroless")? == 1).then_some(())
    })
    .await;
    let audit = wait_for(
        "the silent registry's image unverified",
        Duration::from_secs(60),
        || async {
            let p = get_json(&["distrolesspolicy", &name]).await?;
            (p.pointer("/status/audit/images/unverified")? == 1).then(|| p["status"]["audit"].clone())
        },
    )
    .await;
    assert_eq!(
        (
            audit["images"]["pending"].clone(),
            audit["byRule"]["image-unverified"].clone()
        ),
        (json!(0), json!(1)),
        "{audit:#}"
    );
    // The audit still follows changes.
    kubectl_ok(&["delete", "deployment", "fine", "-n", &ns]).await;
    wait_for("the audit to follow a deletion", Duration::from_secs(30), || async {
        let p = get_json(&["distrolesspolicy", &name]).await?;
        (p.pointer("/status/audit/matched")? == 1).then_some(())
    })
    .await;
    delete_policy(&name).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}
