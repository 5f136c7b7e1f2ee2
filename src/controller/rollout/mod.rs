//! The DistrolessRollout controller: kube-runtime's `Controller` over
//! rollouts, their canary ReplicaSets and pods, and the Deployments they
//! target, so a canary pod's failure reaches the planner in one watch event.
//! Each reconcile reads what exists, asks the pure [`plan`] what to do, does
//! it, and writes the status. Runs only on the leader.

pub(crate) mod analysis;
pub(crate) mod canary;
pub(crate) mod classify;
pub(crate) mod plan;
pub(crate) mod preflight;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::core::{Expression, Selector};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use self::canary::{ROLLOUT_LABEL, SERVING_GATE};
use self::plan::{Action, MetricReading, Observed, Plan};
use super::FIELD_MANAGER;
use crate::admission::PullSecrets;
use crate::api::rollout::GateAuth;
use crate::api::{CanaryCapacity, DistrolessRollout, Phase, PreflightResult};
use crate::image::Inspector;
use crate::metrics::Metrics;

/// What every reconcile shares.
pub(crate) struct Context {
    pub(crate) client: kube::Client,
    pub(crate) recorder: Recorder,
    /// Reads distroless images in preflight (`--inspect-images`).
    pub(crate) inspector: Option<Arc<Inspector>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Registry credentials from the pods' imagePullSecrets, for preflight.
    pub(crate) pull_secrets: Arc<dyn PullSecrets>,
    /// Reconciles of each rollout that failed in a row (none once one succeeds).
    failures: parking_lot::Mutex<std::collections::HashMap<ObjectRef<DistrolessRollout>, u32>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the selector of Deployment {deployment} cannot be read: {message}")]
    Selector { deployment: String, message: String },
}

fn kerr(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Kube { what, source }
}

impl Context {
    pub(crate) fn new(
        client: kube::Client,
        identity: &str,
        inspector: Option<Arc<Inspector>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.into()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            pull_secrets: Arc::new(crate::controller::pull_secrets::SecretPullSecrets::new(client.clone())),
            client,
            inspector,
            metrics,
            failures: parking_lot::Mutex::default(),
        }
    }
}

/// Runs the controller while `leading` holds; stops when it does not.
pub(crate) async fn run_while_leading(ctx: Arc<Context>, mut leading: watch::Receiver<bool>) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        info!("leading: the rollout controller starts");
        let mut stop = leading.clone();
        let controller = controller(ctx.clone(), async move {
            let _ = stop.wait_for(|l| !*l).await;
        });
        controller.instrument(info_span!("rollouts")).await;
        info!("the rollout controller stopped");
    }
}

async fn controller(ctx: Arc<Context>, stop: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let rollouts: Api<DistrolessRollout> = Api::all(client.clone());
    let labelled = watcher::Config::default().labels(ROLLOUT_LABEL);
    let controller = Controller::new(rollouts, watcher::Config::default())
        .owns(Api::<ReplicaSet>::all(client.clone()), labelled.clone());
    let store = controller.store();
    controller
        .watches(Api::<Pod>::all(client.clone()), labelled, |pod: Pod| {
            let name = pod.labels().get(ROLLOUT_LABEL)?.clone();
            Some(ObjectRef::<DistrolessRollout>::new(&name).within(&pod.namespace()?))
        })
        .watches(
            Api::<Deployment>::all(client),
            watcher::Config::default(),
            move |d: Deployment| {
                let ns = d.namespace().unwrap_or_default();
                let name = d.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|r| r.namespace().as_deref() == Some(ns.as_str()) && r.spec.target_ref.name == name)
                    .map(|r| ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "rollout reconcile");
            }
        })
        .await;
}

