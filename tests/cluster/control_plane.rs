//! The control plane itself: what later tests rely on.

use std::time::Duration;

use serde_json::{Value, json};
use testcluster::stages::{Failure, Target};

use crate::support::*;

#[tokio::test]
async fn the_api_server_reports_the_pinned_version_and_the_nodes_are_ready() {
    let version = kubectl_ok(&["version", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.37.2", "{v}");
    assert_eq!(v["clientVersion"]["gitVersion"], "v1.37.2", "{v}");
    let nodes = get_json(&["nodes"]).await.unwrap();
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), cp().nodes().len());
    for n in items {
        let ready = n["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{n}");
    }
}

fn gated_pod(name: &str, ns: &str, image: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"readinessGates": [{"conditionType": "example.com/serving"}],
                 "containers": [{"name": "c", "image": image, "ports": [{"containerPort": 8080}]}]}})
    .to_string()
}

async fn condition(ns: &str, pod: &str, kind: &str) -> Option<String> {
    let p = get_json(&["pod", pod, "-n", ns]).await?;
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

#[tokio::test]
async fn deployments_run_on_kwok_nodes_and_readiness_gates_decide_the_endpoints() {
    let ns = namespace("cp-run", &[]).await;
    kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=registry.test/web:1",
        "--replicas=3",
        "-n",
        &ns,
    ])
    .await;
    wait_for(
        "3 running, ready pods of the Deployment",
        Duration::from_secs(60),
        || async {
            let d = get_json(&["deployment", "web", "-n", &ns]).await?;
            (d["status"]["readyReplicas"] == 3).then_some(())
        },
    )
    .await;

    // A pod with a readiness gate stays out of the endpoints until the gate is True.
    let out = kubectl_stdin(&["create", "-f", "-"], &gated_pod("gated", &ns, "registry.test/app:1")).await;
    assert!(out.status.success(), "{}", text(&out).1);
    kubectl_ok(&["expose", "pod", "gated", "--port=80", "--target-port=8080", "-n", &ns]).await;
    wait_for("containers ready", Duration::from_secs(30), || async {
        (condition(&ns, "gated", "ContainersReady").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    // The kubelet writes ContainersReady and Ready together: read together,
    // Ready is its verdict with the containers ready.
    assert_eq!(condition(&ns, "gated", "Ready").await.as_deref(), Some("False"));
    let endpoints = |ns: String, ready: bool| async move {
        let slices = get_json(&["endpointslices", "-n", &ns, "-l", "kubernetes.io/service-name=gated"]).await?;
        Some(
            slices["items"]
                .as_array()?
                .iter()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| !ready || e["conditions"]["ready"] == true)
                .count(),
        )
    };
    let ready_endpoints = |ns: String| endpoints(ns, true);
    // The EndpointSlice controller has seen the pod (it lists it), and not as ready.
    wait_for(
        "the gated pod listed in its EndpointSlice",
        Duration::from_secs(30),
        || {
            let ns = ns.clone();
            async move { (endpoints(ns, false).await? == 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(ready_endpoints(ns.clone()).await, Some(0));
    set_gate(&ns, "gated", "True").await;
    wait_for("the gated pod in the endpoints", Duration::from_secs(30), || {
        let ns = ns.clone();
        async move { (ready_endpoints(ns).await? == 1).then_some(()) }
    })
    .await;
    // Closing the gate takes it out again.
    set_gate(&ns, "gated", "False").await;
    wait_for("the gated pod out of the endpoints", Duration::from_secs(30), || {
        let ns = ns.clone();
        async move { (ready_endpoints(ns).await? == 0).then_some(()) }
    })
    .await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// Writes the pod's readiness gate condition, as a controller would.
async fn set_gate(ns: &str, pod: &str, status: &str) {
    let patch = json!({"status": {"conditions": [{"type": "example.com/serving", "status": status}]}}).to_string();
    kubectl_ok(&[
        "patch",
        "pod",
        pod,
        "-n",
        ns,
        "--subresource=status",
        "--type=strategic",
        "-p",
        &patch,
    ])
    .await;
}

async fn first_status(ns: &str, pod: &str) -> Option<Value> {
    let p = get_json(&["pod", pod, "-n", ns]).await?;
    p["status"]["containerStatuses"].get(0).cloned()
}

#[tokio::test]
async fn failure_stages_crash_loop_a_pod_by_image_and_it_recovers_when_they_go() {
    let ns = namespace("cp-chaos", &[]).await;
    let image = format!("registry.test/{ns}/crashy:1");
    let stage = testcluster::unique("crashloop");
    cp().create_stage(
        &Failure::CrashLoop {
            every_ms: 500,
            exit_code: 3,
            message: "exec: \"sh\": executable file not found in $PATH".into(),
        }
        .stage(&stage, &Target::Image(image.clone())),
    )
    .await
    .unwrap();
    let out = kubectl_stdin(
        &["create", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crashy", "namespace": ns}, "spec": {"containers": [{"name": "c", "image": image}]}})
        .to_string(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out).1);
    let status = wait_for("restartCount to rise past 2", Duration::from_secs(30), || async {
        let s = first_status(&ns, "crashy").await?;
        (s["restartCount"].as_u64()? >= 3).then_some(s)
    })
    .await;
    assert_eq!(status["state"]["waiting"]["reason"], "CrashLoopBackOff", "{status}");
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 3, "{status}");
    assert!(
        status["lastState"]["terminated"]["message"]
            .as_str()
            .unwrap()
            .contains("executable file not found")
    );
    // Another image in the same namespace is untouched.
    let out = kubectl_stdin(&["create", "-f", "-"], &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "fine", "namespace": ns}, "spec": {"containers": [{"name": "c", "image": "registry.test/fine:1"}]}}).to_string()).await;
    assert!(out.status.success());
    wait_for("the other pod ready", Duration::from_secs(30), || async {
        (condition(&ns, "fine", "Ready").await.as_deref() == Some("True")).then_some(())
    })
    .await;

    cp().delete_stage(&stage).await.unwrap();
    let status = wait_for("the crashing pod to recover", Duration::from_secs(30), || async {
        let s = first_status(&ns, "crashy").await?;
        (s["ready"] == true).then_some(s)
    })
    .await;
    assert!(
        status["restartCount"].as_u64().unwrap() >= 3,
        "restarts are kept: {status}"
    );

    // A waiting reason, as the kubelet reports a pod whose image runs as root.
    let stage = testcluster::unique("configerror");
    let image = format!("registry.test/{ns}/root:1");
    cp().create_stage(
        &Failure::Waiting {
            reason: "CreateContainerConfigError".into(),
            message: "container has runAsNonRoot and image will run as root".into(),
        }
        .stage(&stage, &Target::Image(image.clone())),
    )
    .await
    .unwrap();
    let out = kubectl_stdin(
        &["create", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "root", "namespace": ns}, "spec": {"containers": [{"name": "c", "image": image}]}})
        .to_string(),
    )
    .await;
    assert!(out.status.success());
    let status = wait_for("CreateContainerConfigError", Duration::from_secs(30), || async {
        let s = first_status(&ns, "root").await?;
        (s["state"]["waiting"]["reason"] == "CreateContainerConfigError").then_some(s)
    })
    .await;
    assert_eq!(
        status["state"]["waiting"]["message"],
        "container has runAsNonRoot and image will run as root"
    );
    cp().delete_stage(&stage).await.unwrap();
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// Every `Ready` status and resourceVersion the pod shows over `seconds`.
async fn samples(ns: &str, pod: &str, seconds: u64) -> (Vec<String>, std::collections::BTreeSet<String>) {
    let (mut ready, mut versions) = (Vec::new(), std::collections::BTreeSet::new());
    let until = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < until {
        if let Some(p) = get_json(&["pod", pod, "-n", ns]).await {
            let r = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .and_then(|c| c["status"].as_str())
                .unwrap_or("none")
                .to_string();
            ready.push(r);
            versions.insert(p["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (ready, versions)
}

#[tokio::test]
async fn a_pod_held_not_ready_or_waiting_stays_so_and_comes_back_once_the_stage_goes() {
    let ns = namespace("cp-hold", &[]).await;
    let cases = [
        ("notready", Failure::NotReady),
        (
            "waiting",
            Failure::Waiting {
                reason: "ErrImagePull".into(),
                message: "not found".into(),
            },
        ),
    ];
    for (name, failure) in cases {
        let image = format!("registry.test/{ns}/{name}:1");
        let stage = testcluster::unique(name);
        cp().create_stage(&failure.stage(&stage, &Target::Image(image.clone())))
            .await
            .unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": image}]}});
        let out = kubectl_stdin(&["create", "-f", "-"], &pod.to_string()).await;
        assert!(out.status.success(), "{}", text(&out).1);
        wait_for("the failure applied", Duration::from_secs(30), || async {
            let p = get_json(&["pod", name, "-n", &ns]).await?;
            p["status"]["podIP"].is_string().then_some(())?;
            (condition(&ns, name, "Ready").await.as_deref() == Some("False")).then_some(())
        })
        .await;
        let ip = get_json(&["pod", name, "-n", &ns]).await.unwrap()["status"]["podIP"].clone();
        // The pod stays as the stage holds it: never Ready, and no status churn
        // (a probe time every 2 s, not a rewrite loop).
        let (ready, versions) = samples(&ns, name, 4).await;
        assert!(
            ready.len() >= 3,
            "{name}: only {} samples of the pod in 4 s",
            ready.len()
        );
        assert!(ready.iter().all(|r| r == "False"), "{name}: Ready went {ready:?}");
        assert!(
            versions.len() <= 4,
            "{name}: the status was rewritten {} times in 4 s",
            versions.len()
        );
        // Once the stage goes, the pod recovers, keeping its IP.
        cp().delete_stage(&stage).await.unwrap();
        wait_for("the pod ready again", Duration::from_secs(30), || async {
            (condition(&ns, name, "Ready").await.as_deref() == Some("True")).then_some(())
        })
        .await;
        let p = get_json(&["pod", name, "-n", &ns]).await.unwrap();
        assert_eq!(p["status"]["podIP"], ip, "{name}: the pod kept its IP");
    }
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}
