//! Real nodes: a kubelet and containerd (with runc and the CNI plugins) on
//! this machine, beside the kwok nodes, so containers really run.
//!
//! Each node claims a bridge `dgbr<k>` and the subnet `10.245.<k>.0/24` (the
//! first `ip link add` that succeeds wins, so two harnesses never share
//! one); the node's address is `10.245.<k>.1` on that bridge. Pods get
//! addresses from the subnet through the `bridge` and `host-local` plugins,
//! with routes to the subnet and the Service range only: no default route,
//! no masquerade, and a FORWARD rule drops anything from the bridge that
//! would leave it, so nothing is routed off the machine.
//!
//! The API server reaches the kubelet (logs, exec, attach, port-forward) and
//! pod webhooks through its egress proxy, which connects straight to this
//! subnet; pods reach the API server through the `kubernetes` Service
//! (kube-proxy, iptables mode) and a forwarder on the node address.
//!
//! Nodes are registered with the taint `distrolessguard.dev/real-node:NoSchedule`
//! and the label `type=real`, so only pods that ask for a real node get one
//! ([`REAL_NODE_TOLERATION`]); every other test keeps its kwok nodes.
//!
//! Teardown (at drop and at exit): the kubelet stops, every pod sandbox is
//! removed through the CRI (its network namespace, veth and mounts go),
//! containerd stops, any process left in the node's cgroups is killed, the
//! mounts under the node's directory are detached, and the bridge, the
//! FORWARD rule and kube-proxy's rules are deleted. A run that was killed
//! leaves a `node.json`; the next harness reclaims what it names.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::bins::Bins;
use crate::pki::{self, Ca, Credentials};

/// The taint every real node carries, and the toleration a pod needs.
pub const REAL_NODE_TAINT: &str = "distrolessguard.dev/real-node";
/// The label of real nodes (kwok nodes have `type=kwok`).
pub const REAL_NODE_LABEL: (&str, &str) = ("type", "real");

