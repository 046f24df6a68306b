//! Turning an event, an account and a token into an email.

pub mod templates;

use std::time::Duration;

use lettre::Address;
use lettre::address::Envelope;
use lettre::message::{
    Mailbox, Message, MultiPart,
    header::{Header, HeaderName, HeaderValue},
};
use shared::code::{CodeKey, CodeKeyError};
use shared::event::{PasswordChanged, ResetRequested};
use shared::report::Reportable;
use time::macros::format_description;

use crate::store::Account;
use templates::{ChangedData, Rendered, TemplateData, TemplateError, Templates};

/// What every email shares: sender, product name, support address, link base.
#[derive(Debug, Clone)]
pub struct Composer {
    from: Mailbox,
    app_name: String,
    support_email: String,
    reset_url: url::Url,
    /// The api's report page (REPORT_URL): `r=<report secret>` is added to its query.
    report_url: url::Url,
    token_ttl: Duration,
    /// Derives each mail's one-time code and report links from its token (`shared::code`,
    /// `shared::report`).
    code_key: CodeKey,
}

/// Why an email could not be put together. Retrying cannot help with any of these.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the account's email address `{0}` is not a valid address")]
    BadRecipient(String),
    #[error("building the message: {0}")]
    Build(#[from] lettre::error::Error),
}

/// Why the settings do not make a composer.
#[derive(Debug, thiserror::Error)]
pub enum ComposerSettingsError {
    #[error("MAIL_FROM `{0}` is not an address like `Example <no-reply@example.com>`")]
    From(String),
    #[error("RESET_URL must be an absolute http(s) URL")]
    ResetUrl,
    #[error(
        "RESET_URL must be https:// (plain http only for localhost): the link carries a live \
         token"
    )]
    PlainResetUrl,
    #[error("REPORT_URL must be an absolute https:// URL (plain http only for localhost)")]
    ReportUrl,
    #[error(transparent)]
    CodeKey(#[from] CodeKeyError),
}

/// Whether `url` may carry a secret: http(s) and absolute, and https unless on this machine.
/// `Err(true)`: not an http(s) URL at all; `Err(false)`: plain http to another machine.
pub(crate) fn may_carry_a_secret(url: &url::Url) -> Result<(), bool> {
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(true);
    }
    let local = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() == "http" && !local {
        return Err(false);
    }
    Ok(())
}

impl Composer {
    pub fn new(
        mail_from: &str,
        app_name: String,
        support_email: String,
        reset_url: url::Url,
        token_ttl: Duration,
        code_key: CodeKey,
    ) -> Result<Self, ComposerSettingsError> {
        let from: Mailbox = mail_from
            .parse()
            .map_err(|_| ComposerSettingsError::From(mail_from.to_owned()))?;
        may_carry_a_secret(&reset_url).map_err(|not_http| {
            if not_http {
                ComposerSettingsError::ResetUrl
            } else {
                ComposerSettingsError::PlainResetUrl
            }
        })?;
        let mut report_url = reset_url.clone();
        report_url.set_query(None);
        if let Ok(mut path) = report_url.path_segments_mut() {
            path.pop_if_empty().push("report");
        }
        Ok(Self {
            from,
            app_name,
            support_email,
            reset_url,
            report_url,
            token_ttl,
            code_key,
        })
    }

    /// The report links open `url` instead of RESET_URL's path with `/report` added: for
    /// when RESET_URL is the product's own page and not the api's. It carries a secret, so
    /// it is held to RESET_URL's rule.
    pub fn with_report_url(mut self, url: Option<url::Url>) -> Result<Self, ComposerSettingsError> {
        if let Some(url) = url {
            may_carry_a_secret(&url).map_err(|_| ComposerSettingsError::ReportUrl)?;
            self.report_url = url;
        }
        Ok(self)
    }

    /// A report link: the report page with `r=` added to whatever query it has.
    pub fn report_link(&self, reportable: Reportable) -> String {
        let mut url = self.report_url.clone();
        url.query_pairs_mut()
            .append_pair("r", &reportable.secret(&self.code_key));
        url.into()
    }

    /// The link in the email: RESET_URL with `token=` added to whatever query it has.
    /// It is built from settings only, never from anything the request carried.
    pub fn reset_link(&self, token: &str) -> String {
        let mut url = self.reset_url.clone();
        url.query_pairs_mut().append_pair("token", token);
        url.into()
    }

    /// The reset email's subject and text part, as `worker replay --render` shows them.
    pub fn render_reset(
        &self,
        templates: &Templates,
        event: &ResetRequested,
        account: &Account,
        token: &str,
    ) -> Result<(String, String), ComposeError> {
        let data = self.reset_data(event, account, token);
        let rendered = templates.render("reset_password", account.locale.as_deref(), &data)?;
        Ok((rendered.subject, rendered.text))
    }

    fn reset_data(&self, event: &ResetRequested, account: &Account, token: &str) -> TemplateData {
        TemplateData {
            display_name: account
                .display_name
                .clone()
                .filter(|n| !n.trim().is_empty()),
            email: account.email.clone(),
            reset_url: self.reset_link(token),
            code: self
                .code_key
                .code_for(&crate::tokens::hash(token))
                .display(),
            page_url: self.reset_url.to_string(),
            report_url: self.report_link(Reportable::Reset {
                token_hash: crate::tokens::hash(token),
            }),
            expires_in_minutes: self.token_ttl.as_secs().div_ceil(60),
            app_name: self.app_name.clone(),
            support_email: self.support_email.clone(),
            requested_at: minutes(event.requested_at),
            ip: event.client.ip.map(|ip| ip.to_string()),
        }
    }

