//! The report links' page: `GET /reset-password/report?r=…` shows what confirming does and
//! the button; `POST /reset-password/report` confirms. The GET changes nothing and asks the
//! database nothing (mail scanners open every link): it only checks the link's MAC. The POST
//! must come from this page, like every form of ours (`Sec-Fetch-Site`, else `Origin`), and
//! counts against the visitor's budget.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use shared::event::ReportKind;
use shared::report::Reportable;

use super::View;
use super::routes::{Admitted, admit_form, page, problem};
use crate::http::body::{self, MediaType};
use crate::reset::{ReportOutcome, Requester};
use crate::routes::reset_password::reset_error;
use crate::routes::{AppState, Trail};

/// `GET /reset-password/report?r=…`: the confirmation form, if the link is one of ours.
pub(crate) async fn show(
    state: &AppState,
    _peer: SocketAddr,
    _trail: &mut Trail,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let secret = query_secret(req.uri().query());
    match secret.as_deref().and_then(|s| read(state, s)) {
        Some(reportable) => {
            let view = View::ReportConfirm {
                secret: secret.unwrap_or_default(),
                kind: kind_of(reportable),
            };
            page(state, headers, None, &view)
        }
        None => page(state, headers, None, &View::ReportExpired),
    }
}

/// `POST /reset-password/report`: the report itself.
pub(crate) async fn confirm(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Admitted {
        headers,
        form,
        client,
    } = match admit_form(state, &state.reset_limiter, peer, trail, req).await {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    let fields = body::parse_some_fields(MediaType::Form, &form, ["r"]);
    let Some(reportable) = fields
        .ok()
        .and_then(|[secret]| secret)
        .and_then(|secret| read(state, &secret))
    else {
        return page(state, &headers, None, &View::ReportExpired);
    };
    let requester = Requester {
        request_id: trail.request_id.clone(),
        client,
    };
    match state.resets.report(reportable, requester).await {
        Ok(ReportOutcome::Reported(event)) => {
            trail.event_id = Some(event.event_id);
            tracing::info!(request_id = %trail.request_id, kind = event.kind.as_str(), "mail reported by its owner");
            publish_now(state, trail, &event).await;
            reported(state, &headers, event.kind)
        }
        Ok(ReportOutcome::Again(kind)) => reported(state, &headers, kind),
        Ok(ReportOutcome::Expired) => page(state, &headers, None, &View::ReportExpired),
        Err(err) => problem(state, &headers, reset_error(err, trail)),
    }
}

/// The event is in the outbox already; publishing now only saves the relay's delay.
async fn publish_now(state: &AppState, trail: &Trail, event: &shared::event::Reported) {
    let published = state
        .resets
        .publish_queued(
            &state.publisher,
            event.event_id,
            &state.reported_subject,
            event.to_json(),
            &trail.request_id,
        )
        .await;
    if let Err(err) = published {
        tracing::warn!(request_id = %trail.request_id, error = %err, "Reported not published yet; the outbox relay will");
    }
}

fn reported(state: &AppState, headers: &HeaderMap, kind: ReportKind) -> Response<Full<Bytes>> {
    let pause_hours = state.resets.report_pause().as_secs().div_ceil(3600);
    page(state, headers, None, &View::Reported { kind, pause_hours })
}

fn read(state: &AppState, secret: &str) -> Option<Reportable> {
    Reportable::parse(secret, state.resets.code_key())
}

fn kind_of(reportable: Reportable) -> ReportKind {
    match reportable {
        Reportable::Reset { .. } => ReportKind::Reset,
        Reportable::Change { .. } => ReportKind::Change,
    }
}

fn query_secret(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query?).ok()?;
    pairs
        .into_iter()
        .find(|(name, _)| name == "r")
        .map(|(_, secret)| secret)
}
