//! The hosted reset page: `GET /reset-password` (the link in the mail, or without one the
//! code from the mail), `POST /reset-password/code` (the account and the code),
//! `POST /reset-password` (the new password), `POST /reset-password/new-link` (a new mail).
//!
//! The link must work however it is opened: clicked in webmail on another site, in a new
//! tab without an opener, through a link-wrapping redirector, after a mail scanner fetched
//! it, typed. A browser sends no `SameSite=Strict` cookie with a navigation another site
//! started, so the page keeps no cookie at all: the form the link opens carries its token in
//! a hidden field, and the code form carries the account and the code the same way
//! (docs/decisions/reset-page-token-in-form.md). The token never reaches another site: the
//! page loads nothing from anywhere, sends no referrer, and links nowhere with it.
//!
//! Nothing on a GET uses a token up, so scanners and link previews change nothing; each GET
//! that checks a token is counted against the client's budget. Every POST must come from
//! this site's own pages (`Sec-Fetch-Site`, else `Origin`), so that no other site can make
//! its visitors' browsers send a form here.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use shared::event::{ClientContext, ResetRequested};

use super::{FormError, Problem, View};
use crate::routes::reset_password::{complete_reset, reset_error, secret};
use crate::routes::{AppState, MAX_USER_AGENT, Trail, content_length, read_body};
use crate::{
    http::body::{self, MediaType},
    http::limit::{ClientKey, Limiter, client_ip},
    http::reply::ApiError,
    reset::{ResetError, Secret},
};

/// The label a page request carries in logs and events where an API client's would be.
const LABEL: &str = "page";
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// `GET /reset-password[?token=…]`: with a live token, the form that carries it; without a
/// token, the form for the account and the mail's code.
pub(crate) async fn show(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let Some(token) = query_token(req.uri().query()) else {
        let view = View::Code {
            id: None,
            wrong: false,
        };
        return page(state, headers, None, &view);
    };
    // Each look-up costs a query: counted like the JSON verify endpoint's.
    if let Err(limited) = within_budget(state, &state.reset_limiter, peer, trail, headers) {
        return *limited;
    }
    form_for(state, trail, headers, Secret::Token(token)).await
}

/// `POST /reset-password/code`: the account and the mail's code; the password form if the
/// code is the account's live one. A wrong code counts against it.
pub(crate) async fn enter_code(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Admitted { headers, form, .. } =
        match admit_form(state, &state.reset_limiter, peer, trail, req).await {
            Ok(admitted) => admitted,
            Err(refused) => return *refused,
        };
    let fields = body::parse_some_fields(MediaType::Form, &form, ["id", "code"]);
    let Ok([id, code]) = fields else {
        return code_again(state, &headers, None);
    };
    let secret = match secret(None, id.clone(), code) {
        Ok(secret) => secret,
        Err(_) => return code_again(state, &headers, id),
    };
    form_for(state, trail, &headers, secret).await
}

/// The password form carrying `secret` if it works now, else the page that says why.
async fn form_for(
    state: &AppState,
    trail: &Trail,
    headers: &HeaderMap,
    secret: Secret,
) -> Response<Full<Bytes>> {
    match state.resets.verify(&secret).await {
        Ok(locale) => {
            let view = View::Form {
                secret,
                error: None,
            };
            page(state, headers, locale.as_deref(), &view)
        }
        Err(err) => refused(state, trail, headers, None, &secret, err),
    }
}

