//! The hosted reset page: `GET /reset-password` (the link in the mail), `POST /reset-password`
//! (the new password), `POST /reset-password/new-link` (a new mail when the link is dead).
//!
//! The token leaves the address bar at once: a GET with `?token=` that is still valid answers
//! 303 to the bare `/reset-password` and hands the token over in a cookie (HttpOnly,
//! SameSite=Strict, path-scoped), so it is in no later address, history entry, referrer or
//! log line. Nothing on a GET uses a token up, so mail scanners and link previews that open
//! the link change nothing. The POST is safe from cross-site forgery because its only
//! credential is that cookie, which a browser never sends with a request another site
//! started (SameSite=Strict), and the token in it is a secret no other site knows.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use shared::event::{ClientContext, ResetRequested};

use super::reset_password::complete_reset;
use super::{AppState, MAX_USER_AGENT, Trail, content_length, read_body};
use crate::{
    body::{self, MediaType},
    limit::{ClientKey, Limiter, client_ip},
    page::{FormError, Problem, View},
    reply::ApiError,
    reset::ResetError,
};

const COOKIE: &str = "reset_token";
const PATH: &str = "/reset-password";
/// The label a page request carries in logs and events where an API client's would be.
const LABEL: &str = "page";

/// `GET /reset-password[?token=…]`.
pub(super) async fn show(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let from_link = query_token(req.uri().query());
    let token = from_link.clone().or_else(|| cookie_token(headers));
    let Some(token) = token else {
        return page(state, headers, None, &View::Invalid { id_error: None });
    };
    match state.resets.verify(&token).await {
        Ok(_) if from_link.is_some() => hand_over(&token, headers),
        Ok(locale) => page(
            state,
            headers,
            locale.as_deref(),
            &View::Form { error: None },
        ),
        Err(ResetError::InvalidToken) => dead_link(state, headers, None),
        Err(_) => page(state, headers, None, &View::Problem(Problem::Unavailable)),
    }
}

/// `POST /reset-password`: the form with the new password, twice.
pub(super) async fn submit(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let headers = req.headers().clone();
    let client = match admit(state, &state.reset_limiter, peer, trail, &headers) {
        Ok(client) => client,
        Err(limited) => return *limited,
    };
    // The form first: a request without one is refused as such (408, 413, 415, or the form
    // again), whatever its cookie holds.
    let form = match read_form(state, req).await {
        Ok(form) => form,
        Err(err) => return problem(state, &headers, err),
    };
    let fields = body::parse_fields(MediaType::Form, &form, ["password", "confirm"]);
    let Ok([password, confirm]) = fields else {
        let view = View::Form {
            error: Some(FormError::Missing),
        };
        return page(state, &headers, None, &view);
    };
    let Some(token) = cookie_token(&headers) else {
        return page(state, &headers, None, &View::Invalid { id_error: None });
    };
    // The account's locale for the answer; a dead token is told as such before anything else.
    let locale = match state.resets.verify(&token).await {
        Ok(locale) => locale,
        Err(ResetError::InvalidToken) => return dead_link(state, &headers, None),
        Err(_) => return page(state, &headers, None, &View::Problem(Problem::Unavailable)),
    };
    let locale = locale.as_deref();
    if password != confirm {
        let view = View::Form {
            error: Some(FormError::Mismatch),
        };
        return page(state, &headers, locale, &view);
    }
    match complete_reset(state, trail, &token, &password, client).await {
        Ok(()) => {
            let mut response = page(state, &headers, locale, &View::Done);
            forget_cookie(response.headers_mut());
            response
        }
        Err(ResetError::Policy(policy)) => {
            let view = View::Form {
                error: Some(FormError::Policy(policy)),
            };
            page(state, &headers, locale, &view)
        }
        Err(ResetError::InvalidToken) => dead_link(state, &headers, locale),
        Err(err) => problem(
            state,
            &headers,
            super::reset_password::reset_error(err, trail),
        ),
    }
}

/// `POST /reset-password/new-link`: a new mail, through the same path and the same budget as
/// `POST /auth/forgot-password`, with the same answer whether or not the account exists.
pub(super) async fn new_link(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let headers = req.headers().clone();
    let client = match admit(state, &state.limiter, peer, trail, &headers) {
        Ok(client) => client,
        Err(limited) => return *limited,
    };
    let form = match read_form(state, req).await {
        Ok(form) => form,
        Err(err) => return problem(state, &headers, err),
    };
    let account = match body::parse(MediaType::Form, &form) {
        Ok(account) => account,
        Err(err) => {
            let view = View::Invalid {
                id_error: Some(err.to_string()),
            };
            return page(state, &headers, None, &view);
        }
    };
    trail.account = Some(account.masked());
    let event = ResetRequested::new(account, trail.request_id.clone(), client);
    match state.publisher.publish(&event, None).await {
        Ok(ack) => {
            trail.event_id = Some(event.event_id);
            trail.seq = Some(ack.sequence);
            page(state, &headers, None, &View::LinkSent)
        }
        Err(err) => {
            tracing::warn!(request_id = %trail.request_id, error = %err, "event not published");
            page(state, &headers, None, &View::Problem(Problem::Unavailable))
        }
    }
}

