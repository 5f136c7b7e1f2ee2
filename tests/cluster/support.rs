//! Helpers for the tests on the real control plane: kubectl and Helm as a user
//! runs them, namespaces, and Helm releases of the chart with the operator's
//! pods played by local processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use testcluster::ControlPlane;

pub fn cp() -> &'static ControlPlane {
    testcluster::shared()
}

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    root().join("charts/distroless-guard")
}

/// Runs a command off the async runtime and returns its output.
pub async fn output(cmd: Command) -> Output {
    run(cmd, None).await
}

/// Runs a command with `input` on its standard input.
pub async fn output_with_input(cmd: Command, input: String) -> Output {
    run(cmd, Some(input.into_bytes())).await
}

/// Runs `cmd` bounded, under testcluster's guard (`crate::command`), off the
/// async runtime.
async fn run(cmd: Command, input: Option<Vec<u8>>) -> Output {
    tokio::task::spawn_blocking(move || crate::command::within(cmd, input, crate::command::LIMIT))
        .await
        .unwrap()
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl <args>` as the cluster admin.
pub async fn kubectl(args: &[&str]) -> Output {
    let mut cmd = cp().kubectl();
    cmd.args(args);
    output(cmd).await
}

/// `kubectl <args>` that must succeed; its stdout.
pub async fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
    stdout
}

/// `kubectl apply -f -` (or other args) with a manifest on stdin.
pub async fn kubectl_stdin(args: &[&str], manifest: &str) -> Output {
    let mut cmd = cp().kubectl();
    cmd.args(args);
    output_with_input(cmd, manifest.to_string()).await
}

/// An admin client on this test's runtime.
pub async fn client() -> kube::Client {
    cp().client().await.expect("admin client")
}

/// Polls `check` every 100 ms until it returns `Some`, at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kubectl get` of one object as JSON, `None` when it does not exist.
pub async fn get_json(args: &[&str]) -> Option<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = kubectl(&full).await;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Creates a namespace `<prefix>-<n>` with these labels; returns its name.
pub async fn namespace(prefix: &str, labels: &[(&str, &str)]) -> String {
    let name = testcluster::unique(prefix);
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    let out = kubectl_stdin(&["create", "-f", "-"], &ns.to_string()).await;
    assert!(out.status.success(), "creating namespace {name}: {}", text(&out).1);
    // The controller-manager creates the default ServiceAccount the pods need.
    wait_for("the default ServiceAccount", Duration::from_secs(30), || async {
        kubectl(&["get", "sa", "default", "-n", &name])
            .await
            .status
            .success()
            .then_some(())
    })
    .await;
    name
}

pub fn policy_api(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("distrolessguard.dev", "v1alpha1", "DistrolessPolicy");
    Api::all_with(client, &ApiResource::from_gvk_with_plural(&gvk, "distrolesspolicies"))
}

/// A DistrolessPolicy that applies only in `namespace`, with `spec` merged in.
pub fn policy(name: &str, namespace: &str, spec: Value) -> Value {
    let mut p = json!({
        "apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessPolicy",
        "metadata": {"name": name},
        "spec": {"match": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}},
    });
    if let (Some(base), Some(extra)) = (p["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    p
}

pub async fn create_policy(p: &Value) {
    let obj: DynamicObject = serde_json::from_value(p.clone()).unwrap();
    policy_api(client().await)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating policy {}: {e}", p["metadata"]["name"]));
}

pub async fn delete_policy(name: &str) {
    let _ = policy_api(client().await).delete(name, &Default::default()).await;
}

/// Only one release of the operator runs at a time: every leader writes the
/// status of every DistrolessPolicy, as it would in a cluster with one install.
static OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the operator's exclusivity (for a test that runs the operator its own way).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    OPERATOR.lock().await
}

/// The label that sends a namespace to one release's webhooks.
pub const RELEASE_LABEL: &str = "distrolessguard.dev/test-release";

/// A Helm release of the chart with its operator pods running as local
/// processes, held exclusively by one test.
pub struct Release {
    inner: testcluster::release::Release,
    _exclusive: tokio::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Release {
    type Target = testcluster::release::Release;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Release {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// Values every test release uses: text logs, fast certificate checks, a short
/// lease, and webhooks that see only namespaces labelled for this release.
pub fn test_values(release: &str) -> Vec<String> {
    vec![
        "--set".into(),
        "logging.format=text".into(),
        "--set".into(),
        "webhook.certCheckSeconds=1".into(),
        "--set".into(),
        "leaderElection.leaseSeconds=4".into(),
        "--set-json".into(),
        format!(
            "webhook.namespaceSelector={}",
            json!({"matchLabels": {RELEASE_LABEL: release}})
        ),
    ]
}

impl Release {
    /// `helm install` with the test values plus `extra`, then the operator processes.
    pub async fn install(prefix: &str, extra: &[&str]) -> Release {
        Self::install_chart(prefix, &chart_dir(), extra, None).await
    }

    /// `install` with image inspection on, reading `registry` (`host:port`) over plain HTTP.
    pub async fn install_inspecting(prefix: &str, registry: &str) -> Release {
        let insecure = format!("imageInspection.insecureRegistries={{{registry}}}");
        Self::install(prefix, &["--set", "imageInspection.enabled=true", "--set", &insecure]).await
    }

    /// As `install`, from another copy of the chart, optionally with the
    /// operator reaching the API server through a fault proxy.
    pub async fn install_chart(
        prefix: &str,
        chart: &Path,
        extra: &[&str],
        api_server: Option<std::net::SocketAddr>,
    ) -> Release {
        let exclusive = OPERATOR.lock().await;
        let name = testcluster::unique(prefix);
        let mut helm_args = test_values(&name);
        helm_args.extend(extra.iter().map(|s| s.to_string()));
        let inner = testcluster::release::Release::install(
            cp(),
            testcluster::release::Install {
                name: &name,
                chart,
                binary: Path::new(env!("CARGO_BIN_EXE_distroless-guard")),
                helm_args,
                // Tags re-pushed by a test are read again a second later.
                extra_args: vec!["--image-tag-ttl-seconds=1".into()],
                env: vec![("RUST_LOG".into(), "distroless_guard=debug,info".into())],
                api_server,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("installing {name}: {e}"));
        Release {
            inner,
            _exclusive: exclusive,
        }
    }

    /// A namespace this release's webhooks see.
    pub async fn namespace(&self, prefix: &str, extra_labels: &[(&str, &str)]) -> String {
        let mut labels = vec![(RELEASE_LABEL, self.name.as_str())];
        labels.extend_from_slice(extra_labels);
        namespace(prefix, &labels).await
    }

    pub async fn ca_bundle(&self) -> String {
        self.inner.ca_bundle().await.unwrap()
    }

    /// Waits until pods in `namespace` are admitted through this release's webhooks:
    /// a dry-run of a root pod is denied (a Deny policy must cover the namespace).
    pub async fn wait_serving(&self, namespace: &str) {
        let probe = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "probe:1", "securityContext": {"runAsUser": 0}}]}});
        wait_for("the webhook to deny a root pod", Duration::from_secs(60), || {
            let probe = probe.to_string();
            async move {
                let out = kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &probe).await;
                let (_, err) = text(&out);
                (!out.status.success() && err.contains("[root-uid]")).then_some(())
            }
        })
        .await;
    }

    /// `helm uninstall` and the processes stopped.
    pub async fn uninstall(self) -> Output {
        self.inner.uninstall().await.unwrap()
    }
}

