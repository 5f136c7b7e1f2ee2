//! Shared test helpers. Each test crate uses a part of them.
#![allow(dead_code)]

pub mod chart;
pub mod psa;
pub mod registry;
pub mod tls;
pub mod webhook;