fn error_policy(rollout: Arc<DistrolessRollout>, error: &ReconcileError, ctx: Arc<Context>) -> Requeue {
    let failures = {
        let mut all = ctx.failures.lock();
        let n = all.entry(ObjectRef::from_obj(&*rollout)).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let after = retry_after(error, failures);
    warn!(rollout = %rollout.name_any(), error = %error, failures, retry_in = ?after, "rollout reconcile failed");
    Requeue::requeue(after)
}

/// How long to wait before reconciling a rollout again after `error`, its
/// `failures`-th failed reconcile in a row. What is only stale or briefly
/// unavailable is retried soon; what a person must change (RBAC, the
/// Deployment's selector) waits longer, and the watches bring the rollout
/// back as soon as the Deployment changes anyway.
fn retry_after(error: &ReconcileError, failures: u32) -> Duration {
    /// Doubling from 1 s up to a minute: the API server is overloaded,
    /// restarting or unreachable.
    fn backoff(failures: u32) -> Duration {
        Duration::from_secs(1 << failures.clamp(1, 7).saturating_sub(1)).min(Duration::from_secs(60))
    }
    match error {
        ReconcileError::Kube {
            source: kube::Error::Api(e),
            ..
        } => match e.code {
            // Written over by someone else since it was read: read again.
            409 => Duration::from_millis(500),
            // Gone between the read and the write.
            404 => Duration::from_secs(1),
            // Not allowed, or refused as invalid: a person has to act.
            401 | 403 | 400 | 422 => Duration::from_secs(30).max(backoff(failures)),
            _ => backoff(failures),
        },
        ReconcileError::Kube { .. } => backoff(failures),
        ReconcileError::Selector { .. } => Duration::from_secs(300),
    }
}

/// Reads what exists for one rollout.
struct Snapshot {
    deployment: Option<Deployment>,
    canaries: Vec<ReplicaSet>,
    canary_pods: Vec<Pod>,
    promoted_pods: Vec<Pod>,
    metrics: Vec<MetricReading>,
}

async fn snapshot(rollout: &DistrolessRollout, client: &kube::Client) -> Result<Snapshot, ReconcileError> {
    let ns = rollout.namespace().unwrap_or_default();
    let name = rollout.name_any();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = deployments
        .get_opt(&rollout.spec.target_ref.name)
        .await
        .map_err(kerr("reading the Deployment"))?;
    let by_rollout = ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}"));
    let mut canaries = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
        .list(&by_rollout)
        .await
        .map_err(kerr("listing canary ReplicaSets"))?
        .items;
    // The newest first: it is the one kept for forensics.
    canaries.sort_by(|a, b| b.metadata.creation_timestamp.cmp(&a.metadata.creation_timestamp));
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let canary_pods = pods_api
        .list(&by_rollout)
        .await
        .map_err(kerr("listing canary pods"))?
        .items;
    let phase = rollout.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let mut promoted_pods = Vec::new();
    if phase == Phase::Promoting
        && let Some(d) = deployment.as_ref()
    {
        // The Deployment's whole selector (matchExpressions too), minus the canary.
        let mut selector = Selector::try_from(d.spec.selector.clone()).map_err(|e| ReconcileError::Selector {
            deployment: d.name_any(),
            message: e.to_string(),
        })?;
        selector.extend([Expression::DoesNotExist(ROLLOUT_LABEL.into())]);
        let distroless: BTreeMap<&str, &str> = rollout
            .spec
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.image.as_str()))
            .collect();
        promoted_pods = pods_api
            .list(&ListParams::default().labels_from(&selector))
            .await
            .map_err(kerr("listing the Deployment's pods"))?
            .items
            .into_iter()
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers.iter().any(|c| {
                        c.image
                            .as_deref()
                            .is_some_and(|i| distroless.get(c.name.as_str()) == Some(&i))
                    })
                })
            })
            .collect();
    }
    // The gates are read while canary pods serve or bake, and through the
    // promotion (the rolling update, the GitOps hold, the 100% bake).
    let baking = matches!(phase, Phase::Staging | Phase::Canary | Phase::Paused)
        && rollout.status.as_ref().and_then(|s| s.step_ready_at.as_ref()).is_some();
    let mut metrics = Vec::new();
    if baking || phase == Phase::Promoting {
        let judged = if phase == Phase::Promoting && !promoted_pods.is_empty() {
            &promoted_pods
        } else {
            &canary_pods
        };
        let vars = analysis::QueryVars::new(rollout, judged);
        for gate in &rollout.spec.metrics {
            let value = match &gate.auth {
                None => analysis::query(&gate.address, &vars.apply(&gate.query), &Default::default()).await,
                Some(auth) => match gate_credentials(client, &ns, auth).await {
                    Ok(credentials) => analysis::query(&gate.address, &vars.apply(&gate.query), &credentials).await,
                    Err(e) => Err(e.into()),
                },
            };
            metrics.push(MetricReading {
                name: gate.name.clone(),
                value,
            });
        }
    }
    Ok(Snapshot {
        deployment,
        canaries,
        canary_pods,
        promoted_pods,
        metrics,
    })
}

