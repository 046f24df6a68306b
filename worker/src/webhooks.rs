//! Webhooks, by the Standard Webhooks spec: what happened to an account, POSTed to the
//! product's `WEBHOOK_URL`, signed with `WEBHOOK_SECRET` (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`, signed by the spec's own Rust library).
//!
//! The worker reads them off JetStream through consumers of their own, beside the mail's: a
//! password change (`password.changed`) and the owners' reports (`reset.reported`,
//! `change.reported`). Each is delivered at least once, with the same `webhook-id` on every
//! attempt (`msg_` and the event's id), retried after WEBHOOK_BACKOFF's delays on any answer
//! but a 2xx or none within WEBHOOK_TIMEOUT, then dead-lettered where `worker dead-letters`
//! lists and retries it. A retry goes to `{prefix}.webhooks.retried`, which only these
//! consumers read, so it sends no mail again.

mod deliver;
mod payload;

use std::time::Duration;

pub use deliver::{HEADER_DEAD_KIND, run, webhook_consumers};
pub use payload::{Webhook, WebhookKind};

use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::config::Backoff;
use crate::status::WebhookLabels;

/// Where webhooks go and how.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookSettings {
    /// Where the webhooks are POSTed. Unset: none are sent. https only, except to a loopback
    /// address.
    #[arg(long, env = "WEBHOOK_URL")]
    pub webhook_url: Option<url::Url>,

    /// The signing secret, `whsec_` and base64 as the Standard Webhooks libraries take it
    /// (`echo whsec_$(openssl rand -base64 32)`). Required with WEBHOOK_URL.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// The types sent, comma-separated: `password.changed`, `reset.reported`,
    /// `change.reported`.
    #[arg(
        long,
        env = "WEBHOOK_EVENTS",
        default_value = "password.changed,reset.reported,change.reported",
        value_delimiter = ',',
        value_parser = parse_kind
    )]
    pub webhook_events: Vec<WebhookKind>,

    /// How long an attempt waits for the answer.
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// Delays before each retry, comma-separated; their count is the number of retries. After
    /// the last, the webhook is dead-lettered.
    #[arg(long, env = "WEBHOOK_BACKOFF", default_value = "10s,1m,10m,1h,6h", value_parser = crate::config::parse_backoff)]
    pub webhook_backoff: Backoff,
}

fn parse_kind(raw: &str) -> Result<WebhookKind, UnknownKind> {
    WebhookKind::parse(raw.trim()).ok_or_else(|| UnknownKind(raw.to_owned()))
}

/// A WEBHOOK_EVENTS entry that names no webhook type.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a webhook type: password.changed, reset.reported, change.reported")]
pub struct UnknownKind(String);

/// Why the webhook settings are unusable. Each names the variable.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSettingsError {
    #[error("WEBHOOK_SECRET is required with WEBHOOK_URL (`whsec_` and base64)")]
    NoSecret,
    #[error("WEBHOOK_SECRET is not `whsec_` and base64: {0}")]
    Secret(#[from] standardwebhooks::WebhookError),
    #[error(
        "WEBHOOK_URL must be https:// (plain http only to a loopback address): the webhooks \
         name accounts"
    )]
    PlainUrl,
    #[error("WEBHOOK_URL must be an absolute http(s) URL")]
    Url,
    #[error("setting up TLS for the webhooks: {0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
}

/// The webhook side of a worker whose WEBHOOK_URL is set.
pub struct Webhooks {
    url: url::Url,
    signer: standardwebhooks::Webhook,
    kinds: Vec<WebhookKind>,
    timeout: Duration,
    backoff: Backoff,
    client: deliver::Client,
    /// `worker_webhooks_total`, once the worker's metrics are there.
    counted: Option<Family<WebhookLabels, Counter>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("url", &self.url.as_str())
            .field("kinds", &self.kinds)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// The webhooks the settings ask for: `None` without WEBHOOK_URL.
    pub fn from_settings(settings: &WebhookSettings) -> Result<Option<Self>, WebhookSettingsError> {
        let Some(url) = settings.webhook_url.clone() else {
            return Ok(None);
        };
        // Held to RESET_URL's rule: https, or plain http to this machine only.
        crate::mail::may_carry_a_secret(&url).map_err(|not_http| {
            if not_http {
                WebhookSettingsError::Url
            } else {
                WebhookSettingsError::PlainUrl
            }
        })?;
        let secret = settings
            .webhook_secret
            .as_deref()
            .ok_or(WebhookSettingsError::NoSecret)?;
        let signer = standardwebhooks::Webhook::new(secret.trim())?;
        Ok(Some(Self {
            url,
            signer,
            kinds: settings.webhook_events.clone(),
            timeout: settings.webhook_timeout,
            backoff: settings.webhook_backoff.clone(),
            client: deliver::client()?,
            counted: None,
        }))
    }

    /// Counts attempts in `family` (`worker_webhooks_total`).
    #[must_use]
    pub fn counted_in(mut self, family: Family<WebhookLabels, Counter>) -> Self {
        self.counted = Some(family);
        self
    }

    fn count(&self, kind: WebhookKind, result: &'static str) {
        if let Some(family) = &self.counted {
            let kind = kind.as_str();
            family.get_or_create(&WebhookLabels { kind, result }).inc();
        }
    }

    /// Whether WEBHOOK_EVENTS asks for `kind`.
    pub fn wants(&self, kind: WebhookKind) -> bool {
        self.kinds.contains(&kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Only {
        #[command(flatten)]
        webhooks: WebhookSettings,
    }

    fn settings(args: &[&str]) -> WebhookSettings {
        let mut all = vec!["worker"];
        all.extend_from_slice(args);
        Only::try_parse_from(all).expect("parse").webhooks
    }

    const SECRET: &str = "--webhook-secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn webhooks_go_over_https_or_to_loopback_and_need_a_secret() {
        assert!(
            Webhooks::from_settings(&settings(&[]))
                .expect("none")
                .is_none()
        );
        for url in [
            "https://hooks.example.com/in",
            "http://127.0.0.1:9/in",
            "http://localhost/in",
        ] {
            let arg = format!("--webhook-url={url}");
            let made = Webhooks::from_settings(&settings(&[&arg, SECRET]));
            assert!(matches!(made, Ok(Some(_))), "{url}: {made:?}");
        }
        let plain = Webhooks::from_settings(&settings(&[
            "--webhook-url=http://hooks.example.com",
            SECRET,
        ]));
        assert!(
            matches!(plain, Err(WebhookSettingsError::PlainUrl)),
            "{plain:?}"
        );
        let bare = Webhooks::from_settings(&settings(&["--webhook-url=https://hooks.example.com"]));
        assert!(
            matches!(bare, Err(WebhookSettingsError::NoSecret)),
            "{bare:?}"
        );
        let bad = Webhooks::from_settings(&settings(&[
            "--webhook-url=https://hooks.example.com",
            "--webhook-secret=whsec_not base64!",
        ]));
        assert!(
            matches!(bad, Err(WebhookSettingsError::Secret(_))),
            "{bad:?}"
        );
    }

    #[test]
    fn the_types_sent_are_chosen_by_name() {
        let chosen = settings(&["--webhook-events=password.changed"]).webhook_events;
        assert_eq!(chosen, [WebhookKind::PasswordChanged]);
        let wrong = Only::try_parse_from(["worker", "--webhook-events=mail.lost"]);
        assert!(wrong.is_err());
    }
}
