//! Starts the real webhook server in-process over HTTPS on 127.0.0.1.

use std::path::PathBuf;
use std::time::Duration;

use distroless_guard::admission::{Admission, NameOnly};
use distroless_guard::policy::PolicySet;
use distroless_guard::webhook::server::ServerLimits;
use distroless_guard::webhook::{self, RunningWebhook, ServeOptions};

use super::tls::{HttpsConn, TestCa};

pub struct TestWebhook {
    pub server: RunningWebhook,
    pub ca: TestCa,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestWebhook {
    pub async fn start(policies: PolicySet) -> Self {
        Self::start_with(Admission::new(policies, std::sync::Arc::new(NameOnly))).await
    }

    pub async fn start_with(admission: Admission) -> Self {
        Self::start_limited(admission, ServerLimits::default()).await
    }

    pub async fn start_limited(admission: Admission, limits: ServerLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("distroless-guard test CA");
        let (cert_path, key_path) = ca.serving_cert(1).write(dir.path());
        let options = ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: cert_path.clone(),
            tls_key: key_path.clone(),
            tls_reload: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(5),
            limits,
        };
        let server = webhook::start(options, admission).await.unwrap();
        server.state.set_ready(true);
        TestWebhook {
            server,
            ca,
            cert_path,
            key_path,
            _dir: dir,
        }
    }

    /// Posts a body on a new connection and returns the AdmissionReview's `response`.
    pub async fn review(&self, path: &str, body: Vec<u8>) -> serde_json::Value {
        let (_, bytes) = self.connect().await.post(path, body).await;
        let review: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(review["kind"], "AdmissionReview", "{review}");
        review["response"].clone()
    }

    pub async fn connect(&self) -> HttpsConn {
        HttpsConn::connect(self.server.local_addr, self.ca.client_config())
            .await
            .unwrap()
    }
}
