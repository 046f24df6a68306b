//! The api's metrics, served at `GET /metrics` in the OpenMetrics text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use shared::metrics::{Funnel, LatencyFamily, Registry, ResultLabels, latency_family};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug)]
pub struct ApiMetrics {
    registry: Registry,
    /// Requests by route and status: `api_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from publish to PubAck, by result: `api_publish_duration_seconds`.
    pub publish: LatencyFamily<ResultLabels>,
    /// The stages of the recovery funnel the api sees: `password_reset_funnel_total`.
    pub funnel: Funnel,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "api_requests",
            "HTTP requests by route and status code.",
            requests.clone(),
        );
        let publish = latency_family();
        registry.register(
            "api_publish_duration_seconds",
            "Time from publishing an event to JetStream's acknowledgement, by result (ok, error).",
            publish.clone(),
        );
        let funnel = Funnel::registered(&mut registry);
        Self {
            registry,
            requests,
            publish,
            funnel,
        }
    }
}

impl ApiMetrics {
    pub fn render(&self) -> String {
        shared::metrics::render(&self.registry)
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
        "/reset-password" => "/reset-password",
        "/reset-password/code" => "/reset-password/code",
        "/reset-password/new-link" => "/reset-password/new-link",
        "/reset-password/report" => "/reset-password/report",
        _ => "other",
    }
}
