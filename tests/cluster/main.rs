//! Tests on a real Kubernetes control plane (crates/testcluster): etcd,
//! kube-apiserver with RBAC and Pod Security Admission, kube-controller-manager,
//! kube-scheduler, kwok as the kubelet, the real kubectl and Helm CLIs.
//! One control plane serves the whole binary; tests isolate themselves by
//! namespace and release. Build the binaries once with `cargo xtask bins`.

#[path = "../support/command.rs"]
#[allow(dead_code)]
mod command;
#[path = "../support/corpus.rs"]
mod corpus;
#[path = "../support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod support;
#[path = "../support/tls.rs"]
#[allow(dead_code)]
mod tls;

mod admission;
mod captured;
mod chart_install;
mod control_plane;
mod crd;
mod images;
mod inventory;
mod operator;
mod plugin;
mod real_node;
mod rollout;