/// `POST /reset-password`: the new password, twice, with the secret the form carries.
pub(crate) async fn submit(
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
    let names = ["token", "id", "code", "password", "confirm"];
    let Ok([token, id, code, password, confirm]) =
        body::parse_some_fields(MediaType::Form, &form, names)
    else {
        return page(state, &headers, None, &View::BadForm);
    };
    let Ok(secret) = secret(token, id, code) else {
        return page(state, &headers, None, &View::BadForm);
    };
    // The account's locale for the answer; a dead secret is told as such before anything else.
    let locale = match state.resets.verify(&secret).await {
        Ok(locale) => locale,
        Err(err) => return refused(state, trail, &headers, None, &secret, err),
    };
    let locale = locale.as_deref();
    let error = match (password, confirm) {
        (Some(password), Some(confirm)) if password == confirm => {
            match complete_reset(state, trail, &secret, &password, client).await {
                Ok(()) => return page(state, &headers, locale, &View::Done),
                Err(ResetError::Policy(policy)) => FormError::Policy(policy),
                Err(err) => return refused(state, trail, &headers, locale, &secret, err),
            }
        }
        (Some(_), Some(_)) => FormError::Mismatch,
        _ => FormError::Missing,
    };
    let view = View::Form {
        secret,
        error: Some(error),
    };
    page(state, &headers, locale, &view)
}

/// `POST /reset-password/new-link`: a new mail, through the same path and limiter as
/// `POST /auth/forgot-password` (counted as a client without an API key), with the same
/// answer whether or not the account exists.
pub(crate) async fn new_link(
    state: &AppState,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Admitted {
        headers,
        form,
        client,
    } = match admit_form(state, &state.limiter, peer, trail, req).await {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
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
            state.metrics.funnel.reached("requested");
            page(state, &headers, None, &View::LinkSent)
        }
        Err(err) => {
            tracing::warn!(request_id = %trail.request_id, error = %err, "event not published");
            page(state, &headers, None, &View::Problem(Problem::Unavailable))
        }
    }
}

