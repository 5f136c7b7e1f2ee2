//! `kubectl distroless` as users run it: the real kubectl 1.37 finds
//! `kubectl-distroless` on the PATH and runs it against the real control
//! plane (Pod Security Admission, RBAC, our webhook through its Service).
//! kwok runs no processes, so `debug` is covered up to the point where
//! kubectl would attach (`--no-attach`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::rollout::{app, create_rollout, wait_phase, web_to_distroless};
use crate::support::*;

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_kubectl-distroless"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `kubectl distroless <args>` through the real kubectl, with `kubeconfig`.
async fn plugin_as(kubeconfig: &Path, args: &[&str]) -> Output {
    let kubectl = PathBuf::from(cp().kubectl().get_program());
    let path = format!(
        "{}:{}:{}",
        plugin_dir().display(),
        kubectl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(&kubectl);
    cmd.env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .arg("distroless")
        .args(args);
    output(cmd).await
}

pub(crate) async fn plugin(args: &[&str]) -> Output {
    plugin_as(cp().admin_kubeconfig(), args).await
}

/// A running pod (kwok) with this spec.
async fn pod(ns: &str, name: &str, spec: Value) -> Value {
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": spec});
    let out = kubectl_stdin(&["create", "-f", "-"], &p.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    wait_for("the pod running", Duration::from_secs(60), || async {
        let p = get_json(&["pod", name, "-n", ns]).await?;
        (p["status"]["phase"] == "Running").then_some(p)
    })
    .await
}

fn restricted_container(image: &str) -> Value {
    json!({"name": "app", "image": image, "securityContext": {"allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}}})
}

fn ephemeral(p: &Value) -> Vec<Value> {
    p["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn kubectl_finds_the_plugin_and_its_completion() {
    let kubectl = PathBuf::from(cp().kubectl().get_program());
    let mut cmd = Command::new(&kubectl);
    cmd.env("PATH", format!("{}:/usr/bin:/bin", plugin_dir().display()))
        .args(["plugin", "list"]);
    let out = output(cmd).await;
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("kubectl-distroless"), "{stdout}{stderr}");
    let help = plugin(&["--help"]).await;
    assert!(text(&help).0.contains("Usage: kubectl distroless"), "{}", text(&help).0);

    let ns = namespace("complete", &[]).await;
    pod(
        &ns,
        "web-1",
        json!({"containers": [{"name": "app", "image": "registry.test/web:1"}]}),
    )
    .await;
    let complete = |args: Vec<String>| async move {
        let mut cmd = Command::new(Path::new(env!("CARGO_BIN_EXE_kubectl_complete-distroless")));
        cmd.env("KUBECONFIG", cp().admin_kubeconfig()).args(args);
        text(&output(cmd).await).0
    };
    let verbs = complete(vec!["ro".into()]).await;
    assert_eq!(verbs, "rollout\n:4\n");
    let pods = complete(vec!["-n".into(), ns.clone(), "debug".into(), "web".into()]).await;
    assert_eq!(pods, "web-1\n:4\n");
    let kinds = complete(vec!["explain".into(), "dep".into()]).await;
    assert_eq!(kinds, "deployment/\n:4\n");
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn debug_adds_a_restricted_container_as_the_targets_user_once_and_refuses_before_anything_permanent() {
    let ns = namespace("debug", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let spec = json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 1234, "runAsGroup": 5678,
        "seccompProfile": {"type": "RuntimeDefault"}}, "containers": [restricted_container("registry.test/app:1")]});
    pod(&ns, "app", spec).await;

    let out = plugin(&["debug", "app", "-n", &ns, "--no-attach"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let name = stdout.trim().to_string();
    assert!(name.starts_with("debugger-"), "{stdout}");
    assert!(
        stderr.contains("/proc/1/root") && stderr.contains("UID 1234 GID 5678"),
        "{stderr}"
    );
    let p = get_json(&["pod", "app", "-n", &ns]).await.unwrap();
    let added = ephemeral(&p);
    assert_eq!(added.len(), 1);
    let sc = &added[0]["securityContext"];
    assert_eq!(
        (
            sc["runAsUser"].clone(),
            sc["runAsGroup"].clone(),
            sc["runAsNonRoot"].clone()
        ),
        (json!(1234), json!(5678), json!(true))
    );
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        (
            sc["allowPrivilegeEscalation"].clone(),
            sc["seccompProfile"]["type"].clone()
        ),
        (json!(false), json!("RuntimeDefault"))
    );
    assert_eq!(added[0]["targetContainerName"], "app");

    // The same request again: the same container, not a second one.
    let again = plugin(&["debug", "app", "-n", &ns, "--no-attach"]).await;
    assert!(again.status.success(), "{}", text(&again).1);
    assert_eq!(text(&again).0.trim(), name);
    assert!(text(&again).1.contains("reusing"), "{}", text(&again).1);
    assert_eq!(ephemeral(&get_json(&["pod", "app", "-n", &ns]).await.unwrap()).len(), 1);

    // A privileged profile: refused by the namespace's level before any request,
    // and with --force refused by the real PSA in the dry run. Nothing added.
    let refused = plugin(&["debug", "app", "-n", &ns, "--profile", "sysadmin", "--no-attach"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).1.contains("needs the \"privileged\" Pod Security level"),
        "{}",
        text(&refused).1
    );
    let forced = plugin(&[
        "debug",
        "app",
        "-n",
        &ns,
        "--profile",
        "sysadmin",
        "--force",
        "--no-attach",
    ])
    .await;
    assert_eq!(forced.status.code(), Some(1));
    let why = text(&forced).1;
    assert!(
        why.contains("Pod Security Admission refused") && why.contains("nothing was added"),
        "{why}"
    );
    assert_eq!(ephemeral(&get_json(&["pod", "app", "-n", &ns]).await.unwrap()).len(), 1);

    // No such pod, said plainly.
    let missing = plugin(&["debug", "nope", "-n", &ns, "--no-attach"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing)
            .1
            .contains(&format!("pod \"nope\" not found in namespace {ns}")),
        "{}",
        text(&missing).1
    );
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn debug_reads_the_images_user_from_its_registry_and_detects_a_poisoned_pod() {
    use crate::registry::{Blob, Compression, Image, Layer, TestRegistry, push};
    let registry = TestRegistry::start();
    let image = registry.image("team/app:1");
    push(
        &image,
        &Image::new(vec![Blob::layer(
            Layer::new().file("app", b"ELF").tar(),
            Compression::Gzip,
        )])
        .user("4321:4322"),
    )
    .await;
    let ns = namespace("debug-img", &[]).await;
    pod(
        &ns,
        "app",
        json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [restricted_container(&image)]}),
    )
    .await;
    let out = plugin(&[
        "debug",
        "app",
        "-n",
        &ns,
        "--no-attach",
        "--insecure-registry",
        &registry.host(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).1.contains("the image's USER"), "{}", text(&out).1);
    let sc = ephemeral(&get_json(&["pod", "app", "-n", &ns]).await.unwrap())[0]["securityContext"].clone();
    assert_eq!(
        (sc["runAsUser"].clone(), sc["runAsGroup"].clone()),
        (json!(4321), json!(4322))
    );

    // An earlier `kubectl debug` without a profile left a root busybox: once the
    // namespace enforces restricted, no debug container can be added any more.
    let bad = json!({"spec": {"ephemeralContainers": [{"name": "debugger-old", "image": "busybox", "stdin": true}]}});
    kubectl_ok(&[
        "patch",
        "pod",
        "app",
        "-n",
        &ns,
        "--subresource=ephemeralcontainers",
        "--type=strategic",
        "-p",
        &bad.to_string(),
    ])
    .await;
    kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .await;
    let poisoned = plugin(&["debug", "app", "-n", &ns, "--no-attach", "--env-from-target"]).await;
    assert_eq!(poisoned.status.code(), Some(1));
    let why = text(&poisoned).1;
    assert!(
        why.contains("debugger-old") && why.contains("cannot be removed") && why.contains("Delete the pod"),
        "{why}"
    );
    assert_eq!(ephemeral(&get_json(&["pod", "app", "-n", &ns]).await.unwrap()).len(), 2);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn explain_shows_rule_container_and_fix_from_the_replica_sets_failed_create() {
    use crate::registry::{Blob, Compression, Image, Layer, TestRegistry, push};
    let registry = TestRegistry::start();
    let host = registry.host();
    let release = Release::install_inspecting("distroless-guard-explain", &host).await;
    let ns = release.namespace("explain", &[]).await;
    let deny = testcluster::unique("explain-deny");
    create_policy(&policy(&deny, &ns, json!({"action": "Deny"}))).await;
    release.wait_serving(&ns).await;
    // A distroless image, then the same tag pushed again with a shell: the
    // Deployment was admitted, its next pods are refused by our webhook.
    let image = registry.image(&format!("{ns}/web:1"));
    let distroless = Layer::new().file("web", b"ELF").tar();
    push(
        &image,
        &Image::new(vec![Blob::layer(distroless, Compression::Gzip)]).user("65532"),
    )
    .await;
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": image}]}}}});
    let out = kubectl_stdin(&["create", "-f", "-"], &deployment.to_string()).await;
    assert!(out.status.success(), "{}", text(&out).1);
    // The ReplicaSet and its pod exist before the tag changes: a ReplicaSet
    // created after it would itself be refused (its image is judged afresh),
    // and no pod would ever be tried.
    wait_for("the distroless pod", Duration::from_secs(60), || async {
        let d = get_json(&["deployment", "web", "-n", &ns]).await?;
        (d["status"]["readyReplicas"] == 1).then_some(())
    })
    .await;
    let shell = Layer::new()
        .symlink("bin", "usr/bin")
        .file("usr/bin/dash", b"ELF")
        .symlink("usr/bin/sh", "dash")
        .tar();
    push(
        &image,
        &Image::new(vec![Blob::layer(shell, Compression::Gzip)]).user("65532"),
    )
    .await;
    wait_until_denied_for_shell(&release, &ns, &image).await;
    kubectl_ok(&["scale", "deployment/web", "-n", &ns, "--replicas=2"]).await;
    wait_for("the FailedCreate Event", Duration::from_secs(60), || async {
        let ev = get_json(&["events", "-n", &ns, "--field-selector", "reason=FailedCreate"]).await?;
        (!ev["items"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let out = plugin(&["explain", "deployment/web", "-n", &ns]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("[image-has-shell] DENY container \"web\""), "{stdout}");
    assert!(stdout.contains("fix:"), "{stdout}");
    assert!(
        stdout.contains("FailedCreate") && stdout.contains("refused by distroless-guard"),
        "{stdout}"
    );
    let json = plugin(&["explain", "deploy/web", "-n", &ns, "-o", "json"]).await;
    let x: Value = serde_json::from_slice(&json.stdout).unwrap();
    let rule = x["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "image-has-shell")
        .cloned()
        .expect("the image rule");
    assert_eq!(rule["container"], "web");
    assert!(!rule["fix"].as_str().unwrap().is_empty(), "{rule}");
    assert!(
        x["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "FailedCreate" && e["refusedBy"] == "distroless-guard")
    );
    assert_eq!(x["policies"], json!([deny]));
    delete_policy(&deny).await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn rollout_verbs_drive_a_rollout_through_pause_promote_abort_retry_and_undo() {
    let release = Release::install("distroless-guard-verbs", &[]).await;
    let ns = release.namespace("verbs", &[]).await;
    app(&ns, "paused", 2, &format!("registry.test/{ns}/paused:1"), Value::Null).await;
    create_rollout(
        &ns,
        "paused",
        "paused",
        &format!("registry.test/{ns}/paused:1-distroless"),
        json!({"steps": [{"weight": 50, "bakeSeconds": 1, "pause": true}, {"weight": 100}]}),
    )
    .await;
    wait_phase(&ns, "paused", "Paused", 60).await;
    let table = plugin(&["rollout", "get", "-n", &ns]).await;
    let rows = text(&table).0;
    assert!(
        rows.lines().next().unwrap().starts_with("NAME") && rows.contains("paused") && rows.contains("Paused"),
        "{rows}"
    );
    let described = text(&plugin(&["rollout", "get", "paused", "-n", &ns]).await).0;
    assert!(
        described.contains("-> 1: 50%") && described.contains("then pause"),
        "{described}"
    );
    let promoted = plugin(&["rollout", "promote", "paused", "-n", &ns]).await;
    assert!(promoted.status.success(), "{}", text(&promoted).1);
    let status = plugin(&["rollout", "status", "paused", "-n", &ns, "--timeout", "90s"]).await;
    assert_eq!(status.status.code(), Some(0), "{}{}", text(&status).0, text(&status).1);
    assert!(text(&status).0.contains("Succeeded"), "{}", text(&status).0);

    app(&ns, "web", 2, &format!("registry.test/{ns}/web:1"), Value::Null).await;
    web_to_distroless(
        &ns,
        json!({"steps": [{"weight": 50, "bakeSeconds": 3600}, {"weight": 100}]}),
    )
    .await;
    wait_phase(&ns, "web", "Canary", 60).await;
    assert!(plugin(&["rollout", "pause", "web", "-n", &ns]).await.status.success());
    wait_phase(&ns, "web", "Paused", 30).await;
    // The verb is an annotation: a GitOps tool applying the rollout as Git has
    // it (server-side, its own field manager) does not undo the pause.
    let r = get_json(&["distrolessrollout", "web", "-n", &ns]).await.unwrap();
    assert_eq!(
        r["metadata"]["annotations"]["distrolessguard.dev/paused"], "true",
        "{r:#}"
    );
    assert!(r["spec"]["paused"] != true, "the spec was written: {r:#}");
    let git = json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessRollout",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"targetRef": {"name": "web"},
                 "containers": [{"name": "app", "image": format!("registry.test/{ns}/web:1-distroless")}],
                 "steps": [{"weight": 50, "bakeSeconds": 3600}, {"weight": 100}], "paused": false}});
    let synced = kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=gitops",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &git.to_string(),
    )
    .await;
    assert!(synced.status.success(), "{}", text(&synced).1);
    let r = get_json(&["distrolessrollout", "web", "-n", &ns]).await.unwrap();
    assert_eq!(
        r["metadata"]["annotations"]["distrolessguard.dev/paused"], "true",
        "{r:#}"
    );
    wait_phase(&ns, "web", "Paused", 30).await;
    assert!(plugin(&["rollout", "resume", "web", "-n", &ns]).await.status.success());
    wait_phase(&ns, "web", "Canary", 30).await;
    // Still baking: status times out (exit 2), it does not claim success.
    let waiting = plugin(&["rollout", "status", "web", "-n", &ns, "--timeout", "2s"]).await;
    assert_eq!(waiting.status.code(), Some(2), "{}", text(&waiting).1);
    assert!(plugin(&["rollout", "abort", "web", "-n", &ns]).await.status.success());
    let failed = plugin(&["rollout", "status", "web", "-n", &ns, "--timeout", "60s"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed).0);
    assert!(text(&failed).1.contains("Aborted"), "{}", text(&failed).1);
    // explain says which step failed and why.
    let why = text(&plugin(&["explain", "deployment/web", "-n", &ns]).await).0;
    assert!(
        why.contains("DistrolessRollout web: RolledBack at step 1") && why.contains("Aborted"),
        "{why}"
    );
    // A verb that makes no sense now says so.
    let late = plugin(&["rollout", "promote", "web", "-n", &ns]).await;
    assert_eq!(late.status.code(), Some(1));
    assert!(text(&late).1.contains("only `retry`"), "{}", text(&late).1);
    assert!(plugin(&["rollout", "retry", "web", "-n", &ns]).await.status.success());
    wait_for("a new attempt", Duration::from_secs(60), || async {
        let r = get_json(&["distrolessrollout", "web", "-n", &ns]).await?;
        (r["status"]["observedRetry"] == 1 && r["status"]["phase"] == "Canary").then_some(())
    })
    .await;
    let undone = plugin(&["rollout", "undo", "web", "-n", &ns]).await;
    assert!(undone.status.success(), "{}", text(&undone).1);
    assert!(
        get_json(&["distrolessrollout", "web", "-n", &ns]).await.is_none(),
        "the rollout is gone"
    );
    let d = get_json(&["deployment", "web", "-n", &ns]).await.unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("registry.test/{ns}/web:1")
    );
    wait_for("the canary gone", Duration::from_secs(60), || async {
        let rs = get_json(&["replicasets", "-n", &ns, "-l", "distrolessguard.dev/rollout=web"]).await?;
        rs["items"].as_array()?.is_empty().then_some(())
    })
    .await;
    let _ = release.uninstall().await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]).await;
}

#[tokio::test]
async fn errors_people_hit_are_said_plainly() {
    // RBAC: a user with no rights is told which verb on which resource.
    let nobody = cp().user_kubeconfig("nobody@example.com", &[]).unwrap();
    let out = plugin_as(&nobody, &["debug", "app", "-n", "default", "--no-attach"]).await;
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out).1;
    assert!(
        e.contains("forbidden") && e.contains("cannot get resource \"pods\""),
        "{e}"
    );
    let out = plugin_as(&nobody, &["rollout", "get", "-n", "default"]).await;
    assert!(
        text(&out).1.contains("cannot list resource \"distrolessrollouts\""),
        "{}",
        text(&out).1
    );

    // An API server that is not there.
    let dir = tempfile::tempdir().unwrap();
    let port = testcluster::free_port();
    let dead = dir.path().join("dead.kubeconfig");
    std::fs::write(
        &dead,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: u\n  user:\n    token: x\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let out = plugin_as(&dead, &["rollout", "get", "-n", "default"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("cannot reach the API server"), "{}", text(&out).1);

    // A cluster without our CRDs: a bare API server of its own.
    let bare = testcluster::ControlPlane::start(testcluster::Options {
        api_server_only: true,
        ..Default::default()
    })
    .expect("a bare API server");
    let out = plugin_as(bare.admin_kubeconfig(), &["rollout", "get", "-n", "default"]).await;
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out).1;
    assert!(
        e.contains("is distroless-guard installed?") && e.contains("distroless-guard crd | kubectl apply -f -"),
        "{e}"
    );
    bare.stop();
}

#[tokio::test]
async fn inspect_and_check_run_as_kubectl_verbs() {
    use crate::registry::{Blob, Compression, Image, Layer, TestRegistry, push};
    let registry = TestRegistry::start();
    let layer = || Blob::layer(Layer::new().file("app", b"ELF").tar(), Compression::Gzip);
    let rooted = registry.image("base/app:1.2");
    push(&rooted, &Image::new(vec![layer()])).await;
    push(
        &registry.image("base/app:nonroot"),
        &Image::new(vec![layer()]).user("65532"),
    )
    .await;
    let out = plugin(&["inspect", &rooted, "--insecure-registry", &registry.host()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("under runAsNonRoot: refused") && stdout.contains("will run as root"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{} exists", registry.image("base/app:nonroot"))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{} not found", registry.image("base/app:debug-nonroot"))),
        "{stdout}"
    );
    let json = plugin(&[
        "inspect",
        &rooted,
        "--insecure-registry",
        &registry.host(),
        "-o",
        "json",
    ])
    .await;
    let doc: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["images"][0]["distroless"], true);
    assert!(
        doc["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["digest"].is_string())
    );

    let examples = root().join("examples/manifests");
    let check = plugin(&["check", "-f", examples.to_str().unwrap()]).await;
    assert_eq!(check.status.code(), Some(1), "some examples are meant to be denied");
    assert!(text(&check).0.contains("[exec-probe]"), "{}", text(&check).0);
}
