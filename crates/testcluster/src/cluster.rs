//! Starting and stopping the control plane: etcd, kube-apiserver (RBAC,
//! client-certificate admin, service-account tokens, the default admission
//! chain with ServiceAccount and PodSecurity, an audit log, the egress
//! selector), kube-controller-manager, kube-scheduler, and kwok with fake
//! Nodes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::bins::Bins;
use crate::egress::Egress;
use crate::node::{self, RealNode};
use crate::pki::{self, Ca, Credentials};
use crate::process::{self, Process};
use crate::stages;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bins(#[from] crate::bins::BinsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("certificates: {0}")]
    Pki(String),
    #[error("real node: {0}")]
    Node(String),
    #[error("{component} exited during start-up ({status}); its log ends with:\n{tail}")]
    Exited {
        component: String,
        status: String,
        tail: String,
    },
    #[error("{what} did not happen within {seconds} s; logs under {dir}:\n{tails}")]
    Timeout {
        what: String,
        seconds: u64,
        dir: String,
        tails: String,
    },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// How to start a control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// Work directory (certificates, kubeconfigs, logs, etcd data); a fresh one under
    /// /dev/shm (or the temp dir) when `None`, removed at exit.
    pub dir: Option<PathBuf>,
    /// Fake kwok Nodes to create.
    pub nodes: usize,
    /// Lift the client rate limits of the controller-manager and scheduler and the
    /// API server's in-flight limits (benchmarks with thousands of pods).
    pub unlimited: bool,
    /// Only etcd and the API server: no controllers, scheduler, kwok or Nodes.
    pub api_server_only: bool,
    /// Real nodes (kubelet + containerd) to start beside the kwok ones
    /// ([`ControlPlane::start_real_node`] starts one later).
    pub real_nodes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dir: None,
            nodes: 2,
            unlimited: false,
            api_server_only: false,
            real_nodes: 0,
        }
    }
}

/// The pod network kwok hands out IPs from, and the node addresses.
pub const POD_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
const NODE_IP: &str = "10.240.0.1";

/// A running control plane. Dropping it stops every component.
pub struct ControlPlane {
    dir: PathBuf,
    bins: Bins,
    server: String,
    ca: Ca,
    admin: PathBuf,
    procs: Mutex<Vec<Process>>,
    extra_logs: Mutex<Vec<(String, PathBuf)>>,
    egress: Egress,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    nodes: Vec<String>,
    api_port: u16,
    real: Mutex<RealNodes>,
}

/// The real nodes of a control plane, the registry their images come from,
/// and each node's teardown (registered to run at exit too).
#[derive(Default)]
struct RealNodes {
    nodes: Vec<(RealNode, u64)>,
    registry: Option<SocketAddr>,
    kube_proxy: bool,
}

/// A port on 127.0.0.1 for a child process to listen on, held for the life
/// of this process so no one else takes it before (or after) the child binds.
///
/// Taken from below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), never from it: a port the
/// kernel handed out for `bind(0)` and that was released goes back to the pool
/// outgoing connections draw from, and with a thousand API requests in flight
/// one of them took it before the child bound it (`Address already in use`).
/// Below the range only an explicit bind takes a port; each process starts at
/// its own place (by pid) and never offers the same port twice.
///
/// The port is held by a socket bound without `SO_REUSEADDR` (so the bind
/// fails when anyone holds or serves the port, another test process's hold
/// included) that then turns `SO_REUSEADDR` on and never listens. Linux lets
/// a listener bind beside it only when both sockets have `SO_REUSEADDR`, as
/// every child here sets it (Go's and tokio's listeners do): the child binds,
/// a plain `bind` by anyone else keeps failing, and a restarted child gets
/// the same port back. Connections to the port before the child listens are
/// refused, as on a free port.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // The ports from 10000 up to the ephemeral range (22768 by default).
    let (first, count) = (10_000u32, low.saturating_sub(10_000));
    if count >= 1000 {
        let start = std::process::id().wrapping_mul(2_654_435_761) % count;
        for _ in 0..count {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let port = first + (start + n) % count;
            if let Some(port) = hold_port(port as u16) {
                return port;
            }
        }
    }
    // No room below the range (a machine that widened it): ask the kernel.
    hold_port(0).unwrap_or(0)
}

