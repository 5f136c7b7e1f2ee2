//! What the benchmarks on the real control plane share: starting it, and
//! `helm install`ing the chart with one replica played by the release binary.

use std::path::Path;
use std::time::Instant;

use testcluster::{ControlPlane, Options};

/// Starts a control plane for the whole benchmark and runs `body` on a runtime.
pub fn run<F, Fut>(options: Options, body: F)
where
    F: FnOnce(&'static ControlPlane) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let cp = ControlPlane::start(options).unwrap_or_else(|e| panic!("the control plane could not start: {e}"));
    let cp: &'static ControlPlane = Box::leak(Box::new(cp));
    println!("control plane up in {:.1} s", started.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(body(cp));
    cp.stop();
}

/// The chart, one replica, logs as text.
pub async fn install(cp: &'static ControlPlane) -> testcluster::release::Release {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/distroless-guard");
    testcluster::release::Release::install(
        cp,
        testcluster::release::Install {
            name: "distroless-guard",
            chart: &chart,
            binary: Path::new(env!("CARGO_BIN_EXE_distroless-guard")),
            helm_args: vec![
                "--set".into(),
                "replicaCount=1".into(),
                "--set".into(),
                "logging.format=text".into(),
            ],
            extra_args: Vec::new(),
            env: Vec::new(),
            api_server: None,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("helm install: {e}"))
}
