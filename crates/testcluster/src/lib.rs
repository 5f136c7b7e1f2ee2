//! A real Kubernetes control plane for distroless-guard's tests and for
//! `cargo xtask cluster up`: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler built from their Go modules ([`bins`]), kwok as the fake
//! kubelet ([`stages`]), real nodes where containers run ([`node`], images
//! from [`oci`]), the cluster network through the API server's egress
//! selector ([`egress`]), and the operator's processes standing in for the
//! chart's pods ([`operator`]).
//!
//! One control plane per test binary ([`shared`]); tests isolate themselves
//! by namespace. Nothing outlives the test process ([`process`]).

pub mod bins;
pub mod cluster;
pub mod egress;
pub mod faults;
pub mod node;
pub mod oci;
pub mod operator;
pub mod operator_image;
pub mod peers;
pub mod pki;
pub mod process;
pub mod release;
pub mod stages;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub use cluster::{ControlPlane, Options, client_from, free_port};

/// The control plane of this test binary, started on first use. When it cannot
/// start, every test that asks for it fails with the reason (and how to build
/// the binaries when they are missing).
pub fn shared() -> &'static ControlPlane {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    let cp = SHARED.get_or_init(|| {
        let started = std::time::Instant::now();
        let cp = ControlPlane::start(Options::default()).map_err(|e| e.to_string())?;
        eprintln!(
            "testcluster: control plane up in {:.1} s at {} (work dir {})",
            started.elapsed().as_secs_f64(),
            cp.server(),
            cp.dir().display()
        );
        Ok(cp)
    });
    match cp {
        Ok(cp) => {
            report_on_failure(cp);
            cp
        }
        Err(e) => panic!("the test control plane could not start: {e}"),
    }
}

/// On a test's panic, prints the tails of the component logs.
fn report_on_failure(cp: &'static ControlPlane) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            eprintln!("{}", cp.log_tails(25));
        }));
    });
}

/// A name no other test in this process uses: `<prefix>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}
