//! Where emails go: an SMTP server through our own connection pool, or an outbox folder.
//!
//! The pool opens its sockets itself rather than using lettre's pooled transport: lettre
//! 0.11.23 never sets TCP_NODELAY, and because it writes the body and the final `.`
//! separately, every message then waits for the server's delayed ACK (~40 ms, about 23 mails/s
//! per connection). Everything said over the socket is lettre's own [`AsyncSmtpConnection`].
//!
//! Failures are sorted by where they happen. Connection set-up (TCP, TLS, greeting, EHLO,
//! STARTTLS, AUTH) failing is [`SendError::Connection`]: the server or our settings are at
//! fault, so the mail waits and is never dead-lettered, `/readyz` says so, and the pool tries
//! again after a growing wait. A 5xx answer to MAIL FROM, RCPT TO or DATA is permanent for that
//! message; a 4xx, a timeout or a dropped connection is worth another attempt.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::Message;
use lettre::transport::smtp::{
    authentication::{Credentials, Mechanism},
    client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters},
    extension::ClientId,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};
use tokio_rustls::rustls;

use crate::config::MailSettings;

/// Why a message was not handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No SMTP session could be opened: retried for as long as the event may be mailed, and
    /// never a reason to give up on the message.
    #[error(transparent)]
    Connection(ConnectError),
    /// Worth retrying: a 4xx answer to this message, a timeout, a dropped connection.
    #[error("{0}")]
    Transient(String),
    /// Not worth retrying: a 5xx answer to MAIL FROM, RCPT TO or DATA for this message.
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    /// The `result` label of `worker_send_duration_seconds`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Connection(_) => "connection",
            Self::Transient(_) => "transient",
            Self::Permanent(_) => "permanent",
        }
    }
}

/// Why the mail settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TransportSettingsError {
    #[error("SMTP_URL is not a URL like smtp://host:25: {0}")]
    Url(#[from] url::ParseError),
    #[error("SMTP_URL scheme must be smtp or smtps, not `{0}`")]
    Scheme(String),
    #[error("SMTP_URL has no host")]
    NoHost,
    #[error("SMTP_URL `tls` must be `none`, `required` or `opportunistic`, not `{0}`")]
    TlsMode(String),
    #[error("SMTP_CA_FILE {0}: {1}")]
    CaFile(PathBuf, String),
    #[error("MAIL_OUTBOX {0} cannot be created: {1}")]
    Outbox(PathBuf, io::Error),
}

/// The configured way out.
#[derive(Debug)]
pub enum Mailer {
    Smtp(Box<SmtpPool>),
    Outbox(Outbox),
}

impl Mailer {
    pub fn from_settings(settings: &MailSettings) -> Result<Self, TransportSettingsError> {
        match &settings.smtp_url {
            Some(url) => Ok(Self::Smtp(Box::new(SmtpPool::new(
                SmtpTarget::parse(url, settings.smtp_ca_file.as_deref())?,
                usize::from(settings.smtp_pool_size),
                settings.smtp_timeout,
            )))),
            None => {
                std::fs::create_dir_all(&settings.outbox)
                    .map_err(|e| TransportSettingsError::Outbox(settings.outbox.clone(), e))?;
                Ok(Self::Outbox(Outbox {
                    dir: settings.outbox.clone(),
                }))
            }
        }
    }

    /// Hands `message` over; `name` identifies it in the outbox and in logs.
    pub async fn send(&self, message: &Message, name: &str) -> Result<(), SendError> {
        match self {
            Self::Smtp(pool) => pool.send(message).await,
            Self::Outbox(outbox) => outbox.write(message, name).await,
        }
    }