/// Waits until `pod` is no longer a ready endpoint of `service`: after a
/// crash, what the API server needs before it stops sending reviews there
/// (kubelet's probe, then the EndpointSlice controller, take a moment).
pub async fn wait_out_of_endpoints(namespace: &str, service: &str, pod: &str) {
    let selector = format!("kubernetes.io/service-name={service}");
    wait_for(
        &format!("pod {pod} out of the ready endpoints of {service}"),
        Duration::from_secs(60),
        || async {
            let slices = get_json(&["endpointslices", "-n", namespace, "-l", &selector]).await?;
            let still_ready = slices["items"].as_array()?.iter().any(|s| {
                s["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["targetRef"]["name"] == pod && e["conditions"]["ready"] != false)
            });
            (!still_ready).then_some(())
        },
    )
    .await;
}

/// `GET path` over plain HTTP (the operators' health and metrics port): status and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// The sum of a metric's samples (every label set) over the release's
/// operator processes, as their `/metrics` report it now.
pub async fn metric_sum(release: &Release, name: &str) -> f64 {
    let mut sum = 0.0;
    for op in &release.operators {
        sum += metric(op.health, name).await;
    }
    sum
}

/// The value of exactly the series `series` (a name, with labels if it has
/// any) one replica serves on `/metrics`; `None` when it serves no such line.
pub async fn series(health: std::net::SocketAddr, series: &str) -> Option<f64> {
    let body = http_get(health, "/metrics").await.1;
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of the series of `name` one replica serves on `/metrics`; `name`
/// may end in labels (`name{result="other"}`) to pick one series.
pub async fn metric(health: std::net::SocketAddr, name: &str) -> f64 {
    let body = http_get(health, "/metrics").await.1;
    let mut sum = 0.0;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        sum += line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    sum
}

/// Waits for an Event (events.k8s.io) in `ns` that `matches`, and returns it.
pub async fn wait_event(ns: &str, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(30), || async {
        let ev = get_json(&["events.events.k8s.io", "-n", ns]).await?;
        ev["items"].as_array()?.iter().find(|e| matches(e)).cloned()
    })
    .await
}

/// Waits until every replica of `release` judges `image` afresh and finds a
/// shell in it. Used after a tag was pushed again, instead of sleeping out
/// the tag cache's TTL: each replica keeps its own cache, so an
/// AdmissionReview of a pod with that image in `ns` (which a Deny policy
/// covers) is sent to each replica's webhook directly, and each must refuse
/// it for `image-has-shell`. (One refusal through the API server proves only
/// that the replica it reached has read the new image.)
pub async fn wait_until_denied_for_shell(release: &Release, ns: &str, image: &str) {
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "probe-shell", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": ns, "name": "probe-shell", "operation": "CREATE",
        "userInfo": {"username": "test"},
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe-shell", "namespace": ns},
            "spec": {"containers": [{"name": "probe", "image": image}]}}}})
    .to_string();
    for operator in &release.operators {
        let url = format!("https://{}/validate", operator.webhook);
        wait_for(
            &format!(
                "{} to read the re-pushed tag (refused for image-has-shell)",
                operator.pod
            ),
            Duration::from_secs(30),
            || async {
                // The replica's own serving certificate, from the chart's CA:
                // -k, since this talks to the test's own process on 127.0.0.1.
                let mut curl = Command::new("curl");
                curl.args([
                    "-sk",
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    "@-",
                    &url,
                ]);
                let out = output_with_input(curl, review.clone()).await;
                let answer: Value = serde_json::from_slice(&out.stdout).ok()?;
                let response = &answer["response"];
                (response["allowed"] == false && response["status"]["message"].as_str()?.contains("[image-has-shell]"))
                    .then_some(())
            },
        )
        .await;
    }
}
