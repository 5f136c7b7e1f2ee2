//! Image rules over what already runs: the leader reads the distinct images
//! of the audited workloads (those the policies in force want inspected) with
//! the admission's inspector and caches, a few at a time, at most a few
//! requests per second per registry, with the pods' imagePullSecrets, and
//! again every refresh interval. What it learns feeds the same engine as
//! admission; an image that cannot be read counts as `image-unverified`.
//!
//! Not a kube-runtime `Controller`: its unit is an image, not an API object,
//! and what it schedules are registry reads (a rate per registry, a refresh
//! per verdict, a few at a time). Its input, the images in use, comes from
//! the [`ClusterView`], which kube-runtime watchers feed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::RwLock;
use tokio::sync::watch;
use tracing::{debug, info};

use super::cluster_view::ClusterView;
use super::status;
use crate::admission::PullSecrets;
use crate::image::{Inspector, Platform};
use crate::policy::{self, ImageFacts, ImageStatus};

/// How the audit reads images.
#[derive(Clone, Debug)]
pub struct ImageAuditConfig {
    /// Images read at once.
    pub concurrency: usize,
    /// Inspections started per second, per registry.
    pub per_registry_per_second: f64,
    /// How long a verdict stands before the image is read again (a tag may move).
    pub refresh: Duration,
    /// How long one image may take before it counts as unverified.
    pub timeout: Duration,
}

impl Default for ImageAuditConfig {
    fn default() -> Self {
        ImageAuditConfig {
            concurrency: 4,
            per_registry_per_second: 10.0,
            refresh: Duration::from_secs(3600),
            timeout: Duration::from_secs(30),
        }
    }
}

/// One image the audit wants, and how to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    image: String,
    platform: Platform,
    /// A namespace and the imagePullSecrets of one workload using it.
    namespace: String,
    secrets: Vec<String>,
    timeout_ms: u128,
}

/// What the audit knows of images, shared with the auditor.
#[derive(Default)]
pub(crate) struct ImageKnowledge {
    facts: RwLock<ImageFacts>,
    read_at: RwLock<HashMap<String, Instant>>,
    /// Signalled when a verdict is stored (a permit is kept when nobody waits).
    pub(crate) updated: tokio::sync::Notify,
}

impl ImageKnowledge {
    /// A copy of the facts (the auditor evaluates with it).
    pub(crate) fn facts(&self) -> ImageFacts {
        self.facts.read().clone()
    }
}

/// The registry part of an image reference (`docker.io` when it names none).
fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// The images the policies in force want inspected, over the audited workloads.
fn wanted(view: &ClusterView, timeout: Duration) -> Vec<Wanted> {
    let policies = view.policies();
    let (set, _) = status::compile_all(&policies);
    let mut out: BTreeMap<String, Wanted> = BTreeMap::new();
    view.with_workloads(|workloads, namespaces| {
        for object in workloads.values().map(|o| &**o).filter(|o| !o.controlled) {
            let namespace = object.namespace();
            let labels = super::audit_summary::labels_of(namespaces, namespace);
            let subject = object.subject(&labels, None);
            let Some(plan) = policy::inspection_plan(&set, &subject) else {
                continue;
            };
            for image in plan.images {
                out.entry(image.clone()).or_insert_with(|| Wanted {
                    image,
                    platform: plan.platform.clone(),
                    namespace: namespace.to_string(),
                    secrets: object.workload.spec.pull_secret_names(),
                    // Not on an admission path: its own deadline, not the webhook's.
                    timeout_ms: timeout.as_millis(),
                });
            }
        }
    });
    out.into_values().collect()
}

/// Spaces the starts of inspections per registry.
#[derive(Default)]
struct RateLimit {
    next: parking_lot::Mutex<HashMap<String, tokio::time::Instant>>,
}

