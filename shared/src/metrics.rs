//! Metrics through `prometheus-client`: one [`Registry`] per process (or per app in tests, so
//! two apps in one test process keep their own numbers), rendered in the OpenMetrics text
//! format that Prometheus scrapes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
pub use prometheus_client::registry::Registry;

/// Histogram buckets for latencies, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A latency histogram with [`LATENCY_BUCKETS`]; a `fn` so that families can name its type.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Latency histograms with [`LATENCY_BUCKETS`], one per label set.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A new [`LatencyFamily`].
pub fn latency_family<L>() -> LatencyFamily<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(latency_histogram)
}

/// How an operation ended (`ok`, `error`, …): the label of both processes' latencies.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The recovery funnel, counted by both processes under one name so that one query adds them
/// up: `password_reset_funnel_total{stage}`, where `stage` is `requested` (the api took a
/// request), `mailed` (the worker sent its reset mail), `opened` (a link was first opened),
/// `completed` (a password was set with it), `reset_reported` or `change_reported` (the
/// owner reported a mail).
#[derive(Debug, Clone, Default)]
pub struct Funnel(Family<StageLabels, Counter>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

impl Funnel {
    /// A funnel counted in `registry`.
    pub fn registered(registry: &mut Registry) -> Self {
        let funnel = Self::default();
        registry.register(
            "password_reset_funnel",
            "Resets by how far they got: requested, mailed, opened, completed, reset_reported, change_reported.",
            funnel.0.clone(),
        );
        funnel
    }

    /// Counts one reset reaching `stage`.
    pub fn reached(&self, stage: &'static str) {
        self.0.get_or_create(&StageLabels { stage }).inc();
    }
}

/// Everything in `registry`, in the text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::{counter::Counter, family::Family};

    use super::*;

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        route: String,
        status: u16,
    }

    /// Dashboards query these names: `_total` on counters, `_bucket`/`_sum`/`_count` on
    /// histograms, labels in declaration order.
    #[test]
    fn series_names_are_what_dashboards_query() {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register("api_requests", "Requests.", requests.clone());
        let latency = latency_histogram();
        registry.register("publish_duration_seconds", "Latency.", latency.clone());
        requests
            .get_or_create(&Labels {
                route: "/a".into(),
                status: 200,
            })
            .inc_by(2);
        latency.observe(0.0007);
        let text = render(&registry);
        assert!(text.contains("# TYPE api_requests counter"), "{text}");
        assert!(
            text.contains(r#"api_requests_total{route="/a",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"publish_duration_seconds_bucket{le="0.0005"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"publish_duration_seconds_bucket{le="0.001"} 1"#),
            "{text}"
        );
        assert!(text.contains("publish_duration_seconds_count 1"), "{text}");
    }
}
