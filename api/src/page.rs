//! The hosted reset page: what the mailed link opens when a team has no front end of its own.
//!
//! One handlebars layout (`templates/page.hbs`) for every view, its words per locale
//! (`templates/<locale>/page.json`), the product name and accent colour from settings, so an
//! operator restyles it without a rebuild. Every view works without JavaScript and loads
//! nothing from anywhere: the only style is the layout's own `<style>`, allowed by its hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use handlebars::Handlebars;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub mod report;
pub mod routes;

use crate::config::PageSettings;
use crate::reset::{PolicyError, Secret};
use shared::event::ReportKind;

/// The locale used when neither the account nor the browser names one we have.
pub const FALLBACK_LOCALE: &str = "en";
const LAYOUT: &str = "page";

/// Why the page's templates cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("page template {0}: {1}")]
    Layout(PathBuf, std::io::Error),
    #[error("page template {0}: {1}")]
    Template(PathBuf, Box<handlebars::TemplateError>),
    #[error("page words {0}: {1}")]
    Words(PathBuf, std::io::Error),
    #[error("page words {0}: {1}")]
    WordsJson(PathBuf, serde_json::Error),
    #[error("page words {0}: expected a JSON object")]
    WordsNotObject(PathBuf),
    #[error("templates folder {0} (TEMPLATES_DIR) has no {FALLBACK_LOCALE}/page.json")]
    NoFallback(PathBuf),
    #[error("PAGE_ACCENT_COLOR must be a hex colour like #1d4ed8, not `{0}`")]
    Colour(String),
    #[error("page template {0} does not render: {1}")]
    Render(PathBuf, handlebars::RenderError),
}

/// What a page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// The new-password form, carrying the secret that opened it (a hidden field: the form
    /// works from any tab, after any redirect, without cookies), with the reason the last
    /// attempt was refused, if any.
    Form {
        secret: Secret,
        error: Option<FormError>,
    },
    /// The page without a link: the account and the mail's code, and a new mail.
    Code {
        /// The account as typed, kept for the next try.
        id: Option<String>,
        /// The last code was wrong, or no live code is known for the account.
        wrong: bool,
    },
    /// The link is unknown, used, superseded or expired: ask for a new one.
    Invalid { id_error: Option<String> },
    /// The password was changed.
    Done,
    /// A new link was asked for (whether or not the account exists).
    LinkSent,
    /// A password form no page of ours sends: fields missing, repeated or unknown.
    BadForm,
    /// A report link opened: what confirming does, and the button that does it. Opening
    /// changes nothing (mail scanners open links).
    ReportConfirm { secret: String, kind: ReportKind },
    /// A report confirmed (or confirmed before): what happens next. `pause_hours` is
    /// RESET_REPORT_PAUSE, for a reset report.
    Reported { kind: ReportKind, pause_hours: u64 },
    /// A report link that has expired or names nothing.
    ReportExpired,
    /// Something outside the visitor's hands: too many attempts, the service unavailable.
    Problem(Problem),
}

/// Why a new password was refused, to be said next to the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormError {
    Policy(PolicyError),
    Mismatch,
    /// The form came without its two fields, or with others (no browser sends it so).
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    TooMany(u64),
    Unavailable,
    /// A form posted from another site.
    CrossOrigin,
}

/// The page's templates and words, loaded once at start.
#[derive(Debug)]
pub struct Pages {
    registry: Handlebars<'static>,
    words: BTreeMap<String, Value>,
    product: String,
    accent: String,
    support: String,
    min_chars: u16,
    /// Whether the page is served over https (API_PUBLIC_URL): then it sends HSTS.
    https: bool,
    /// PAGE_ENABLED.
    pub enabled: bool,
    /// API_PUBLIC_URL's origin (`https://accounts.example.com`), if set.
    pub origin: Option<String>,
}

