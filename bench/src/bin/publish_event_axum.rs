//! `publish-event` on axum with the tower-http layers the api's own plumbing would become: a
//! request id set and echoed (`x-request-id`), panics caught into a 500, the body limited, a
//! deadline on the whole request. Against `publish-event` (bare hyper) it measures what that
//! plumbing costs. `publish-event-axum [addr] [nats-url] [stream]`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use api::reply::ApiError;
use async_nats::HeaderMap;
use axum::serve::ListenerExt;
use axum::{Router, body::Bytes, extract::State, http::HeaderMap as HttpHeaders, routing::post};
use shared::event::{ClientContext, EVENT_VERSION, RESET_REQUESTED, ResetRequested};
use shared::stream::{StreamSettings, ensure_stream};
use tower_http::{
    catch_panic::CatchPanicLayer,
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
};

#[derive(Clone)]
struct Ceiling {
    js: async_nats::jetstream::Context,
    subject: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, nats, stream) = bench::publish_args("127.0.0.1:8096", "BENCH_AXUM")?;
    let settings = StreamSettings {
        subject_prefix: format!("bench.{}", stream.to_lowercase()),
        stream,
        retention: Duration::from_secs(3600),
        replicas: 1,
    };
    let js = async_nats::jetstream::new(async_nats::connect(nats).await?);
    ensure_stream(&js, &settings).await?;
    let state = Ceiling {
        js,
        subject: settings.subjects().requested(),
    };
    let app = Router::new()
        .route("/auth/forgot-password", post(forgot))
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(RequestBodyLimitLayer::new(4096))
        .layer(CatchPanicLayer::new())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    let listener = tokio::net::TcpListener::bind(addr).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!("listening on {addr}");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn forgot(
    State(ceiling): State<Ceiling>,
    headers: HttpHeaders,
    body: Bytes,
) -> axum::response::Response {
    let parsed = api::body::media_type(headers.get(axum::http::header::CONTENT_TYPE))
        .map_err(ApiError::from)
        .and_then(|kind| api::body::parse(kind, &body).map_err(ApiError::from));
    let account = match parsed {
        Ok(account) => account,
        Err(err) => return err.into_response().map(axum::body::Body::new),
    };
    let client = ClientContext {
        ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        user_agent: None,
        api_key_label: "bench".into(),
    };
    let event = ResetRequested::new(account, uuid::Uuid::now_v7().to_string(), client);
    let Ok(payload) = serde_json::to_vec(&event) else {
        return ApiError::Unavailable
            .into_response()
            .map(axum::body::Body::new);
    };
    let mut nats_headers = HeaderMap::new();
    nats_headers.insert("Event-Type", RESET_REQUESTED);
    nats_headers.insert("Event-Version", EVENT_VERSION.to_string().as_str());
    nats_headers.insert("Request-Id", event.request_id.as_str());
    nats_headers.insert("Content-Type", "application/json");
    let stored = async {
        ceiling
            .js
            .publish_with_headers(ceiling.subject, nats_headers, payload.into())
            .await?
            .await
    };
    match stored.await {
        Ok(_) => api::reply::ok().map(axum::body::Body::new),
        Err(_) => ApiError::Unavailable
            .into_response()
            .map(axum::body::Body::new),
    }
}
