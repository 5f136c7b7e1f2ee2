//! Image inspection: read an image from its registry and prove whether it is
//! distroless (no shell, no package manager) and which user it runs as.

mod cache;
pub mod credentials;
pub mod inspector;
pub mod layer;
pub mod reference;
pub mod report;
pub mod view;

pub use inspector::{Inspector, InspectorConfig};
pub use layer::{LayerFacts, LayerLimits};
pub use report::{BadPlatform, Evidence, ImageError, ImageReport, Platform};

/// Programs that are shells.
pub const SHELL_NAMES: &[&str] = &["sh", "bash", "ash", "dash", "zsh", "ksh", "mksh", "hush", "csh", "tcsh"];

/// Programs that install packages.
pub const PACKAGE_MANAGERS: &[&str] = &["apt", "apt-get", "dpkg", "apk", "rpm", "yum", "dnf", "microdnf"];