/// A gate's credentials from its Secret; a missing Secret or key is a
/// reading that cannot be had (it holds the step, and counts as an error).
async fn gate_credentials(
    client: &kube::Client,
    ns: &str,
    auth: &GateAuth,
) -> Result<analysis::Credentials, analysis::SecretProblem> {
    use analysis::SecretProblem;
    let secret = auth.secret_name.clone();
    let found = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&auth.secret_name)
        .await
        .map_err(|e| SecretProblem::Read {
            secret: secret.clone(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| SecretProblem::Missing {
            secret: secret.clone(),
            namespace: ns.to_string(),
        })?;
    let data = found.data.unwrap_or_default();
    let get = |key: &Option<String>| -> Result<Option<Vec<u8>>, SecretProblem> {
        match key {
            None => Ok(None),
            Some(k) => data
                .get(k)
                .map(|v| Some(v.0.clone()))
                .ok_or_else(|| SecretProblem::NoKey {
                    secret: secret.clone(),
                    key: k.clone(),
                }),
        }
    };
    let text = |bytes: Vec<u8>, field: &'static str| -> Result<String, SecretProblem> {
        String::from_utf8(bytes)
            .map(|t| t.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|_| SecretProblem::NotText {
                secret: secret.clone(),
                field,
            })
    };
    let bearer = get(&auth.token_key)?.map(|b| text(b, "tokenKey")).transpose()?;
    let basic = match (get(&auth.username_key)?, get(&auth.password_key)?) {
        (Some(u), Some(p)) => Some((text(u, "usernameKey")?, text(p, "passwordKey")?)),
        _ => None,
    };
    Ok(analysis::Credentials {
        bearer,
        basic,
        ca_pem: get(&auth.ca_key)?,
    })
}

async fn reconcile(rollout: Arc<DistrolessRollout>, ctx: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let ns = rollout.namespace().unwrap_or_default();
    let name = rollout.name_any();
    let span = info_span!("reconcile", rollout = %name, namespace = %ns);
    let key = ObjectRef::from_obj(&*rollout);
    let failures_ctx = ctx.clone();
    let failures = &failures_ctx.failures;
    let result = async move {
        // The latest rollout, not the watch cache's: a reconcile right after our
        // own status write must not plan from (and write back) the status before it.
        let Some(rollout) = Api::<DistrolessRollout>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(kerr("reading the rollout"))?
        else {
            return Ok(Requeue::await_change());
        };
        let snap = snapshot(&rollout, &ctx.client).await?;
        let now = Timestamp::now();
        let plan = plan::plan(&Observed {
            rollout: &rollout,
            deployment: snap.deployment.as_ref(),
            canaries: &snap.canaries,
            canary_pods: &snap.canary_pods,
            promoted_pods: &snap.promoted_pods,
            metrics: &snap.metrics,
            now,
        });
        apply(&rollout, &ctx, &snap, plan).await
    }
    .instrument(span)
    .await;
    if result.is_ok() {
        failures.lock().remove(&key);
    }
    result
}

