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
#[allow(dead_code)]
pub async fn install(cp: &'static ControlPlane) -> testcluster::release::Release {
    install_with(cp, &[]).await
}

/// As [`install`], with more `--set` values.
pub async fn install_with(cp: &'static ControlPlane, sets: &[String]) -> testcluster::release::Release {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/distroless-guard");
    testcluster::release::Release::install(
        cp,
        testcluster::release::Install {
            name: "distroless-guard",
            chart: &chart,
            binary: Path::new(env!("CARGO_BIN_EXE_distroless-guard")),
            helm_args: ["replicaCount=1".to_string(), "logging.format=text".to_string()]
                .iter()
                .chain(sets)
                .flat_map(|s| ["--set".to_string(), s.clone()])
                .collect(),
            extra_args: Vec::new(),
            env: Vec::new(),
            api_server: None,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("helm install: {e}"))
}
