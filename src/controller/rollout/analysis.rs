//! Metric gates read from Prometheus's HTTP API (`/api/v1/query`) with
//! reqwest: plain HTTP or HTTPS (rustls), chunked or sized answers up to
//! 4 MiB, a connect and a total timeout. What an answer means is defined
//! here and nowhere else:
//!
//! - a vector of several series: the highest value counts (a gate says how
//!   bad the canary may get, so the worst series decides);
//! - a scalar: its value;
//! - no sample, `NaN` (a ratio over a canary with no traffic yet) or `±Inf`:
//!   inconclusive, an error like Prometheus being down, so the planner holds
//!   the step and counts it against `consecutiveErrorLimit`.

use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::api::DistrolessRollout;

/// The most of an answer that is read.
const MAX_ANSWER: usize = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(3);

/// How a gate authenticates to Prometheus and which CA it trusts, as read
/// from the gate's Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub bearer: Option<String>,
    pub basic: Option<(String, String)>,
    /// PEM certificates: when set, the only roots trusted.
    pub ca_pem: Option<Vec<u8>>,
}

/// Why a gate has no value: it holds the step and counts against
/// `consecutiveErrorLimit`. The texts of foreign errors are kept as their
/// rendered chains, so a reading compares and clones as the planner needs.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub(crate) enum GateError {
    #[error("{0}: not an http:// or https:// address")]
    Address(String),
    #[error("{0}: credentials are sent only over https://")]
    PlainCredentials(String),
    #[error("the gate's CA: {0}")]
    Ca(String),
    #[error("the gate's CA holds no PEM certificate")]
    EmptyCa,
    #[error("cannot build the HTTP client for metric gates: {0}")]
    Client(String),
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: {status}: check the gate's credentials")]
    Refused { url: String, status: reqwest::StatusCode },
    #[error("{url}: an answer of more than {MAX_ANSWER} bytes")]
    TooLarge { url: String },
    #[error("{url}: {status}, not a Prometheus answer ({reason})")]
    NotPrometheus {
        url: String,
        status: reqwest::StatusCode,
        reason: String,
    },
    /// Prometheus answered with an error.
    #[error("Prometheus: {0}")]
    Query(String),
    /// An answer without a usable value (no sample, NaN, a matrix).
    #[error("inconclusive: {0}")]
    Inconclusive(String),
    /// The gate's Secret is missing or lacks a key.
    #[error(transparent)]
    Credentials(#[from] SecretProblem),
}

/// What is wrong with a gate's Secret.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub(crate) enum SecretProblem {
    #[error("reading Secret {secret}: {reason}")]
    Read { secret: String, reason: String },
    #[error("Secret {secret} not found in namespace {namespace}")]
    Missing { secret: String, namespace: String },
    #[error("Secret {secret} has no key {key:?}")]
    NoKey { secret: String, key: String },
    #[error("Secret {secret} key {field:?} is not UTF-8 text")]
    NotText { secret: String, field: &'static str },
}

fn build(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, GateError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("distroless-guard/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| GateError::Ca(e.to_string()))?;
        if roots.is_empty() {
            return Err(GateError::EmptyCa);
        }
        builder = builder.tls_certs_only(roots);
    }
    builder.build().map_err(|e| GateError::Client(e.to_string()))
}

/// The client for gates without their own CA, built once. A gate with its
/// own CA gets a client of its own at each reading (one every 5 s per gate:
/// building one costs well under a millisecond).
fn shared() -> Result<&'static reqwest::Client, GateError> {
    static CLIENT: OnceLock<Result<reqwest::Client, GateError>> = OnceLock::new();
    CLIENT.get_or_init(|| build(None)).as_ref().map_err(Clone::clone)
}