/// What a pod spec adds to run on a real node: a toleration and a node selector.
pub fn real_node_placement() -> serde_json::Value {
    json!({
        "nodeSelector": {REAL_NODE_LABEL.0: REAL_NODE_LABEL.1},
        "tolerations": [{"key": REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
    })
}

/// The pod network of real nodes (each node one /24 of it).
pub const REAL_POD_CIDR: &str = "10.245.0.0/16";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{what}: {detail}")]
    Setup { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn setup(what: impl Into<String>, detail: impl ToString) -> NodeError {
    NodeError::Setup {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// The parts of a node that teardown needs, also written to `node.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Footprint {
    pub name: String,
    pub dir: PathBuf,
    pub bridge: String,
    pub subnet: String,
    pub cgroup_root: String,
}

/// One real node's files and addresses; the processes are the control plane's.
#[derive(Clone, Debug)]
pub struct RealNode {
    pub footprint: Footprint,
    pub ip: Ipv4Addr,
    pub kubelet_port: u16,
    pub containerd_socket: PathBuf,
}

impl RealNode {
    pub fn name(&self) -> &str {
        &self.footprint.name
    }

    pub fn dir(&self) -> &Path {
        &self.footprint.dir
    }

    /// `crictl` pointed at this node's containerd.
    pub fn crictl(&self, bins: &Bins) -> Command {
        let mut cmd = Command::new(bins.path("crictl"));
        cmd.arg(format!(
            "--runtime-endpoint=unix://{}",
            self.containerd_socket.display()
        ))
        .arg("--timeout=20s");
        cmd
    }

    /// Lets containerd pull from `host` (`127.0.0.1:PORT`) over plain HTTP.
    pub fn trust_registry(&self, host: &str) -> std::io::Result<()> {
        let dir = self.dir().join("certs.d").join(host);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
    }
}

/// Claims a bridge and subnet, and writes every file the node's processes read.
pub struct Prepared {
    pub node: RealNode,
    pub containerd: Command,
    pub kubelet: Command,
}

/// What the node needs from the control plane.
pub struct Cluster<'a> {
    pub bins: &'a Bins,
    pub ca: &'a Ca,
    pub ca_file: &'a Path,
    pub server: &'a str,
    pub sandbox_image: &'a str,
    pub registry_host: &'a str,
}

fn run_quiet(cmd: &mut Command, what: &str) -> Result<String, NodeError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| setup(what, format!("cannot run {:?}: {e}", cmd.get_program())))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(setup(
            what,
            format!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Claims the first free `dgbr<k>`: `ip link add` fails when another harness has it.
fn claim_bridge() -> Result<u8, NodeError> {
    for k in 0..=250u8 {
        let name = format!("dgbr{k}");
        let ok = ip(&["link", "add", &name, "type", "bridge"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(k);
        }
    }
    Err(setup(
        "claiming a bridge for a real node",
        "dgbr0 to dgbr250 all exist; delete stale ones with `ip link del dgbrN`",
    ))
}

/// The FORWARD rule that keeps pod traffic on its bridge.
fn forward_rule(bridge: &str) -> Vec<String> {
    [
        "FORWARD",
        "-i",
        bridge,
        "!",
        "-o",
        bridge,
        "-j",
        "DROP",
        "-m",
        "comment",
        "--comment",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(format!("distroless-guard test node {bridge}")))
    .collect()
}

/// The node's files: certificates, kubeconfig, containerd, CNI and kubelet configuration.
pub fn prepare(index: usize, work_dir: &Path, cluster: &Cluster<'_>) -> Result<Prepared, NodeError> {
    let name = format!("real-node-{index}");
    let dir = node_dir(work_dir, &name);
    std::fs::create_dir_all(&dir)?;
    let k = claim_bridge()?;
    let bridge = format!("dgbr{k}");
    let ip4 = Ipv4Addr::new(10, 245, k, 1);
    let subnet = format!("10.245.{k}.0/24");
    let cgroup_root = format!(
        "/distroless-guard-test-{}-{}",
        std::process::id(),
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("node")
    );
    let footprint = Footprint {
        name: name.clone(),
        dir: dir.clone(),
        bridge: bridge.clone(),
        subnet: subnet.clone(),
        cgroup_root: cgroup_root.clone(),
    };
    // Whatever fails from here on, the bridge and anything else claimed goes.
    match prepare_claimed(&footprint, ip4, work_dir, cluster) {
        Ok(p) => Ok(p),
        Err(e) => {
            teardown(&footprint, None);
            let _ = std::fs::remove_file(work_dir.join(format!("{}.json", footprint.name)));
            Err(e)
        }
    }
}

/// The rest of [`prepare`], once the bridge is claimed.
fn prepare_claimed(
    footprint: &Footprint,
    ip4: Ipv4Addr,
    work_dir: &Path,
    cluster: &Cluster<'_>,
) -> Result<Prepared, NodeError> {
    let (name, dir, bridge) = (&footprint.name, &footprint.dir, &footprint.bridge);
    let (subnet, cgroup_root) = (&footprint.subnet, &footprint.cgroup_root);
    std::fs::write(
        work_dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(footprint).unwrap_or_default(),
    )?;
    run_quiet(
        &mut ip(&["addr", "add", &format!("{ip4}/24"), "dev", bridge]),
        "addressing the bridge",
    )?;
    run_quiet(&mut ip(&["link", "set", bridge, "up"]), "bringing the bridge up")?;
    let mut rule = Command::new("iptables");
    rule.arg("-w").arg("-I").args(forward_rule(bridge));
    run_quiet(&mut rule, "adding the FORWARD rule that keeps pods on their bridge")
        .map_err(|e| setup("iptables (Debian's iptables package)", e))?;
    for h in cgroup_hierarchies() {
        std::fs::create_dir_all(h.join(cgroup_root.trim_start_matches('/')))?;
    }

    // Certificates: the kubelet serves on the node address with a certificate
    // of the cluster CA and authenticates to the API server as system:node:<name>.
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir)?;
    let pki_err = |e: rcgen::Error| setup("node certificates", e);
    cluster
        .ca
        .serving(name, &[name.as_str(), "localhost"], &[ip4.into()])
        .map_err(pki_err)?
        .write(&pki_dir, "kubelet")?;
    let client = cluster
        .ca
        .client(&format!("system:node:{name}"), &["system:nodes"])
        .map_err(pki_err)?;
    let kubeconfig = dir.join("kubelet.kubeconfig");
    pki::write_kubeconfig(
        &kubeconfig,
        &pki::kubeconfig(name, cluster.server, &cluster.ca.cert, Credentials::Cert(&client)),
    )?;

    // containerd
    let socket = dir.join("containerd.sock");
    let cni_conf = dir.join("cni/net.d");
    std::fs::create_dir_all(&cni_conf)?;
    std::fs::create_dir_all(dir.join("certs.d"))?;
    let d = |p: &str| dir.join(p).display().to_string();
    let config = format!(
        r#"version = 3
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[plugins.'io.containerd.internal.v1.opt']
  path = "{opt}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{certs}"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE (as here) no process may lower its OOM score:
  # keep the kubelet's -998 for sandboxes at containerd's own.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "{runc}"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
"#,
        root = d("containerd/root"),
        state = d("containerd/state"),
        socket = socket.display(),
        opt = d("containerd/opt"),
        sandbox = cluster.sandbox_image,
        certs = d("certs.d"),
        runc = cluster.bins.path("runc").display(),
        cni_bin = cluster.bins.path("cni").display(),
        cni_conf = cni_conf.display(),
    );
    std::fs::write(dir.join("containerd.toml"), config)?;
    std::fs::write(
        cni_conf.join("10-distroless-guard.conflist"),
        serde_json::to_vec_pretty(&json!({
            "cniVersion": "1.0.0",
            "name": "distroless-guard-pods",
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "isDefaultGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet, "gateway": ip4.to_string()}]],
                    "routes": [{"dst": crate::cluster::SERVICE_CIDR}],
                    "dataDir": d("cni/ipam"),
                },
            }],
        }))
        .unwrap_or_default(),
    )?;
    let node = RealNode {
        footprint: footprint.clone(),
        ip: ip4,
        kubelet_port: crate::cluster::free_port(),
        containerd_socket: socket.clone(),
    };
    node.trust_registry(cluster.registry_host)?;
    let mut containerd = Command::new(cluster.bins.path("containerd"));
    containerd
        .arg(format!("--config={}", dir.join("containerd.toml").display()))
        .arg("--log-level=warn")
        // The shims find runc and the CNI plugins nowhere else.
        .env("PATH", path_with(cluster.bins.dir()));

    // kubelet
    std::fs::write(dir.join("resolv.conf"), "")?;
    let kubelet_config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // cgroup v1 is deprecated in 1.35+ and refused unless this is false.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "containerRuntimeEndpoint": format!("unix://{}", socket.display()),
        "address": ip4.to_string(),
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": crate::cluster::free_port(),
        "tlsCertFile": pki_dir.join("kubelet.crt"),
        "tlsPrivateKeyFile": pki_dir.join("kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": cluster.ca_file},
        },
        "authorization": {"mode": "Webhook"},
        "registerWithTaints": [{"key": REAL_NODE_TAINT, "effect": "NoSchedule"}],
        "resolvConf": dir.join("resolv.conf"),
        "clusterDomain": "cluster.local",
        "failSwapOn": false,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "podLogsDir": dir.join("pod-logs"),
        "serializeImagePulls": false,
        "localStorageCapacityIsolation": false,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "maxPods": 110,
    });
    std::fs::write(
        dir.join("kubelet.yaml"),
        serde_json::to_vec_pretty(&kubelet_config).unwrap_or_default(),
    )?;
    let mut kubelet = Command::new(cluster.bins.path("kubelet"));
    kubelet
        .arg(format!("--config={}", dir.join("kubelet.yaml").display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--root-dir={}", d("kubelet")))
        .arg(format!("--hostname-override={name}"))
        .arg(format!("--node-ip={ip4}"))
        .arg(format!("--node-labels={}={}", REAL_NODE_LABEL.0, REAL_NODE_LABEL.1))
        .arg("--v=1")
        .env("PATH", path_with(cluster.bins.dir()));
    Ok(Prepared {
        node,
        containerd,
        kubelet,
    })
}

/// kube-proxy (iptables mode) for the real nodes' Services; one per machine.
pub fn kube_proxy(bins: &Bins, dir: &Path, ca: &Ca, server: &str, node: &RealNode) -> Result<Command, NodeError> {
    let pair = ca
        .client("system:kube-proxy", &[])
        .map_err(|e| setup("kube-proxy certificate", e))?;
    let kubeconfig = dir.join("kube-proxy.kubeconfig");
    pki::write_kubeconfig(
        &kubeconfig,
        &pki::kubeconfig("kube-proxy", server, &ca.cert, Credentials::Cert(&pair)),
    )?;
    let config = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": "iptables",
        "clusterCIDR": REAL_POD_CIDR,
        "hostnameOverride": node.name(),
        "bindAddress": node.ip.to_string(),
        "healthzBindAddress": format!("127.0.0.1:{}", crate::cluster::free_port()),
        "metricsBindAddress": format!("127.0.0.1:{}", crate::cluster::free_port()),
        "nodePortAddresses": [format!("{}/32", node.ip)],
        // Leave the machine's conntrack settings alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    });
    let path = dir.join("kube-proxy.yaml");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap_or_default())?;
    let mut cmd = Command::new(bins.path("kube-proxy"));
    cmd.arg(format!("--config={}", path.display()));
    Ok(cmd)
}

