//! The tools people use instead of ours, as `cargo xtask peers` builds them
//! and `cargo bench --bench peers` runs them: where each one is, which
//! version, and how it is built from its Go module.

use std::path::PathBuf;

/// One peer: its module, the version measured, the main package inside the
/// module, the binary's name and what its build needs beyond the defaults.
pub struct Peer {
    pub name: &'static str,
    pub module: &'static str,
    pub version: &'static str,
    pub package: &'static str,
    pub env: &'static [(&'static str, &'static str)],
    pub ldflags: &'static str,
}

pub const PEERS: &[Peer] = &[
    Peer {
        name: "kyverno",
        module: "github.com/kyverno/kyverno",
        version: "v1.19.1",
        package: "./cmd/cli/kubectl-kyverno",
        env: &[],
        ldflags: "-X github.com/kyverno/kyverno/pkg/version.BuildVersion=v1.19.1",
    },
    Peer {
        name: "syft",
        module: "github.com/anchore/syft",
        version: "v1.57.2",
        package: "./cmd/syft",
        env: &[],
        ldflags: "-X main.version=1.57.2",
    },
    Peer {
        name: "trivy",
        module: "github.com/aquasecurity/trivy",
        version: "v0.74.0",
        package: "./cmd/trivy",
        // trivy's module uses encoding/json/v2.
        env: &[("GOEXPERIMENT", "jsonv2")],
        ldflags: "-X github.com/aquasecurity/trivy/pkg/version/app.ver=0.74.0",
    },
];

/// Where a peer's binary lives once built.
pub fn binary(peer: &Peer) -> PathBuf {
    crate::bins::cache_root()
        .join("peers")
        .join(format!("{}-{}", peer.name, peer.version))
        .join(peer.name)
}

/// The peer of this name.
pub fn find(name: &str) -> Option<&'static Peer> {
    PEERS.iter().find(|p| p.name == name)
}
