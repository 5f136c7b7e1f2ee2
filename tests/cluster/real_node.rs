//! On a real node: a kubelet 1.37 with containerd 2, runc and the CNI bridge
//! (crates/testcluster/src/node.rs) runs the containers, from images the
//! harness builds and pushes to the nodes' registry: a standard image (a
//! shell, a package manager, root) and a distroless one (one static app,
//! 65532), the same app in both.
//!
//! What only a real node can show: the runtime's own errors for what a
//! distroless image cannot do, `fsGroup` on real volumes, a debug container
//! attached to a real process. The kubelet's reports are kept in
//! `tests/data/kubelet/` (the classifier's unit tests and the kwok stages'
//! messages are checked against them); a test fails when the kubelet says
//! something else, and `DISTROLESS_GUARD_RECORD=1` writes the new report.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use testcluster::node::{RealNode, real_node_placement};
use testcluster::oci::test_images;

use crate::support::*;

/// The shared control plane's real node, started on first use.
pub fn real_node() -> &'static RealNode {
    static NODE: OnceLock<Result<RealNode, String>> = OnceLock::new();
    let node = NODE.get_or_init(|| {
        let started = std::time::Instant::now();
        let node = cp().start_real_node().map_err(|e| e.to_string())?;
        eprintln!(
            "real node {} up in {:.1} s ({})",
            node.name(),
            started.elapsed().as_secs_f64(),
            node.dir().display()
        );
        Ok(node)
    });
    match node {
        Ok(n) => n,
        Err(e) => panic!(
            "the real node could not start: {e}\n(a real node needs root, cgroup v1 or v2, overlayfs, \
             iptables and the node binaries of `cargo xtask bins`)"
        ),
    }
}

/// The test images in the nodes' registry: (standard, distroless).
pub fn images() -> &'static (String, String) {
    static IMAGES: OnceLock<(String, String)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        real_node();
        let app = cp().bins().path(testcluster::bins::TEST_APP);
        let standard = test_images::standard(&app).expect("building the standard test image");
        let distroless = test_images::distroless(&app).expect("building the distroless test image");
        (
            cp().push_image("test/app", "standard", &standard).expect("pushing"),
            cp().push_image("test/app", "distroless", &distroless).expect("pushing"),
        )
    })
}

/// A pod spec that runs on the real node: `spec` plus its toleration and node selector.
pub fn on_real_node(mut spec: Value) -> Value {
    let placement = real_node_placement();
    for key in ["nodeSelector", "tolerations"] {
        spec[key] = placement[key].clone();
    }
    spec
}

/// Creates the pod on the real node; what kubectl said on stderr (warnings).
async fn create_pod(ns: &str, name: &str, spec: Value) -> String {
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": on_real_node(spec)});
    let out = kubectl_stdin(&["create", "-f", "-"], &p.to_string()).await;
    let (_, err) = text(&out);
    assert!(out.status.success(), "creating pod {ns}/{name}: {err}");
    err
}

/// `GET <path>` of the app in `pod` (port 8080) through the API server's pod proxy.
async fn app_get(ns: &str, pod: &str, path: &str) -> Value {
    let url = format!("/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy{path}");
    let out = kubectl(&["get", "--raw", &url]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "GET {url}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("GET {url}: {e}: {stdout}"))
}

async fn wait_running_ready(ns: &str, name: &str) -> Value {
    wait_for(
        &format!("pod {ns}/{name} Running and Ready on the real node"),
        Duration::from_secs(120),
        || async {
            let p = get_json(&["pod", name, "-n", ns]).await?;
            let ready = p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (ready && p["status"]["phase"] == "Running").then_some(p)
        },
    )
    .await
}

/// The first status of the container `app` that satisfies `found`.
async fn wait_container(ns: &str, name: &str, what: &str, found: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(120), || async {
        let p = get_json(&["pod", name, "-n", ns]).await?;
        let s = p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "app")?
            .clone();
        found(&s).then_some(p)
    })
    .await
}

