//! The operator in a cluster (`distroless-guard run`): builds everything and
//! owns every task it starts. Every replica serves the admission webhook; the
//! leader (a Lease) also writes policy statuses, Events and the webhook
//! certificates. [`Running::shutdown`] stops all of it: readiness off, the
//! webhook drains, every task is cancelled and joined, the Lease released.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::admission::Admission;
use crate::controller::certs::{self, CertConfig};
use crate::controller::leader::{self, LeaseConfig};
use crate::controller::{self, Auditor, ClusterView};
use crate::image::InspectorConfig;
use crate::webhook::{self, AppState};

/// Everything `run` is configured with (the CLI fills it from flags).
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Kubeconfig file; `None`: in-cluster configuration (or $KUBECONFIG).
    pub kubeconfig: Option<PathBuf>,
    /// The namespace the operator runs in (its Lease and certificate Secret live there).
    pub namespace: String,
    /// This replica's identity for leader election.
    pub identity: String,
    /// The Service in front of the webhook (certificates name `<service>.<namespace>.svc`).
    pub service_name: String,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// What one client may take of the webhook server.
    pub server_limits: crate::webhook::server::ServerLimits,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub cert_secret: String,
    pub validating_webhook: String,
    pub mutating_webhook: String,
    pub certificates: CertSource,
    /// How often certificate files or the Secret are checked.
    pub cert_check: Duration,
    /// Image inspection; `None` turns the image rules off.
    pub images: Option<InspectorConfig>,
    /// How the audit reads the images of what runs (with `images`).
    pub image_audit: crate::controller::images::ImageAuditConfig,
    /// Write the audit as PolicyReports with this name (when the cluster has their CRD).
    pub policy_reports: Option<String>,
    /// How the watches read what exists; `None`: by the API server's version.
    pub initial_list: Option<controller::watch::InitialList>,
    /// Custom resources whose pod specs the audit judges (the chart's `webhook.customResources`).
    pub custom_resources: Vec<controller::CustomResource>,
}

/// Where the webhook's serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// Issued and rotated by the leader, kept in the Secret `cert_secret`.
    SelfManaged,
    /// Files someone else keeps current (cert-manager): nothing is generated or patched.
    Files { cert: PathBuf, key: PathBuf },
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no cluster configuration: {0}")]
    Config(String),
    #[error(
        "the DistrolessPolicy CRD is not installed; install it with: \
         distroless-guard crd | kubectl apply -f -   (or kubectl apply -f crds/)"
    )]
    CrdMissing,
    #[error("no RBAC permission to {verbs} {resource} ({api_version}): {message}")]
    Forbidden {
        verbs: &'static str,
        resource: String,
        api_version: String,
        message: String,
    },
    #[error("cannot list {resource}: {source}")]
    List {
        resource: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Tls(#[from] webhook::tls::TlsError),
    #[error(transparent)]
    Registry(#[from] crate::image::ClientError),
    #[error("cannot serve on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything `run` needs that is missing is said before it starts.
async fn preflight(client: &kube::Client) -> Result<(), StartError> {
    if client
        .list_api_group_resources("distrolessguard.dev/v1alpha1")
        .await
        .is_err()
    {
        return Err(StartError::CrdMissing);
    }
    let mut resources: Vec<ApiResource> = crate::policy::WorkloadKind::ALL
        .iter()
        .map(|k| controller::api_resource(*k))
        .collect();
    resources.push(ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()));
    // The watches may stream what exists (no list call), but in pages they
    // list: both verbs are checked here, for every kind watched.
    resources.push(ApiResource::erase::<crate::api::DistrolessPolicy>(&()));
    for ar in resources {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err(StartError::Forbidden {
                    verbs: "list/watch",
                    resource: ar.plural,
                    api_version: ar.api_version,
                    message: e.message,
                });
            }
            Err(source) => {
                return Err(StartError::List {
                    resource: ar.plural,
                    source,
                });
            }
        }
    }
    Ok(())
}

