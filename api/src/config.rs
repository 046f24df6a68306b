//! The api's settings, all from the environment (or the matching `--flag`).
//! `api --help` lists every variable with its default.

use std::net::SocketAddr;
use std::time::Duration;

use shared::{logging::LogSettings, nats::NatsSettings, stream::StreamSettings};

use crate::http::limit::{RateLimit, TrustedProxies};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "api",
    version,
    about = "Password-reset front door: accepts POST /auth/forgot-password and publishes a ResetRequested event to NATS JetStream."
)]
pub struct Settings {
    #[command(flatten)]
    pub http: HttpSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub reset: ResetSettings,
    #[command(flatten)]
    pub code: shared::code::CodeKeySettings,
    #[command(flatten)]
    pub page: PageSettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub stream: StreamSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

/// The HTTP side.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpSettings {
    /// Address to listen on (port 0 picks a free port; the bound address is logged).
    #[arg(long, env = "API_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "API_MAX_BODY", default_value_t = 4096)]
    pub max_body: usize,

    /// Requests per client IP: `N/second|minute|hour[,burst=B]`, or `off`.
    #[arg(long, env = "API_RATE_LIMIT", default_value = "20/minute,burst=10")]
    pub rate_limit: RateLimit,

    /// Take the client IP from `X-Forwarded-For` when the request comes from one of
    /// API_TRUSTED_PROXIES (set only behind a proxy you run). Accepts 1/0, true/false, yes/no,
    /// on/off.
    #[arg(long, env = "API_TRUST_PROXY", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub trust_proxy: bool,

    /// The proxies whose `X-Forwarded-For` is believed when API_TRUST_PROXY is on: CIDR blocks
    /// or addresses, comma-separated. From any other peer the header is ignored.
    #[arg(long, env = "API_TRUSTED_PROXIES", default_value = "127.0.0.0/8,::1")]
    pub trusted_proxies: TrustedProxies,

    /// How long JetStream may take to acknowledge an event before the client gets 503.
    #[arg(long, env = "API_PUBLISH_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,

    /// How long a client may take to send its request headers.
    #[arg(long, env = "API_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// How long a client may take to send its request body (408 after that).
    #[arg(long, env = "API_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// Connections served at once; more wait in the kernel's backlog until one ends. Each may
    /// hold a 64 KiB read buffer, so this bounds the memory idle or slow clients can take.
    #[arg(long, env = "API_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// On SIGTERM/SIGINT, how long in-flight requests get to finish before the api exits.
    #[arg(long, env = "API_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Completing resets: the database holding tokens and accounts, and the password rules.
#[derive(Debug, Clone, clap::Args)]
pub struct ResetSettings {
    /// The worker's database. The api starts without it: only the reset-password endpoints
    /// need it, and they answer 503 while it is unreachable.
    #[command(flatten)]
    pub database: shared::db::DatabaseUrl,

    /// Shortest accepted new password, in characters (Unicode code points): 8 to 128 (NIST
    /// SP 800-63B's floor is 8).
    #[arg(long, env = "PASSWORD_MIN_LENGTH", default_value_t = 8, value_parser = clap::value_parser!(u16).range(8..=128))]
    pub password_min_length: u16,

    /// Least strength a new password must have, as zxcvbn's score: 0 accepts anything, 1 a
    /// million guesses, 2 (default) a hundred million, 3 ten billion, 4 more. Common and
    /// breached passwords, single words, names, dates, keyboard rows and repeats score 0-1.
    #[arg(long, env = "PASSWORD_MIN_STRENGTH", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=4))]
    pub password_min_strength: u8,

    /// Argon2id memory cost in KiB (OWASP: 19456 = 19 MiB).
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = 19456)]
    pub argon2_memory_kib: u32,

    /// Argon2id iterations (OWASP: 2 with 19 MiB).
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Argon2id parallelism (OWASP: 1).
    #[arg(long, env = "ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,

    /// How long an account gets no reset mail after its owner reported one they did not ask
    /// for ("I did not ask for this"): a day, so whoever sent the requests finds the mailbox
    /// shut for the rest of the attempt, while the owner, should they need a reset after
    /// all, waits no longer than that. `0s` turns the pause off (the report still kills the
    /// mail's links and is told to the product).
    #[arg(long, env = "RESET_REPORT_PAUSE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub report_pause: Duration,
}

/// The hosted reset page (`GET /reset-password`): where its templates are, and the look an
/// operator gives it without editing them.
#[derive(Debug, Clone, clap::Args)]
pub struct PageSettings {
    /// Folder of the templates: the page's layout `page.hbs` and its words per locale
    /// (`<locale>/page.json`), beside the worker's mail templates.
    #[arg(long, env = "TEMPLATES_DIR", default_value = "templates")]
    pub templates_dir: std::path::PathBuf,

    /// The product name the page shows.
    #[arg(long, env = "PAGE_PRODUCT_NAME", default_value = "Example")]
    pub product_name: String,

    /// The page's accent colour (buttons, focus rings), as `#rgb` or `#rrggbb`.
    #[arg(long, env = "PAGE_ACCENT_COLOR", default_value = "#1d4ed8")]
    pub accent_color: String,

    /// Where people write for help, shown after they report a change that was not theirs:
    /// the same address the worker puts in the mails.
    #[arg(long, env = "SUPPORT_EMAIL", default_value = "support@example.com")]
    pub support_email: String,

    /// Serve the page. Off for teams whose own front end takes the mailed link (RESET_URL)
    /// and calls the JSON endpoints: the page's routes then answer 404. Accepts 1/0,
    /// true/false, yes/no, on/off.
    #[arg(long = "page-enabled", env = "PAGE_ENABLED", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "true", default_missing_value = "true")]
    pub enabled: bool,

    /// The address people reach the api at, as `https://accounts.example.com` (scheme, host
    /// and port). With https the page sends HSTS; the page's forms are also accepted from
    /// this origin when a proxy in front rewrites the Host header.
    #[arg(long, env = "API_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
}

/// Who may call.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthSettings {
    /// Comma-separated `label:key` pairs. The label names the client in logs and events; the
    /// key is what it sends as `Authorization: Bearer <key>`. Required.
    #[arg(long, env = "API_KEYS", hide_env_values = true)]
    pub api_keys: Option<SecretString>,

    /// Marks a development instance: it accepts the placeholder key `REPLACE_BEARER_TOKEN` from
    /// the API documentation (besides any API_KEYS, which it then does not require), and
    /// warns at start. Never on an instance others can reach. Accepts 1/0, true/false,
    /// yes/no, on/off.
    #[arg(long, env = "API_DEV_MODE", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub dev_mode: bool,
}

/// A setting that must never be printed: parsed after clap, so that a parse error cannot echo
/// it, and shown as `<redacted>` by `Debug`.
#[derive(Clone)]
pub struct SecretString(pub String);

impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(Self(raw.to_owned()))
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
