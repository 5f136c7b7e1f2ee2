//! A Helm release of the chart with its operator pods played by local
//! processes (see [`crate::operator`]): what `cargo xtask cluster up
//! --install-chart`, the tests and the benchmarks install.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{ControlPlane, Error};
use crate::operator::{self, OperatorPod};

/// How to install.
pub struct Install<'a> {
    /// The release name; also its namespace. Resource names are the release
    /// name when it contains "distroless-guard" (the chart's fullname rule).
    pub name: &'a str,
    pub chart: &'a Path,
    /// The operator binary that plays the pods.
    pub binary: &'a Path,
    /// `helm install` arguments (`--set ...`).
    pub helm_args: Vec<String>,
    /// Arguments appended to the container's.
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Reach the API server through this address (a fault proxy).
    pub api_server: Option<SocketAddr>,
}

pub struct Release {
    pub name: String,
    pub namespace: String,
    pub operators: Vec<OperatorPod>,
    pub helm_args: Vec<String>,
    binary: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    api_server: Option<SocketAddr>,
    uninstalled: bool,
    cp: &'static ControlPlane,
}

fn helm_failed(what: &str, out: &Output) -> Error {
    Error::Pki(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)))
}

impl Release {
    /// Creates the readiness Stage, runs `helm install`, starts the processes,
    /// and waits until the webhook Service has every pod as a ready endpoint
    /// and both webhook configurations carry a caBundle.
    pub async fn install(cp: &'static ControlPlane, how: Install<'_>) -> Result<Release, Error> {
        let selector: BTreeMap<String, String> = [
            ("app.kubernetes.io/name".to_string(), "distroless-guard".to_string()),
            ("app.kubernetes.io/instance".to_string(), how.name.to_string()),
        ]
        .into();
        cp.create_stage(&operator::probe_gate(&format!("probe-{}", how.name), &selector))
            .await?;
        let mut helm = cp.helm();
        helm.args(["install", how.name])
            .arg(how.chart)
            .args(["-n", how.name, "--create-namespace"])
            .args(&how.helm_args);
        let out = run(helm).await?;
        if !out.status.success() {
            return Err(helm_failed(&format!("helm install {}", how.name), &out));
        }
        let mut release = Release {
            name: how.name.to_string(),
            namespace: how.name.to_string(),
            operators: Vec::new(),
            helm_args: how.helm_args,
            binary: how.binary.to_path_buf(),
            extra_args: how.extra_args,
            env: how.env,
            api_server: how.api_server,
            uninstalled: false,
            cp,
        };
        release.start_operators().await?;
        release.ca_bundle().await?;
        release.wait_endpoints(release.operators.len()).await?;
        Ok(release)
    }

    /// Starts a process for every pod of the release's Deployment that has none.
    pub async fn start_operators(&mut self) -> Result<(), Error> {
        let ops = operator::start(
            self.cp,
            operator::Launch {
                binary: &self.binary,
                namespace: &self.namespace,
                deployment: &self.name,
                extra_args: self.extra_args.clone(),
                env: self.env.clone(),
                api_server: self.api_server,
            },
        )
        .await?;
        let running: Vec<String> = self.operators.iter().map(|o| o.pod.clone()).collect();
        self.operators
            .extend(ops.into_iter().filter(|o| !running.contains(&o.pod)));
        Ok(())
    }