/// Does what the plan says, in its order, then writes the status.
async fn apply(
    rollout: &DistrolessRollout,
    ctx: &Context,
    snap: &Snapshot,
    mut plan: Plan,
) -> Result<Requeue, ReconcileError> {
    let ns = rollout.namespace().unwrap_or_default();
    let client = &ctx.client;
    let reference = rollout.object_ref(&());
    // The finalizer is in place before the Deployment is patched.
    let has_finalizer = rollout.finalizers().iter().any(|f| f == plan::FINALIZER);
    // The rollout's resourceVersion as our last write left it.
    let mut version = rollout.resource_version();
    if plan.finalizer && !has_finalizer && rollout.metadata.deletion_timestamp.is_none() {
        version = set_finalizer(client, rollout, version, true).await?;
    }
    // A rollback, or the Deployment's own replicas before it is scaled, is
    // persisted, then carried out (see Plan::status_first).
    if plan.status_first(&rollout.status.clone().unwrap_or_default()) {
        version = write_status(client, rollout, &plan.status).await?;
    }
    for action in std::mem::take(&mut plan.actions) {
        match action {
            Action::RunPreflight { template } => {
                let stable = snap
                    .deployment
                    .as_ref()
                    .and_then(|d| d.spec.replicas)
                    .unwrap_or(1)
                    .max(0) as u32;
                let takes = rollout.spec.canary_capacity == CanaryCapacity::FromDeployment;
                let most = rollout
                    .spec
                    .steps
                    .iter()
                    .map(|s| match (&s.staging, s.weight) {
                        (Some(st), _) => st.replicas,
                        (None, Some(w)) if w < 100 && takes => canary::replicas_taking(stable, w),
                        (None, Some(w)) if w < 100 => canary::replicas_for(stable, w),
                        _ => 0,
                    })
                    .max()
                    .unwrap_or(1);
                let moved: Vec<&str> = rollout.spec.containers.iter().map(|c| c.name.as_str()).collect();
                let secrets: Vec<String> = template
                    .spec
                    .iter()
                    .flat_map(|s| s.image_pull_secrets.iter().flatten())
                    .map(|r| r.name.clone())
                    .filter(|n| !n.is_empty())
                    .collect();
                let credentials = match (&ctx.inspector, secrets.is_empty()) {
                    (Some(_), false) => ctx.pull_secrets.credentials(&ns, &secrets).await.map(Arc::new),
                    _ => None,
                };
                let result = match takes {
                    true => preflight::no_autoscaler(client, &ns, &rollout.spec.target_ref.name).await,
                    false => Ok(()),
                };
                let result = match result {
                    Ok(()) => {
                        preflight::check(
                            client,
                            &ns,
                            &template,
                            &moved,
                            most,
                            ctx.inspector.as_ref(),
                            credentials,
                        )
                        .await
                    }
                    Err(refusal) => Err(refusal),
                };
                let (passed, message) = match result {
                    Ok(m) => (true, m),
                    Err(refusal) => (false, refusal.to_string()),
                };
                plan.status.preflight = Some(PreflightResult {
                    passed,
                    message,
                    retry: rollout.verbs().retry,
                });
                plan.requeue = Some(Duration::from_millis(100));
            }
            Action::ApplyCanary(rs) => {
                let name = rs.metadata.name.clone().unwrap_or_default();
                Api::<ReplicaSet>::namespaced(client.clone(), &ns)
                    .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&*rs))
                    .await
                    .map_err(kerr(format!("applying the canary ReplicaSet {name}")))?;
            }
            Action::ScaleCanary { name, replicas } => {
                Api::<ReplicaSet>::namespaced(client.clone(), &ns)
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                    )
                    .await
                    .map_err(kerr(format!("scaling the canary ReplicaSet {name}")))?;
            }
            Action::DeleteCanary { name } => {
                let params = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match Api::<ReplicaSet>::namespaced(client.clone(), &ns)
                    .delete(&name, &params)
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(kerr(format!("deleting the canary ReplicaSet {name}"))(e)),
                }
            }
            Action::SetServing { pods, serving } => {
                let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let status = if serving { "True" } else { "False" };
                let reason = if serving { "CanaryServing" } else { "CanaryNotServing" };
                let patch = json!({"status": {"conditions": [{
                    "type": SERVING_GATE, "status": status, "reason": reason,
                    "lastTransitionTime": Timestamp::now().to_string(),
                }]}});
                for pod in pods {
                    match pods_api
                        .patch_status(&pod, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(kerr(format!("setting the serving gate of pod {pod}"))(e)),
                    }
                }
            }
            Action::KeepPod { name } => {
                // Owned by the rollout alone (so it goes with it); not blocking
                // the rollout's deletion, which would need finalizer rights.
                let owner = json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessRollout",
                    "name": rollout.name_any(), "uid": rollout.uid(), "controller": false});
                let patch = json!({"metadata": {"labels": {"pod-template-hash": canary::KEPT},
                    "ownerReferences": [owner]}});
                match Api::<Pod>::namespaced(client.clone(), &ns)
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => info!(pod = %name, "the failed canary pod is kept for kubectl debug"),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(kerr(format!("keeping the failed pod {name}"))(e)),
                }
            }
            Action::ScaleDeployment { replicas } => {
                // An update of `spec.replicas` alone by our field manager: its
                // ownership is how a later change by anyone else is told apart.
                let d = &rollout.spec.target_ref.name;
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                Api::<Deployment>::namespaced(client.clone(), &ns)
                    .patch(d, &params, &Patch::Merge(json!({"spec": {"replicas": replicas}})))
                    .await
                    .map_err(kerr(format!("scaling Deployment {d} to {replicas}")))?;
            }
            Action::PatchDeploymentImages(images) => {
                let d = &rollout.spec.target_ref.name;
                let containers: Vec<_> = images.iter().map(|(n, i)| json!({"name": n, "image": i})).collect();
                let patch = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": d},
                    "spec": {"template": {"spec": {"containers": containers}}}});
                Api::<Deployment>::namespaced(client.clone(), &ns)
                    .patch(d, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
                    .await
                    .map_err(kerr(format!("patching the images of Deployment {d}")))?;
            }
            Action::Event {
                warning,
                reason,
                message,
            } => {
                let event = Event {
                    type_: if warning { EventType::Warning } else { EventType::Normal },
                    reason: reason.clone(),
                    note: Some(message.chars().take(1000).collect()),
                    action: "Rollout".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                    warn!(error = %e, %reason, "cannot record an event");
                }
            }
        }
    }
    let previous = rollout.status.clone().unwrap_or_default();
    record_metrics(ctx, rollout, &previous, &plan);
    if plan.status != previous {
        version = write_status(client, rollout, &plan.status).await?;
    }
    if !plan.finalizer && has_finalizer {
        set_finalizer(client, rollout, version, false).await?;
    }
    Ok(match plan.requeue {
        Some(d) => Requeue::requeue(d),
        None => Requeue::await_change(),
    })
}