fn path_with(dir: &Path) -> String {
    let rest = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    format!("{}:{rest}", dir.display())
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// Kills every process in `root` (a cgroup path) and below, then removes the cgroups.
fn clear_cgroups(root: &str) {
    for h in cgroup_hierarchies() {
        let top = h.join(root.trim_start_matches('/'));
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        for _ in 0..50 {
            let mut any = false;
            for d in &dirs {
                for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        any = true;
                        // SAFETY: signalling a process of our own test node's cgroup.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            if !any {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Deepest first.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Processes whose command line names `needle` (the shims of a node name its socket).
fn kill_processes_naming(needle: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id() as i32;
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            // SAFETY: signalling a process that names our node's directory.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Detaches every mount at or under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    points.dedup();
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: a lazy unmount of a path under our own work directory.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 4 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `cmd` for at most `limit`, killing it then.
pub fn run_bounded(mut cmd: Command, limit: Duration) {
    let Ok(mut child) = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return;
    };
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Everything a node leaves outside its processes: sandboxes (through the CRI
/// while containerd still runs, when `crictl` is given), stray shims and
/// container processes, mounts, the bridge and the FORWARD rule.
pub fn teardown(footprint: &Footprint, crictl: Option<Command>) {
    if let Some(mut c) = crictl {
        c.args(["rmp", "--force", "--all"]);
        run_bounded(c, Duration::from_secs(30));
    }
    kill_processes_naming(&footprint.dir.display().to_string());
    clear_cgroups(&footprint.cgroup_root);
    unmount_under(&footprint.dir);
    let mut rule = Command::new("iptables");
    rule.arg("-w").arg("-D").args(forward_rule(&footprint.bridge));
    run_bounded(rule, Duration::from_secs(10));
    run_bounded(ip(&["link", "del", &footprint.bridge]), Duration::from_secs(10));
}

/// Where a node keeps its state: beside the work directory, except on tmpfs
/// (`/dev/shm`), which the kubelet's disk statistics (cAdvisor) do not know:
/// there, under the temp directory (`/tmp`), named after the work directory.
fn node_dir(work_dir: &Path, name: &str) -> PathBuf {
    let on_tmpfs = work_dir.starts_with("/dev/shm");
    if on_tmpfs {
        let base = work_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::env::temp_dir().join(format!("{base}-{name}"))
    } else {
        work_dir.join(name)
    }
}

/// Reclaims the nodes of a work directory whose owner is gone (their
/// footprints are `real-node-N.json` in it).
pub fn reclaim(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        if let Ok(footprint) = serde_json::from_slice::<Footprint>(&text) {
            teardown(&footprint, None);
            let _ = std::fs::remove_dir_all(&footprint.dir);
        }
    }
}

/// A TCP forwarder from `listen` to `to` on the current runtime (pods reach the
/// API server, which listens on 127.0.0.1, through the node address).
pub async fn forward(listen: SocketAddr, to: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_with_escaped_spaces_are_read_back() {
        assert_eq!(unescape_mount("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn the_forward_rule_drops_only_what_leaves_the_bridge() {
        let r = forward_rule("dgbr3");
        assert_eq!(
            &r[..9],
            ["FORWARD", "-i", "dgbr3", "!", "-o", "dgbr3", "-j", "DROP", "-m"]
        );
    }

    #[test]
    fn placement_tolerates_the_taint_and_selects_real_nodes() {
        let p = real_node_placement();
        assert_eq!(p["nodeSelector"]["type"], "real");
        assert_eq!(p["tolerations"][0]["key"], REAL_NODE_TAINT);
    }
}