    /// Where mail goes, for the start-up log line (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Self::Smtp(pool) => format!(
                "smtp {}:{} ({:?})",
                pool.target.host, pool.target.port, pool.target.security
            ),
            Self::Outbox(outbox) => format!("outbox {}", outbox.dir.display()),
        }
    }

    /// Whether the SMTP server takes connections; `None` for the outbox.
    pub fn health(&self) -> Option<Arc<SmtpHealth>> {
        match self {
            Self::Smtp(pool) => Some(pool.health.clone()),
            Self::Outbox(_) => None,
        }
    }

    /// Says QUIT on idle SMTP connections.
    pub async fn close(&self) {
        if let Self::Smtp(pool) = self {
            pool.close().await;
        }
    }
}

/// Writes each email as an `.eml` file: the quick start's mail, readable with any mail client.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    async fn write(&self, message: &Message, name: &str) -> Result<(), SendError> {
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let file = self.dir.join(format!("{stamp}-{name}.eml"));
        let partial = self.dir.join(format!(".{stamp}-{name}.eml.partial"));
        // Written aside and renamed, so a reader never sees half a message.
        let written = async {
            tokio::fs::write(&partial, message.formatted()).await?;
            tokio::fs::rename(&partial, &file).await
        };
        written
            .await
            .map_err(|e| SendError::Transient(format!("writing {}: {e}", file.display())))?;
        tracing::info!(file = %file.display(), "email written to the outbox");
        Ok(())
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No TLS (`smtp://`): for a relay on the same host or network.
    Plain,
    /// STARTTLS if the server offers it (`?tls=opportunistic`).
    Opportunistic,
    /// STARTTLS, and fail if the server does not offer it (`?tls=required`).
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// An SMTP server and how to talk to it.
#[derive(Clone)]
pub struct SmtpTarget {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    extra_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for SmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl SmtpTarget {
    pub fn parse(
        raw: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, TransportSettingsError> {
        let url = url::Url::parse(raw)?;
        let mut security = match url.scheme() {
            "smtp" => Security::Plain,
            "smtps" => Security::Implicit,
            other => return Err(TransportSettingsError::Scheme(other.to_owned())),
        };
        for (key, value) in url.query_pairs() {
            if key == "tls" && security != Security::Implicit {
                security = match value.as_ref() {
                    "none" => Security::Plain,
                    "required" => Security::StartTls,
                    "opportunistic" => Security::Opportunistic,
                    other => return Err(TransportSettingsError::TlsMode(other.to_owned())),
                };
            }
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(TransportSettingsError::NoHost)?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port().unwrap_or(match security {
            Security::Implicit => 465,
            Security::StartTls => 587,
            Security::Plain | Security::Opportunistic => 25,
        });
        let decode = |s: &str| percent_decode(s);
        let credentials = (!url.username().is_empty()).then(|| {
            Credentials::new(
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            )
        });
        let extra_ca = ca_file
            .map(|path| {
                std::fs::read(path)
                    .map_err(|e| TransportSettingsError::CaFile(path.to_owned(), e.to_string()))
            })
            .transpose()?;
        let target = Self {
            host,
            port,
            security,
            credentials,
            extra_ca,
        };
        // Fail at start-up, not at the first email, if the TLS settings are unusable.
        if target.security != Security::Plain {
            target.tls_parameters().map_err(|e| {
                TransportSettingsError::CaFile(
                    ca_file.map(PathBuf::from).unwrap_or_default(),
                    e.to_string(),
                )
            })?;
            if target.security == Security::Implicit {
                target.rustls_config().map_err(|e| {
                    TransportSettingsError::CaFile(
                        ca_file.map(PathBuf::from).unwrap_or_default(),
                        e,
                    )
                })?;
            }
        }
        Ok(target)
    }

    fn tls_parameters(&self) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        let mut builder = TlsParameters::builder(self.host.clone());
        if let Some(pem) = &self.extra_ca {
            builder = builder.add_root_certificate(Certificate::from_pem(pem)?);
        }
        builder.build_rustls()
    }

    fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &self.extra_ca {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| e.to_string())?;
                roots.add(cert).map_err(|e| e.to_string())?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A TLS stream lettre can speak SMTP over.
#[derive(Debug)]
struct TlsTcp(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl tokio::io::AsyncRead for TlsTcp {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsTcp {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connections idle longer than this are checked with NOOP before reuse: servers drop idle
/// clients, and a send on a dead connection would cost the message a retry.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(10);

/// How long a closing connection waits for the answer to its QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(2);

/// After a failed connection set-up, the first wait before the pool tries again; it doubles
/// with each failure in a row, up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// A bounded pool of SMTP connections, each carrying one message at a time.
///
/// Each connection is lettre's [`AsyncSmtpConnection`] speaking over a socket the pool opened
/// with `TCP_NODELAY` (see `docs/decisions/smtp-pool-nodelay.md`). lettre says EHLO once per
/// connection (again after STARTTLS) and sends each message with MAIL, RCPT, DATA, content.
pub struct SmtpPool {
    target: SmtpTarget,
    hello: ClientId,
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    health: Arc<SmtpHealth>,
}

impl std::fmt::Debug for SmtpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpPool")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SmtpPool {
    pub fn new(target: SmtpTarget, size: usize, timeout: Duration) -> Self {
        Self {
            target,
            hello: ClientId::default(),
            timeout,
            permits: Semaphore::new(size.max(1)),
            idle: Mutex::new(Vec::new()),
            health: Arc::new(SmtpHealth::default()),
        }
    }

    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::Transient("the SMTP pool is closed".into()))?;
        let mut connection = match self.take_idle().await {
            Some(connection) => connection,
            None => self.open().await?,
        };
        let sent = tokio::time::timeout(
            self.timeout,
            connection.send(message.envelope(), &message.formatted()),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                self.idle.lock().await.push((connection, Instant::now()));
                Ok(())
            }
            Ok(Err(err)) => {
                // After any error the session's state is uncertain (lettre marks its own
                // sends broken): the connection is not reused.
                let _ = tokio::time::timeout(QUIT_WAIT, connection.abort()).await;
                Err(classify(&err))
            }
            Err(_) => Err(SendError::Transient(format!(
                "SMTP send timed out after {:?}",
                self.timeout
            ))),
        }
    }

    async fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut connection, since) = self.idle.lock().await.pop()?;
            if connection.has_broken() {
                continue;
            }
            if since.elapsed() < CHECK_AFTER_IDLE || connection.test_connected().await {
                return Some(connection);
            }
        }
    }

    /// Opens a connection unless set-up failed a moment ago: then every send fails at once
    /// with that failure until the next try is due, so an outage costs one attempt (and one
    /// log line) per wait rather than one per message.
    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        self.health.admit().map_err(SendError::Connection)?;
        let opened = tokio::time::timeout(self.timeout, self.connect())
            .await
            .unwrap_or_else(|_| {
                Err(ConnectError {
                    stage: ConnectStage::Timeout,
                    detail: format!("no session within {:?} (SMTP_TIMEOUT)", self.timeout),
                })
            });
        match opened {
            Ok(connection) => {
                self.health.connected();
                Ok(connection)
            }
            Err(err) => {
                self.health.failed(&err, &self.target);
                Err(SendError::Connection(err))
            }
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, ConnectError> {
        let target = &self.target;
        let tcp = open_socket(&target.host, target.port).await?;
        let mut connection = match target.security {
            Security::Implicit => {
                let config = target
                    .rustls_config()
                    .map_err(|e| ConnectStage::Tls.error(e))?;
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| ConnectStage::Tls.error(format!("server name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ConnectStage::Tls.error(format!("handshake: {e}")))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(TlsTcp(tls)), &self.hello)
                    .await
            }
            _ => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello).await,
        }
        .map_err(|e| ConnectStage::Hello.error(e))?;
        let starttls = match target.security {
            Security::StartTls => true,
            Security::Opportunistic => connection.can_starttls(),
            Security::Plain | Security::Implicit => false,
        };
        if starttls {
            let parameters = target
                .tls_parameters()
                .map_err(|e| ConnectStage::StartTls.error(format!("TLS settings: {e}")))?;
            connection
                .starttls(parameters, &self.hello)
                .await
                .map_err(|e| ConnectStage::StartTls.error(e))?;
        }
        if let Some(credentials) = &target.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| ConnectStage::Auth.error(e))?;
        }
        Ok(connection)
    }

    async fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().await);
        for (mut connection, _) in idle {
            let _ = tokio::time::timeout(QUIT_WAIT, connection.quit()).await;
        }
    }
}