impl Pages {
    /// Loads `page.hbs` and every `<locale>/page.json` under the templates folder, and renders
    /// every view in every locale once, so a broken template stops the start, not a visitor.
    pub fn load(settings: &PageSettings, min_chars: u16) -> Result<Self, PageError> {
        let dir = &settings.templates_dir;
        if !is_colour(&settings.accent_color) {
            return Err(PageError::Colour(settings.accent_color.clone()));
        }
        let layout_file = dir.join("page.hbs");
        let layout = std::fs::read_to_string(&layout_file)
            .map_err(|e| PageError::Layout(layout_file.clone(), e))?;
        let mut registry = Handlebars::new();
        registry
            .register_template_string(LAYOUT, layout)
            .map_err(|e| PageError::Template(layout_file.clone(), Box::new(e)))?;
        let mut words = load_words(dir)?;
        // `{min}` is a setting: filled in once here, not on every page.
        for value in words.values_mut().filter_map(Value::as_object_mut) {
            for text in value.values_mut() {
                if let Value::String(text) = text {
                    *text = text.replace("{min}", &min_chars.to_string());
                }
            }
        }
        if !words.contains_key(FALLBACK_LOCALE) {
            return Err(PageError::NoFallback(dir.clone()));
        }
        let pages = Self {
            registry,
            words,
            product: settings.product_name.clone(),
            accent: settings.accent_color.clone(),
            support: settings.support_email.clone(),
            min_chars,
            https: settings
                .public_url
                .as_ref()
                .is_some_and(|url| url.scheme() == "https"),
            enabled: settings.enabled,
            origin: settings
                .public_url
                .as_ref()
                .map(|url| url.origin().ascii_serialization()),
        };
        for locale in pages.words.keys() {
            for view in samples() {
                pages
                    .render(&view, locale)
                    .map_err(|e| PageError::Render(layout_file.clone(), e))?;
            }
        }
        Ok(pages)
    }

