//! The request pipeline: routing, then for every POST the checks in the order that costs
//! least first — key, rate limit, size, media type — and only then the body. One file per
//! endpoint under `routes/`: forgot-password, reset-password (verify and reset), health.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use shared::event::ClientContext;

mod forgot_password;
mod health;
pub(crate) mod reset_password;

use forgot_password::forgot_password;
use health::ready;
use reset_password::{reset_password, verify_token};

use crate::{
    http::auth::ApiKeys,
    http::body,
    http::limit::{ClientKey, Limiter, TrustedProxies, client_ip},
    http::reply::{self, ApiError},
    metrics::{ApiMetrics, RequestLabels, route_label},
    page::Pages,
    publish::Publisher,
    reset::Resets,
};

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    pub keys: ApiKeys,
    pub limiter: Limiter,
    pub publisher: Publisher,
    pub stream_name: String,
    pub max_body: usize,
    pub body_timeout: Duration,
    /// Whose `X-Forwarded-For` is believed; `None` when the api is not behind a proxy.
    pub proxies: Option<TrustedProxies>,
    pub metrics: ApiMetrics,
    /// Verify and reset attempts are counted apart from reset requests.
    pub reset_limiter: Limiter,
    /// Requests without a valid key, on any endpoint: their own budget, so that a flood of
    /// them spends nobody else's.
    pub unauthenticated_limiter: Limiter,
    pub resets: Resets,
    pub changed_subject: String,
    /// `{prefix}.reported`.
    pub reported_subject: String,
    pub pages: Pages,
}

/// The api's OpenAPI description, served as it is in the repository.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");
const OPENAPI_CONTENT_TYPE: &str = "application/yaml";

// Names, not strings: a lookup by `&str` parses and hashes the name on every request.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub(crate) const MAX_USER_AGENT: usize = 512;
/// Largest request head the api reads (target and headers, names and values): 32 KiB, room
/// for any browser's cookies. hyper's own buffer goes to [`HEAD_BUFFER`], so that a head
/// somewhat larger still gets the `{code, message}` 431 from here and not a bare one from
/// hyper.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// hyper's read buffer, per connection: past it hyper answers 431 itself, without a body.
/// Twice the head limit and no more: a connection that sends a head and never finishes it
/// holds this much until the head timeout (1 MiB each took 100 such connections from 23 to
/// over 180 MB).
pub const HEAD_BUFFER: usize = 64 * 1024;

/// What a request's log line says beyond its method, path and outcome, filled in as the
/// request goes. The few lines logged on the way name the request id themselves.
///
/// A plain record handed down by `&mut`, like an access-log entry: the handlers fill in what
/// they learn, and one line carries it all at the end, with the same top-level fields under
/// either log format. A span would hold the same fields but nest them under the span's name
/// in JSON lines, which is not what operators' queries (`request_id=…`) read.
#[derive(Debug)]
pub(crate) struct Trail {
    pub(crate) request_id: String,
    pub(crate) client: Option<String>,
    pub(crate) account: Option<String>,
    pub(crate) event_id: Option<uuid::Uuid>,
    pub(crate) seq: Option<u64>,
}

/// Serves one request. Never fails: every outcome is a `{code, message}` response carrying
/// an `x-request-id`, and is logged once, with the outcome, in one line.
pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let route_name = route_label(req.uri().path());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut trail = Trail {
        request_id: request_id(req.headers()),
        client: None,
        account: None,
        event_id: None,
        seq: None,
    };
    // A panic anywhere below becomes a plain 500 instead of a dropped connection.
    let outcome = AssertUnwindSafe(route(&state, peer, &mut trail, req))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!(request_id = %trail.request_id, "request handler panicked");
            Err(ApiError::Internal)
        });
    let (mut response, error) = match outcome {
        Ok(response) => (response, None),
        Err(err) => {
            let error = err.log_text();
            (err.into_response(), Some(error))
        }
    };
    if let Ok(value) = HeaderValue::from_str(&trail.request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route_name,
            status: response.status().as_u16(),
        })
        .inc();
    tracing::info!(
        request_id = %trail.request_id,
        method = %method,
        path = %path,
        client = trail.client.as_deref(),
        account = trail.account.as_deref(),
        event_id = trail.event_id.map(tracing::field::display),
        seq = trail.seq,
        error = error.as_deref(),
        status = response.status().as_u16(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "request finished"
    );
    Ok(response)
}

