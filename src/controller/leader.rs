//! Leader election with a `coordination.k8s.io/v1` Lease. Every replica
//! serves the webhook; only the holder of the lease writes (statuses, events,
//! certificates). Losing the lease, or failing to renew it in time, turns
//! writing off at once.
//!
//! A lease runs out when this replica has seen its record unchanged for a
//! whole lease duration on its own monotonic clock, as client-go's leader
//! election judges it; the holder's `renewTime` is never compared with this
//! replica's wall clock, so clocks that disagree by more than the lease
//! cannot hand a live lease to a second leader.
//!
//! Written here rather than taken from `kube-lease-manager` or
//! `kube-leader-election`: the loop is ~150 lines, and the operator needs two
//! things those crates do not give together: writing stops at two thirds of
//! the lease when renewals fail (so a partitioned leader stops before anyone
//! may take over), and the lease is released on shutdown for an immediate
//! hand-over.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// How a replica competes for the lease.
#[derive(Clone, Debug)]
pub(crate) struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name in-cluster).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews and others try to take over.
    pub retry: Duration,
}

impl LeaseConfig {
    pub(crate) fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

fn micro(t: Timestamp) -> MicroTime {
    MicroTime(t)
}

/// The lease record as another replica last wrote it, and when this replica
/// first saw it so (on its own monotonic clock).
#[derive(Debug, Default)]
pub(crate) struct Observed {
    seen: Option<(Record, Instant)>,
}

#[derive(Debug, PartialEq)]
struct Record {
    holder: String,
    renewed: Option<Timestamp>,
    transitions: Option<i32>,
}

impl Observed {
    /// Notes the record read at `now`; true when it has not changed for more
    /// than `duration`. A record seen for the first time is live: a replica
    /// that has just started waits a whole lease before taking one over.
    fn expired(&mut self, spec: &LeaseSpec, now: Instant, duration: Duration) -> bool {
        let record = Record {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renewed: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions,
        };
        match &self.seen {
            Some((seen, since)) if *seen == record => now.saturating_duration_since(*since) > duration,
            _ => {
                self.seen = Some((record, now));
                false
            }
        }
    }
}

/// Tries once to hold the lease; `Ok(true)` when this replica holds it now.
/// `now` is written as the renewal time; `observed_at` (monotonic) judges
/// whether another holder's lease has run out.
pub(crate) async fn try_hold(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Observed,
    now: Timestamp,
    observed_at: Instant,
) -> Result<bool, kube::Error> {
    let fresh = |transitions: i32| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs() as i32),
        acquire_time: Some(micro(now)),
        renew_time: Some(micro(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let existing = match api.get_opt(&config.name).await? {
        Some(l) => l,
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(fresh(0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
    };
    let spec = existing.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    let expired = observed.expired(&spec, observed_at, duration);
    let mut next = existing.clone();
    if holder == config.identity {
        next.spec = Some(LeaseSpec {
            renew_time: Some(micro(now)),
            ..spec
        });
    } else if holder.is_empty() || expired {
        next.spec = Some(fresh(spec.lease_transitions.unwrap_or(0) + 1));
    } else {
        return Ok(false);
    }
    match api.replace(&config.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Competes for the lease until `stop`; `leading` says whether this replica
/// leads now. On `stop` a held lease is released, so another replica takes
/// over at once instead of after the lease duration. `metrics` show whether
/// this replica leads and count each read of the lease by what it found.
pub(crate) async fn run(
    client: kube::Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    stop: tokio_util::sync::CancellationToken,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renewal: Option<tokio::time::Instant> = None;
    let mut observed = Observed::default();
    // Stop leading well before others may take over.
    let margin = config.duration.mul_f32(2.0 / 3.0);
    loop {
        let held = try_hold(&api, &config, &mut observed, Timestamp::now(), Instant::now()).await;
        let found = match held {
            Ok(true) => "held",
            Ok(false) => "other",
            Err(_) => "error",
        };
        let now_leading = match held {
            Ok(true) => {
                last_renewal = Some(tokio::time::Instant::now());
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!(error = %e, lease = %config.name, "cannot reach the lease");
                last_renewal.is_some_and(|t| t.elapsed() < margin)
            }
        };
        if *leading.borrow() != now_leading {
            info!(identity = %config.identity, leading = now_leading, "leadership changed");
            let _ = leading.send(now_leading);
        }
        // Counted once writing is on or off as this check decided.
        metrics.set_leader(now_leading);
        metrics.lease_check(found);
        if !now_leading {
            last_renewal = None;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(config.retry) => {}
        }
    }
    if *leading.borrow() {
        let _ = leading.send(false);
        metrics.set_leader(false);
        match release(&api, &config).await {
            Ok(()) => info!(identity = %config.identity, lease = %config.name, "lease released"),
            Err(e) => warn!(error = %e, lease = %config.name, "cannot release the lease"),
        }
    }
}

/// Gives the lease up (no holder), if this replica still holds it.
pub(crate) async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.acquire_time = None;
    spec.renew_time = None;
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        // Someone else changed it meanwhile: it is not ours to release any more.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn held_by(holder: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_holder_whose_clock_is_an_hour_behind_keeps_its_lease_while_it_renews() {
        let mut observed = Observed::default();
        let start = Instant::now();
        // The holder's clock says an hour ago; it renews every 2 s.
        let behind = Timestamp::now() - jiff::SignedDuration::from_hours(1);
        for tick in 0..60u64 {
            let spec = held_by("other", behind + jiff::SignedDuration::from_secs(2 * tick as i64));
            assert!(
                !observed.expired(&spec, start + Duration::from_secs(2 * tick), LEASE),
                "taken at {} s although renewed",
                2 * tick
            );
        }
    }

    #[test]
    fn a_holder_whose_clock_is_ahead_loses_its_lease_a_lease_after_it_stops_renewing() {
        let mut observed = Observed::default();
        let start = Instant::now();
        let ahead = held_by("other", Timestamp::now() + jiff::SignedDuration::from_hours(1));
        assert!(!observed.expired(&ahead, start, LEASE), "first sight is live");
        assert!(
            !observed.expired(&ahead, start + LEASE, LEASE),
            "exactly a lease later is still live"
        );
        assert!(
            observed.expired(&ahead, start + LEASE + Duration::from_secs(1), LEASE),
            "unchanged for longer than a lease: expired, whatever its renewTime says"
        );
    }

    #[test]
    fn any_change_of_the_record_restarts_the_count() {
        let mut observed = Observed::default();
        let start = Instant::now();
        let renewed = Timestamp::UNIX_EPOCH;
        assert!(!observed.expired(&held_by("a", renewed), start, LEASE));
        // Another replica took over: a new holder with the same renewTime.
        assert!(!observed.expired(&held_by("b", renewed), start + Duration::from_secs(14), LEASE));
        assert!(!observed.expired(&held_by("b", renewed), start + Duration::from_secs(28), LEASE));
        assert!(observed.expired(&held_by("b", renewed), start + Duration::from_secs(30), LEASE));
    }
}
