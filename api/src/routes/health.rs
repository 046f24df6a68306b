//! `GET /readyz`: whether a publish could succeed now, and if not, why.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use super::AppState;
use crate::http::{reply, reply::ApiError};

pub(super) async fn ready(state: &AppState) -> Result<Response<Full<Bytes>>, ApiError> {
    if !state.publisher.is_connected() {
        return Err(ApiError::NotReady("NATS is not connected"));
    }
    let lookup = state.publisher.jetstream().get_stream(&state.stream_name);
    match tokio::time::timeout(Duration::from_secs(2), lookup).await {
        Ok(Ok(_)) => Ok(reply::ok()),
        _ => Err(ApiError::NotReady("the event stream is not reachable")),
    }
}
