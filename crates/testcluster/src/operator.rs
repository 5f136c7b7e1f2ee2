//! The operator's pods, played by local processes. kwok runs no containers,
//! so for each pod of an installed Deployment the harness starts the real
//! binary with the container's own args and env, the pod's identity (a token
//! of its ServiceAccount, `POD_NAME`, `POD_NAMESPACE` from the downward API),
//! its Secret volumes written to files, and its ports on 127.0.0.1. The
//! cluster network maps the pod's IP and container ports to those local
//! ports, so the API server reaches the webhook through the Service, its
//! EndpointSlice and the pod's readiness, as in a cluster.
//!
//! Readiness follows the process: a Stage keeps the Deployment's pods
//! not-ready until the harness has seen the process answer `/readyz` (the
//! readiness probe a kubelet would run), and takes them out again when it stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::cluster::{ControlPlane, Error, free_port};
use crate::process::Process;

/// The annotation the harness sets on a pod once its process is ready.
pub const READY_ANNOTATION: &str = "testcluster.distrolessguard.dev/ready";

/// The Stage that holds a release's pods not-ready until [`READY_ANNOTATION`] is "true".
/// Create it before the pods exist (before `helm install`).
pub fn probe_gate(name: &str, selector: &BTreeMap<String, String>) -> Value {
    let mut expressions = vec![
        json!({"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}),
        json!({"key": ".spec.nodeName", "operator": "Exists"}),
        json!({"key": ".status.phase", "operator": "In", "values": ["Pending", "Running"]}),
        json!({"key": format!(".metadata.annotations[\"{READY_ANNOTATION}\"]"), "operator": "NotIn", "values": ["true"]}),
    ];
    for (k, v) in selector {
        expressions.push(json!({"key": format!(".metadata.labels[\"{k}\"]"), "operator": "In", "values": [v]}));
    }
    let mut stage =
        crate::stages::Failure::NotReady.stage(name, &crate::stages::Target::Label(String::new(), String::new()));
    stage["spec"]["selector"]["matchExpressions"] = Value::Array(expressions);
    stage
}

/// One operator pod and the process playing it.
pub struct OperatorPod {
    pub pod: String,
    pub pod_ip: String,
    /// The webhook's local address (HTTPS).
    pub webhook: SocketAddr,
    /// /healthz, /readyz and /metrics (plain HTTP).
    pub health: SocketAddr,
    pub log: PathBuf,
    process: std::sync::Mutex<Option<Process>>,
    routes: Vec<SocketAddr>,
    alive: Arc<AtomicBool>,
    cp: &'static ControlPlane,
}

/// How to start the processes.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub namespace: &'a str,
    pub deployment: &'a str,
    /// Extra arguments appended to the container's (tests use `--lease-seconds` and the like).
    pub extra_args: Vec<String>,
    /// Extra environment (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Reach the API server through this address instead (a [`crate::faults::FaultProxy`]).
    pub api_server: Option<SocketAddr>,
}

impl OperatorPod {
    /// Stops the process (SIGTERM, as a pod deletion would) and takes the pod out of the endpoints.
    pub fn stop(mut self) {
        self.shutdown(false);
    }

    /// Kills the process (SIGKILL: a crash or a node loss).
    pub fn kill(mut self) {
        self.shutdown(true);
    }

    fn shutdown(&mut self, kill: bool) {
        let cp = self.cp;
        self.alive.store(false, Ordering::SeqCst);
        let taken = self.process.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(p) = taken {
            if kill {
                p.kill();
            } else {
                p.stop(Duration::from_secs(10));
            }
        }
        for r in &self.routes {
            cp.egress().unroute(*r);
        }
        cp.unwatch_log(&self.log);
    }

    /// The process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Process::pid)
            .unwrap_or(0)
    }

    /// Whether the process still runs.
    pub fn running(&self) -> bool {
        self.process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .is_some_and(|p| p.exited().is_none())
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorPod {
    fn drop(&mut self) {
        if self.process.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            self.shutdown(false);
        }
    }
}

/// Starts one process per running pod of the Deployment (waiting up to a minute
/// for the pods to be scheduled and given IPs), and keeps each pod's readiness
/// in step with its process.
pub async fn start(cp: &'static ControlPlane, launch: Launch<'_>) -> Result<Vec<OperatorPod>, Error> {
    let client = cp.client().await.map_err(|e| kerr("admin client", e))?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), launch.namespace);
    let deployment = deployments.get(launch.deployment).await.map_err(|e| {
        kerr(
            &format!("reading Deployment {}/{}", launch.namespace, launch.deployment),
            e,
        )
    })?;
    let spec = deployment.spec.clone();
    let replicas = spec.replicas.unwrap_or(1) as usize;
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let label_selector = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), launch.namespace);
    let started = Instant::now();
    let pods = loop {
        let list = pods_api
            .list(&ListParams::default().labels(&label_selector))
            .await
            .map_err(|e| kerr("listing the operator's pods", e))?;
        let placed: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
            .collect();
        if placed.len() >= replicas {
            break placed;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(Error::Timeout {
                what: format!("{replicas} pods of Deployment {} with IPs", launch.deployment),
                seconds: 60,
                dir: cp.dir().display().to_string(),
                tails: cp.log_tails(15),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut out = Vec::new();
    for pod in pods {
        out.push(start_pod(cp, &client, &launch, &pod).await?);
    }
    Ok(out)
}

fn kerr(what: &str, source: kube::Error) -> Error {
    Error::Kube {
        what: what.to_string(),
        source,
    }
}

async fn start_pod(
    cp: &'static ControlPlane,
    client: &kube::Client,
    launch: &Launch<'_>,
    pod: &Pod,
) -> Result<OperatorPod, Error> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    let container: Container = spec.containers.first().cloned().unwrap_or_default();
    let dir = cp.dir().join("pods").join(&name);
    std::fs::create_dir_all(&dir)?;

    // Secret volumes become files; their mount paths are rewritten in the args.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), launch.namespace);
    for m in container.volume_mounts.iter().flatten() {
        let Some(volume) = spec.volumes.iter().flatten().find(|v| v.name == m.name) else {
            continue;
        };
        let Some(sv) = &volume.secret else { continue };
        let local = dir.join("volumes").join(&m.name);
        std::fs::create_dir_all(&local)?;
        let secret_name = sv.secret_name.clone().unwrap_or_default();
        let secret = secrets
            .get(&secret_name)
            .await
            .map_err(|e| kerr(&format!("reading Secret {secret_name} mounted by {name}"), e))?;
        let data = secret.data.unwrap_or_default();
        match &sv.items {
            Some(items) => {
                for item in items {
                    if let Some(v) = data.get(&item.key) {
                        std::fs::write(local.join(&item.path), &v.0)?;
                    }
                }
            }
            None => {
                for (k, v) in &data {
                    std::fs::write(local.join(k), &v.0)?;
                }
            }
        }
        mounts.push((m.mount_path.clone(), local));
    }

    let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    let mut kubeconfig = cp.service_account_kubeconfig(launch.namespace, &sa).await?;
    if let Some(proxy) = launch.api_server {
        let text = std::fs::read_to_string(&kubeconfig)?;
        kubeconfig = dir.join("through-proxy.kubeconfig");
        crate::pki::write_kubeconfig(&kubeconfig, &crate::faults::through(&text, proxy))?;
    }

    // Ports: every container port gets a local one; --listen flags follow.
    let ports: Vec<(i32, u16)> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.container_port, free_port()))
        .collect();
    let local_for = |port: i32| ports.iter().find(|(c, _)| *c == port).map(|(_, l)| *l);
    let mut args: Vec<String> = Vec::new();
    let (mut webhook, mut health) = (None, None);
    for a in container.args.iter().flatten() {
        let mut a = a.clone();
        for (mount, local) in &mounts {
            a = a.replace(mount.as_str(), &local.display().to_string());
        }
        for flag in ["--listen=", "--metrics-listen="] {
            if let Some(addr) = a.strip_prefix(flag) {
                let port: i32 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                let local = local_for(port).unwrap_or_else(free_port);
                let bound: SocketAddr = ([127, 0, 0, 1], local).into();
                if flag == "--listen=" {
                    webhook = Some(bound);
                } else {
                    health = Some(bound);
                }
                a = format!("{flag}{bound}");
            }
        }
        args.push(a);
    }
    args.extend(launch.extra_args.iter().cloned());
    let mut cmd = Command::new(launch.binary);
    cmd.args(&args).env("KUBECONFIG", &kubeconfig).env("HOSTNAME", &name);
    for e in container.env.iter().flatten() {
        let field = e
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        let value = match field {
            Some("metadata.name") => name.clone(),
            Some("metadata.namespace") => launch.namespace.to_string(),
            Some("status.podIP") => pod_ip.clone(),
            Some("spec.nodeName") => spec.node_name.clone().unwrap_or_default(),
            _ => e.value.clone().unwrap_or_default(),
        };
        cmd.env(&e.name, value);
    }
    for (k, v) in &launch.env {
        cmd.env(k, v);
    }
    let log = dir.join("operator.log");
    let process = Process::spawn(&format!("operator {name}"), cmd, &log)?;
    cp.watch_log(&format!("operator {name}"), &log);

    let mut routes = Vec::new();
    for (container_port, local) in &ports {
        if let Ok(pod_addr) = format!("{pod_ip}:{container_port}").parse::<SocketAddr>() {
            cp.egress().route(pod_addr, ([127, 0, 0, 1], *local).into());
            routes.push(pod_addr);
        }
    }
    let health = health.unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
    let alive = Arc::new(AtomicBool::new(true));
    follow_readiness(cp, launch.namespace.to_string(), name.clone(), health, alive.clone());
    Ok(OperatorPod {
        pod: name,
        pod_ip,
        webhook: webhook.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
        health,
        log,
        process: std::sync::Mutex::new(Some(process)),
        routes,
        alive,
        cp,
    })
}

