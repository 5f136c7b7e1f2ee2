//! Single flight: concurrent callers asking for the same key share one task.
//! The task runs on its own (spawned), so a caller that stops waiting (a
//! deadline) does not cancel it: it finishes and fills the caches.
//!
//! Ours rather than moka's `try_get_with`: there the first caller drives the
//! shared load, and when it gives up (the webhook's deadline) the callers
//! still waiting start the load again, so a slow registry would be read
//! once per deadline instead of once. Here the work belongs to no caller,
//! and nothing is cached: the caches (cache.rs) are moka's.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;

/// A shared outcome: the task's result, or why the task died (a panic).
pub(super) type Flight<V> = Shared<BoxFuture<'static, Result<V, Arc<tokio::task::JoinError>>>>;

pub(super) struct Flights<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V: Clone> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            inflight: Arc::default(),
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The flight for `key`: the one under way, or a new task made by `start`.
    pub(super) fn join<F, Fut>(&self, key: K, start: F) -> Flight<V>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = V> + Send + 'static,
    {
        let mut inflight = self.inflight.lock();
        if let Some(f) = inflight.get(&key) {
            return f.clone();
        }
        let work = start();
        let done = (self.inflight.clone(), key.clone());
        let task = tokio::spawn(async move {
            let value = work.await;
            done.0.lock().remove(&done.1);
            value
        });
        let flight: Flight<V> = async move { task.await.map_err(Arc::new) }.boxed().shared();
        inflight.insert(key, flight.clone());
        flight
    }

    /// Flights under way.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inflight.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_task_and_a_finished_key_starts_afresh() {
        let flights: Flights<&str, usize> = Flights::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let start = |runs: Arc<AtomicUsize>| {
            move || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                runs.fetch_add(1, Ordering::SeqCst) + 1
            }
        };
        let a = flights.join("img", start(runs.clone()));
        let b = flights.join("img", start(runs.clone()));
        assert_eq!(flights.len(), 1);
        assert_eq!((a.await.unwrap(), b.await.unwrap()), (1, 1));
        assert!(flights.is_empty(), "a finished flight is forgotten");
        assert_eq!(flights.join("img", start(runs.clone())).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_does_not_cancel_the_work() {
        let flights: Flights<&str, ()> = Flights::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let f = finished.clone();
        let flight = flights.join("img", move || async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.fetch_add(1, Ordering::SeqCst);
        });
        assert!(tokio::time::timeout(Duration::from_millis(5), flight).await.is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }
}
