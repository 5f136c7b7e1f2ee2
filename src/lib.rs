//! distroless-guard: makes distroless, non-root workloads the default in a
//! Kubernetes cluster. One policy engine serves the admission webhook and the
//! offline `check`, so they can never disagree.

pub mod api;
pub mod cli;
pub mod controller;
pub mod image;
pub mod policy;
pub mod webhook;
