//! Shared test helpers. Each test crate uses a part of them.
#![allow(dead_code)]

pub mod apiserver;
pub mod chart;
pub mod process;
pub mod psa;
pub mod registry;
pub mod tls;
pub mod webhook;