async fn client_for(config: &OperatorConfig) -> Result<kube::Client, StartError> {
    let err = |e: &dyn std::fmt::Display| StartError::Config(e.to_string());
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| err(&format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(&format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| err(&e))?,
    };
    kube::Client::try_from(kube_config).map_err(|e| err(&e))
}

/// A running operator: it owns every task it started.
pub struct Running {
    pub webhook_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub state: Arc<AppState>,
    pub view: Arc<ClusterView>,
    pub leading: watch::Receiver<bool>,
    webhook: webhook::RunningWebhook,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    lease: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops everything: readiness off, open requests finish, every task is
    /// cancelled and joined, and a held Lease is released.
    pub async fn shutdown(mut self) {
        self.state.set_ready(false);
        self.webhook.shutdown().await;
        self.stop.cancel();
        let _ = self.lease.await;
        self.tasks.shutdown().await;
    }
}

/// Runs the operator until SIGTERM.
pub async fn serve(config: OperatorConfig) -> Result<(), StartError> {
    let running = start(config).await?;
    crate::telemetry::terminated().await;
    info!("termination signal received");
    running.shutdown().await;
    Ok(())
}

/// Starts everything: watches, leader election, certificates, webhook, audit, health.
pub async fn start(config: OperatorConfig) -> Result<Running, StartError> {
    let client = client_for(&config).await?;
    preflight(&client).await?;
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let view = Arc::new(ClusterView::default());
    let mut admission = Admission::new(crate::policy::PolicySet::default(), view.clone())
        .with_owners(view.clone())
        .with_access(Arc::new(controller::access::SubjectAccess::new(client.clone())));
    let inspector = config.images.clone().map(crate::image::Inspector::new).transpose()?;
    if let Some(inspector) = &inspector {
        let secrets = Arc::new(controller::pull_secrets::SecretPullSecrets::new(client.clone()));
        admission = admission.with_inspector(inspector.clone()).with_pull_secrets(secrets);
    }
    let state = AppState::new(admission);
    let sink_state = state.clone();
    let initial_list = match config.initial_list {
        Some(chosen) => chosen,
        None => match client.apiserver_version().await {
            Ok(v) => controller::watch::InitialList::for_server(&v.major, &v.minor),
            Err(e) => {
                warn!(error = %e, "cannot read the API server's version; the watches list in pages");
                controller::watch::InitialList::Paged
            }
        },
    };
    info!(?initial_list, "watches read what exists");
    // Custom kinds first: what they control is counted through them from the
    // built-in watches' first list.
    let custom = controller::watch::Controllers::default();
    let found = controller::custom_resources::resolve_now(&client, &config.custom_resources).await;
    for ar in found.iter().flatten() {
        custom.write().insert((ar.group.clone(), ar.kind.clone()));
    }
    controller::watch::spawn(
        &mut tasks,
        client.clone(),
        view.clone(),
        initial_list,
        custom.clone(),
        move |set| {
            info!(policies = set.len(), "policies loaded");
            sink_state.metrics.set_policies(&set);
            sink_state.admission.set_policies(set);
        },
    );
    controller::custom_resources::spawn(
        &mut tasks,
        client.clone(),
        view.clone(),
        initial_list,
        config.custom_resources.iter().cloned().zip(found).collect(),
        custom,
    );

    let lease_config = LeaseConfig {
        duration: config.lease_duration.max(Duration::from_secs(2)),
        retry: (config.lease_duration / 5).max(Duration::from_secs(1)),
        ..LeaseConfig::new(&config.namespace, &config.lease_name, &config.identity)
    };
    let (leading_tx, leading) = watch::channel(false);
    let lease = tokio::spawn(
        leader::run(
            client.clone(),
            lease_config,
            leading_tx,
            stop.clone(),
            state.metrics.clone(),
        )
        .instrument(info_span!("lease")),
    );

    let check = config.cert_check.max(Duration::from_secs(1));
    let certs = match &config.certificates {
        CertSource::Files { cert, key } => Arc::new(webhook::tls::ReloadingCert::load(cert, key)?),
        CertSource::SelfManaged => {
            let cert_config = CertConfig {
                namespace: config.namespace.clone(),
                secret: config.cert_secret.clone(),
                service: config.service_name.clone(),
                validating_webhook: Some(config.validating_webhook.clone()),
                mutating_webhook: Some(config.mutating_webhook.clone()),
                validity: Duration::from_secs(90 * 24 * 3600),
                rotate_before: Duration::from_secs(30 * 24 * 3600),
                interval: check,
            };
            let (cert, key) = certs::first_pair(&client, &cert_config, &leading).await;
            let serving = Arc::new(webhook::tls::ReloadingCert::from_pem(&cert, &key)?);
            let reloading = serving.clone();
            tasks.spawn(
                certs::keep(
                    client.clone(),
                    cert_config,
                    leading.clone(),
                    move |(c, k)| match reloading.set_pem(c, k) {
                        Ok(true) => info!("webhook certificate reloaded from the Secret"),
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "the certificate Secret holds an unusable pair"),
                    },
                )
                .instrument(info_span!("certificates")),
            );
            serving
        }
    };
    let webhook = webhook::start_with_certs(
        config.listen,
        certs,
        check,
        Duration::from_secs(10),
        config.server_limits,
        state.clone(),
    )
    .await
    .map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;

    let mut auditor = Auditor::new(client.clone(), view.clone(), leading.clone(), &config.identity)
        .with_metrics(state.metrics.clone());
    if let Some(report_name) = config.policy_reports.clone() {
        match client.list_api_group_resources("wgpolicyk8s.io/v1alpha2").await {
            Ok(list) if list.resources.iter().any(|r| r.name == "policyreports") => {
                auditor = auditor.with_policy_reports(report_name);
                info!("the audit is written as PolicyReports too");
            }
            _ => warn!(
                "--policy-reports: the cluster has no wgpolicyk8s.io/v1alpha2 PolicyReport CRD; reports are off \
                 (the chart's crds/ installs it)"
            ),
        }
    }
    if let Some(inspector) = &inspector {
        let knowledge = Arc::new(controller::images::ImageKnowledge::default());
        auditor = auditor.with_images(knowledge.clone());
        let images = controller::images::ImageAudit {
            inspector: inspector.clone(),
            secrets: Arc::new(controller::pull_secrets::SecretPullSecrets::new(client.clone())),
            view: view.clone(),
            knowledge,
            leader: leading.clone(),
            config: config.image_audit.clone(),
            metrics: Some(state.metrics.clone()),
        };
        tasks.spawn(images.run().instrument(info_span!("image_audit")));
    }
    tasks.spawn(auditor.run().instrument(info_span!("audit")));

    let rollouts = Arc::new(controller::rollout::Context::new(
        client.clone(),
        &config.identity,
        inspector,
        state.metrics.clone(),
    ));
    tasks.spawn(controller::rollout::run_while_leading(rollouts, leading.clone()));

    let ready_state = state.clone();
    let ready_view = view.clone();
    tasks.spawn(async move {
        ready_view.wait_synced().await;
        ready_state.set_ready(true);
        info!("caches synced; ready");
    });

    let listener = webhook::server::bind(config.metrics_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.metrics_listen,
            source,
        })?;
    let health_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.metrics_listen,
        source,
    })?;
    info!(addr = %health_addr, "health and metrics serving HTTP");
    let health = webhook::health_router(state.clone());
    let health_stop = stop.clone();
    tasks.spawn(async move {
        let _ = axum::serve(listener, health)
            .with_graceful_shutdown(async move { health_stop.cancelled().await })
            .await;
    });
    Ok(Running {
        webhook_addr: webhook.local_addr,
        health_addr,
        state,
        view,
        leading,
        webhook,
        stop,
        tasks,
        lease,
    })
}
