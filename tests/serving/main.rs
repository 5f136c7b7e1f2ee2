//! Tests against real components on this machine, without a cluster: the
//! webhook over real HTTPS (and its router in-process), image inspection
//! against a real OCI registry, the Helm chart rendered by the real Helm
//! engine, the scripts through shellcheck.

#[path = "../support/chart.rs"]
mod chart_support;
#[path = "../support/command.rs"]
mod command;
#[path = "../support/registry.rs"]
mod registry;
#[path = "../support/tls.rs"]
mod tls;
#[path = "../support/webhook.rs"]
mod webhook;
mod support {
    pub(crate) use super::chart_support as chart;
    pub(crate) use super::{registry, tls, webhook};
}

mod chart;
mod e2e_script;
mod image_inspect;
mod inventory_html;
mod registry_abuse;
mod router;
mod webhook_abuse;
mod webhook_https;
mod webhook_images;