/// Adds or removes [`plan::FINALIZER`]: a merge patch of the whole list
/// with the rollout's `resourceVersion` as a precondition, so a concurrent
/// change of the finalizers is never lost (the API server answers 409 and
/// the reconcile is retried).
async fn set_finalizer(
    client: &kube::Client,
    rollout: &DistrolessRollout,
    version: Option<String>,
    present: bool,
) -> Result<Option<String>, ReconcileError> {
    let ns = rollout.namespace().unwrap_or_default();
    let mut finalizers: Vec<String> = rollout
        .finalizers()
        .iter()
        .filter(|f| *f != plan::FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(plan::FINALIZER.to_string());
    }
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": version}});
    match Api::<DistrolessRollout>::namespaced(client.clone(), &ns)
        .patch(&rollout.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(r) => Ok(r.resource_version()),
        // Already gone: nothing left to hold.
        Err(kube::Error::Api(e)) if e.code == 404 && !present => Ok(None),
        Err(e) => Err(kerr(if present {
            "adding the finalizer"
        } else {
            "removing the finalizer"
        })(e)),
    }
}

/// The rollout's status, server-side applied by our field manager; returns
/// the rollout's new resourceVersion.
async fn write_status(
    client: &kube::Client,
    rollout: &DistrolessRollout,
    status: &crate::api::DistrolessRolloutStatus,
) -> Result<Option<String>, ReconcileError> {
    let ns = rollout.namespace().unwrap_or_default();
    let patch = json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessRollout", "status": status});
    let written = Api::<DistrolessRollout>::namespaced(client.clone(), &ns)
        .patch_status(
            &rollout.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kerr("writing the rollout status"))?;
    Ok(written.resource_version())
}

fn record_metrics(
    ctx: &Context,
    rollout: &DistrolessRollout,
    previous: &crate::api::DistrolessRolloutStatus,
    plan: &Plan,
) {
    let ns = rollout.namespace().unwrap_or_default();
    let name = rollout.name_any();
    ctx.metrics.rollout_phase(&ns, &name, plan.status.phase);
    if plan.status.phase.is_stopped() && !previous.phase.is_stopped() {
        let reason = plan
            .status
            .failure
            .as_ref()
            .map(|f| f.reason.as_str())
            .unwrap_or("Unknown");
        ctx.metrics.rollback(reason);
        if let (Some(started), Some(detected)) = (
            previous.step_started_at.as_ref(),
            plan.status.failure.as_ref().and_then(|f| f.detected_at.as_ref()),
        ) {
            let seconds = detected.0.duration_since(started.0).as_secs_f64().max(0.0);
            ctx.metrics.time_to_detect(seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> ReconcileError {
        ReconcileError::Kube {
            what: "writing".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("refused", "Refused")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn a_conflict_or_a_vanished_object_is_retried_soon_whatever_came_before() {
        for failures in [1, 5, 50] {
            assert_eq!(retry_after(&api(409), failures), Duration::from_millis(500));
            assert_eq!(retry_after(&api(404), failures), Duration::from_secs(1));
        }
    }

    #[test]
    fn an_unavailable_api_server_is_retried_with_a_doubling_wait_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_after(&api(503), n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_after(&api(429), 3), Duration::from_secs(4));
        assert_eq!(retry_after(&api(500), u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn what_a_person_must_fix_waits_at_least_thirty_seconds() {
        for code in [400, 401, 403, 422] {
            assert_eq!(retry_after(&api(code), 1), Duration::from_secs(30), "{code}");
            assert_eq!(retry_after(&api(code), 8), Duration::from_secs(60), "{code}");
        }
        let selector = ReconcileError::Selector {
            deployment: "web".into(),
            message: "bad".into(),
        };
        assert_eq!(retry_after(&selector, 1), Duration::from_secs(300));
    }
}
