//! Image inspection: read an image from its registry and prove whether it is
//! distroless (no shell, no package manager) and which user it runs as.

mod cache;
pub(crate) mod catalog;
pub mod credentials;
pub(crate) mod filesystem;
mod flight;
mod inspector;
mod layer;
mod oci;
pub(crate) mod reference;
mod registry;
pub mod report;

pub use catalog::{PACKAGE_MANAGERS, SHELL_NAMES};
pub use inspector::{ClientError, Inspector, InspectorConfig, Reports, install_crypto_provider};
pub use layer::{LayerError, LayerFacts, LayerLimits};

/// Scans a layer blob as the inspector does (for the fuzz targets).
#[cfg(feature = "fuzzing")]
pub fn scan_layer(blob: &[u8], limits: LayerLimits) -> Result<LayerFacts, LayerError> {
    layer::scan(blob, limits)
}
pub use report::{BadPlatform, Evidence, ImageError, ImageReport, Platform};