impl RateLimit {
    async fn wait(&self, registry: &str, per_second: f64) {
        let interval = Duration::from_secs_f64(1.0 / per_second.max(0.01));
        let at = {
            let mut next = self.next.lock();
            let now = tokio::time::Instant::now();
            let slot = next.get(registry).copied().filter(|t| *t > now).unwrap_or(now);
            next.insert(registry.to_string(), slot + interval);
            slot
        };
        tokio::time::sleep_until(at).await;
    }
}

pub(crate) struct ImageAudit {
    pub(crate) inspector: Arc<Inspector>,
    pub(crate) secrets: Arc<dyn PullSecrets>,
    pub(crate) view: Arc<ClusterView>,
    pub(crate) knowledge: Arc<ImageKnowledge>,
    pub(crate) leader: watch::Receiver<bool>,
    pub(crate) config: ImageAuditConfig,
    /// Counts passes and reads (a test, or a person, can tell "nothing was
    /// due" from "no pass ran").
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl ImageAudit {
    /// Reads what is due whenever the view changes or a refresh falls due;
    /// wakes the auditor when it learned something. Runs until cancelled.
    pub(crate) async fn run(mut self) {
        let limit = RateLimit::default();
        loop {
            if *self.leader.borrow() && self.view.synced() {
                let learned = self.pass(&limit).await;
                if let Some(m) = &self.metrics {
                    m.image_audit_pass(learned);
                }
                if learned > 0 {
                    info!(images = learned, "image verdicts for the audit");
                }
            }
            let tick = tokio::time::sleep(self.config.refresh.min(Duration::from_secs(60)));
            tokio::select! {
                _ = self.view.images_changed.notified() => tokio::time::sleep(Duration::from_millis(200)).await,
                _ = self.leader.changed() => {}
                _ = tick => {}
            }
        }
    }

    /// One pass: reads every wanted image without a fresh verdict; forgets
    /// images no longer wanted. Returns how many verdicts it stored.
    async fn pass(&self, limit: &RateLimit) -> usize {
        let wanted = wanted(&self.view, self.config.timeout);
        let due: Vec<Wanted> = {
            let read_at = self.knowledge.read_at.read();
            wanted
                .iter()
                .filter(|w| read_at.get(&w.image).is_none_or(|t| t.elapsed() >= self.config.refresh))
                .cloned()
                .collect()
        };
        {
            let keep: std::collections::HashSet<&str> = wanted.iter().map(|w| w.image.as_str()).collect();
            self.knowledge.facts.write().retain(|i, _| keep.contains(i.as_str()));
            self.knowledge.read_at.write().retain(|i, _| keep.contains(i.as_str()));
        }
        if due.is_empty() {
            return 0;
        }
        debug!(images = due.len(), "reading images for the audit");
        futures_util::stream::iter(due)
            .map(|w| async move {
                limit
                    .wait(&registry_of(&w.image), self.config.per_registry_per_second)
                    .await;
                let extra = if w.secrets.is_empty() {
                    None
                } else {
                    self.secrets.credentials(&w.namespace, &w.secrets).await.map(Arc::new)
                };
                let timeout = Duration::from_millis(u64::try_from(w.timeout_ms).unwrap_or(u64::MAX));
                let status = match self
                    .inspector
                    .inspect_as(&w.image, &w.platform, Some(timeout), extra)
                    .await
                {
                    Ok(reports) => ImageStatus::Inspected(reports),
                    Err(e) => ImageStatus::Failed(e.to_string()),
                };
                // Stored as it comes: a slow registry does not hold the others back.
                self.knowledge.facts.write().insert(w.image.clone(), status);
                self.knowledge.read_at.write().insert(w.image.clone(), Instant::now());
                self.knowledge.updated.notify_one();
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .count()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_told_apart_as_docker_does() {
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("library/nginx:1"), "docker.io");
        assert_eq!(registry_of("gcr.io/distroless/static"), "gcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_starts_per_registry() {
        let limit = RateLimit::default();
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            limit.wait("r", 10.0).await;
        }
        limit.wait("other", 10.0).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(500),
            "{took:?}"
        );
    }
}
