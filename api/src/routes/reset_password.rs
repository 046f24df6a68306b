//! `POST /auth/reset-password/verify` and `POST /auth/reset-password`: the second half, with
//! the token from the mail's link, or the account and the mail's code.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use shared::event::ClientContext;

use super::{AppState, Trail, accept};
use crate::{
    http::body::{self, BodyError},
    http::reply,
    http::reply::ApiError,
    reset::{Requester, ResetError, Secret},
};
use shared::account::AccountRef;

pub(super) async fn verify_token(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let accepted = accept(state, &state.reset_limiter, peer, trail, req).await?;
    let [token, id, code] =
        body::parse_some_fields(accepted.kind, &accepted.body, ["token", "id", "code"])?;
    let secret = secret(token, id, code)?;
    state
        .resets
        .verify(&secret)
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
    let [token, id, code, password] = body::parse_some_fields(
        accepted.kind,
        &accepted.body,
        ["token", "id", "code", "password"],
    )?;
    let secret = secret(token, id, code)?;
    let password = password.ok_or(BodyError::Missing("password"))?;
    complete_reset(state, trail, &secret, &password, accepted.into_client())
        .await
        .map_err(|err| reset_error(err, trail))?;
    Ok(reply::ok())
}

/// The secret a body names: the link's `token`, or the account's `id` and the mail's `code`.
pub(crate) fn secret(
    token: Option<String>,
    id: Option<String>,
    code: Option<String>,
) -> Result<Secret, BodyError> {
    match (token, id, code) {
        (Some(token), None, None) => Ok(Secret::Token(token)),
        (None, Some(id), Some(code)) => Ok(Secret::Code {
            account: AccountRef::parse(&id)?,
            code,
        }),
        (None, Some(_), None) => Err(BodyError::Missing("code")),
        (None, None, Some(_)) => Err(BodyError::Missing("id")),
        (None, None, None) => Err(BodyError::NoSecret),
        (Some(_), _, _) => Err(BodyError::TokenAndCode),
    }
}

/// Sets the password and publishes `PasswordChanged`: one path for this endpoint and the page.
pub(crate) async fn complete_reset(
    state: &AppState,
    trail: &mut Trail,
    secret: &Secret,
    password: &str,
    client: ClientContext,
) -> Result<(), ResetError> {
    let requester = Requester {
        request_id: trail.request_id.clone(),
        client,
    };
    let event = state.resets.reset(secret, password, requester).await?;
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

pub(crate) fn reset_error(err: ResetError, trail: &Trail) -> ApiError {
    let request_id = &trail.request_id;
    match err {
        ResetError::InvalidToken => ApiError::InvalidToken,
        ResetError::InvalidCode => ApiError::InvalidCode,
        ResetError::Policy(policy) => ApiError::WeakPassword(policy),
        ResetError::Database(err) => {
            tracing::warn!(%request_id, error = %err, "database unavailable for a reset endpoint");
            ApiError::Unavailable
        }
        ResetError::Hash(err) => {
            tracing::error!(%request_id, error = %err, "password hashing failed");
            ApiError::Internal
        }
        ResetError::Check(err) => {
            tracing::error!(%request_id, error = %err, "password check failed");
            ApiError::Internal
        }
    }
}