pub(super) fn page(
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

/// The code form again, saying the code did not work.
fn code_again(state: &AppState, headers: &HeaderMap, id: Option<String>) -> Response<Full<Bytes>> {
    page(state, headers, None, &View::Code { id, wrong: true })
}

/// The page for a secret that did not work, or for a failure on the way.
fn refused(
    state: &AppState,
    trail: &Trail,
    headers: &HeaderMap,
    locale: Option<&str>,
    secret: &Secret,
    err: ResetError,
) -> Response<Full<Bytes>> {
    match err {
        ResetError::InvalidToken => page(state, headers, locale, &View::Invalid { id_error: None }),
        ResetError::InvalidCode => {
            let id = match secret {
                Secret::Code { account, .. } => Some(account.as_str().to_owned()),
                Secret::Token(_) => None,
            };
            code_again(state, headers, id)
        }
        other => problem(state, headers, reset_error(other, trail)),
    }
}

/// An error the JSON endpoints would answer with `{code, message}`, as a page.
pub(super) fn problem(
    state: &AppState,
    headers: &HeaderMap,
    err: ApiError,
) -> Response<Full<Bytes>> {
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

/// A POST of the page that may be served, with its form read.
pub(super) struct Admitted {
    pub(super) headers: HeaderMap,
    pub(super) form: Bytes,
    /// What a `PasswordChanged` or `ResetRequested` records of the visitor.
    pub(super) client: ClientContext,
}

/// What every POST of the page passes before its form is read: it comes from this site's
/// own pages, and the visitor is within `limiter`'s budget. Then the form itself: declared
/// size, media type, the body within its deadline. The refusal is the page that says why.
pub(super) async fn admit_form(
    state: &AppState,
    limiter: &Limiter,
    peer: SocketAddr,
    trail: &mut Trail,
    req: Request<Incoming>,
) -> Result<Admitted, Box<Response<Full<Bytes>>>> {
    trail.client = Some(LABEL.to_owned());
    let headers = req.headers().clone();
    if !same_origin(&headers, state.pages.origin.as_deref()) {
        let view = View::Problem(Problem::CrossOrigin);
        return Err(Box::new(page(state, &headers, None, &view)));
    }
    let ip = within_budget(state, limiter, peer, trail, &headers)?;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect::<String>());
    let client = ClientContext {
        ip: Some(ip),
        user_agent,
        api_key_label: LABEL.to_owned(),
    };
    match read_form(state, req).await {
        Ok(form) => Ok(Admitted {
            headers,
            form,
            client,
        }),
        Err(err) => Err(Box::new(problem(state, &headers, err))),
    }
}

/// Counts the visitor in `limiter`, as a client without an API key, by address; past the
/// budget, the page that says how long to wait. The address is the visitor's.
pub(super) fn within_budget(
    state: &AppState,
    limiter: &Limiter,
    peer: SocketAddr,
    trail: &mut Trail,
    headers: &HeaderMap,
) -> Result<std::net::IpAddr, Box<Response<Full<Bytes>>>> {
    trail.client = Some(LABEL.to_owned());
    let ip = client_ip(peer, headers, state.proxies.as_ref());
    match limiter.check(ClientKey::new(None, ip)) {
        Ok(()) => Ok(ip),
        Err(wait) => {
            let view = View::Problem(Problem::TooMany(wait));
            Err(Box::new(page(state, headers, None, &view)))
        }
    }
}

/// Whether a POST comes from this site's own pages, as Go's `http.CrossOriginProtection`
/// decides it: a browser says where a request comes from in `Sec-Fetch-Site` (all current
/// ones do), else in `Origin`, which must then be this site (the Host the request names, or
/// API_PUBLIC_URL's origin behind a proxy that rewrites Host). A request with neither header
/// is no browser's, and so no other site's visitor's: it passes, as a request made with curl
/// does. `same-site` is refused too: a sibling subdomain is another party.
fn same_origin(headers: &HeaderMap, public_origin: Option<&str>) -> bool {
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if public_origin.is_some_and(|public| public.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// A form body: declared size, media type, then the body within its deadline.
async fn read_form(state: &AppState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let headers = req.headers();
    if content_length(headers).is_some_and(|len| len > state.max_body as u64) {
        return Err(ApiError::PayloadTooLarge(state.max_body));
    }
    if body::media_type(headers.get(header::CONTENT_TYPE))? != MediaType::Form {
        return Err(ApiError::UnsupportedMediaType(
            crate::http::body::MediaTypeError::Unsupported("not a form".into()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_token_is_read_from_the_query() {
        assert_eq!(query_token(Some("token=abc&x=1")).as_deref(), Some("abc"));
        assert_eq!(query_token(Some("x=1")), None);
        assert_eq!(query_token(None), None);
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_this_sites_pages_may_post() {
        let public = Some("https://accounts.example.com");
        for (sent, allowed) in [
            (&[("sec-fetch-site", "same-origin")][..], true),
            (&[("sec-fetch-site", "none")][..], true),
            (&[("sec-fetch-site", "same-site")][..], false),
            (&[("sec-fetch-site", "cross-site")][..], false),
            // Sec-Fetch-Site decides when a browser sends it, whatever Origin says.
            (
                &[
                    ("sec-fetch-site", "cross-site"),
                    ("origin", "http://127.0.0.1:8080"),
                    ("host", "127.0.0.1:8080"),
                ][..],
                false,
            ),
            (&[][..], true),
            (
                &[
                    ("origin", "http://127.0.0.1:8080"),
                    ("host", "127.0.0.1:8080"),
                ][..],
                true,
            ),
            (
                &[("origin", "http://evil.test"), ("host", "127.0.0.1:8080")][..],
                false,
            ),
            (&[("origin", "null"), ("host", "127.0.0.1:8080")][..], false),
            // Behind a proxy that rewrites Host: the public origin.
            (
                &[
                    ("origin", "https://accounts.example.com"),
                    ("host", "127.0.0.1:8080"),
                ][..],
                true,
            ),
            (
                &[
                    ("origin", "https://evil.example.com"),
                    ("host", "127.0.0.1:8080"),
                ][..],
                false,
            ),
        ] {
            assert_eq!(same_origin(&headers(sent), public), allowed, "{sent:?}");
        }
    }
}
