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

fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .connect_timeout(TIMEOUT)
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("distroless-guard/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client for metric gates: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// An instant query against Prometheus at `address` (`http://` or `https://`).
pub(crate) async fn query(address: &str, query: &str) -> Result<f64, String> {
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(format!("{address}: not an http:// or https:// address"));
    }
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let mut answer = client()?
        .get(&url)
        .query(&[("query", query)])
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = answer.status();
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("{url}: an answer of more than {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {status}, not a Prometheus answer ({e})"))?;
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
pub(crate) fn value_of(v: &serde_json::Value) -> Result<f64, String> {
    if v["status"] != "success" {
        return Err(format!("Prometheus: {}", v["error"].as_str().unwrap_or("query failed")));
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
            return Err(format!(
                "inconclusive: a {} answer, not a vector or scalar",
                other.unwrap_or("missing")
            ));
        }
    };
    let mut worst: Option<f64> = None;
    for s in samples {
        let x: f64 = s.parse().map_err(|e| format!("inconclusive: sample {s:?}: {e}"))?;
        if !x.is_finite() {
            return Err(format!("inconclusive: the query gave {s} (no traffic yet?)"));
        }
        worst = Some(worst.map_or(x, |w| w.max(x)));
    }
    worst.ok_or_else(|| "inconclusive: the query returned no sample".to_string())
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
            assert!(e.starts_with("inconclusive"), "{e}");
        }
    }

    #[test]
    fn a_scalar_is_its_value_and_an_error_is_prometheus_own() {
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}});
        assert_eq!(value_of(&scalar), Ok(3.0));
        let error = json!({"status": "error", "error": "parse error at char 3"});
        assert_eq!(value_of(&error), Err("Prometheus: parse error at char 3".into()));
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(value_of(&matrix).unwrap_err().starts_with("inconclusive"));
    }
}