/// A socket that sends each write at once: without TCP_NODELAY, lettre's separate write of
/// the final `.` line waits for the server's delayed ACK, ~40 ms per message.
async fn open_socket(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| ConnectStage::Tcp.error(e))?;
    tcp.set_nodelay(true)
        .map_err(|e| ConnectStage::Tcp.error(format!("setting TCP_NODELAY: {e}")))?;
    Ok(tcp)
}

/// A 5xx is permanent only here, as the answer to MAIL FROM, RCPT TO or DATA about this
/// message; 4xx, I/O and connection errors are worth another attempt.
fn classify(err: &lettre::transport::smtp::Error) -> SendError {
    if err.is_permanent() {
        SendError::Permanent(err.to_string())
    } else {
        SendError::Transient(err.to_string())
    }
}

/// The step of connection set-up that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStage {
    /// Reaching the server over TCP.
    Tcp,
    /// The TLS handshake of `smtps://`.
    Tls,
    /// The server's greeting or its answer to EHLO.
    Hello,
    StartTls,
    Auth,
    /// Set-up took longer than `SMTP_TIMEOUT`.
    Timeout,
}

impl ConnectStage {
    /// The `stage` label of `worker_smtp_connect_failures_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Hello => "hello",
            Self::StartTls => "starttls",
            Self::Auth => "auth",
            Self::Timeout => "timeout",
        }
    }

    fn error(self, detail: impl std::fmt::Display) -> ConnectError {
        ConnectError {
            stage: self,
            detail: detail.to_string(),
        }
    }
}

