//! `publish-event` on axum with the tower-http layers the api's own plumbing would become: a
//! request id set and echoed (`x-request-id`), panics caught into a 500, the body limited, a
//! deadline on the whole request. Against `publish-event` (bare hyper) it measures what that
//! plumbing costs. `publish-event-axum [addr] [nats-url] [stream]`.

use std::time::Duration;

use api::http::reply::ApiError;
use axum::serve::ListenerExt;
use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use bench::EventPublisher;
use tower_http::{
    catch_panic::CatchPanicLayer,
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, nats, stream) = bench::publish_args("127.0.0.1:8096", "BENCH_AXUM")?;
    let publisher = EventPublisher::connect(nats, stream).await?;
    let app = Router::new()
        .route("/auth/forgot-password", post(forgot))
        .with_state(publisher)
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
    State(publisher): State<EventPublisher>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let parsed = api::http::body::media_type(headers.get(axum::http::header::CONTENT_TYPE))
        .map_err(ApiError::from)
        .and_then(|kind| api::http::body::parse(kind, &body).map_err(ApiError::from));
    let response = match parsed {
        Ok(account) => publisher.publish(account).await,
        Err(err) => err.into_response(),
    };
    response.map(axum::body::Body::new)
}