    /// The locale to show: the account's if we have its words, else the first of the
    /// browser's `Accept-Language` we have, else the fallback.
    pub fn locale(&self, account: Option<&str>, accept_language: Option<&str>) -> String {
        let have = |tag: &str| {
            let tag = tag.trim().to_lowercase();
            let primary = tag.split(['-', '_']).next().unwrap_or("").to_owned();
            [tag, primary]
                .into_iter()
                .find(|t| self.words.contains_key(t))
        };
        if let Some(found) = account.and_then(have) {
            return found;
        }
        let mut ranked: Vec<(f32, &str)> = accept_language
            .unwrap_or("")
            .split(',')
            .filter_map(|part| {
                let mut pieces = part.split(';');
                let tag = pieces.next()?.trim();
                let q = pieces
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .and_then(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                (!tag.is_empty() && q > 0.0).then_some((q, tag))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked
            .into_iter()
            .find_map(|(_, tag)| have(tag))
            .unwrap_or_else(|| FALLBACK_LOCALE.to_owned())
    }

    /// The page for `view` in `locale`, with the headers every page carries.
    pub fn response(&self, view: &View, locale: &str) -> Response<Full<Bytes>> {
        let status = match view {
            View::Form { error: Some(_), .. }
            | View::Invalid { id_error: Some(_) }
            | View::Code { wrong: true, .. }
            | View::BadForm => StatusCode::BAD_REQUEST,
            View::Problem(Problem::TooMany(_)) => StatusCode::TOO_MANY_REQUESTS,
            View::Problem(Problem::CrossOrigin) => StatusCode::FORBIDDEN,
            View::Problem(Problem::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        };
        let html = self.render(view, locale).unwrap_or_else(|err| {
            tracing::error!(error = %err, "the reset page did not render");
            String::from("<!doctype html><title>Error</title><p>Error - Server Error</p>")
        });
        let csp = content_security_policy(&html);
        let mut response = Response::new(Full::new(Bytes::from(html)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        if let Ok(csp) = HeaderValue::from_str(&csp) {
            headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        secure_headers(headers);
        if self.https {
            headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
        }
        match view {
            View::Problem(Problem::TooMany(secs)) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            View::Problem(Problem::Unavailable) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(crate::http::reply::RETRY_AFTER_UNAVAILABLE),
                );
            }
            _ => {}
        }
        response
    }

    fn render(&self, view: &View, locale: &str) -> Result<String, handlebars::RenderError> {
        let fallback = &self.words[FALLBACK_LOCALE];
        let words = self.words.get(locale).unwrap_or(fallback);
        let word = |key: &str| -> String {
            words[key]
                .as_str()
                .or_else(|| fallback[key].as_str())
                .unwrap_or(key)
                .to_owned()
        };
        let mut data = json!({});
        match view {
            View::Form { secret, error } => {
                data["form"] = json!(true);
                match secret {
                    Secret::Token(token) => data["token"] = json!(token),
                    Secret::Code { account, code } => {
                        data["id"] = json!(account.as_str());
                        data["code"] = json!(code);
                    }
                }
                match error {
                    Some(FormError::Mismatch) => data["confirm_error"] = json!(word("mismatch")),
                    Some(FormError::Missing) => data["error"] = json!(word("missing")),
                    Some(FormError::Policy(policy)) => {
                        data["error"] = json!(policy_text(policy, &word, self.min_chars));
                    }
                    None => {}
                }
            }
            View::Code { id, wrong } => {
                data["enter_code"] = json!(true);
                data["id"] = json!(id);
                if *wrong {
                    data["code_error"] = json!(word("code_wrong"));
                }
            }
            View::Invalid { id_error } => {
                data["invalid"] = json!(true);
                data["id_error"] = json!(id_error);
            }
            View::Done => data["done"] = json!(true),
            View::LinkSent => data["link_sent"] = json!(true),
            View::BadForm => data["problem"] = json!(word("bad_form")),
            View::Problem(Problem::TooMany(secs)) => {
                data["problem"] = json!(word("too_many").replace("{seconds}", &secs.to_string()));
            }
            View::Problem(Problem::Unavailable) => data["problem"] = json!(word("unavailable")),
            View::Problem(Problem::CrossOrigin) => data["problem"] = json!(word("cross_origin")),
            View::ReportConfirm { .. } | View::Reported { .. } | View::ReportExpired => {
                data = self.report_data(view, &word);
            }
        }
        let page = PageData {
            lang: locale,
            product: &self.product,
            accent: &self.accent,
            min: self.min_chars,
            t: words,
            view: data,
        };
        self.registry.render(LAYOUT, &page)
    }
}

impl Pages {
    /// The report views' fields, their words filled in.
    fn report_data(&self, view: &View, word: &dyn Fn(&str) -> String) -> Value {
        let fill = |key: &str, hours: u64| {
            word(key)
                .replace("{product}", &self.product)
                .replace("{support}", &self.support)
                .replace("{hours}", &hours.to_string())
        };
        match view {
            View::ReportConfirm { secret, kind } => {
                let prefix = report_prefix(*kind);
                json!({
                    "report": true,
                    "secret": secret,
                    "heading": fill(&format!("{prefix}_heading"), 0),
                    "text": fill(&format!("{prefix}_text"), 0),
                    "button": fill(&format!("{prefix}_button"), 0),
                })
            }
            View::Reported { kind, pause_hours } => {
                let key = match (kind, pause_hours) {
                    (ReportKind::Reset, 0) => "reported_text_no_pause",
                    (ReportKind::Reset, _) => "reported_text",
                    (ReportKind::Change, _) => "change_reported_text",
                };
                let heading = match kind {
                    ReportKind::Reset => "reported_heading",
                    ReportKind::Change => "change_reported_heading",
                };
                json!({
                    "reported": true,
                    "heading": fill(heading, 0),
                    "text": fill(key, *pause_hours),
                })
            }
            _ => json!({
                "reported": true,
                "heading": fill("report_expired_heading", 0),
                "text": fill("report_expired_text", 0),
            }),
        }
    }
}

fn report_prefix(kind: ReportKind) -> &'static str {
    match kind {
        ReportKind::Reset => "report",
        ReportKind::Change => "change_report",
    }
}

/// What the layout gets: the settings and words, borrowed, and the view's own fields.
#[derive(serde::Serialize)]
struct PageData<'a> {
    lang: &'a str,
    product: &'a str,
    accent: &'a str,
    min: u16,
    t: &'a Value,
    #[serde(flatten)]
    view: Value,
}

/// A refused password, in the page's words: the rule by name, and zxcvbn's reason where the
/// locale's text asks for it with `{reason}` (it is English).
fn policy_text(policy: &PolicyError, word: &dyn Fn(&str) -> String, min: u16) -> String {
    match policy {
        PolicyError::TooShort(_) => word("too_short").replace("{min}", &min.to_string()),
        PolicyError::TooLong => word("too_long"),
        PolicyError::SameAsAccount => word("same_as_account"),
        PolicyError::Guessable(reason) => word("guessable").replace("{reason}", reason),
    }
}

fn load_words(dir: &Path) -> Result<BTreeMap<String, Value>, PageError> {
    let mut words = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| PageError::Words(dir.to_owned(), e))?;
    for entry in entries.flatten() {
        let file = entry.path().join("page.json");
        if !file.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&file).map_err(|e| PageError::Words(file.clone(), e))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| PageError::WordsJson(file.clone(), e))?;
        if !value.is_object() {
            return Err(PageError::WordsNotObject(file));
        }
        words.insert(entry.file_name().to_string_lossy().to_lowercase(), value);
    }
    Ok(words)
}