/// Connection set-up failed: a fault of the server or of our settings, never of a message,
/// whatever the reply code (a 5xx to EHLO or AUTH included).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SMTP connection set-up failed at {}: {detail}", stage.as_str())]
pub struct ConnectError {
    pub stage: ConnectStage,
    pub detail: String,
}

/// Whether the SMTP server takes our connections, for `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct SmtpHealth {
    state: std::sync::Mutex<Option<Outage>>,
    /// `worker_smtp_connect_failures_total`, registered by the worker's metrics.
    pub failures: Family<StageLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

/// Set-up failing since `since`; the next try is due at `retry_at`.
#[derive(Debug)]
struct Outage {
    error: ConnectError,
    since: Instant,
    retry_at: Instant,
    wait: Duration,
}

impl SmtpHealth {
    /// Why no connection can be had now, if set-up is failing.
    pub fn problem(&self) -> Option<ConnectError> {
        self.lock().as_ref().map(|outage| outage.error.clone())
    }

    /// Connection set-ups that failed at `stage` so far.
    pub fn failures(&self, stage: ConnectStage) -> u64 {
        self.failures
            .get_or_create(&StageLabels {
                stage: stage.as_str(),
            })
            .get()
    }

    /// Lets a set-up go ahead, or fails with the last failure while the wait runs. A try that
    /// goes ahead moves the next one a wait further, so only one is under way at a time.
    fn admit(&self) -> Result<(), ConnectError> {
        let mut state = self.lock();
        let Some(outage) = state.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        if now < outage.retry_at {
            return Err(outage.error.clone());
        }
        outage.retry_at = now + outage.wait;
        Ok(())
    }

    fn connected(&self) {
        if let Some(outage) = self.lock().take() {
            tracing::info!(
                down_for = ?outage.since.elapsed(),
                "the SMTP server takes connections again"
            );
        }
    }