async fn route(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if head_bytes(&req) > MAX_HEAD_BYTES {
        return Err(ApiError::HeadersTooLarge(MAX_HEAD_BYTES));
    }
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/auth/forgot-password" if req.method() == Method::POST => {
            forgot_password(state, peer, trail, req).await
        }
        "/auth/reset-password/verify" if req.method() == Method::POST => {
            verify_token(state, peer, trail, req).await
        }
        "/auth/reset-password" if req.method() == Method::POST => {
            reset_password(state, peer, trail, req).await
        }
        "/auth/forgot-password" | "/auth/reset-password" | "/auth/reset-password/verify" => {
            Err(ApiError::MethodNotAllowed("POST"))
        }
        path if path.starts_with("/reset-password") => page_route(state, peer, trail, req).await,
        "/healthz" if read_only => Ok(reply::ok()),
        "/readyz" if read_only => ready(state).await,
        "/metrics" if read_only => Ok(shared::http::text(
            shared::metrics::CONTENT_TYPE,
            state.metrics.render(),
        )),
        "/openapi.yaml" if read_only => Ok(shared::http::text(OPENAPI_CONTENT_TYPE, OPENAPI)),
        "/healthz" | "/readyz" | "/metrics" | "/openapi.yaml" => {
            Err(ApiError::MethodNotAllowed("GET, HEAD"))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// The hosted page's routes, or 404 for all of them when the page is off (PAGE_ENABLED), but
/// the report page: the mails' report links lead there whatever front end takes the reset
/// link.
async fn page_route(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let post = req.method() == Method::POST;
    let path = req.uri().path();
    if !state.pages.enabled && path != "/reset-password/report" {
        return Err(ApiError::NotFound);
    }
    match path {
        "/reset-password" if read_only => {
            Ok(crate::page::routes::show(state, peer, trail, req).await)
        }
        "/reset-password" if post => Ok(crate::page::routes::submit(state, peer, trail, req).await),
        "/reset-password" => Err(ApiError::MethodNotAllowed("GET, HEAD, POST")),
        "/reset-password/code" if post => {
            Ok(crate::page::routes::enter_code(state, peer, trail, req).await)
        }
        "/reset-password/new-link" if post => {
            Ok(crate::page::routes::new_link(state, peer, trail, req).await)
        }
        "/reset-password/code" | "/reset-password/new-link" => {
            Err(ApiError::MethodNotAllowed("POST"))
        }
        "/reset-password/report" if read_only => {
            Ok(crate::page::report::show(state, peer, trail, req).await)
        }
        "/reset-password/report" if post => {
            Ok(crate::page::report::confirm(state, peer, trail, req).await)
        }
        "/reset-password/report" => Err(ApiError::MethodNotAllowed("GET, HEAD, POST")),
        _ => Err(ApiError::NotFound),
    }
}

/// A POST that passed the checks every endpoint shares, with its body read.
struct Accepted {
    ip: std::net::IpAddr,
    label: String,
    user_agent: Option<String>,
    kind: body::MediaType,
    idempotency_key: Option<String>,
    body: Bytes,
}

impl Accepted {
    fn into_client(self) -> ClientContext {
        ClientContext {
            ip: Some(self.ip),
            user_agent: self.user_agent,
            api_key_label: self.label,
        }
    }
}

/// Key, rate limit, size and media type, in that order (all before the body is read), then
/// the body within its deadline. The key comes first: it is as cheap as the limit, and a
/// request is only counted once it is known whose budget it spends.
async fn accept(
    state: &AppState,
    limiter: &Limiter,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Result<Accepted, ApiError> {
    let headers = req.headers();
    let ip = client_ip(peer, headers, state.proxies.as_ref());
    let Some((key, label)) = state.keys.authenticate(headers.get(header::AUTHORIZATION)) else {
        state
            .unauthenticated_limiter
            .check(ClientKey::new(None, ip))
            .map_err(ApiError::TooManyRequests)?;
        return Err(ApiError::Forbidden);
    };
    let label = label.to_owned();
    trail.client = Some(label.clone());
    limiter
        .check(ClientKey::new(Some(key), ip))
        .map_err(ApiError::TooManyRequests)?;

    if content_length(headers).is_some_and(|len| len > state.max_body as u64) {
        return Err(ApiError::PayloadTooLarge(state.max_body));
    }
    let kind = body::media_type(headers.get(header::CONTENT_TYPE))?;
    let idempotency_key = idempotency_key(headers)?;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect::<String>());
    let body = read_body(req.into_body(), state.max_body, state.body_timeout).await?;
    Ok(Accepted {
        ip,
        label,
        user_agent,
        kind,
        idempotency_key,
        body,
    })
}

/// The size of the request's head as the client sent it, near enough: target, header names
/// and values.
fn head_bytes<B>(req: &Request<B>) -> usize {
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len())
}

/// The client's `x-request-id` if it is a sane one, else a new UUIDv7. No `@`: the id is
/// logged whole by both processes, and an email address chosen as an id would put one in
/// every line about the request.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| ApiError::BadIdempotencyKey)?;
    let sane = values.next().is_none()
        && (1..=255).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_graphic());
    if sane {
        Ok(Some(key.to_owned()))
    } else {
        Err(ApiError::BadIdempotencyKey)
    }
}

/// Reads at most `max` bytes within `deadline`: a body longer than its Content-Length claimed
/// (or chunked without one) is cut off at the limit, and a slow one cannot hold a worker.
pub(crate) async fn read_body(
    body: Incoming,
    max: usize,
    deadline: Duration,
) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(deadline, Limited::new(body, max).collect()).await {
        Err(_) => Err(ApiError::BodyTimeout(deadline.as_secs().max(1))),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge(max))
        }
        Ok(Err(_)) => Err(ApiError::BodyIncomplete),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123_x.y:z"));
        assert_eq!(request_id(&headers), "abc-123_x.y:z");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has spaces"));
        let replaced = request_id(&headers);
        assert_ne!(replaced, "has spaces");
        assert!(uuid::Uuid::parse_str(&replaced).is_ok());
        assert!(uuid::Uuid::parse_str(&request_id(&HeaderMap::new())).is_ok());
        headers.insert(
            REQUEST_ID,
            HeaderValue::from_static("victim.80f542@example.com"),
        );
        let replaced = request_id(&headers);
        assert!(!replaced.contains('@'), "an address as id: {replaced}");
        assert!(uuid::Uuid::parse_str(&replaced).is_ok());
    }

    #[test]
    fn idempotency_keys_must_be_single_and_visible_ascii() {
        let mut headers = HeaderMap::new();
        assert!(matches!(idempotency_key(&headers), Ok(None)));
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("order-42"));
        assert_eq!(
            idempotency_key(&headers).ok().flatten().as_deref(),
            Some("order-42")
        );
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("order-43"));
        assert!(idempotency_key(&headers).is_err());
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("with space"));
        assert!(idempotency_key(&headers).is_err());
    }
}