/// The readiness probe: /readyz of the process decides the pod's annotation.
fn follow_readiness(
    cp: &'static ControlPlane,
    namespace: String,
    pod: String,
    health: SocketAddr,
    alive: Arc<AtomicBool>,
) {
    cp.spawn_task(async move {
        let Ok(client) = cp.client().await else { return };
        let pods: Api<Pod> = Api::namespaced(client, &namespace);
        let mut last: Option<bool> = None;
        // Once the process is gone the pod must leave the endpoints, as a failed
        // probe would take it out; a patch lost to a loaded API server is retried.
        let mut stopped_at: Option<Instant> = None;
        loop {
            let running = alive.load(Ordering::SeqCst);
            let ready = running && ready_at(health).await;
            if last != Some(ready) {
                let value = if ready { json!("true") } else { Value::Null };
                let patch = json!({"metadata": {"annotations": {READY_ANNOTATION: value}}});
                match pods.patch(&pod, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => last = Some(ready),
                    // The pod is gone: nothing left to take out.
                    Err(kube::Error::Api(s)) if s.code == 404 => return,
                    Err(_) => {}
                }
            }
            if !running {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                if last == Some(false) || since.elapsed() > Duration::from_secs(60) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

async fn ready_at(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        buf.starts_with(b"HTTP/1.1 200").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .is_some()
}
