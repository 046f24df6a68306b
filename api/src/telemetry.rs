//! The api's metrics, served at `GET /metrics` in the Prometheus text format.

use shared::metrics::{Counter, Histogram, LATENCY_BUCKETS};

#[derive(Debug)]
pub struct ApiMetrics {
    /// Requests by route and status.
    pub requests: Counter,
    /// Time from publish to PubAck, by result.
    pub publish: Histogram,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            requests: Counter::new(
                "api_requests_total",
                "HTTP requests by route and status code.",
                &["route", "status"],
            ),
            publish: Histogram::new(
                "api_publish_duration_seconds",
                "Time from publishing an event to JetStream's acknowledgement, by result (ok, error).",
                &["result"],
                LATENCY_BUCKETS,
            ),
        }
    }
}

impl ApiMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.requests.render(&mut out);
        self.publish.render(&mut out);
        out
    }
}

/// The route label for a path: known routes by name, everything else as `other`, so that
/// scanners cannot blow up the number of series.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/auth/forgot-password" => "/auth/forgot-password",
        "/auth/reset-password/verify" => "/auth/reset-password/verify",
        "/auth/reset-password" => "/auth/reset-password",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/openapi.yaml" => "/openapi.yaml",
        _ => "other",
    }
}
