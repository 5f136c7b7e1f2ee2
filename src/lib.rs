//! distroless-guard: makes distroless, non-root workloads the default in a
//! Kubernetes cluster. One policy engine serves the admission webhook, the
//! audit controller and the offline `check`, so they can never disagree.
//!
//! Dependency direction (no cycles): `api` ← `policy` (reads
//! `image::report`) ← `admission` (uses `image` to read registries) ←
//! `webhook` (the HTTPS server) and `controller` ← `operator` (owns every
//! task of `run`) ← `cli` (clap, output, exit codes; nothing imports it).
//! `manifest` (reading, and its `verdicts`) serves `check`; `metrics` and `telemetry` are
//! leaves.

// Items are crate-private unless the library's users need them.
#![warn(unreachable_pub)]

pub mod admission;
pub mod api;
pub mod cli;
pub mod controller;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod image;
mod inventory;
mod kubectl;
pub mod manifest;
mod metrics;
pub mod operator;
pub mod policy;
pub mod telemetry;
pub mod webhook;