/// An instant query against Prometheus at `address` (`http://` or `https://`).
pub(crate) async fn query(address: &str, query: &str, credentials: &Credentials) -> Result<f64, GateError> {
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(GateError::Address(address.to_string()));
    }
    if (credentials.bearer.is_some() || credentials.basic.is_some()) && !address.starts_with("https://") {
        return Err(GateError::PlainCredentials(address.to_string()));
    }
    let own;
    let client = match &credentials.ca_pem {
        Some(pem) => {
            own = build(Some(pem))?;
            &own
        }
        None => shared()?,
    };
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let mut request = client.get(&url).query(&[("query", query)]);
    if let Some(token) = &credentials.bearer {
        request = request.bearer_auth(token);
    }
    if let Some((user, password)) = &credentials.basic {
        request = request.basic_auth(user, Some(password));
    }
    let unreachable = |e: reqwest::Error| GateError::Unreachable {
        url: url.clone(),
        reason: crate::telemetry::error_chain(&e),
    };
    let mut answer = request.send().await.map_err(unreachable)?;
    let status = answer.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(GateError::Refused { url, status });
    }
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(GateError::TooLarge { url });
        }
        body.extend_from_slice(&chunk);
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| GateError::NotPrometheus {
        url: url.clone(),
        status,
        reason: e.to_string(),
    })?;
    value_of(&v)
}