/// The recorded kubelet report `name` in tests/data/kubelet.
fn recording(name: &str) -> PathBuf {
    root().join("tests/data/kubelet").join(format!("{name}.json"))
}

/// Pod-specific parts of a report replaced by fixed words: the namespace,
/// 64-hex ids (containers, execs) and UUIDs (pods).
fn normalize(text: &str, ns: &str) -> String {
    let t = text.replace(ns, "NAMESPACE");
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    let chars: Vec<char> = t.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let run = chars[i..].iter().take_while(|c| hex(**c) || **c == '-').count();
        let word: String = chars[i..i + run].iter().collect();
        let groups: Vec<usize> = word.split('-').map(str::len).collect();
        if run > 0 && (i == 0 || !hex(chars[i - 1])) {
            if groups == [64] {
                out += "ID";
                i += run;
                continue;
            }
            if groups == [8, 4, 4, 4, 12] {
                out += "UID";
                i += run;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Compares the report with the recording (or writes it when recording).
fn check_recording(name: &str, ns: &str, report: &Value) {
    let path = recording(name);
    let now = normalize(&serde_json::to_string_pretty(report).unwrap(), ns);
    if std::env::var_os("DISTROLESS_GUARD_RECORD").is_some_and(|v| v == "1") {
        std::fs::write(&path, format!("{now}\n")).unwrap();
        return;
    }
    let was = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; record it with DISTROLESS_GUARD_RECORD=1 cargo test --test cluster real_node",
            path.display()
        )
    });
    assert_eq!(
        was.trim_end(),
        now,
        "the kubelet's report differs from {}; if the kubelet changed, record it again \
         (DISTROLESS_GUARD_RECORD=1) and check the classifier and the kwok stages against it",
        path.display()
    );
}

/// The parts of a container status that a rollout reads.
fn report(status: &Value) -> Value {
    let pick = |s: &Value| {
        json!({
            "reason": s["reason"],
            "message": s["message"],
            "exitCode": s["exitCode"],
        })
    };
    let state = status["state"].as_object().and_then(|m| m.iter().next());
    // Only what the kubelet decided; which of its states a poll catches varies.
    let last = status["lastState"].as_object().and_then(|m| m.iter().next());
    json!({
        "state": state.map(|(k, v)| json!({k: pick(v)})),
        "lastState": last.map(|(k, v)| json!({k: pick(v)})),
    })
}

