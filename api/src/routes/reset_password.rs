//! `POST /auth/reset-password/verify` and `POST /auth/reset-password`: the second half, with
//! the token from the mail.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use shared::event::ClientContext;

use super::{AppState, Trail, accept};
use crate::{
    body, reply,
    reply::ApiError,
    reset::{Requester, ResetError},
};

pub(super) async fn verify_token(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let accepted = accept(state, &state.reset_limiter, peer, trail, req).await?;
    let [token] = body::parse_fields(accepted.kind, &accepted.body, ["token"])?;
    state
        .resets
        .verify(&token)
        .await
        .map_err(|err| reset_error(err, trail))?;
    Ok(reply::ok())
}

pub(super) async fn reset_password(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let accepted = accept(state, &state.reset_limiter, peer, trail, req).await?;
    let [token, password] =
        body::parse_fields(accepted.kind, &accepted.body, ["token", "password"])?;
    complete_reset(state, trail, &token, &password, accepted.into_client())
        .await
        .map_err(|err| reset_error(err, trail))?;
    Ok(reply::ok())
}

/// Sets the password and publishes `PasswordChanged`: one path for this endpoint and the page.
pub(super) async fn complete_reset(
    state: &AppState,
    trail: &mut Trail,
    token: &str,
    password: &str,
    client: ClientContext,
) -> Result<(), ResetError> {
    let requester = Requester {
        request_id: trail.request_id.clone(),
        client,
    };
    let event = state.resets.reset(token, password, requester).await?;
    trail.event_id = Some(event.event_id);
    tracing::info!(request_id = %trail.request_id, "password changed");
    // The event is in the outbox already; publishing now only saves the relay's delay.
    if let Err(err) = state
        .resets
        .publish_queued(
            &state.publisher,
            event.event_id,
            &state.changed_subject,
            event.to_json(),
            &trail.request_id,
        )
        .await
    {
        tracing::warn!(
            request_id = %trail.request_id,
            error = %err,
            "PasswordChanged not published yet; the outbox relay will"
        );
    }
    Ok(())
}

pub(super) fn reset_error(err: ResetError, trail: &Trail) -> ApiError {
    let request_id = &trail.request_id;
    match err {
        ResetError::InvalidToken => ApiError::InvalidToken,
        ResetError::Policy(policy) => ApiError::WeakPassword(policy),
        ResetError::Database(err) => {
            tracing::warn!(%request_id, error = %err, "database unavailable for a reset endpoint");
            ApiError::Unavailable
        }
        ResetError::Hash(err) => {
            tracing::error!(%request_id, error = %err, "password hashing failed");
            ApiError::Internal
        }
    }
}
