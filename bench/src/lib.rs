//! Benchmark servers and the end-to-end load driver. See `bench/run` and BENCHMARKS.md.
//!
//! - `bare`: a hyper server that parses the same body as the api and answers the same 200,
//!   publishing nothing — the ceiling of the HTTP layer on this machine;
//! - `publish-only`: the same plus one JetStream publish awaited to its PubAck — the ceiling
//!   for "200 means durable";
//! - `publish-event`: the same, but the message is the api's own: a `ResetRequested` with its
//!   four headers, serialised by serde and published with `publish_with_headers` to a stream
//!   set up as the api's. Between it and publish-only lies what the event costs; between the
//!   api and it, the api's own work;
//! - `publish-event-axum`: the same handler on axum with tower-http's request-id,
//!   catch-panic, body-limit and timeout layers, to weigh that plumbing against bare hyper;
//! - `load`: sends forgot-password requests for numbered accounts and measures, in its own
//!   SMTP sink ([`sink`]), how long each took to become a mail;
//! - `smtp-pool`: the worker's SMTP pool against lettre's own pooled transport, side by side.

// The servers allocate as the api does: with glibc's allocator a ceiling would spend on
// allocator bookkeeping what the api does not, and stop being a ceiling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use api::http::reply::ApiError;
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use shared::account::AccountRef;
use tokio::net::TcpListener;

/// Reads the body and parses it with the api's own parser; refusals are the api's own answers.
pub async fn parse(req: Request<Incoming>) -> Result<String, Response<Full<Bytes>>> {
    parse_account(req).await.map(AccountRef::into_string)
}

/// [`parse`], keeping the account as the api's own type, for a server that builds its event.
pub async fn parse_account(req: Request<Incoming>) -> Result<AccountRef, Response<Full<Bytes>>> {
    let kind = api::http::body::media_type(req.headers().get(header::CONTENT_TYPE))
        .map_err(|e| ApiError::from(e).into_response())?;
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|_| ApiError::BodyIncomplete.into_response())?
        .to_bytes();
    api::http::body::parse(kind, &body).map_err(|e| ApiError::from(e).into_response())
}

/// What the publish-event ceilings do per request, on whichever HTTP stack: build the event
/// the api would for wrk's request, serialise it with serde's derive and publish it with its
/// four headers, awaiting the PubAck.
#[derive(Debug, Clone)]
pub struct EventPublisher {
    js: async_nats::jetstream::Context,
    subject: String,
}

impl EventPublisher {
    /// Connects and sets `stream` up as `bench/run` starts the api's.
    pub async fn connect(nats: String, stream: String) -> Result<Self, Box<dyn std::error::Error>> {
        let settings = shared::stream::StreamSettings {
            subject_prefix: format!("bench.{}", stream.to_lowercase()),
            stream,
            retention: std::time::Duration::from_secs(3600),
            replicas: 1,
            max_bytes: None,
        };
        let js = async_nats::jetstream::new(async_nats::connect(nats).await?);
        shared::stream::ensure_stream(&js, &settings).await?;
        Ok(Self {
            js,
            subject: settings.subjects().requested(),
        })
    }

    /// Publishes the event for `account`: 200 once stored, else the api's 503.
    pub async fn publish(&self, account: AccountRef) -> Response<Full<Bytes>> {
        use shared::event::{ClientContext, EVENT_VERSION, RESET_REQUESTED, ResetRequested};
        // What the api puts in the event for wrk's requests: its peer is 127.0.0.1, it sends
        // no User-Agent, and bench/run names its key `bench`.
        let client = ClientContext {
            ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
            user_agent: None,
            api_key_label: "bench".into(),
        };
        let event = ResetRequested::new(account, uuid::Uuid::now_v7().to_string(), client);
        let Ok(payload) = serde_json::to_vec(&event) else {
            return ApiError::Unavailable.into_response();
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Event-Type", RESET_REQUESTED);
        headers.insert("Event-Version", EVENT_VERSION.to_string().as_str());
        headers.insert("Request-Id", event.request_id.as_str());
        headers.insert("Content-Type", "application/json");
        let stored = async {
            self.js
                .publish_with_headers(self.subject.clone(), headers, payload.into())
                .await?
                .await
        };
        match stored.await {
            Ok(_) => api::http::reply::ok(),
            Err(_) => ApiError::Unavailable.into_response(),
        }
    }
}

/// The arguments of a publishing server, `[addr] [nats-url] [stream]`, with defaults.
pub fn publish_args(
    default_addr: &str,
    default_stream: &str,
) -> Result<(SocketAddr, String, String), std::net::AddrParseError> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| default_addr.into()).parse()?;
    let nats = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let stream = args.next().unwrap_or_else(|| default_stream.into());
    Ok((addr, nats, stream))
}

/// Serves `handler` on `addr` over HTTP/1.1 with keep-alive, like the api.
pub async fn serve<H, F>(addr: SocketAddr, handler: H) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// An SMTP server for the benchmarks (mailin-embedded) that accepts every mail and notes when
/// each one's content ended, on this process's clock.
pub mod sink {
    use std::sync::{Arc, Mutex};

    /// Now, in Unix nanoseconds: the clock of every time the benchmarks note.
    pub fn now_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Every mail received: the recipient's local part and when its content ended (Unix ns).
    pub type Arrivals = Arc<Mutex<Vec<(String, u64)>>>;

    /// The SMTP server's side of one session: accepts everything, keeps only arrival times.
    #[derive(Clone)]
    struct Sink {
        arrivals: Arrivals,
        recipient: String,
    }

    impl mailin_embedded::Handler for Sink {
        fn data_start(
            &mut self,
            _domain: &str,
            _from: &str,
            _is8bit: bool,
            to: &[String],
        ) -> mailin_embedded::Response {
            self.recipient = to.first().cloned().unwrap_or_default();
            mailin_embedded::response::OK
        }

        fn data_end(&mut self) -> mailin_embedded::Response {
            let at = now_ns();
            if let Ok(mut arrivals) = self.arrivals.lock() {
                arrivals.push((std::mem::take(&mut self.recipient), at));
            }
            mailin_embedded::response::OK
        }
    }

    /// Starts the SMTP server on 127.0.0.1:`port`, on threads of its own.
    pub fn start(port: u16) -> Result<Arrivals, Box<dyn std::error::Error>> {
        let arrivals: Arrivals = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        let mut server = mailin_embedded::Server::new(Sink {
            arrivals: arrivals.clone(),
            recipient: String::new(),
        });
        // A session holds a thread: enough for every worker's whole SMTP pool.
        server
            .with_name("bench-sink")
            .with_num_threads(128)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            if let Err(err) = server.serve() {
                eprintln!("load: the SMTP sink stopped: {err}");
            }
        });
        Ok(arrivals)
    }

    pub fn received(arrivals: &Arrivals) -> usize {
        arrivals.lock().map(|a| a.len()).unwrap_or(0)
    }
}
