//! The worker's own small HTTP listener (`WORKER_ADDR`): `/metrics` in the OpenMetrics text
//! format, `/healthz`, and `/readyz` naming each dependency that is down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use shared::metrics::{CONTENT_TYPE, LatencyFamily, Registry, ResultLabels, latency_family};
use tokio::net::TcpListener;

use crate::transport::SmtpHealth;

/// A webhook attempt's type and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Everything the worker counts, in one registry.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    /// Deliveries by how they ended: `worker_events_total`.
    pub events: Family<OutcomeLabels, Counter>,
    /// SMTP (or outbox) hand-over time, by result: `worker_send_duration_seconds`.
    pub send: LatencyFamily<ResultLabels>,
    /// Delivery attempt at which an event was finished (acked or dead-lettered).
    pub attempts: Histogram,
    /// Events moved to the dead letters, by reason: `worker_dead_letters_total`.
    pub dead_letters: Family<ReasonLabels, Counter>,
    pub consumer_pending: Gauge,
    pub consumer_ack_pending: Gauge,
    pub consumer_redelivered: Gauge,
    /// The funnel's `mailed` stage: `password_reset_funnel_total`.
    pub funnel: shared::metrics::Funnel,
    /// Webhook attempts by type and result: `worker_webhooks_total`.
    pub webhooks: Family<WebhookLabels, Counter>,
}

const ATTEMPT_BUCKETS: [f64; 8] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 10.0];

impl WorkerMetrics {
    /// The worker's metrics, with the SMTP pool's connection failures if mail goes by SMTP.
    pub fn new(smtp: Option<&SmtpHealth>) -> Self {
        let mut registry = Registry::default();
        let events = Family::default();
        registry.register(
            "worker_events",
            "Event deliveries by outcome: sent, no_account, throttled, already_done, retried, dead_lettered.",
            events.clone(),
        );
        let send = latency_family();
        registry.register(
            "worker_send_duration_seconds",
            "Time to hand one email to SMTP (or the outbox), by result (ok, transient, permanent, connection).",
            send.clone(),
        );
        let attempts = Histogram::new(ATTEMPT_BUCKETS);
        registry.register(
            "worker_event_attempts",
            "Delivery attempt on which an event was finished.",
            attempts.clone(),
        );
        let dead_letters = Family::default();
        registry.register(
            "worker_dead_letters",
            "Events moved to the dead letters, by reason.",
            dead_letters.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let consumer_pending = gauge(
            &mut registry,
            "worker_consumer_pending",
            "Events in the stream not yet delivered to any worker (from JetStream).",
        );
        let consumer_ack_pending = gauge(
            &mut registry,
            "worker_consumer_ack_pending",
            "Events delivered to workers and not yet acked (from JetStream).",
        );
        let consumer_redelivered = gauge(
            &mut registry,
            "worker_consumer_redelivered",
            "Events delivered more than once and not yet acked (from JetStream).",
        );
        if let Some(smtp) = smtp {
            registry.register(
                "worker_smtp_connect_failures",
                "SMTP connection set-ups that failed, by stage (tcp, tls, hello, starttls, auth, timeout).",
                smtp.failures.clone(),
            );
        }
        let funnel = shared::metrics::Funnel::registered(&mut registry);
        let webhooks = Family::default();
        registry.register(
            "worker_webhooks",
            "Webhook attempts by type and result: delivered, retried, dead_lettered, not_wanted.",
            webhooks.clone(),
        );
        Self {
            funnel,
            webhooks,
            registry,
            events,
            send,
            attempts,
            dead_letters,
            consumer_pending,
            consumer_ack_pending,
            consumer_redelivered,
        }
    }

    /// Counts one delivery that ended with `outcome`.
    pub fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn render(&self) -> String {
        shared::metrics::render(&self.registry)
    }
}

/// What the listener reports on, filled in as the worker comes up.
#[derive(Debug)]
pub struct Status {
    pub metrics: WorkerMetrics,
    pub nats: OnceLock<async_nats::Client>,
    pub database: OnceLock<sqlx::PgPool>,
    pub consumer: OnceLock<PullConsumer>,
    /// `None` when mail goes to the outbox.
    pub smtp: Option<Arc<SmtpHealth>>,
}

impl Status {
    pub fn new(smtp: Option<Arc<SmtpHealth>>) -> Self {
        Self {
            metrics: WorkerMetrics::new(smtp.as_deref()),
            nats: OnceLock::new(),
            database: OnceLock::new(),
            consumer: OnceLock::new(),
            smtp,
        }
    }

    /// What keeps the worker from working, each problem naming its dependency; empty when
    /// ready.
    async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.database.get() {
            None => problems.push("PostgreSQL: not connected yet".to_owned()),
            Some(pool) => {
                let ping = sqlx::query("SELECT 1").execute(pool);
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(2), ping).await,
                    Ok(Ok(_))
                ) {
                    problems.push("PostgreSQL: does not answer".to_owned());
                }
            }
        }
        match self.nats.get() {
            None => problems.push("NATS: not connected yet".to_owned()),
            Some(client)
                if client.connection_state() != async_nats::connection::State::Connected =>
            {
                problems.push("NATS: connection lost".to_owned());
            }
            Some(_) if self.consumer.get().is_none() => {
                problems.push("NATS: the consumer is not set up yet".to_owned());
            }
            Some(_) => {}
        }
        if let Some(problem) = self.smtp.as_ref().and_then(|health| health.problem()) {
            problems.push(format!("SMTP: {problem}"));
        }
        problems
    }

    /// Reads the consumer's numbers from JetStream into the gauges.
    async fn refresh_consumer_gauges(&self) {
        let Some(consumer) = self.consumer.get() else {
            return;
        };
        if let Ok(Ok(info)) =
            tokio::time::timeout(Duration::from_secs(2), consumer.get_info()).await
        {
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.metrics
                .consumer_pending
                .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
            self.metrics
                .consumer_ack_pending
                .set(count(info.num_ack_pending));
            self.metrics
                .consumer_redelivered
                .set(count(info.num_redelivered));
        }
    }
}

/// Connections the status listener serves at once.
const STATUS_CONNECTIONS: usize = 32;

/// Binds `addr`; the listener serves until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    status: Arc<Status>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let make_service = move |_| {
        let status = status.clone();
        service_fn(move |req| respond(status.clone(), req))
    };
    let builder = shared::http::http1_builder(Duration::from_secs(10));
    // Probes and a scraper or two: a handful of connections is plenty.
    let serving = shared::http::serve(
        listener,
        builder,
        STATUS_CONNECTIONS,
        make_service,
        std::future::pending(),
        Duration::ZERO,
    );
    let task = tokio::spawn(async move {
        serving.await;
    });
    Ok((bound, task))
}

async fn respond(
    status: Arc<Status>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    use shared::http::json;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET",
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            status.refresh_consumer_gauges().await;
            shared::http::text(CONTENT_TYPE, status.metrics.render())
        }
        "/healthz" => json(StatusCode::OK, "OK"),
        "/readyz" => {
            let problems = status.problems().await;
            if problems.is_empty() {
                json(StatusCode::OK, "OK")
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {}", problems.join("; ")),
                )
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            "Not found: the resource was not found",
        ),
    })
}
