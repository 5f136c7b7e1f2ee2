//! One watch driver for every feed of the [`ClusterView`]: kube-runtime's
//! watcher with a backoff, each event handed to the view as
//! apply, delete or reset. A span per watch; an object the engine cannot read
//! is logged and skipped without breaking the stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::task::JoinSet;
use tracing::{Instrument, info_span, warn};

use super::audit::AuditObject;
use super::view::{ClusterView, Key};
use crate::api::DistrolessPolicy;
use crate::policy::{ObjectShape, PolicySet, WorkloadKind};

/// What one feed does with the watch's events.
trait Feed: Send + 'static {
    type Object: Clone + std::fmt::Debug + Send + 'static;
    /// An object seen (added or changed).
    fn apply(&mut self, view: &ClusterView, object: Self::Object);
    fn delete(&mut self, view: &ClusterView, object: Self::Object);
    /// A fresh list begins (after a (re)connect): objects follow, then `reset`.
    fn begin(&mut self);
    fn restart_apply(&mut self, object: Self::Object);
    fn reset(&mut self, view: &ClusterView);
}

async fn drive<F: Feed>(
    stream: impl futures_util::Stream<Item = Result<watcher::Event<F::Object>, watcher::Error>>,
    view: Arc<ClusterView>,
    mut feed: F,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => feed.begin(),
            Ok(watcher::Event::InitApply(o)) => feed.restart_apply(o),
            Ok(watcher::Event::InitDone) => feed.reset(&view),
            Ok(watcher::Event::Apply(o)) => feed.apply(&view, o),
            Ok(watcher::Event::Delete(o)) => feed.delete(&view, o),
            // The backoff waits before the next attempt.
            Err(e) => warn!(error = %e, "watch failed; retrying"),
        }
    }
}

/// The audit's view of a watched object; `None` when it cannot be read (logged, skipped).
pub(crate) fn audit_object(kind: WorkloadKind, obj: &DynamicObject) -> Option<AuditObject> {
    let controlled = obj
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && WorkloadKind::from_api_version_kind(&o.api_version, &o.kind).is_some());
    let value = serde_json::to_value(obj).ok()?;
    match serde::Deserialize::deserialize(&value) {
        Ok(shape) => {
            let shape: ObjectShape = shape;
            let mut workload = shape.into_workload(kind);
            workload.namespace = obj.namespace();
            Some(AuditObject {
                uid: obj.uid().unwrap_or_default(),
                workload,
                controlled,
            })
        }
        Err(e) => {
            warn!(%kind, name = %obj.name_any(), error = %e, "skipping an object the engine cannot read");
            None
        }
    }
}

fn key(kind: WorkloadKind, obj: &DynamicObject) -> Key {
    (kind, obj.namespace().unwrap_or_default(), obj.name_any())
}

struct Workloads {
    kind: WorkloadKind,
    fresh: HashMap<Key, AuditObject>,
}

impl Feed for Workloads {
    type Object = DynamicObject;
    fn apply(&mut self, view: &ClusterView, obj: DynamicObject) {
        if let Some(o) = audit_object(self.kind, &obj) {
            view.apply_workload(key(self.kind, &obj), o);
        }
    }
    fn delete(&mut self, view: &ClusterView, obj: DynamicObject) {
        view.delete_workload(&key(self.kind, &obj));
    }
    fn begin(&mut self) {
        self.fresh.clear();
    }
    fn restart_apply(&mut self, obj: DynamicObject) {
        if let Some(o) = audit_object(self.kind, &obj) {
            self.fresh.insert(key(self.kind, &obj), o);
        }
    }
    fn reset(&mut self, view: &ClusterView) {
        view.reset_workloads(self.kind, std::mem::take(&mut self.fresh));
    }
}

#[derive(Default)]
struct Namespaces {
    fresh: Vec<(String, BTreeMap<String, String>)>,
}

impl Feed for Namespaces {
    type Object = Namespace;
    fn apply(&mut self, view: &ClusterView, ns: Namespace) {
        view.apply_namespace(&ns.name_any(), ns.labels());
    }
    fn delete(&mut self, view: &ClusterView, ns: Namespace) {
        view.delete_namespace(&ns.name_any());
    }
    fn begin(&mut self) {
        self.fresh.clear();
    }
    fn restart_apply(&mut self, ns: Namespace) {
        self.fresh.push((ns.name_any(), ns.labels().clone()));
    }
    fn reset(&mut self, view: &ClusterView) {
        view.reset_namespaces(std::mem::take(&mut self.fresh));
    }
}

/// Policies also go to the webhook, compiled, on every change.
struct Policies<S> {
    fresh: Vec<DistrolessPolicy>,
    sink: S,
}

impl<S: Fn(PolicySet) + Send + 'static> Policies<S> {
    fn publish(&self, view: &ClusterView) {
        let (set, _) = super::status::compile_all(&view.policies());
        (self.sink)(set);
    }
}

impl<S: Fn(PolicySet) + Send + 'static> Feed for Policies<S> {
    type Object = DistrolessPolicy;
    fn apply(&mut self, view: &ClusterView, p: DistrolessPolicy) {
        view.apply_policy(p);
        self.publish(view);
    }
    fn delete(&mut self, view: &ClusterView, p: DistrolessPolicy) {
        view.delete_policy(&p.name_any());
        self.publish(view);
    }
    fn begin(&mut self) {
        self.fresh.clear();
    }
    fn restart_apply(&mut self, p: DistrolessPolicy) {
        self.fresh.push(p);
    }
    fn reset(&mut self, view: &ClusterView) {
        view.reset_policies(std::mem::take(&mut self.fresh));
        self.publish(view);
    }
}

/// Retry a failed watch after 100 ms, doubling up to 5 s with jitter (reset
/// after a minute without errors). The webhook admits with what the view
/// knows, so a replica must not stay blind for long: kube's default waits up
/// to 30 s.
fn backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let quick = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(quick), Duration::from_secs(60))
}

fn stream<K>(api: Api<K>) -> impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher(api, watcher::Config::default()).backoff(backoff())
}

/// Starts every watch on `tasks`: the eight workload kinds, namespaces, and
/// policies (each change of which also goes, compiled, to `policy_sink`).
pub(crate) fn spawn(
    tasks: &mut JoinSet<()>,
    client: kube::Client,
    view: Arc<ClusterView>,
    policy_sink: impl Fn(PolicySet) + Send + Sync + 'static,
) {
    for kind in WorkloadKind::ALL {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &super::api_resource(kind));
        let feed = Workloads {
            kind,
            fresh: HashMap::new(),
        };
        tasks.spawn(drive(stream(api), view.clone(), feed).instrument(info_span!("watch", %kind)));
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    tasks.spawn(
        drive(stream(namespaces), view.clone(), Namespaces::default())
            .instrument(info_span!("watch", kind = "Namespace")),
    );
    let policies: Api<DistrolessPolicy> = Api::all(client);
    let feed = Policies {
        fresh: Vec::new(),
        sink: policy_sink,
    };
    tasks.spawn(drive(stream(policies), view, feed).instrument(info_span!("watch", kind = "DistrolessPolicy")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn the_watch_backoff_starts_quick_is_capped_and_resets() {
        let mut b = backoff();
        let delays: Vec<Duration> = (&mut b).take(8).collect();
        // backon's jitter adds up to one more delay.
        assert!(
            delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200),
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)), "{delays:?}");
        assert!(
            delays[7] >= Duration::from_secs(5),
            "capped at 5 s before jitter: {delays:?}"
        );
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(200));
    }
}
