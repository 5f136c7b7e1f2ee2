//! Runs the in-memory Kubernetes API server (a test double, see
//! tests/support/apiserver.rs) as a process, for trying the operator and
//! `kubectl` by hand:
//!
//!     cargo run --example apiserver -- --port 8001 --kubeconfig-out /tmp/kubeconfig
//!     kubectl --kubeconfig /tmp/kubeconfig create --validate=false -f examples/policies/audit.yaml

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "In-memory Kubernetes API server (a test double, not Kubernetes)")]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where to write a kubeconfig that points at the server.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// CRD manifests to install at start.
    #[arg(long, default_value = "crds")]
    crds: PathBuf,
    /// `NAMESPACE/NAME=HOST:PORT`: where a webhook Service is reachable (the
    /// double has no cluster DNS); Pod creates are sent to routed webhooks.
    #[arg(long = "route-service")]
    routes: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let server = apiserver::ApiServer::start_on(args.port).await;
    if args.crds.exists() {
        let docs =
            distroless_guard::cli::manifest::load(std::slice::from_ref(&args.crds)).map_err(|e| e.to_string())?;
        for doc in docs.into_iter().filter(|d| d.kind() == "CustomResourceDefinition") {
            server
                .install_crd(doc.value)
                .map_err(|e| format!("{}: {e}", doc.source))?;
        }
    }
    for route in &args.routes {
        let parsed = route
            .split_once('=')
            .and_then(|(svc, addr)| Some((svc.split_once('/')?, addr.parse::<std::net::SocketAddr>().ok()?)));
        let Some(((ns, name), addr)) = parsed else {
            return Err(format!("--route-service {route:?}: expected NAMESPACE/NAME=HOST:PORT"));
        };
        server.route_service(ns, name, addr);
    }
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, server.kubeconfig()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("in-memory API server (test double) listening on {}", server.url());
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    Ok(())
}
