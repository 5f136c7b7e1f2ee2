//! Prometheus metrics of the admission webhook.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub endpoint: String,
    /// allowed, denied, warned, or error.
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    pub endpoint: String,
    pub rule: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

/// Admission metrics, registered once and shared by every request.
pub struct Metrics {
    pub reviews: Family<ReviewLabels, Counter>,
    pub violations: Family<ViolationLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    // 25 us .. about 0.8 s.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("distroless_guard");
        let reviews = Family::<ReviewLabels, Counter>::default();
        let violations = Family::<ViolationLabels, Counter>::default();
        let latency = Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "admission_reviews",
            "AdmissionReviews answered, by endpoint and verdict",
            reviews.clone(),
        );
        registry.register(
            "admission_violations",
            "Rule violations found at admission, by endpoint, rule id and action",
            violations.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer an AdmissionReview, from body received to response built",
            latency.clone(),
        );
        Metrics {
            reviews,
            violations,
            latency,
            registry,
        }
    }
}

impl Metrics {
    pub fn observe(&self, endpoint: &str, verdict: &str, elapsed: Duration) {
        self.reviews
            .get_or_create(&ReviewLabels {
                endpoint: endpoint.into(),
                verdict: verdict.into(),
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn violation(&self, endpoint: &str, rule: &str, action: &str) {
        self.violations
            .get_or_create(&ViolationLabels {
                endpoint: endpoint.into(),
                rule: rule.into(),
                action: action.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