    /// The reset email for `account`, carrying `token`.
    pub fn reset_email(
        &self,
        templates: &Templates,
        event: &ResetRequested,
        account: &Account,
        token: &str,
    ) -> Result<Message, ComposeError> {
        let data = self.reset_data(event, account, token);
        let rendered = templates.render("reset_password", account.locale.as_deref(), &data)?;
        self.message(account, event.event_id, rendered)
    }

    /// The "your password was changed" email for `account`.
    pub fn changed_email(
        &self,
        templates: &Templates,
        event: &PasswordChanged,
        account: &Account,
    ) -> Result<Message, ComposeError> {
        let data = ChangedData {
            display_name: account
                .display_name
                .clone()
                .filter(|n| !n.trim().is_empty()),
            email: account.email.clone(),
            app_name: self.app_name.clone(),
            support_email: self.support_email.clone(),
            changed_at: minutes(event.changed_at),
            ip: event.client.ip.map(|ip| ip.to_string()),
            report_url: self.report_link(Reportable::Change {
                event_id: event.event_id,
            }),
        };
        let rendered = templates.render("password_changed", account.locale.as_deref(), &data)?;
        self.message(account, event.event_id, rendered)
    }

    fn message(
        &self,
        account: &Account,
        event_id: uuid::Uuid,
        rendered: Rendered,
    ) -> Result<Message, ComposeError> {
        let address: Address = account
            .email
            .parse()
            .map_err(|_| ComposeError::BadRecipient(account.email.clone()))?;
        // With the envelope given, lettre does not parse the From and To headers back to
        // derive it (a twentieth of the instructions composing a mail took).
        let envelope = Envelope::new(Some(self.from.email.clone()), vec![address.clone()])?;
        let to = Mailbox::new(
            account
                .display_name
                .clone()
                .filter(|n| !n.trim().is_empty()),
            address,
        );
        let domain = self.from.email.domain().to_owned();
        Ok(Message::builder()
            .from(self.from.clone())
            .to(to)
            .envelope(envelope)
            .subject(rendered.subject)
            // Stable per event: every attempt at the same request is the same message.
            .message_id(Some(format!("<{event_id}@{domain}>")))
            .header(AutoSubmitted)
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))?)
    }
}

/// A time as emails show it: `2026-11-27 20:01 UTC`.
fn minutes(at: time::OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default()
}

/// `Auto-Submitted: auto-generated` (RFC 3834): no out-of-office replies to this.
#[derive(Debug, Clone, Copy)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn composer(reset_url: &str) -> Composer {
        Composer::new(
            "Example <no-reply@example.com>",
            "Example".into(),
            "support@example.com".into(),
            reset_url.parse().expect("url"),
            Duration::from_secs(1800),
            test_key(),
        )
        .expect("composer")
    }

    fn test_key() -> CodeKey {
        "a test key of thirty-two characters".parse().expect("key")
    }

    #[test]
    fn the_token_is_added_to_an_existing_query() {
        assert_eq!(
            composer("https://app.example.com/reset").reset_link("abc_-1"),
            "https://app.example.com/reset?token=abc_-1"
        );
        assert_eq!(
            composer("https://app.example.com/reset?lang=de").reset_link("abc"),
            "https://app.example.com/reset?lang=de&token=abc"
        );
    }

    #[test]
    fn a_report_url_is_held_to_the_reset_urls_rule() {
        let made = composer("https://accounts.example.com/reset-password");
        let link = made.report_link(Reportable::Change {
            event_id: uuid::Uuid::nil(),
        });
        assert!(
            link.starts_with("https://accounts.example.com/reset-password/report?r=c."),
            "{link}"
        );
        let plain: url::Url = "http://api.example.com/reset-password/report"
            .parse()
            .expect("url");
        assert!(matches!(
            composer("https://accounts.example.com/reset").with_report_url(Some(plain)),
            Err(ComposerSettingsError::ReportUrl)
        ));
    }

    #[test]
    fn bad_settings_are_refused() {
        let url: url::Url = "mailto:x@example.com".parse().expect("url");
        assert!(matches!(
            Composer::new(
                "Example <a@b.c>",
                "E".into(),
                "s@e.c".into(),
                url,
                Duration::ZERO,
                test_key(),
            ),
            Err(ComposerSettingsError::ResetUrl)
        ));
        for (link, accepted) in [
            ("http://app.example.com/reset", false),
            ("http://localhost:3000/reset", true),
            ("http://127.0.0.1/reset", true),
            ("http://[::1]/reset", true),
            ("https://app.example.com/reset", true),
        ] {
            let made = Composer::new(
                "Example <a@b.c>",
                "E".into(),
                "s@e.c".into(),
                link.parse().expect("url"),
                Duration::ZERO,
                test_key(),
            );
            assert_eq!(made.is_ok(), accepted, "{link}: {made:?}");
        }
        let url: url::Url = "https://e.com".parse().expect("url");
        assert!(matches!(
            Composer::new(
                "not an address",
                "E".into(),
                "s@e.c".into(),
                url,
                Duration::ZERO,
                test_key(),
            ),
            Err(ComposerSettingsError::From(_))
        ));
    }
}
