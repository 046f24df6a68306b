//! The worker's own small HTTP listener (`WORKER_ADDR`): `/metrics` in the Prometheus text
//! format, `/healthz` and `/readyz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use shared::metrics::{CONTENT_TYPE, Counter, Gauge, Histogram, LATENCY_BUCKETS};
use tokio::net::TcpListener;

/// Everything the worker counts.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Deliveries by how they ended.
    pub events: Counter,
    /// SMTP (or outbox) hand-over time, by result.
    pub send: Histogram,
    /// Delivery attempt at which an event was finished (acked or dead-lettered).
    pub attempts: Histogram,
    /// Events moved to the dead letters, by reason.
    pub dead_letters: Counter,
    pub consumer_pending: Gauge,
    pub consumer_ack_pending: Gauge,
    pub consumer_redelivered: Gauge,
}

const ATTEMPT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 10.0];

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            events: Counter::new(
                "worker_events_total",
                "Event deliveries by outcome: sent, no_account, throttled, already_done, retried, dead_lettered.",
                &["outcome"],
            ),
            send: Histogram::new(
                "worker_send_duration_seconds",
                "Time to hand one email to SMTP (or the outbox), by result (ok, transient, permanent).",
                &["result"],
                LATENCY_BUCKETS,
            ),
            attempts: Histogram::new(
                "worker_event_attempts",
                "Delivery attempt on which an event was finished.",
                &[],
                ATTEMPT_BUCKETS,
            ),
            dead_letters: Counter::new(
                "worker_dead_letters_total",
                "Events moved to the dead letters, by reason.",
                &["reason"],
            ),
            consumer_pending: Gauge::new(
                "worker_consumer_pending",
                "Events in the stream not yet delivered to any worker (from JetStream).",
            ),
            consumer_ack_pending: Gauge::new(
                "worker_consumer_ack_pending",
                "Events delivered to workers and not yet acked (from JetStream).",
            ),
            consumer_redelivered: Gauge::new(
                "worker_consumer_redelivered",
                "Events delivered more than once and not yet acked (from JetStream).",
            ),
        }
    }
}

impl WorkerMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.events.render(&mut out);
        self.send.render(&mut out);
        self.attempts.render(&mut out);
        self.dead_letters.render(&mut out);
        self.consumer_pending.render(&mut out);
        self.consumer_ack_pending.render(&mut out);
        self.consumer_redelivered.render(&mut out);
        out
    }
}

/// What the listener reports on, filled in as the worker comes up.
#[derive(Debug, Default)]
pub struct Status {
    pub metrics: WorkerMetrics,
    pub nats: OnceLock<async_nats::Client>,
    pub database: OnceLock<sqlx::PgPool>,
    pub consumer: OnceLock<PullConsumer>,
}

impl Status {
    /// Why the worker is not ready, if it is not.
    async fn not_ready(&self) -> Option<&'static str> {
        let Some(client) = self.nats.get() else {
            return Some("not connected to NATS yet");
        };
        if client.connection_state() != async_nats::connection::State::Connected {
            return Some("NATS is not connected");
        }
        let Some(pool) = self.database.get() else {
            return Some("no database connection yet");
        };
        let ping = sqlx::query("SELECT 1").execute(pool);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(2), ping).await,
            Ok(Ok(_))
        ) {
            return Some("the database does not answer");
        }
        if self.consumer.get().is_none() {
            return Some("the consumer is not set up yet");
        }
        None
    }

    /// Reads the consumer's numbers from JetStream into the gauges.
    async fn refresh_consumer_gauges(&self) {
        let Some(consumer) = self.consumer.get() else {
            return;
        };
        if let Ok(Ok(info)) =
            tokio::time::timeout(Duration::from_secs(2), consumer.get_info()).await
        {
            self.metrics.consumer_pending.set(info.num_pending);
            self.metrics
                .consumer_ack_pending
                .set(info.num_ack_pending as u64);
            self.metrics
                .consumer_redelivered
                .set(info.num_redelivered as u64);
        }
    }
}

/// Binds `addr`; the listener serves until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    status: Arc<Status>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let status = status.clone();
            let service = service_fn(move |req| respond(status.clone(), req));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
    Ok((bound, task))
}

async fn respond(
    status: Arc<Status>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            json(405, "method not allowed: use GET"),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            status.refresh_consumer_gauges().await;
            reply(StatusCode::OK, CONTENT_TYPE, status.metrics.render())
        }
        "/healthz" => reply(StatusCode::OK, "application/json", json(200, "OK")),
        "/readyz" => match status.not_ready().await {
            None => reply(StatusCode::OK, "application/json", json(200, "OK")),
            Some(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                json(503, &format!("not ready: {why}")),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            json(404, "Not found: the resource was not found"),
        ),
    })
}

fn json(code: u16, message: &str) -> String {
    serde_json::json!({ "code": code, "message": message }).to_string()
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