#[tokio::test]
async fn the_real_node_registers_ready_with_its_taint_and_runs_the_distroless_app_as_65532() {
    let node = real_node();
    let n = get_json(&["node", node.name()]).await.unwrap();
    assert_eq!(n["metadata"]["labels"]["type"], "real");
    assert!(
        n["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == testcluster::node::REAL_NODE_TAINT),
        "{}",
        n["spec"]
    );
    assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], testcluster::bins::KUBERNETES);
    assert!(
        n["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://2."),
        "{}",
        n["status"]["nodeInfo"]
    );

    let (_, distroless) = images();
    let ns = namespace("real-run", &[]).await;
    create_pod(
        &ns,
        "app",
        json!({"containers": [{"name": "app", "image": distroless}]}),
    )
    .await;
    let p = wait_running_ready(&ns, "app").await;
    assert_eq!(p["spec"]["nodeName"], node.name());
    let ip = p["status"]["podIP"].as_str().unwrap();
    assert!(
        ip.starts_with("10.245."),
        "pod IP {ip} is not on the real node's bridge"
    );
    let id = app_get(&ns, "app", "/id").await;
    assert_eq!((id["uid"].clone(), id["gid"].clone()), (json!(65532), json!(65532)));

    // kubectl logs goes through the API server to the kubelet.
    let logs = kubectl_ok(&["logs", "app", "-n", &ns]).await;
    assert!(logs.contains("serving on :8080 as uid 65532"), "{logs}");
    // And so does exec, into the standard image, which has a shell.
    let (standard, _) = images();
    create_pod(&ns, "std", json!({"containers": [{"name": "app", "image": standard}]})).await;
    wait_running_ready(&ns, "std").await;
    let id = kubectl_ok(&["exec", "std", "-n", &ns, "--", "sh", "-c", "id -u; ls /usr/bin/dpkg"]).await;
    assert_eq!(id.lines().collect::<Vec<_>>(), ["0", "/usr/bin/dpkg"], "{id}");
    // `kubectl distroless inspect` of the running pod's image agrees with the kubelet.
    let registry = cp().registry().unwrap().to_string();
    let out = crate::plugin::plugin(&["inspect", distroless, "--insecure-registry", &registry, "-o", "json"]).await;
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        said["underRunAsNonRoot"]
            .as_str()
            .unwrap_or_default()
            .starts_with("runs under runAsNonRoot"),
        "{said:#}"
    );
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_distroless_container_started_with_sh_c_fails_with_the_runtimes_own_error() {
    let (_, distroless) = images();
    let ns = namespace("real-sh", &[]).await;
    create_pod(
        &ns,
        "app",
        json!({"containers": [{"name": "app", "image": distroless, "command": ["sh", "-c", "/app serve"]}]}),
    )
    .await;
    let p = wait_container(&ns, "app", "the container's start to fail", |s| {
        s["lastState"]["terminated"]["message"].is_string() && s["state"]["waiting"]["reason"].is_string()
    })
    .await;
    let status = &p["status"]["containerStatuses"][0];
    let terminated = &status["lastState"]["terminated"];
    assert_eq!(terminated["reason"], "StartError", "{status}");
    let message = terminated["message"].as_str().unwrap();
    assert!(
        message.contains(r#"exec: "sh": executable file not found in $PATH"#),
        "{message}"
    );
    let hint = distroless_guard::controller::failure_hint(
        terminated["reason"].as_str().unwrap(),
        terminated["exitCode"].as_i64().map(|c| c as i32),
        message,
    );
    assert!(
        hint.contains("shell"),
        "the hint for the real error does not name the shell: {hint}"
    );
    let waiting = status["state"]["waiting"]["reason"].as_str().unwrap();
    assert!(
        ["RunContainerError", "CrashLoopBackOff"].contains(&waiting),
        "waiting in {waiting}: {status}"
    );
    check_recording("sh-c-in-distroless", &ns, &report(status)["lastState"]);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn exec_probes_in_a_distroless_container_error_keep_it_unready_and_never_restart_it() {
    let (_, distroless) = images();
    let ns = namespace("real-probe", &[]).await;
    let probe = json!({"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 1});
    create_pod(
        &ns,
        "app",
        json!({"containers": [{"name": "app", "image": distroless,
            "readinessProbe": probe, "livenessProbe": probe}]}),
    )
    .await;
    // The kubelet cannot run the probe at all: each try is an error event, not a
    // failure. Three liveness errors prove it had three chances to restart.
    let events = wait_for(
        "three liveness and a readiness probe error",
        Duration::from_secs(60),
        || async {
            let list = get_json(&["events", "-n", &ns, "--field-selector", "reason=Unhealthy"]).await?;
            let items = list["items"].as_array()?.clone();
            let count = |kind: &str| -> i64 {
                items
                    .iter()
                    .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with(kind)))
                    .map(|e| e["count"].as_i64().unwrap_or(1))
                    .sum()
            };
            (count("Liveness probe errored") >= 3 && count("Readiness probe errored") >= 1).then_some(items)
        },
    )
    .await;
    let message = |kind: &str| {
        events
            .iter()
            .find_map(|e| e["message"].as_str().filter(|m| m.starts_with(kind)))
            .unwrap()
            .to_string()
    };
    let liveness = message("Liveness probe errored");
    assert!(
        liveness.contains(r#"exec: "cat": executable file not found in $PATH"#),
        "{liveness}"
    );
    let p = get_json(&["pod", "app", "-n", &ns]).await.unwrap();
    let status = &p["status"]["containerStatuses"][0];
    assert_eq!(
        status["restartCount"], 0,
        "an errored liveness probe restarted the container: {status}"
    );
    assert_eq!(status["ready"], false, "{status}");
    assert!(status["state"]["running"].is_object(), "{status}");
    // What a rollout makes of it: never ready, so ReadyTimeout, whose hint names the exec probe.
    let hint = distroless_guard::controller::failure_hint("ReadyTimeout", None, "");
    assert!(hint.contains("exec readiness probe"), "{hint}");
    check_recording(
        "exec-probe-in-distroless",
        &ns,
        &json!({
            "liveness": liveness,
            "readiness": message("Readiness probe errored"),
            "restartCount": status["restartCount"],
            "ready": status["ready"],
        }),
    );
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_root_image_under_run_as_non_root_is_refused_with_create_container_config_error() {
    let (standard, _) = images();
    let ns = namespace("real-root", &[]).await;
    create_pod(
        &ns,
        "app",
        json!({"securityContext": {"runAsNonRoot": true}, "containers": [{"name": "app", "image": standard}]}),
    )
    .await;
    let p = wait_container(&ns, "app", "the kubelet to refuse the root image", |s| {
        s["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })
    .await;
    let status = &p["status"]["containerStatuses"][0];
    let message = status["state"]["waiting"]["message"].as_str().unwrap();
    assert!(
        message.contains("container has runAsNonRoot and image will run as root"),
        "{message}"
    );
    let hint = distroless_guard::controller::failure_hint("CreateContainerConfigError", None, message);
    assert!(hint.contains("runAsUser") || hint.contains("65532"), "{hint}");
    check_recording("root-image-run-as-non-root", &ns, &report(status)["state"]);
    // `kubectl distroless inspect` of the pod's image foretells what the kubelet did.
    let registry = cp().registry().unwrap().to_string();
    let image = p["spec"]["containers"][0]["image"].as_str().unwrap();
    let out = crate::plugin::plugin(&["inspect", image, "--insecure-registry", &registry, "-o", "json"]).await;
    let said: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("inspect -o json: {e}: {}", text(&out).1));
    let verdict = said["underRunAsNonRoot"].as_str().unwrap_or_default();
    assert!(
        verdict.starts_with("refused under runAsNonRoot") && verdict.contains("image will run as root"),
        "{said:#}"
    );
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn a_pod_without_security_context_is_mutated_passes_restricted_and_runs_as_65532_with_fs_group_on_its_volumes() {
    let (_, distroless) = images();
    let release = Release::install("distroless-guard-real", &[]).await;
    let ns = release.namespace("real-mutate", &[]).await;
    let name = testcluster::unique("real-mutate");
    create_policy(&policy(
        &name,
        &ns,
        json!({"action": "Deny", "mutation": {"allowPrivilegeEscalation": false,
            "seccompRuntimeDefault": true, "dropAllCapabilities": true}}),
    ))
    .await;
    release.wait_serving(&ns).await;
    // Restricted only now: Pod Security would refuse wait_serving's root probe
    // before our webhook could.
    kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .await;
    kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "cfg",
        "-n",
        &ns,
        "--from-literal=key=value",
    ])
    .await;
    // No securityContext at all: Pod Security `restricted` would refuse this
    // pod as written; the webhook's mutation is what lets it in.
    create_pod(
        &ns,
        "app",
        json!({
            "containers": [{"name": "app", "image": distroless, "volumeMounts": [
                {"name": "data", "mountPath": "/data"}, {"name": "cfg", "mountPath": "/cfg"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "secret": {"secretName": "cfg"}}],
        }),
    )
    .await;
    let p = wait_running_ready(&ns, "app").await;
    let sc = &p["spec"]["securityContext"];
    assert_eq!(
        (
            sc["runAsUser"].clone(),
            sc["fsGroup"].clone(),
            sc["runAsNonRoot"].clone()
        ),
        (json!(65532), json!(65532), json!(true)),
        "{sc}"
    );

    let id = app_get(&ns, "app", "/id").await;
    assert_eq!(
        (id["uid"].clone(), id["gid"].clone()),
        (json!(65532), json!(65532)),
        "{id}"
    );
    assert!(id["groups"].as_array().unwrap().contains(&json!(65532)), "{id}");
    // The kubelet gave the emptyDir to the fsGroup (group 65532, set-group-ID):
    // without fsGroup it stays root's.
    let dir = app_get(&ns, "app", "/stat?path=/data").await;
    assert_eq!(dir["gid"], 65532, "{dir}");
    assert!(dir["mode"].as_str().unwrap().starts_with("dg"), "{dir}");
    let written = app_get(&ns, "app", "/write?path=/data/out").await;
    assert_eq!(
        (written["uid"].clone(), written["gid"].clone()),
        (json!(65532), json!(65532)),
        "{written}"
    );
    // A Secret's files are chowned to the fsGroup too, so a non-root app can read them.
    let key = app_get(&ns, "app", "/stat?path=/cfg/key").await;
    assert_eq!(key["gid"], 65532, "{key}");

    delete_policy(&name).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn debug_attaches_to_the_distroless_process_as_its_user_and_reads_its_root_filesystem() {
    let (_, distroless) = images();
    let ns = namespace("real-debug", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    create_pod(
        &ns,
        "app",
        json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": distroless, "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        }),
    )
    .await;
    wait_running_ready(&ns, "app").await;
    // The debug image: busybox with a shell as its entrypoint, as distroless `:debug`.
    let app = cp().bins().path(testcluster::bins::TEST_APP);
    let debug_image = cp()
        .push_image("test/debug", "1", &test_images::debug(&app).unwrap())
        .unwrap();
    let out = crate::plugin::plugin(&["debug", "app", "-n", &ns, "--no-attach", "--image", &debug_image]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let debugger = stdout.trim().to_string();
    wait_for("the debug container running", Duration::from_secs(60), || async {
        let p = get_json(&["pod", "app", "-n", &ns]).await?;
        p["status"]["ephemeralContainerStatuses"]
            .as_array()?
            .iter()
            .any(|s| s["name"] == debugger.as_str() && s["state"]["running"].is_object())
            .then_some(())
    })
    .await;
    // Ephemeral containers are attached to, not exec'd into: the shell reads
    // these lines from kubectl attach's standard input.
    let script = "echo UID=$(id -u)\n\
                  echo CMD=$(tr '\\0' ' ' < /proc/1/cmdline)\n\
                  echo ROOT=$(ls /proc/1/root | tr '\\n' ' ')\n\
                  exit\n";
    // The debug container has a TTY, so kubectl attaches only from a
    // terminal: `script` (util-linux) gives it one, as a person's shell would.
    let kubectl = cp().kubectl();
    let line = format!(
        "{} --kubeconfig={} attach app -n {ns} -c {debugger} -i -t",
        kubectl.get_program().to_string_lossy(),
        cp().admin_kubeconfig().display()
    );
    let mut attach = std::process::Command::new("script");
    attach.args(["--quiet", "--return", "--command", &line, "/dev/null"]);
    let out = output_with_input(attach, script.to_string()).await;
    let (stdout, stderr) = text(&out);
    let said = |key: &str| {
        stdout
            .lines()
            .map(|l| l.trim_start_matches("/ $ ").trim())
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line from the debug shell; stdout: {stdout}; stderr: {stderr}"))
            .trim()
            .to_string()
    };
    assert_eq!(said("UID="), "65532");
    // PID 1 of the shared process namespace is the target's app.
    assert_eq!(said("CMD="), "/app serve");
    // The target's root filesystem, which has no shell of its own.
    let root_fs = said("ROOT=");
    assert!(root_fs.split_whitespace().any(|f| f == "app"), "{root_fs}");
    assert!(!root_fs.split_whitespace().any(|f| f == "bin"), "{root_fs}");
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// A Deployment `name` of the standard test image on the real node, ready by
/// the app's own HTTP probe, and its Service.
async fn real_app(ns: &str, name: &str, replicas: i32, image: &str) {
    let spec = on_real_node(json!({"containers": [{"name": "app", "image": image,
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}]}));
    let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
         "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ]});
    let out = kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    wait_for(
        "the Deployment's pods ready on the real node",
        Duration::from_secs(120),
        || async {
            let d = get_json(&["deployment", name, "-n", ns]).await?;
            (d["status"]["readyReplicas"] == replicas).then_some(())
        },
    )
    .await;
}

fn deployment_image(d: &Value) -> String {
    d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn rollouts_on_the_real_node_promote_a_working_distroless_image_and_roll_a_broken_one_back() {
    let (standard, distroless) = images();
    // A distroless image that cannot start: its entrypoint is a shell script.
    let app = cp().bins().path(testcluster::bins::TEST_APP);
    let mut broken = test_images::distroless(&app).unwrap();
    broken.entrypoint = vec!["/bin/sh".into(), "-c".into(), "exec /app serve".into()];
    let broken = cp().push_image("test/app", "distroless-broken", &broken).unwrap();

    let release = Release::install("distroless-guard-real-roll", &[]).await;
    let ns = release.namespace("real-roll", &[]).await;

    real_app(&ns, "good", 2, standard).await;
    crate::rollout::create_rollout(
        &ns,
        "good",
        "good",
        distroless,
        json!({"steps": [{"weight": 50, "bakeSeconds": 3}, {"weight": 100}]}),
    )
    .await;
    crate::rollout::wait_phase(&ns, "good", "Succeeded", 180).await;
    let d = get_json(&["deployment", "good", "-n", &ns]).await.unwrap();
    assert_eq!(deployment_image(&d), *distroless);
    // The promoted pods really run the distroless app, as 65532.
    let pods = get_json(&["pods", "-n", &ns, "-l", "app=good"]).await.unwrap();
    let running: Vec<&Value> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["spec"]["containers"][0]["image"] == *distroless)
        .collect();
    assert!(!running.is_empty(), "no pod of the distroless image: {pods:#}");
    let pod = running[0]["metadata"]["name"].as_str().unwrap();
    assert_eq!(app_get(&ns, pod, "/id").await["uid"], 65532);

    real_app(&ns, "bad", 2, standard).await;
    crate::rollout::create_rollout(
        &ns,
        "bad",
        "bad",
        &broken,
        json!({"steps": [{"weight": 50, "bakeSeconds": 30}, {"weight": 100}]}),
    )
    .await;
    let s = crate::rollout::wait_phase(&ns, "bad", "RolledBack", 180).await;
    let failure = &s["failure"];
    assert!(
        ["RunContainerError", "CrashLoopBackOff"].contains(&failure["reason"].as_str().unwrap_or_default()),
        "{s:#}"
    );
    assert!(
        failure["message"]
            .as_str()
            .unwrap_or_default()
            .contains(r#"exec: "/bin/sh""#),
        "{s:#}"
    );
    assert!(failure["hint"].as_str().unwrap_or_default().contains("shell"), "{s:#}");
    let d = get_json(&["deployment", "bad", "-n", &ns]).await.unwrap();
    assert_eq!(
        deployment_image(&d),
        *standard,
        "the Deployment left its standard image"
    );
    assert_eq!(d["status"]["readyReplicas"], 2, "{:#}", d["status"]);
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

/// The operator's image from this test binary's `distroless-guard` (debug
/// build, debug info stripped), as `cargo xtask image` builds the release one.
fn operator_image() -> &'static String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        real_node();
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_distroless-guard"));
        let work = cp().dir().join("operator-image");
        let (image, _) =
            testcluster::operator_image::build(binary, "test", &testcluster::operator_image::debs_cache(), &work)
                .unwrap_or_else(|e| panic!("building the operator's image: {e}"));
        let _ = std::fs::remove_dir_all(&work);
        cp().push_image("test/distroless-guard", "test", &image)
            .expect("pushing the operator's image")
    })
}

#[tokio::test]
async fn the_charts_pods_run_the_operators_own_image_on_the_real_node_serve_admission_and_survive_a_kill() {
    let image = operator_image();
    let _exclusive = exclusive().await;
    let name = testcluster::unique("dg-real");
    // The operator's own namespace enforces Pod Security `restricted`.
    let ns = namespace(&name, &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let mut extra = test_values(&name);
    extra.extend(["--set".to_string(), "replicaCount=2".to_string()]);
    let helm = testcluster::release::helm_install_on_real_nodes(cp(), &name, &ns, &chart_dir(), image, &extra);
    let out = output(helm).await;
    assert!(out.status.success(), "helm install: {}", text(&out).1);

    let selector = "app.kubernetes.io/name=distroless-guard";
    let ready_pods = || async {
        let pods = get_json(&["pods", "-n", &ns, "-l", selector]).await?;
        let ready: Vec<Value> = pods["items"]
            .as_array()?
            .iter()
            .filter(|p| {
                p["metadata"]["deletionTimestamp"].is_null()
                    && p["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .cloned()
            .collect();
        Some(ready)
    };
    let pods = wait_for(
        "both operator pods Ready on the real node",
        Duration::from_secs(180),
        || async { ready_pods().await.filter(|p| p.len() == 2) },
    )
    .await;
    for p in &pods {
        assert_eq!(p["spec"]["nodeName"], real_node().name(), "{}", p["metadata"]["name"]);
        assert_eq!(p["spec"]["containers"][0]["image"], image.as_str());
    }
    let pdbs = get_json(&["pdb", "-n", &ns]).await.unwrap();
    assert_eq!(pdbs["items"].as_array().unwrap().len(), 1, "{pdbs:#}");
    // The running pod as the API server has it passes our own rules (check's
    // built-in default policy: every rule denies).
    let pod = serde_json::to_string(&pods[0]).unwrap();
    let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
    check.args(["check", "-f", "-"]);
    let out = output_with_input(check, pod).await;
    assert!(
        out.status.success(),
        "the operator's own pod fails its rules: {}",
        text(&out).0
    );

    // Admission through the Service, to the real pods, with the chart's certificates.
    let work_ns = namespace("real-chart", &[(RELEASE_LABEL, &name)]).await;
    let policy_name = testcluster::unique("real-chart");
    create_policy(&policy(&policy_name, &work_ns, json!({"action": "Deny"}))).await;
    let probe = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": work_ns},
        "spec": {"containers": [{"name": "c", "image": "probe:1", "securityContext": {"runAsUser": 0}}]}})
    .to_string();
    let denied = || {
        let probe = probe.clone();
        async move {
            let out = kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &probe).await;
            let (_, err) = text(&out);
            (!out.status.success() && err.contains("[root-uid]")).then_some(())
        }
    };
    wait_for(
        "the real pods' webhook to deny a root pod",
        Duration::from_secs(60),
        denied,
    )
    .await;

    // One leader, one of the pods.
    let leader = wait_for("a leader among the pods", Duration::from_secs(60), || async {
        let leases = get_json(&["leases", "-n", &ns]).await?;
        leases["items"].as_array()?.iter().find_map(|l| {
            let holder = l["spec"]["holderIdentity"].as_str()?;
            pods.iter()
                .find(|p| p["metadata"]["name"].as_str().is_some_and(|n| holder.contains(n)))
                .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string())
        })
    })
    .await;

    // Kill the leader: the other replica goes on serving and takes the lease;
    // the API server may still pick the dead pod until its endpoint goes,
    // which `failurePolicy: Fail` turns into refusals saying the webhook failed.
    kubectl_ok(&[
        "delete",
        "pod",
        &leader,
        "-n",
        &ns,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ])
    .await;
    let started = std::time::Instant::now();
    let (mut served, mut unavailable, mut last_unavailable) = (0u32, 0u32, Duration::ZERO);
    while started.elapsed() < Duration::from_secs(60) && (served < 20 || started.elapsed() < Duration::from_secs(5)) {
        let out = kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &probe).await;
        let (_, err) = text(&out);
        if err.contains("[root-uid]") {
            served += 1;
        } else {
            assert!(
                err.contains("failed calling webhook"),
                "neither a denial nor the webhook's failure: {err}"
            );
            unavailable += 1;
            last_unavailable = started.elapsed();
        }
    }
    eprintln!(
        "leader {leader} killed: {served} reviews served, {unavailable} refused as the webhook failing, \
         the last {:.1} s after the kill",
        last_unavailable.as_secs_f64()
    );
    assert!(
        served >= 20,
        "admission did not recover within 60 s: {served} served, {unavailable} failed"
    );
    let new_leader = wait_for("another pod to take the lease", Duration::from_secs(60), || async {
        let leases = get_json(&["leases", "-n", &ns]).await?;
        leases["items"].as_array()?.iter().find_map(|l| {
            let holder = l["spec"]["holderIdentity"].as_str()?;
            (!holder.contains(&leader) && !holder.is_empty()).then(|| holder.to_string())
        })
    })
    .await;
    assert!(!new_leader.contains(&leader));
    wait_for(
        "the Deployment back at two ready pods",
        Duration::from_secs(120),
        || async { ready_pods().await.filter(|p| p.len() == 2) },
    )
    .await;

    delete_policy(&policy_name).await;
    let mut helm = cp().helm();
    helm.args(["uninstall", &name, "-n", &ns, "--wait"]);
    let _ = output(helm).await;
    kubectl_ok(&["delete", "namespace", &ns, &work_ns, "--wait=false"]).await;
}

#[tokio::test]
async fn every_pod_template_check_fix_hardens_in_the_corpus_is_admitted_under_restricted_and_runs_as_its_user() {
    let (_, distroless) = images();
    // No webhook of ours sees this namespace: what is admitted is the text
    // `--fix` wrote, judged by the real Pod Security admission.
    let ns = namespace("fix-corpus", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let mut pods = Vec::new();
    for file in crate::corpus::manifests() {
        // Left as written on purpose (explicit root, Windows): check reports them.
        if file.ends_with("explicit-root.yaml") || file.ends_with("windows.yaml") {
            continue;
        }
        for object in crate::corpus::objects_in(&crate::corpus::fix(&file, Some(crate::corpus::HARDENING))) {
            if matches!(object["kind"].as_str(), Some("ConfigMap" | "Secret")) {
                let mut o = object.clone();
                o["metadata"]["namespace"] = json!(ns);
                let out = kubectl_stdin(&["create", "-f", "-"], &o.to_string()).await;
                assert!(out.status.success(), "{}", text(&out).1);
            }
            let Some(spec) = crate::corpus::pod_spec(&object) else {
                continue;
            };
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let mut spec = spec.clone();
            assert!(
                spec.get("initContainers").is_none(),
                "{name}: init containers would need a program that ends"
            );
            // The corpus' images are not on this machine: each container runs
            // the test app (its own port), with everything `--fix` wrote kept.
            for (i, c) in spec["containers"].as_array_mut().unwrap().iter_mut().enumerate() {
                let c = c.as_object_mut().unwrap();
                for field in ["command", "args", "livenessProbe", "readinessProbe", "ports"] {
                    c.remove(field);
                }
                c.insert("image".into(), json!(distroless));
                c.insert("env".into(), json!([{"name": "PORT", "value": (8080 + i).to_string()}]));
            }
            pods.push((name, spec));
        }
    }
    let names: Vec<&str> = pods.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "cache",
            "payments",
            "api",
            "guestbook",
            "debug-shell",
            "orders",
            "nightly-report",
            "checkout",
            "web"
        ]
    );
    for (name, spec) in &pods {
        // Refused by Pod Security as --fix wrote it: create_pod fails.
        let err = create_pod(&ns, name, spec.clone()).await;
        assert!(!err.contains("PodSecurity"), "{name}: {err}");
    }
    for (name, spec) in &pods {
        wait_running_ready(&ns, name).await;
        let id = app_get(&ns, name, "/id").await;
        let sc = &spec["securityContext"];
        let first = &spec["containers"][0]["securityContext"];
        let uid = first.get("runAsUser").unwrap_or(&sc["runAsUser"]);
        assert_eq!(&id["uid"], uid, "{name} runs as the user the fix chose or kept: {id}");
        assert_ne!(id["uid"], 0, "{name}");
    }
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}