fn page(
    state: &AppState,
    headers: &HeaderMap,
    account_locale: Option<&str>,
    view: &View,
) -> Response<Full<Bytes>> {
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    let locale = state.pages.locale(account_locale, accept);
    state.pages.response(view, &locale)
}

/// An error the JSON endpoints would answer with `{code, message}`, as a page.
fn problem(state: &AppState, headers: &HeaderMap, err: ApiError) -> Response<Full<Bytes>> {
    match err {
        ApiError::TooManyRequests(wait) => {
            page(state, headers, None, &View::Problem(Problem::TooMany(wait)))
        }
        ApiError::Unavailable
        | ApiError::StreamFull
        | ApiError::NotReady(_)
        | ApiError::Internal => page(state, headers, None, &View::Problem(Problem::Unavailable)),
        other => other.into_response(),
    }
}

/// Counts the visitor in `limiter` (as a client without an API key, by address) and says
/// what a `PasswordChanged` or `ResetRequested` records of them; past the budget, the page
/// that says how long to wait.
fn admit(
    state: &AppState,
    limiter: &Limiter,
    peer: SocketAddr,
    trail: &mut Trail,
    headers: &HeaderMap,
) -> Result<ClientContext, Box<Response<Full<Bytes>>>> {
    trail.client = Some(LABEL.to_owned());
    let ip = client_ip(peer, headers, state.proxies.as_ref());
    if let Err(wait) = limiter.check(ClientKey::new(None, ip)) {
        let view = View::Problem(Problem::TooMany(wait));
        return Err(Box::new(page(state, headers, None, &view)));
    }
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect::<String>());
    Ok(ClientContext {
        ip: Some(ip),
        user_agent,
        api_key_label: LABEL.to_owned(),
    })
}

/// The dead-link page, which also drops the cookie holding the dead token.
fn dead_link(state: &AppState, headers: &HeaderMap, locale: Option<&str>) -> Response<Full<Bytes>> {
    let mut response = page(state, headers, locale, &View::Invalid { id_error: None });
    forget_cookie(response.headers_mut());
    response
}

/// A form body: declared size, media type, then the body within its deadline.
async fn read_form(state: &AppState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let headers = req.headers();
    if content_length(headers).is_some_and(|len| len > state.max_body as u64) {
        return Err(ApiError::PayloadTooLarge(state.max_body));
    }
    if body::media_type(headers.get(header::CONTENT_TYPE))? != MediaType::Form {
        return Err(ApiError::UnsupportedMediaType(
            crate::body::MediaTypeError::Unsupported("not a form".into()),
        ));
    }
    read_body(req.into_body(), state.max_body, state.body_timeout).await
}

fn query_token(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query?).ok()?;
    pairs
        .into_iter()
        .find(|(name, _)| name == "token")
        .map(|(_, token)| token)
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}

/// 303 to the token-free address, with the token in the cookie. `Secure` except on loopback,
/// where browsers keep the page on plain http.
fn hand_over(token: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let secure = if loopback(headers) { "" } else { "; Secure" };
    let cookie =
        format!("{COOKIE}={token}; Path={PATH}; Max-Age=3600; HttpOnly; SameSite=Strict{secure}");
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(PATH));
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    crate::page::secure_headers(headers);
    response
}

fn forget_cookie(headers: &mut HeaderMap) {
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "reset_token=; Path=/reset-password; Max-Age=0; HttpOnly; SameSite=Strict",
        ),
    );
}

fn loopback(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_the_query_or_the_cookie_only() {
        assert_eq!(query_token(Some("token=abc&x=1")).as_deref(), Some("abc"));
        assert_eq!(query_token(Some("x=1")), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; reset_token=t0k; x=2"),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some("t0k"));
        headers.insert(header::COOKIE, HeaderValue::from_static("reset_token="));
        assert_eq!(cookie_token(&headers), None);
    }

    #[test]
    fn the_cookie_is_secure_except_on_loopback() {
        let on = |host: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static(host));
            let response = hand_over("t0k", &headers);
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            assert_eq!(response.headers()[header::LOCATION], "/reset-password");
            response.headers()[header::SET_COOKIE]
                .to_str()
                .expect("ascii")
                .to_owned()
        };
        let public = on("accounts.example.com");
        assert!(public.ends_with("; Secure") && public.contains("HttpOnly; SameSite=Strict"));
        for local in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080"] {
            assert!(!on(local).contains("Secure"), "{local}");
        }
    }
}
