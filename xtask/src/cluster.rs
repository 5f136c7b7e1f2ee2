//! `cargo xtask cluster up|down`: a real control plane for people, the same one
//! the tests use, with real nodes (default one) beside the kwok ones, and the
//! Helm chart installed on request: its pods run the operator's own image on
//! the real node, or, with `--real-nodes 0`, local processes stand in for them.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use clap::Subcommand;
use testcluster::{ControlPlane, Options};

#[derive(Subcommand)]
pub enum Action {
    /// Start a control plane in DIR and stay in the foreground until Ctrl-C (or `cluster down`).
    Up {
        /// Work directory: kubeconfig, certificates, logs, etcd data.
        #[arg(long)]
        dir: PathBuf,
        /// `helm install` charts/distroless-guard and run the operator for its pods.
        #[arg(long)]
        install_chart: bool,
        /// Extra `helm install` arguments, e.g. `--set defaultPolicy.enabled=true`.
        #[arg(long = "helm-arg", allow_hyphen_values = true)]
        helm_args: Vec<String>,
        /// Fake kwok Nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Real nodes (kubelet + containerd) where containers run; they carry the
        /// taint `distrolessguard.dev/real-node:NoSchedule` and the label `type=real`.
        #[arg(long, default_value_t = 1)]
        real_nodes: usize,
    },
    /// Stop the control plane a `cluster up --dir DIR` started.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

const MARKER: &str = ".distroless-guard-cluster";
const RELEASE: &str = "distroless-guard";
const NAMESPACE: &str = "distroless-guard";

pub fn run(action: Action) -> Result<(), String> {
    match action {
        Action::Up {
            dir,
            install_chart,
            helm_args,
            nodes,
            real_nodes,
        } => up(&dir, install_chart, &helm_args, nodes, real_nodes),
        Action::Down { dir } => down(&dir),
    }
}

fn pid_of(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("cluster.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes whether the pid exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// DIR must be new, empty, or one of ours that is not running.
fn prepare(dir: &Path) -> Result<(), String> {
    if let Some(pid) = pid_of(dir).filter(|p| alive(*p)) {
        return Err(format!(
            "a cluster is already running in {} (pid {pid}); stop it with: cargo xtask cluster down --dir {}",
            dir.display(),
            dir.display()
        ));
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty && !dir.join(MARKER).exists() {
            return Err(format!(
                "{} is not empty and was not made by `cluster up`; give a new or empty directory",
                dir.display()
            ));
        }
        if !empty {
            std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "").map_err(|e| e.to_string())
}

fn up(dir: &Path, install_chart: bool, helm_args: &[String], nodes: usize, real_nodes: usize) -> Result<(), String> {
    prepare(dir)?;
    let bins = crate::bins(false)?;
    let binary = if install_chart { Some(build_operator()?) } else { None };
    let started = Instant::now();
    eprintln!(
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and {real_nodes} real node(s) ..."
    );
    let cp = ControlPlane::start(Options {
        dir: Some(dir.to_path_buf()),
        nodes,
        unlimited: false,
        api_server_only: false,
        real_nodes,
    })
    .map_err(|e| e.to_string())?;
    let cp: &'static ControlPlane = Box::leak(Box::new(cp));
    let kubeconfig = cp.dir().join("kubeconfig");
    std::fs::copy(cp.admin_kubeconfig(), &kubeconfig).map_err(|e| e.to_string())?;
    std::fs::write(cp.dir().join("cluster.pid"), std::process::id().to_string()).map_err(|e| e.to_string())?;
    eprintln!("control plane up in {:.1} s", started.elapsed().as_secs_f64());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // With a real node the chart's pods run the operator's own image there;
    // without one, local processes play them.
    let (operators, real_pods) = match &binary {
        Some(binary) if real_nodes > 0 => (None, install_on_real_node(cp, binary, helm_args)?),
        Some(binary) => (Some(runtime.block_on(install(cp, binary, helm_args))?), Vec::new()),
        None => (None, Vec::new()),
    };

    let kubectl = bins.path("kubectl");
    println!();
    let real: Vec<String> = cp.real_nodes().iter().map(|n| n.name().to_string()).collect();
    println!(
        "The cluster is up (Kubernetes {}, kwok nodes: {}; real nodes: {}).",
        testcluster::bins::KUBERNETES,
        cp.nodes().join(", "),
        if real.is_empty() {
            "none".to_string()
        } else {
            real.join(", ")
        }
    );
    if let Some(registry) = cp.registry() {
        println!(
            "Real nodes run containers (taint {}:NoSchedule, label type=real); they pull from {registry} (plain HTTP).",
            testcluster::node::REAL_NODE_TAINT
        );
    }
    println!("Use it with:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!(
        "  kubectl get nodes        # any kubectl; this one matches the server: {}",
        kubectl.display()
    );
    if !real_pods.is_empty() {
        println!();
        println!(
            "distroless-guard is installed in namespace {NAMESPACE} (Helm release {RELEASE}); its pods run \
             the operator's image on the real node: {}",
            real_pods.join(", ")
        );
    }
    if let Some(release) = &operators {
        println!();
        println!("distroless-guard is installed in namespace {NAMESPACE} (Helm release {RELEASE});");
        for o in &release.operators {
            println!(
                "  pod {} ({}) is played by a local process, log: {}",
                o.pod,
                o.pod_ip,
                o.log.display()
            );
        }
    }
    if operators.is_some() || !real_pods.is_empty() {
        println!("Try:");
        println!(
            "  kubectl apply -f {}",
            crate::root().join("examples/policies/enforce.yaml").display()
        );
        println!("  kubectl label namespace default distroless-guard.dev/enforce=true   # the policy's namespaces");
        println!(
            "  kubectl run root --image=nginx --overrides='{{\"spec\":{{\"securityContext\":{{\"runAsUser\":0}}}}}}'   # denied"
        );
    }
    println!();
    println!(
        "Logs: {}/logs. Stop with Ctrl-C, or: cargo xtask cluster down --dir {}",
        cp.dir().display(),
        dir.display()
    );

    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    });
    eprintln!("stopping ...");
    if let Some(release) = operators {
        let _ = runtime.block_on(release.uninstall());
    }
    cp.stop();
    let _ = std::fs::remove_file(dir.join("cluster.pid"));
    runtime.shutdown_timeout(Duration::from_secs(2));
    eprintln!("stopped");
    Ok(())
}

/// The operator's image from `binary` (as `cargo xtask image` builds it), in
/// the nodes' registry, and the chart installed with it on the real node;
/// returns the pods once Helm has waited for them.
fn install_on_real_node(cp: &'static ControlPlane, binary: &Path, helm_args: &[String]) -> Result<Vec<String>, String> {
    let work = cp.dir().join("operator-image");
    let (image, report) = testcluster::operator_image::build(
        binary,
        env!("CARGO_PKG_VERSION"),
        &testcluster::operator_image::debs_cache(),
        &work,
    )
    .map_err(|e| format!("building the operator's image: {e}"))?;
    let _ = std::fs::remove_dir_all(&work);
    let image = cp
        .push_image("distroless-guard", "dev", &image)
        .map_err(|e| format!("pushing the operator's image: {e}"))?;
    eprintln!(
        "image {image} (binary {:.1} MiB, libraries: {})",
        report.binary_bytes as f64 / 1048576.0,
        report.libraries.join(", ")
    );
    eprintln!("helm install {RELEASE} charts/distroless-guard -n {NAMESPACE} --create-namespace --wait ...");
    let mut extra = vec![
        "--create-namespace".to_string(),
        "--wait".to_string(),
        "--timeout=180s".to_string(),
        "--set".to_string(),
        "logging.format=text".to_string(),
    ];
    extra.extend(helm_args.iter().cloned());
    let mut helm = testcluster::release::helm_install_on_real_nodes(
        cp,
        RELEASE,
        NAMESPACE,
        &crate::root().join("charts/distroless-guard"),
        &image,
        &extra,
    );
    let out = helm.output().map_err(|e| format!("cannot run helm: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "helm install {RELEASE} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let out = cp
        .kubectl()
        .args(["get", "pods", "-n", NAMESPACE, "-o", "name"])
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("pod/").to_string())
        .collect())
}

/// `cargo build --release --bin distroless-guard`, returning the binary's path.
fn build_operator() -> Result<PathBuf, String> {
    crate::image::release_binary()
}

async fn install(
    cp: &'static ControlPlane,
    binary: &Path,
    helm_args: &[String],
) -> Result<testcluster::release::Release, String> {
    eprintln!("helm install {RELEASE} charts/distroless-guard -n {NAMESPACE} --create-namespace ...");
    testcluster::release::Release::install(
        cp,
        testcluster::release::Install {
            name: RELEASE,
            chart: &crate::root().join("charts/distroless-guard"),
            binary,
            helm_args: [
                vec!["--set".to_string(), "logging.format=text".to_string()],
                helm_args.to_vec(),
            ]
            .concat(),
            extra_args: Vec::new(),
            env: Vec::new(),
            api_server: None,
        },
    )
    .await
    .map_err(|e| e.to_string())
}

fn down(dir: &Path) -> Result<(), String> {
    let Some(pid) = pid_of(dir).filter(|p| alive(*p)) else {
        return Err(format!("no cluster is running in {}", dir.display()));
    };
    // SAFETY: asking our own `cluster up` process to stop.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let started = Instant::now();
    while alive(pid) {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("pid {pid} did not stop within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopped the cluster in {}", dir.display());
    Ok(())
}