/// Binds `port` (0: one the kernel picks) on 127.0.0.1 and keeps the socket
/// until this process ends; `None` when the port is taken. See [`free_port`].
fn hold_port(port: u16) -> Option<u16> {
    use socket2::{Domain, Socket, Type};
    static HELD: std::sync::Mutex<Vec<Socket>> = std::sync::Mutex::new(Vec::new());
    // socket2 opens it close-on-exec: children do not inherit the hold.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
        .ok()?;
    socket.set_reuse_address(true).ok()?;
    let port = socket.local_addr().ok()?.as_socket()?.port();
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    Some(port)
}

fn work_dir(opts: &Options) -> std::io::Result<(PathBuf, bool)> {
    if let Some(dir) = &opts.dir {
        std::fs::create_dir_all(dir)?;
        return Ok((std::fs::canonicalize(dir)?, false));
    }
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    remove_stale(&base);
    let dir = base.join(format!(
        "dg-cluster-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_millisecond()
    ));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("owner.pid"), std::process::id().to_string())?;
    Ok((dir, true))
}

/// Work directories left by runs that were killed (their owner is gone).
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with("dg-cluster-") {
            continue;
        }
        let owner = std::fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        // SAFETY: signal 0 only probes whether the pid exists.
        let alive = owner.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        if !alive {
            node::reclaim(&path);
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

impl ControlPlane {
    /// Starts everything and waits until pods can be scheduled and run. Blocks;
    /// safe to call from inside an async runtime (the work runs on a thread of its own).
    pub fn start(opts: Options) -> Result<ControlPlane, Error> {
        std::thread::spawn(move || Self::start_blocking(opts))
            .join()
            .unwrap_or_else(|_| Err(Error::Pki("the start-up thread panicked".into())))
    }

    fn start_blocking(opts: Options) -> Result<ControlPlane, Error> {
        let started = Instant::now();
        let bins = Bins::locate()?;
        let (dir, owned) = work_dir(&opts)?;
        if owned {
            process::remove_at_exit(&dir);
        }
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let pki_err = |e: rcgen::Error| Error::Pki(e.to_string());

        let api_port = free_port();
        let server = format!("https://127.0.0.1:{api_port}");
        let ca = Ca::new("distroless-guard test cluster CA").map_err(pki_err)?;
        std::fs::write(pki_dir.join("ca.crt"), &ca.cert)?;
        let loopback = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))];
        ca.serving(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &loopback,
        )
        .map_err(pki_err)?
        .write(&pki_dir, "apiserver")?;
        pki::service_account_key(&pki_dir).map_err(|e| Error::Pki(e.to_string()))?;
        ca.client("kube-apiserver-kubelet-client", &["system:masters"])
            .map_err(pki_err)?
            .write(&pki_dir, "apiserver-kubelet-client")?;
        let kubeconfig = |name: &str, user: &str, groups: &[&str]| -> Result<PathBuf, Error> {
            let pair = ca.client(user, groups).map_err(pki_err)?;
            let path = dir.join(format!("{name}.kubeconfig"));
            pki::write_kubeconfig(
                &path,
                &pki::kubeconfig(name, &server, &ca.cert, Credentials::Cert(&pair)),
            )?;
            Ok(path)
        };
        let admin = kubeconfig("admin", "system:admin", &["system:masters"])?;
        let kcm_config = kubeconfig("controller-manager", "system:kube-controller-manager", &[])?;
        let scheduler_config = kubeconfig("scheduler", "system:kube-scheduler", &[])?;
        let kwok_config = kubeconfig("kwok", "kwok", &["system:masters"])?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testcluster")
            .enable_all()
            .build()?;
        // Unix socket paths are limited to 108 bytes.
        let mut socket = dir.join("egress.sock");
        if socket.as_os_str().len() > 100 {
            socket = std::env::temp_dir().join(format!("dg-egress-{}.sock", std::process::id()));
        }
        let egress = {
            let _guard = runtime.enter();
            Egress::start(&socket)?
        };
        std::fs::write(dir.join(".distroless-guard-cluster"), "")?;

        let cp = ControlPlane {
            dir: dir.clone(),
            bins,
            server: server.clone(),
            ca,
            admin,
            procs: Mutex::new(Vec::new()),
            extra_logs: Mutex::new(Vec::new()),
            egress,
            runtime: Mutex::new(Some(runtime)),
            nodes: (0..opts.nodes.max(1)).map(|i| format!("kwok-node-{i}")).collect(),
            api_port,
            real: Mutex::default(),
        };

        // etcd
        let (etcd_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(cp.bins.path("etcd"));
        cmd.args([
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync=true".into(),
            "--quota-backend-bytes=8589934592".into(),
            "--log-level=warn".into(),
        ]);
        cp.spawn("etcd", cmd)?;
        cp.wait("etcd to be healthy", Duration::from_secs(30), || {
            http_get(("127.0.0.1", etcd_port), "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
        })?;

        // kube-apiserver
        let egress_config = dir.join("egress.yaml");
        std::fs::write(
            &egress_config,
            serde_saphyr::to_string(&json!({
                "apiVersion": "apiserver.k8s.io/v1beta1",
                "kind": "EgressSelectorConfiguration",
                "egressSelections": [{
                    "name": "cluster",
                    "connection": {"proxyProtocol": "HTTPConnect", "transport": {"uds": {"udsName": socket}}},
                }],
            }))
            .unwrap_or_default(),
        )?;
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, AUDIT_POLICY)?;
        let p = |f: &str| pki_dir.join(f).display().to_string();
        let mut cmd = Command::new(cp.bins.path("kube-apiserver"));
        cmd.args([
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", dir.join("apiserver").display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            // Node for the real nodes' kubelets, as a cluster authorizes them.
            "--authorization-mode=Node,RBAC".into(),
            format!("--kubelet-client-certificate={}", p("apiserver-kubelet-client.crt")),
            format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            format!("--kubelet-certificate-authority={}", p("ca.crt")),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--allow-privileged=true".into(),
            format!("--egress-selector-config-file={}", egress_config.display()),
            "--enable-aggregator-routing=true".into(),
            format!("--audit-policy-file={}", audit_policy.display()),
            format!("--audit-log-path={}", dir.join("audit.log").display()),
            "--audit-log-format=json".into(),
            "--audit-log-mode=blocking".into(),
            "--profiling=false".into(),
        ]);
        if opts.unlimited {
            cmd.args([
                "--max-requests-inflight=0",
                "--max-mutating-requests-inflight=0",
                "--enable-priority-and-fairness=false",
            ]);
        }
        cp.spawn("kube-apiserver", cmd)?;
        cp.wait("kube-apiserver to be ready", Duration::from_secs(90), || {
            cp.block_on(async {
                let client = cp.client().await.ok()?;
                let req = http::Request::get("/readyz").body(Vec::new()).ok()?;
                let ok = client.request_text(req).await.ok()? == "ok";
                let ns: Api<Namespace> = Api::all(client);
                (ok && ns.get_opt("default").await.ok()?.is_some()).then_some(())
            })
            .is_some()
        })?;

        if opts.api_server_only {
            return Ok(cp);
        }

        // kube-controller-manager and kube-scheduler
        let kcm_port = free_port();
        let mut cmd = Command::new(cp.bins.path("kube-controller-manager"));
        let kc = kcm_config.display().to_string();
        cmd.args([
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
            format!("--cert-dir={}", dir.join("kcm").display()),
        ]);
        if opts.unlimited {
            cmd.args([
                "--kube-api-qps=5000",
                "--kube-api-burst=10000",
                "--concurrent-replicaset-syncs=20",
            ]);
        }
        cp.spawn("kube-controller-manager", cmd)?;

        let sched_port = free_port();
        let sched_yaml = dir.join("scheduler.yaml");
        let (qps, burst) = if opts.unlimited { (5000, 10000) } else { (50, 100) };
        std::fs::write(
            &sched_yaml,
            format!(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
                 clientConnection:\n  kubeconfig: {}\n  qps: {qps}\n  burst: {burst}\nleaderElection:\n  leaderElect: false\n",
                scheduler_config.display()
            ),
        )?;
        let mut cmd = Command::new(cp.bins.path("kube-scheduler"));
        let sc = scheduler_config.display().to_string();
        cmd.args([
            format!("--config={}", sched_yaml.display()),
            format!("--authentication-kubeconfig={sc}"),
            format!("--authorization-kubeconfig={sc}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={sched_port}"),
        ]);
        cp.spawn("kube-scheduler", cmd)?;

        // kwok: its Stage CRD, our stages, then the controller.
        cp.install_stages()?;
        let kwok_port = free_port();
        let mut cmd = Command::new(cp.bins.path("kwok"));
        cmd.args([
            format!("--kubeconfig={}", kwok_config.display()),
            // Only the fake Nodes: real nodes have a kubelet of their own.
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            "--enable-crds=Stage".into(),
            format!("--cidr={POD_CIDR}"),
            format!("--node-ip={NODE_IP}"),
            "--node-lease-duration-seconds=40".into(),
            format!("--server-address=127.0.0.1:{kwok_port}"),
        ]);
        if std::env::var_os("DISTROLESS_GUARD_KWOK_DEBUG").is_some() {
            cmd.arg("--v=DEBUG");
        }
        cp.spawn("kwok", cmd)?;
        cp.create_nodes()?;
        cp.wait(
            "the controller-manager to create the default ServiceAccount",
            Duration::from_secs(60),
            || {
                cp.block_on(async {
                    let sa: Api<ServiceAccount> = Api::namespaced(cp.client().await.ok()?, "default");
                    sa.get_opt("default").await.ok()?
                })
                .is_some()
            },
        )?;
        for _ in 0..opts.real_nodes {
            cp.start_real_node_blocking()?;
        }
        std::fs::write(
            dir.join("started.txt"),
            format!("{:.1}\n", started.elapsed().as_secs_f64()),
        )?;
        Ok(cp)
    }

    fn spawn(&self, name: &str, cmd: Command) -> Result<(), Error> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let p = Process::spawn(name, cmd, &log)?;
        lock(&self.procs).push(p);
        Ok(())
    }

    /// Polls `done` every 100 ms; fails at once when a component exits.
    fn wait(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            if done() {
                return Ok(());
            }
            for p in lock(&self.procs).iter_mut() {
                if let Some(status) = p.exited() {
                    return Err(Error::Exited {
                        component: p.name().to_string(),
                        status: status.to_string(),
                        tail: process::tail(p.log(), 30).join("\n"),
                    });
                }
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    seconds: timeout.as_secs(),
                    dir: self.dir.display().to_string(),
                    tails: self.log_tails(15),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `f` on the control plane's runtime (start-up only; never from async code).
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        let handle = lock(&self.runtime).as_ref().map(|rt| rt.handle().clone());
        match handle {
            Some(h) => h.block_on(f),
            None => panic!("the control plane's runtime is gone"),
        }
    }

    fn install_stages(&self) -> Result<(), Error> {
        let text = std::fs::read_to_string(self.bins.path(crate::bins::STAGE_CRD))?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).map_err(|e| Error::Pki(format!("{}: {e}", crate::bins::STAGE_CRD)))?;
        self.block_on(async {
            let client = self.client().await.map_err(kube_err("admin client"))?;
            let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
            crds.create(&PostParams::default(), &crd)
                .await
                .map_err(kube_err("creating kwok's Stage CRD"))?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            let started = Instant::now();
            loop {
                let established = crds.get(&name).await.ok().is_some_and(|c| {
                    c.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                if established {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    return Err(Error::Timeout {
                        what: "the Stage CRD to be established".into(),
                        seconds: 30,
                        dir: self.dir.display().to_string(),
                        tails: String::new(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for s in stages::defaults() {
                self.create_stage_with(&client, &s).await?;
            }
            Ok(())
        })
    }

    async fn create_stage_with(&self, client: &kube::Client, stage: &Value) -> Result<(), Error> {
        let obj: DynamicObject =
            serde_json::from_value(stage.clone()).map_err(|e| Error::Pki(format!("stage: {e}")))?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        stage_api(client.clone())
            .create(&PostParams::default(), &obj)
            .await
            .map_err(kube_err(format!("creating Stage {name}")))?;
        Ok(())
    }

    fn create_nodes(&self) -> Result<(), Error> {
        self.block_on(async {
            let client = self.client().await.map_err(kube_err("admin client"))?;
            let nodes: Api<Node> = Api::all(client);
            for name in &self.nodes {
                let node: Node = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {
                            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64", "type": "kwok",
                        },
                    },
                }))
                .map_err(|e| Error::Pki(e.to_string()))?;
                nodes
                    .create(&PostParams::default(), &node)
                    .await
                    .map_err(kube_err(format!("creating Node {name}")))?;
            }
            Ok::<_, Error>(())
        })?;
        self.wait(
            "the kwok Nodes to be Ready and untainted",
            Duration::from_secs(60),
            || {
                self.block_on(async {
                    let nodes: Api<Node> = Api::all(self.client().await.ok()?);
                    let list = nodes.list(&Default::default()).await.ok()?;
                    let ready = list.items.iter().filter(|n| {
                        let ready = n
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                        let tainted = n
                            .spec
                            .as_ref()
                            .and_then(|s| s.taints.as_ref())
                            .is_some_and(|t| !t.is_empty());
                        ready && !tainted
                    });
                    (ready.count() == self.nodes.len()).then_some(())
                })
                .is_some()
            },
        )
    }

    /// The work directory (logs, kubeconfigs, certificates).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The cluster CA (PEM): trusted by clients, signs client certificates.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert
    }

    /// Kubeconfig of `system:admin` (group `system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin
    }

    /// The fake Nodes' names.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The cluster network (routes from pod IPs to local processes).
    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// An admin client on the caller's runtime.
    pub async fn client(&self) -> kube::Result<kube::Client> {
        client_from(&self.admin).await
    }

    /// A kubeconfig for a user authenticated by a client certificate (CN=user, O=groups).
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> std::io::Result<PathBuf> {
        let pair = self
            .ca
            .client(user, groups)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.join(format!("user-{safe}.kubeconfig"));
        pki::write_kubeconfig(
            &path,
            &pki::kubeconfig(&safe, &self.server, &self.ca.cert, Credentials::Cert(&pair)),
        )?;
        Ok(path)
    }

    /// A kubeconfig holding a token of ServiceAccount `namespace/name` (TokenRequest),
    /// as a pod of that ServiceAccount would have it.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf, Error> {
        let client = self.client().await.map_err(kube_err("admin client"))?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let request = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400},
        }))
        .map_err(|e| Error::Pki(e.to_string()))?;
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(kube_err(format!("TokenRequest for ServiceAccount {namespace}/{name}")))?
            .status
            .and_then(|s| s.token)
            .unwrap_or_default();
        let path = self.dir.join(format!("sa-{namespace}-{name}.kubeconfig"));
        pki::write_kubeconfig(
            &path,
            &pki::kubeconfig(name, &self.server, &self.ca.cert, Credentials::Token(&token)),
        )?;
        Ok(path)
    }

    /// `kubectl --kubeconfig <admin>` (the kubectl built with the control plane).
    pub fn kubectl(&self) -> Command {
        self.kubectl_as(&self.admin)
    }

    /// `kubectl` with another kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(self.bins.path("kubectl"));
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()));
        cmd
    }

    /// `helm --kubeconfig <admin>`, with its caches and config kept in the work directory.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bins.path("helm"));
        let home = self.dir.join("helm");
        cmd.env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .arg(format!("--kubeconfig={}", self.admin.display()));
        cmd
    }

    /// Creates a kwok Stage (a failure to inject, see [`stages::Failure`]).
    pub async fn create_stage(&self, stage: &Value) -> Result<(), Error> {
        let client = self.client().await.map_err(kube_err("admin client"))?;
        self.create_stage_with(&client, stage).await
    }

    /// Deletes a kwok Stage by name (the pods it held recover through the defaults).
    pub async fn delete_stage(&self, name: &str) -> Result<(), Error> {
        let client = self.client().await.map_err(kube_err("admin client"))?;
        stage_api(client)
            .delete(name, &Default::default())
            .await
            .map_err(kube_err(format!("deleting Stage {name}")))?;
        Ok(())
    }

    /// The API server's audit log (Metadata level for every identity but the
    /// control plane's own and admins), one JSON event per entry.
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Also print this log's tail when a test fails (an operator process, say).
    pub fn watch_log(&self, name: &str, path: &Path) {
        lock(&self.extra_logs).push((name.to_string(), path.to_path_buf()));
    }

    pub fn unwatch_log(&self, path: &Path) {
        lock(&self.extra_logs).retain(|(_, p)| p != path);
    }

    /// The last `n` lines of every component's log and of the watched logs.
    pub fn log_tails(&self, n: usize) -> String {
        let mut logs: Vec<(String, PathBuf)> = lock(&self.procs)
            .iter()
            .map(|p| (p.name().to_string(), p.log().to_path_buf()))
            .collect();
        logs.extend(lock(&self.extra_logs).iter().cloned());
        let mut out = String::new();
        for (name, path) in logs {
            out += &format!("----- {name} ({}), last {n} lines -----\n", path.display());
            for line in process::tail(&path, n) {
                out += &line;
                out.push('\n');
            }
        }
        out
    }

    /// Stops every component, newest first (kwok before the API server before
    /// etcd), after tearing the real nodes down.
    pub fn stop(&self) {
        let nodes = std::mem::take(&mut lock(&self.real).nodes);
        for (_, cleanup) in nodes.into_iter().rev() {
            process::run_cleanup(cleanup);
        }
        let procs = std::mem::take(&mut *lock(&self.procs));
        for p in procs.into_iter().rev() {
            p.stop(Duration::from_secs(10));
        }
        if let Some(rt) = lock(&self.runtime).take() {
            rt.shutdown_background();
        }
    }

    /// The process id of a component (`kube-apiserver`, `etcd`, ...).
    pub fn pid(&self, component: &str) -> Option<u32> {
        lock(&self.procs)
            .iter()
            .find(|p| p.name() == component)
            .map(Process::pid)
    }

    /// Starts a real node (kubelet, containerd, and kube-proxy with the first
    /// one) and waits until it is Ready. Safe to call from async code.
    pub fn start_real_node(&self) -> Result<RealNode, Error> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.start_real_node_blocking())
                .join()
                .unwrap_or_else(|_| Err(Error::Node("the start-up thread panicked".into())))
        })
    }

    /// The real nodes started so far.
    pub fn real_nodes(&self) -> Vec<RealNode> {
        lock(&self.real).nodes.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The registry real nodes pull from (`127.0.0.1:PORT`, plain HTTP), once a
    /// real node has started.
    pub fn registry(&self) -> Option<SocketAddr> {
        lock(&self.real).registry
    }

    /// Pushes `image` to the nodes' registry as `<repository>:<tag>`; returns
    /// the reference to use in a pod (`127.0.0.1:PORT/<repository>:<tag>`).
    pub fn push_image(&self, repository: &str, tag: &str, image: &crate::oci::Image) -> Result<String, Error> {
        let registry = self
            .registry()
            .ok_or_else(|| Error::Node("no registry: start a real node first".into()))?;
        crate::oci::push(registry, repository, tag, &image.build())?;
        Ok(format!("{registry}/{repository}:{tag}"))
    }

    fn node_registry(&self) -> Result<SocketAddr, Error> {
        if let Some(r) = self.registry() {
            return Ok(r);
        }
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = self.dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                self.dir.join("registry").display()
            ),
        )?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        self.spawn("registry", cmd).map_err(|e| match e {
            Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => Error::Node(
                "real nodes pull their images from Debian's docker-registry, which is not installed: \
                 apt-get install docker-registry (cargo xtask test installs it)"
                    .into(),
            ),
            other => other,
        })?;
        self.wait("the nodes' registry to answer", Duration::from_secs(20), || {
            http_get(("127.0.0.1", port), "/v2/").is_some()
        })?;
        let app = self.bins.path(crate::bins::TEST_APP);
        let pause = crate::oci::test_images::pause(&app)?;
        crate::oci::push(addr, "distroless-guard-test/pause", "1", &pause.build())?;
        lock(&self.real).registry = Some(addr);
        Ok(addr)
    }

    pub(crate) fn start_real_node_blocking(&self) -> Result<RealNode, Error> {
        let started = Instant::now();
        let registry = self.node_registry()?;
        let index = lock(&self.real).nodes.len();
        let ca_file = self.dir.join("pki/ca.crt");
        let sandbox = format!("{registry}/distroless-guard-test/pause:1");
        let registry_host = registry.to_string();
        let prepared = node::prepare(
            index,
            &self.dir,
            &node::Cluster {
                bins: &self.bins,
                ca: &self.ca,
                ca_file: &ca_file,
                server: &self.server,
                sandbox_image: &sandbox,
                registry_host: &registry_host,
            },
        )
        .map_err(|e| Error::Node(format!("{index}: {e}")))?;
        let real = prepared.node.clone();
        let name = real.name().to_string();

        // Teardown at exit or at stop, whichever comes first.
        let footprint = real.footprint.clone();
        let crictl = real.crictl(&self.bins);
        let kube_proxy = self.bins.path("kube-proxy");
        let kubelet_name = format!("kubelet-{name}");
        let containerd_name = format!("containerd-{name}");
        let first = index == 0;
        let pids = std::sync::Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
        let watched = pids.clone();
        let cleanup = process::at_exit(Box::new(move || {
            let pid_of = |n: &str| lock(&watched).iter().find(|(p, _)| p == n).map(|(_, pid)| *pid);
            for n in [kubelet_name.as_str(), "kube-proxy"] {
                if let Some(pid) = pid_of(n) {
                    process::kill_group(pid);
                }
            }
            node::teardown(&footprint, Some(crictl));
            if let Some(pid) = pid_of(&containerd_name) {
                process::kill_group(pid);
            }
            node::teardown(&footprint, None);
            if !process::keep() {
                let _ = std::fs::remove_dir_all(&footprint.dir);
            }
            if first {
                let mut c = Command::new(&kube_proxy);
                c.arg("--cleanup");
                node::run_bounded(c, Duration::from_secs(20));
            }
        }));
        lock(&self.real).nodes.push((real.clone(), cleanup));

        self.spawn(&format!("containerd-{name}"), prepared.containerd)?;
        self.wait("containerd to listen", Duration::from_secs(30), || {
            real.containerd_socket.exists()
        })?;
        self.spawn(&format!("kubelet-{name}"), prepared.kubelet)?;
        self.egress
            .allow_direct(Ipv4Addr::from(u32::from(real.ip) & 0xffff_ff00), 24);
        if !lock(&self.real).kube_proxy {
            self.api_server_for_pods(&real)?;
            let cmd = node::kube_proxy(&self.bins, &self.dir, &self.ca, &self.server, &real)
                .map_err(|e| Error::Node(e.to_string()))?;
            self.spawn("kube-proxy", cmd)?;
            lock(&self.real).kube_proxy = true;
        }
        for n in [
            format!("kubelet-{name}"),
            format!("containerd-{name}"),
            "kube-proxy".to_string(),
        ] {
            if let Some(pid) = self.pid(&n) {
                lock(&pids).push((n, pid));
            }
        }
        self.wait(
            &format!("real node {name} to be Ready"),
            Duration::from_secs(120),
            || {
                self.block_on(async {
                    let nodes: Api<Node> = Api::all(self.client().await.ok()?);
                    let node = nodes.get_opt(&name).await.ok()??;
                    node.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                        .then_some(())
                })
                .is_some()
            },
        )?;
        std::fs::write(
            real.dir().join("started.txt"),
            format!("{:.1}\n", started.elapsed().as_secs_f64()),
        )?;
        Ok(real)
    }

    /// Pods reach the API server as `kubernetes.default.svc` (10.96.0.1:443):
    /// kube-proxy sends that to the endpoints of the `kubernetes` Service, which
    /// the API server does not publish here (it listens on 127.0.0.1), so the
    /// node address forwards to it and an EndpointSlice names that address.
    fn api_server_for_pods(&self, real: &RealNode) -> Result<(), Error> {
        let listen = SocketAddr::from((real.ip, self.api_port));
        let to = SocketAddr::from(([127, 0, 0, 1], self.api_port));
        self.block_on(node::forward(listen, to))?;
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes-real-nodes", "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "testcluster.distroless-guard.dev",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [real.ip.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": self.api_port, "protocol": "TCP"}],
        }))
        .map_err(|e| Error::Pki(e.to_string()))?;
        self.block_on(async {
            let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
                Api::namespaced(self.client().await.map_err(kube_err("admin client"))?, "default");
            api.create(&PostParams::default(), &slice)
                .await
                .map_err(kube_err("creating the kubernetes Service's EndpointSlice"))
        })?;
        Ok(())
    }

    /// Runs `task` on the control plane's own runtime (it outlives any test's runtime).
    pub fn spawn_task<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = lock(&self.runtime).as_ref() {
            rt.spawn(task);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn stage_api(client: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "Stage"), "stages");
    Api::all_with(client, &ar)
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> kube::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(kube::Error::InferKubeconfig)?;
    kube::Client::try_from(config)
}

/// A plain-HTTP GET (etcd's health endpoint), `None` on any failure.
fn http_get(addr: (&str, u16), path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

/// Requests of the control plane itself and of admins are not logged; the
/// rest (service accounts of operators, test users) at Metadata level.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  userGroups: [\"system:masters\", \"system:nodes\", \"system:serviceaccounts:kube-system\"]
- level: None
  users: [\"system:kube-controller-manager\", \"system:kube-scheduler\", \"system:apiserver\", \"kwok\"]
- level: Metadata
";

#[cfg(test)]
mod port_tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn free_ports_are_distinct_below_the_ephemeral_range_held_against_others_and_bindable_by_the_child() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!((10_000..low).contains(&p), "{p} (ephemeral range from {low})");
            // A child's listener (SO_REUSEADDR, as std, Go and tokio set it) binds.
            let child = TcpListener::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("{p}: {e}"));
            drop(child);
            // Someone else's plain bind, as another test process's free_port
            // makes it, is refused while this process holds the port.
            let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let refused = other.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, p)).into());
            assert_eq!(
                refused.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::AddrInUse),
                "port {p} was not held"
            );
        }
    }
}