fn samples() -> Vec<View> {
    let token = || Secret::Token("t".into());
    vec![
        View::Form {
            secret: token(),
            error: None,
        },
        View::Form {
            secret: token(),
            error: Some(FormError::Mismatch),
        },
        View::Form {
            secret: token(),
            error: Some(FormError::Policy(PolicyError::Guessable("x".into()))),
        },
        View::Code {
            id: None,
            wrong: false,
        },
        View::Code {
            id: Some("x".into()),
            wrong: true,
        },
        View::Invalid { id_error: None },
        View::Invalid {
            id_error: Some("x".into()),
        },
        View::Done,
        View::LinkSent,
        View::BadForm,
        View::Problem(Problem::TooMany(1)),
        View::Problem(Problem::Unavailable),
        View::Problem(Problem::CrossOrigin),
        View::ReportConfirm {
            secret: "r.x.y".into(),
            kind: ReportKind::Reset,
        },
        View::ReportConfirm {
            secret: "c.x.y".into(),
            kind: ReportKind::Change,
        },
        View::Reported {
            kind: ReportKind::Reset,
            pause_hours: 24,
        },
        View::Reported {
            kind: ReportKind::Reset,
            pause_hours: 0,
        },
        View::Reported {
            kind: ReportKind::Change,
            pause_hours: 0,
        },
        View::ReportExpired,
    ]
}

fn is_colour(raw: &str) -> bool {
    raw.strip_prefix('#')
        .is_some_and(|hex| matches!(hex.len(), 3 | 6) && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Nothing from anywhere: no script, no other origin; the page's own `<style>` blocks by
/// their hashes; forms post only back here; no framing.
fn content_security_policy(html: &str) -> String {
    let mut hashes = String::new();
    let mut rest = html;
    while let Some(start) = rest.find("<style>") {
        let after = &rest[start + "<style>".len()..];
        let Some(end) = after.find("</style>") else {
            break;
        };
        use base64::Engine;
        let digest = Sha256::digest(&after.as_bytes()[..end]);
        hashes.push_str(&format!(
            " 'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &after[end..];
    }
    let style = if hashes.is_empty() {
        " 'none'".to_owned()
    } else {
        hashes
    };
    format!(
        "default-src 'none'; style-src{style}; img-src 'self' data:; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// What every page response carries: no caching (it may show a form for a live token), no
/// referrer (the address held the token), no sniffing, no framing.
pub fn secure_headers(headers: &mut http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages() -> Pages {
        let settings = PageSettings {
            templates_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates"),
            product_name: "Acme <Cloud>".into(),
            accent_color: "#123abc".into(),
            support_email: "help@example.com".into(),
            enabled: true,
            public_url: None,
        };
        Pages::load(&settings, 8).expect("the shipped page templates load")
    }

    #[test]
    fn the_locale_is_the_accounts_then_the_browsers_then_english() {
        let pages = pages();
        assert_eq!(pages.locale(Some("de"), Some("en")), "de");
        assert_eq!(pages.locale(Some("de-CH"), None), "de");
        assert_eq!(pages.locale(Some("xx"), Some("fr;q=0.9, de;q=0.8")), "de");
        assert_eq!(pages.locale(None, Some("en;q=0.1, de-AT")), "de");
        assert_eq!(pages.locale(None, Some("fr")), "en");
        assert_eq!(pages.locale(None, None), "en");
    }

    #[test]
    fn the_style_is_allowed_by_its_hash_and_nothing_else_is() {
        let html = "<style>a{}</style><p>x</p>";
        let csp = content_security_policy(html);
        let expected = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"a{}"))
        };
        assert!(
            csp.contains(&format!("style-src 'sha256-{expected}';")),
            "{csp}"
        );
        assert!(csp.starts_with("default-src 'none'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("script-src"));
    }

    #[test]
    fn every_view_renders_escaped_with_its_words() {
        let pages = pages();
        let form = pages
            .render(
                &View::Form {
                    secret: Secret::Token("t0k&\"".into()),
                    error: None,
                },
                "de",
            )
            .expect("form");
        assert!(
            form.contains(r#"name="token" value="t0k&amp;&quot;""#),
            "the token rides in the form, escaped: {form}"
        );
        assert!(form.contains("lang=\"de\""));
        assert!(
            form.contains("Acme &lt;Cloud&gt;"),
            "the product name is escaped"
        );
        assert!(form.contains("autocomplete=\"new-password\""));
        let refused = pages
            .render(
                &View::Form {
                    secret: Secret::Token("t".into()),
                    error: Some(FormError::Policy(PolicyError::TooShort(8))),
                },
                "en",
            )
            .expect("refused");
        assert!(refused.contains("8"), "{refused}");
        assert!(refused.contains("role=\"alert\""));
        let response = pages.response(&View::Problem(Problem::TooMany(7)), "en");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn a_colour_that_is_not_one_stops_the_start() {
        for bad in ["red", "#12345", "#12345g", "1d4ed8", "#fff;}body{"] {
            assert!(!is_colour(bad), "{bad}");
        }
        assert!(is_colour("#fff") && is_colour("#1D4ED8"));
    }
}