/// The values a gate's query may name, to scope it to the canary.
pub(crate) struct QueryVars {
    pairs: [(&'static str, String); 4],
}

impl QueryVars {
    /// For `rollout` judged on `pods` (the canary's, or the promoted Deployment's).
    pub(crate) fn new(rollout: &DistrolessRollout, pods: &[Pod]) -> Self {
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let hash = live
            .iter()
            .find_map(|p| p.metadata.labels.as_ref()?.get("pod-template-hash").cloned())
            .unwrap_or_default();
        let mut names: Vec<String> = live
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .map(regex_escape)
            .collect();
        names.sort();
        QueryVars {
            pairs: [
                ("{{namespace}}", rollout.metadata.namespace.clone().unwrap_or_default()),
                ("{{deployment}}", rollout.spec.target_ref.name.clone()),
                ("{{canaryHash}}", hash),
                ("{{canaryPods}}", names.join("|")),
            ],
        }
    }

    /// The query with every variable replaced.
    pub(crate) fn apply(&self, query: &str) -> String {
        self.pairs
            .iter()
            .fold(query.to_string(), |q, (name, value)| q.replace(name, value))
    }
}

/// A pod name as a PromQL regex literal (names hold only `a-z0-9.-`; the
/// dot is the one character that means something there).
fn regex_escape(name: &str) -> String {
    name.replace('.', "\\\\.")
}

/// The gate's value in a Prometheus answer, or why there is none.
pub(crate) fn value_of(v: &serde_json::Value) -> Result<f64, GateError> {
    if v["status"] != "success" {
        return Err(GateError::Query(
            v["error"].as_str().unwrap_or("query failed").to_string(),
        ));
    }
    let samples: Vec<&str> = match v["data"]["resultType"].as_str() {
        Some("vector") => v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["value"][1].as_str())
            .collect(),
        Some("scalar") => v["data"]["result"][1].as_str().into_iter().collect(),
        other => {
            return Err(GateError::Inconclusive(format!(
                "a {} answer, not a vector or scalar",
                other.unwrap_or("missing")
            )));
        }
    };
    let mut worst: Option<f64> = None;
    for s in samples {
        let x: f64 = s
            .parse()
            .map_err(|e| GateError::Inconclusive(format!("sample {s:?}: {e}")))?;
        if !x.is_finite() {
            return Err(GateError::Inconclusive(format!("the query gave {s} (no traffic yet?)")));
        }
        worst = Some(worst.map_or(x, |w| w.max(x)));
    }
    worst.ok_or_else(|| GateError::Inconclusive("the query returned no sample".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vector(values: &[&str]) -> serde_json::Value {
        let result: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"metric": {"pod": format!("p{i}")}, "value": [1.0, v]}))
            .collect();
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    /// A one-CA HTTPS server on 127.0.0.1 answering every request, in
    /// chunks, with a two-series vector if its `Authorization` header is
    /// `want`, else 401. Returns its address and its CA's PEM.
    async fn https_prometheus(want: &'static str) -> (String, Vec<u8>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let resolver =
            crate::webhook::tls::ReloadingCert::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
                .unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(crate::webhook::tls::server_config(std::sync::Arc::new(resolver)).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let authorized = head.contains(&format!("authorization: {}\r\n", want.to_ascii_lowercase()));
                let response = if authorized {
                    let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"a"},"value":[1,"0.02"]},{"metric":{"pod":"b"},"value":[1,"0.07"]}]}}"#;
                    let (one, two) = body.split_at(40);
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{one}\r\n{:x}\r\n{two}\r\n0\r\n\r\n",
                        one.len(),
                        two.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        (address, ca_pem.into_bytes())
    }

    #[tokio::test]
    async fn https_with_a_bearer_token_and_the_gates_own_ca_reads_a_chunked_multi_series_answer() {
        let (address, ca) = https_prometheus("Bearer s3cret").await;
        let credentials = Credentials {
            bearer: Some("s3cret".into()),
            ca_pem: Some(ca.clone()),
            ..Credentials::default()
        };
        assert_eq!(
            query(&address, "errors", &credentials).await,
            Ok(0.07),
            "the worst series"
        );
        let wrong = Credentials {
            bearer: Some("guess".into()),
            ..credentials.clone()
        };
        let e = query(&address, "errors", &wrong).await.unwrap_err();
        assert!(matches!(e, GateError::Refused { status, .. } if status == 401), "{e:?}");
        assert!(e.to_string().contains("check the gate's credentials"), "{e}");
        // Without the gate's CA the server is not trusted.
        let untrusted = Credentials {
            ca_pem: None,
            ..credentials.clone()
        };
        let e = query(&address, "errors", &untrusted).await.unwrap_err();
        assert!(
            matches!(&e, GateError::Unreachable { reason, .. } if reason.to_lowercase().contains("certificate")),
            "{e:?}"
        );
        // A token is never sent in clear.
        let e = query(&address.replace("https://", "http://"), "errors", &credentials)
            .await
            .unwrap_err();
        assert!(matches!(e, GateError::PlainCredentials(_)), "{e:?}");
        assert!(e.to_string().contains("only over https://"), "{e}");
    }

    #[tokio::test]
    async fn basic_authentication_is_sent_as_the_secret_gives_it() {
        // "Basic " + base64("prom:pa ss")
        let (address, ca) = https_prometheus("Basic cHJvbTpwYSBzcw==").await;
        let credentials = Credentials {
            basic: Some(("prom".into(), "pa ss".into())),
            ca_pem: Some(ca),
            ..Credentials::default()
        };
        assert_eq!(query(&address, "errors", &credentials).await, Ok(0.07));
    }

    #[test]
    fn query_variables_scope_a_query_to_the_live_canary_pods() {
        let rollout: DistrolessRollout = serde_json::from_value(json!({
            "apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessRollout",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"targetRef": {"name": "web"}, "containers": [{"name": "app", "image": "x"}]}}))
        .unwrap();
        let pod = |name: &str, gone: bool| -> Pod {
            let mut p = json!({"metadata": {"name": name, "labels": {"pod-template-hash": "abc12"}}});
            if gone {
                p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            serde_json::from_value(p).unwrap()
        };
        let pods = [
            pod("web-canary-b", false),
            pod("web-canary-a", false),
            pod("web-canary-old", true),
        ];
        let vars = QueryVars::new(&rollout, &pods);
        assert_eq!(
            vars.apply(r#"sum(rate(errors{namespace="{{namespace}}",pod=~"{{canaryPods}}",hash="{{canaryHash}}",app="{{deployment}}"}[1m]))"#),
            r#"sum(rate(errors{namespace="shop",pod=~"web-canary-a|web-canary-b",hash="abc12",app="web"}[1m]))"#
        );
        assert_eq!(vars.apply("up"), "up", "a query without variables is sent as written");
    }

    #[test]
    fn several_series_count_by_their_worst_value() {
        assert_eq!(value_of(&vector(&["0.01", "0.2", "0.05"])), Ok(0.2));
    }

    #[test]
    fn nan_infinity_and_no_sample_are_inconclusive_never_a_pass() {
        for v in [
            vector(&["NaN"]),
            vector(&["0.1", "NaN"]),
            vector(&["+Inf"]),
            vector(&[]),
        ] {
            let e = value_of(&v).unwrap_err();
            assert!(matches!(e, GateError::Inconclusive(_)), "{e:?}");
            assert!(e.to_string().starts_with("inconclusive"), "{e}");
        }
    }

    #[test]
    fn a_scalar_is_its_value_and_an_error_is_prometheus_own() {
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}});
        assert_eq!(value_of(&scalar), Ok(3.0));
        let error = json!({"status": "error", "error": "parse error at char 3"});
        let e = value_of(&error).unwrap_err();
        assert_eq!(e, GateError::Query("parse error at char 3".into()));
        assert_eq!(e.to_string(), "Prometheus: parse error at char 3");
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(matches!(value_of(&matrix), Err(GateError::Inconclusive(_))));
    }
}