    fn failed(&self, error: &ConnectError, target: &SmtpTarget) {
        self.failures
            .get_or_create(&StageLabels {
                stage: error.stage.as_str(),
            })
            .inc();
        let mut state = self.lock();
        let now = Instant::now();
        let wait = state
            .as_ref()
            .map_or(RECONNECT_FIRST, |o| (o.wait * 2).min(RECONNECT_MAX));
        let since = state.as_ref().map_or(now, |o| o.since);
        tracing::warn!(
            server = %format_args!("{}:{}", target.host, target.port),
            stage = error.stage.as_str(),
            error = %error.detail,
            next_try_in = ?wait,
            "cannot open an SMTP session; mail waits, nothing is dead-lettered"
        );
        *state = Some(Outage {
            error: error.clone(),
            since,
            retry_at: now + wait,
            wait,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        // A panic while holding this lock leaves a consistent Option behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_choose_security_and_default_ports() {
        let plain = SmtpTarget::parse("smtp://mail.example.com", None).expect("url");
        assert_eq!((plain.security, plain.port), (Security::Plain, 25));
        let starttls =
            SmtpTarget::parse("smtp://mail.example.com?tls=required", None).expect("url");
        assert_eq!(
            (starttls.security, starttls.port),
            (Security::StartTls, 587)
        );
        let implicit = SmtpTarget::parse("smtps://mail.example.com", None).expect("url");
        assert_eq!(
            (implicit.security, implicit.port),
            (Security::Implicit, 465)
        );
        let explicit = SmtpTarget::parse("smtp://127.0.0.1:2525", None).expect("url");
        assert_eq!((explicit.host.as_str(), explicit.port), ("127.0.0.1", 2525));
    }

    #[test]
    fn credentials_are_percent_decoded_and_never_printed() {
        let target = SmtpTarget::parse(
            "smtp://user%40example.com:p%40ss+word@mail.example.com",
            None,
        )
        .expect("url");
        let credentials = target.credentials.clone().expect("credentials");
        assert_eq!(
            credentials,
            Credentials::new("user@example.com".into(), "p@ss+word".into())
        );
        assert!(!format!("{target:?}").contains("p@ss"));
    }

    #[tokio::test]
    async fn pool_sockets_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let port = listener.local_addr().expect("addr").port();
        let socket = open_socket("127.0.0.1", port).await.expect("connect");
        assert!(socket.nodelay().expect("nodelay"));
    }

    #[tokio::test]
    async fn a_refused_tcp_connection_is_a_connection_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let failed = open_socket("127.0.0.1", port).await;
        assert!(matches!(
            failed,
            Err(ConnectError {
                stage: ConnectStage::Tcp,
                ..
            })
        ));
    }

    #[test]
    fn a_failing_set_up_is_tried_again_only_after_a_growing_wait() {
        let health = SmtpHealth::default();
        let target = SmtpTarget::parse("smtp://127.0.0.1:2525", None).expect("url");
        assert!(health.admit().is_ok());
        let refused = ConnectStage::Hello.error("554 5.7.1 no");
        health.failed(&refused, &target);
        assert_eq!(health.problem(), Some(refused.clone()));
        assert_eq!(health.admit(), Err(refused.clone()), "within the wait");
        assert_eq!(health.failures(ConnectStage::Hello), 1);
        {
            let mut state = health.lock();
            let outage = state.as_mut().expect("outage");
            outage.retry_at = Instant::now();
        }
        assert!(health.admit().is_ok(), "the wait is over: one try");
        assert!(health.admit().is_err(), "and only one");
        health.failed(&refused, &target);
        let wait = health.lock().as_ref().map(|o| o.wait);
        assert_eq!(wait, Some(RECONNECT_FIRST * 2));
        health.connected();
        assert_eq!(health.problem(), None);
        assert!(health.admit().is_ok());
    }

    #[test]
    fn bad_smtp_urls_are_refused() {
        assert!(matches!(
            SmtpTarget::parse("http://x", None),
            Err(TransportSettingsError::Scheme(_))
        ));
        assert!(matches!(
            SmtpTarget::parse("smtp://x?tls=maybe", None),
            Err(TransportSettingsError::TlsMode(_))
        ));
        assert!(SmtpTarget::parse("not a url", None).is_err());
    }
}
