//! `distroless-guard run`: the operator in a cluster ([`crate::operator`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tracing::error;

use super::{ImageArgs, LogArgs};
use crate::operator::{CertSource, OperatorConfig};
use crate::telemetry::LogFormat;

#[derive(Args, Debug, Clone)]
pub(super) struct RunArgs {
    /// Kubeconfig file; without it, the in-cluster configuration (or $KUBECONFIG).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The namespace the operator runs in (its Lease and certificate Secret live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "distroless-guard")]
    namespace: String,
    /// This replica's identity for leader election.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The Service in front of the webhook (certificates name `<service>.<namespace>.svc`).
    #[arg(long, env = "DISTROLESS_GUARD_SERVICE", default_value = "distroless-guard-webhook")]
    service_name: String,
    /// Address of the HTTPS webhook.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Address of plain-HTTP /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    server: super::ServerArgs,
    /// Lease used for leader election.
    #[arg(long, default_value = "distroless-guard-leader")]
    lease_name: String,
    /// Secret holding the self-managed CA and serving certificate.
    #[arg(long, default_value = "distroless-guard-webhook-tls")]
    cert_secret: String,
    /// ValidatingWebhookConfiguration whose caBundle is kept current.
    #[arg(long, default_value = "distroless-guard")]
    validating_webhook: String,
    /// MutatingWebhookConfiguration whose caBundle is kept current.
    #[arg(long, default_value = "distroless-guard")]
    mutating_webhook: String,
    /// Bring your own certificate (cert-manager): nothing is generated or patched.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How often certificate files or the Secret are checked, in seconds.
    #[arg(long, default_value_t = 10)]
    cert_check_seconds: u64,
    /// Lease duration in seconds (leadership moves when the leader stops renewing).
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    images: ImageArgs,
    /// With --inspect-images: how often the audit reads each running image again, in seconds.
    #[arg(long, default_value_t = 3600)]
    audit_image_refresh_seconds: u64,
    /// With --inspect-images: how long the audit waits for one image before it counts as unverified.
    #[arg(long, default_value_t = 30)]
    audit_image_timeout_seconds: u64,
    /// With --inspect-images: images the audit reads at once.
    #[arg(long, default_value_t = 4)]
    audit_image_concurrency: usize,
    /// With --inspect-images: inspections the audit starts per second and registry.
    #[arg(long, default_value_t = 10.0)]
    audit_registry_rate: f64,
    /// Write the audit as PolicyReports (wgpolicyk8s.io/v1alpha2) when the cluster has the CRD.
    #[arg(long)]
    policy_reports: bool,
    /// The name of the PolicyReports and the ClusterPolicyReport (one per installation).
    #[arg(long, default_value = crate::controller::REPORT_NAME)]
    report_name: String,
    /// How the watches read what exists at start: streamed by a watch (the
    /// WatchList feature) or listed in pages. Unset: streamed where the API
    /// server's version turns WatchList on by default (1.32, 1.34 and later).
    #[arg(long, value_enum)]
    initial_list: Option<InitialListArg>,
    /// A custom resource whose pod specs the audit judges, as GROUP/RESOURCE
    /// (argoproj.io/rollouts); repeatable. The chart passes its
    /// `webhook.customResources`.
    #[arg(long = "custom-resource", value_name = "GROUP/RESOURCE")]
    custom_resources: Vec<crate::controller::CustomResource>,
}

/// `--initial-list`: the values of [`crate::controller::InitialList`].
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum InitialListArg {
    Streaming,
    Paged,
}

impl From<InitialListArg> for crate::controller::InitialList {
    fn from(a: InitialListArg) -> Self {
        match a {
            InitialListArg::Streaming => crate::controller::InitialList::Streaming,
            InitialListArg::Paged => crate::controller::InitialList::Paged,
        }
    }
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<OperatorConfig> {
        let identity = self
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("distroless-guard-{}", std::process::id()));
        let certificates = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => CertSource::SelfManaged,
        };
        Ok(OperatorConfig {
            kubeconfig: self.kubeconfig.clone(),
            namespace: self.namespace.clone(),
            identity,
            service_name: self.service_name.clone(),
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            server_limits: self.server.limits(),
            lease_name: self.lease_name.clone(),
            lease_duration: Duration::from_secs(self.lease_seconds),
            cert_secret: self.cert_secret.clone(),
            validating_webhook: self.validating_webhook.clone(),
            mutating_webhook: self.mutating_webhook.clone(),
            certificates,
            cert_check: Duration::from_secs(self.cert_check_seconds),
            images: self.images.inspector_config()?,
            image_audit: crate::controller::images::ImageAuditConfig {
                concurrency: self.audit_image_concurrency.max(1),
                per_registry_per_second: self.audit_registry_rate,
                refresh: Duration::from_secs(self.audit_image_refresh_seconds.max(1)),
                timeout: Duration::from_secs(self.audit_image_timeout_seconds.max(1)),
            },
            policy_reports: self.policy_reports.then(|| self.report_name.clone()),
            initial_list: self.initial_list.map(Into::into),
            custom_resources: self.custom_resources.clone(),
        })
    }
}

pub(super) fn run(args: RunArgs) -> ExitCode {
    args.log.init(LogFormat::Json);
    let result = args.config().and_then(|config| {
        let runtime = crate::telemetry::runtime()?;
        Ok(runtime.block_on(crate::operator::serve(config))?)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "cannot run");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn initial_list_is_unset_unless_named_and_only_its_two_values_parse() {
        let parse = |extra: &[&str]| {
            let args = Wrapper::try_parse_from([&["run"][..], extra].concat()).unwrap();
            args.run.config().unwrap().initial_list
        };
        assert_eq!(parse(&[]), None);
        assert_eq!(
            parse(&["--initial-list", "paged"]),
            Some(crate::controller::InitialList::Paged)
        );
        assert_eq!(
            parse(&["--initial-list=streaming"]),
            Some(crate::controller::InitialList::Streaming)
        );
        assert!(Wrapper::try_parse_from(["run", "--initial-list", "pages"]).is_err());
    }
}
