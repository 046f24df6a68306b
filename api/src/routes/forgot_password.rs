//! `POST /auth/forgot-password`: the body becomes a `ResetRequested` event, and the client
//! hears 200 once JetStream has stored it.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use shared::event::ResetRequested;

use super::{AppState, Trail, accept};
use shared::metrics::ResultLabels;

use crate::{
    http::body,
    http::reply,
    http::reply::ApiError,
    publish::{PublishFailure, message_id},
};

pub(super) async fn forgot_password(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let accepted = accept(state, &state.limiter, peer, trail, req).await?;
    let account = body::parse(accepted.kind, &accepted.body)?;
    trail.account = Some(account.masked());
    let msg_id = message_id(&accepted.label, accepted.idempotency_key.as_deref());
    let event = ResetRequested::new(account, trail.request_id.clone(), accepted.into_client());
    let publish_started = Instant::now();
    let published = state.publisher.publish(&event, msg_id.as_deref()).await;
    let result = if published.is_ok() { "ok" } else { "error" };
    state
        .metrics
        .publish
        .get_or_create(&ResultLabels { result })
        .observe(publish_started.elapsed().as_secs_f64());
    match published {
        Ok(ack) => {
            trail.seq = Some(ack.sequence);
            if !ack.duplicate {
                trail.event_id = Some(event.event_id);
                state.metrics.funnel.reached("requested");
                return Ok(reply::ok());
            }
            // A retry is the same request again; the same key with another `id` is a client
            // mistake that would otherwise end, silently, in no mail for the second account.
            match state.publisher.stored_request(&ack).await {
                Ok(earlier) if earlier.id != event.id => Err(ApiError::IdempotencyKeyReused),
                Ok(earlier) => {
                    trail.event_id = Some(earlier.event_id);
                    tracing::info!(
                        request_id = %trail.request_id,
                        "duplicate Idempotency-Key: the earlier event stands"
                    );
                    Ok(reply::ok())
                }
                Err(err) => {
                    // The earlier event is stored either way; only the check could not be made.
                    tracing::warn!(
                        request_id = %trail.request_id,
                        error = %err,
                        "duplicate Idempotency-Key: the earlier event could not be read to compare"
                    );
                    Ok(reply::ok())
                }
            }
        }
        Err(err @ PublishFailure::StreamFull(_)) => {
            tracing::error!(request_id = %trail.request_id, error = %err, "event not published");
            Err(ApiError::StreamFull)
        }
        Err(err) => {
            tracing::warn!(request_id = %trail.request_id, error = %err, "event not published");
            Err(ApiError::Unavailable)
        }
    }
}
