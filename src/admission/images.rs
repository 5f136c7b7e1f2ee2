//! Image inspection for one evaluation: every image of a pod read at once
//! under one deadline, turned into what the image rules read.

use std::sync::Arc;
use std::time::Duration;

use crate::image::credentials::Credentials;
use crate::image::{Inspector, Platform};
use crate::policy::{ImageFacts, ImageStatus};

/// Inspects every image concurrently under `timeout`. A failure or timeout
/// becomes `ImageStatus::Failed` (the rule `image-unverified`).
pub(crate) async fn gather(
    inspector: &Arc<Inspector>,
    images: &[String],
    platform: &Platform,
    timeout: Duration,
    extra: Option<Arc<Credentials>>,
) -> ImageFacts {
    let lookups = images.iter().map(|image| {
        let extra = extra.clone();
        async move {
            let status = match inspector.inspect_as(image, platform, Some(timeout), extra).await {
                Ok(reports) => ImageStatus::Inspected(reports),
                Err(e) => ImageStatus::Failed(e.to_string()),
            };
            (image.clone(), status)
        }
    });
    futures_util::future::join_all(lookups).await.into_iter().collect()
}