    async fn poll<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let started = Instant::now();
        loop {
            if let Some(v) = check().await {
                return Ok(v);
            }
            if let Some(dead) = self.operators.iter().find(|o| !o.running()) {
                return Err(Error::Exited {
                    component: format!("the operator process of pod {}", dead.pod),
                    status: "exited".into(),
                    tail: crate::process::tail(&dead.log, 30).join("\n"),
                });
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    seconds: 60,
                    dir: self.cp.dir().display().to_string(),
                    tails: self.cp.log_tails(15),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, args: &[&str]) -> Option<Value> {
        let mut cmd = self.cp.kubectl();
        cmd.arg("get").args(args).args(["-o", "json"]);
        let out = run(cmd).await.ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The webhook configurations' caBundle, once both carry the same one.
    pub async fn ca_bundle(&self) -> Result<String, Error> {
        self.poll("the caBundle in both webhook configurations", || async {
            let v = self.get(&["validatingwebhookconfiguration", &self.name]).await?;
            let m = self.get(&["mutatingwebhookconfiguration", &self.name]).await?;
            let vb = v.pointer("/webhooks/0/clientConfig/caBundle")?.as_str()?.to_string();
            let mb = m.pointer("/webhooks/0/clientConfig/caBundle")?.as_str()?.to_string();
            (vb == mb && !vb.is_empty()).then_some(vb)
        })
        .await
    }

    /// Waits until the webhook Service has this many ready endpoints.
    pub async fn wait_endpoints(&self, count: usize) -> Result<(), Error> {
        let service = format!("kubernetes.io/service-name={}-webhook", self.name);
        self.poll("the webhook Service's ready endpoints", || async {
            let slices = self
                .get(&["endpointslices", "-n", &self.namespace, "-l", &service])
                .await?;
            let ready = slices["items"]
                .as_array()?
                .iter()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["conditions"]["ready"] == true)
                .count();
            (ready == count).then_some(())
        })
        .await
    }

    /// Every request of the release's ServiceAccount in the API server's audit log.
    pub fn audit_events(&self) -> Vec<Value> {
        let user = format!("system:serviceaccount:{}:{}", self.namespace, self.name);
        self.cp
            .audit_events()
            .into_iter()
            .filter(|e| e.pointer("/user/username").and_then(Value::as_str) == Some(user.as_str()))
            .collect()
    }

    pub fn stop_operators(&mut self) {
        for op in self.operators.drain(..) {
            op.stop();
        }
    }

    /// Stops the processes, then `helm uninstall --wait`.
    pub async fn uninstall(mut self) -> Result<Output, Error> {
        self.stop_operators();
        self.uninstalled = true;
        let mut helm = self.cp.helm();
        helm.args([
            "uninstall",
            &self.name,
            "-n",
            &self.namespace,
            "--wait",
            "--timeout",
            "60s",
        ]);
        let out = run(helm).await?;
        let _ = self.cp.delete_stage(&format!("probe-{}", self.name)).await;
        Ok(out)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.stop_operators();
        if self.uninstalled {
            return;
        }
        // A release left behind by a failure must not keep its webhooks.
        let mut helm = self.cp.helm();
        helm.args(["uninstall", &self.name, "-n", &self.namespace, "--ignore-not-found"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = helm.status();
    }
}

async fn run(mut cmd: std::process::Command) -> Result<Output, Error> {
    cmd.stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| Error::Pki(e.to_string()))?
        .map_err(Error::Io)
}

/// `helm install <name> <chart> -n <namespace>` of the chart whose pods run
/// `image` (`registry/repository:tag`) on the real nodes: their image, node
/// selector and toleration, and `extra` arguments. The pods are real: nothing
/// plays them.
pub fn helm_install_on_real_nodes(
    cp: &ControlPlane,
    name: &str,
    namespace: &str,
    chart: &Path,
    image: &str,
    extra: &[String],
) -> std::process::Command {
    let (repository, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    let placement = crate::node::real_node_placement();
    let mut helm = cp.helm();
    helm.args(["install", name])
        .arg(chart)
        .args(["-n", namespace])
        .args(["--set", &format!("image.repository={repository}")])
        .args(["--set", &format!("image.tag={tag}")])
        .args(["--set", "image.pullPolicy=IfNotPresent"])
        .args(["--set-json", &format!("nodeSelector={}", placement["nodeSelector"])])
        .args(["--set-json", &format!("tolerations={}", placement["tolerations"])])
        .args(extra);
    helm
}
