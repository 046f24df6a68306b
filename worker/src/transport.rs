//! Where emails go: an SMTP server through our own connection pool, or an outbox folder.
//!
//! The pool opens its connections itself rather than through lettre's pooled transport:
//! lettre 0.11.23 never sets TCP_NODELAY, and because it writes the body and the final `.`
//! separately, every message then waits for the server's delayed ACK (~40 ms, about 23 mails/s
//! per connection). Here every socket gets `TCP_NODELAY` before lettre's lower-level
//! [`AsyncSmtpConnection`] speaks SMTP over it.
//!
//! Where the server offers PIPELINING (RFC 2920), a message costs two round trips instead of
//! four: `MAIL`, `RCPT` and `DATA` go in one write, and the content with its final `.` in a
//! second. Each round trip is a write, a wake-up and a read on both sides; on a machine the
//! worker shares with its relay, halving them is a good part of what a mail costs.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::Message;
use lettre::address::Envelope;
use lettre::transport::smtp::{
    Error as SmtpError,
    authentication::{Credentials, Mechanism},
    client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters},
    commands::{Data, Ehlo, Mail, Rcpt},
    extension::ClientId,
    response::Response,
};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};
use tokio_rustls::rustls;

use crate::config::MailSettings;

/// Why a message was not handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: a 4xx answer, a timeout, a refused or dropped connection.
    #[error("{0}")]
    Transient(String),
    /// Not worth retrying: a 5xx answer.
    #[error("{0}")]
    Permanent(String),
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

/// A bounded pool of SMTP connections, each carrying one message at a time.
pub struct SmtpPool {
    target: SmtpTarget,
    hello: ClientId,
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<(Connection, Instant)>>,
}

/// An open SMTP session and what its server offered.
struct Connection {
    smtp: AsyncSmtpConnection,
    pipelining: bool,
    /// The server took DATA and is reading message content.
    in_content: bool,
}

/// How long a closing connection waits for the answer to its QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(2);

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
            None => tokio::time::timeout(self.timeout, self.connect())
                .await
                .map_err(|_| {
                    SendError::Transient(format!("SMTP connect timed out after {:?}", self.timeout))
                })??,
        };
        let body = message.formatted();
        let sent =
            tokio::time::timeout(self.timeout, connection.send(message.envelope(), &body)).await;
        match sent {
            Ok(Ok(())) => {
                self.idle.lock().await.push((connection, Instant::now()));
                Ok(())
            }
            Ok(Err(err)) => {
                // After any error the session's state is uncertain (and lettre marks its own
                // sends broken): the connection is not reused.
                connection.discard().await;
                Err(err)
            }
            Err(_) => Err(SendError::Transient(format!(
                "SMTP send timed out after {:?}",
                self.timeout
            ))),
        }
    }

    async fn take_idle(&self) -> Option<Connection> {
        loop {
            let (mut connection, since) = self.idle.lock().await.pop()?;
            if connection.smtp.has_broken() {
                continue;
            }
            if since.elapsed() < CHECK_AFTER_IDLE || connection.smtp.test_connected().await {
                return Some(connection);
            }
        }
    }

    async fn connect(&self) -> Result<Connection, SendError> {
        let target = &self.target;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| {
                SendError::Transient(format!(
                    "connecting to {}:{}: {e}",
                    target.host, target.port
                ))
            })?;
        tcp.set_nodelay(true)
            .map_err(|e| SendError::Transient(format!("setting TCP_NODELAY: {e}")))?;
        let mut connection = match target.security {
            Security::Implicit => {
                let config = target.rustls_config().map_err(SendError::Transient)?;
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| SendError::Transient(format!("TLS server name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| SendError::Transient(format!("TLS handshake: {e}")))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(TlsTcp(tls)), &self.hello)
                    .await
                    .map_err(|e| classify(&e))?
            }
            _ => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                .await
                .map_err(|e| classify(&e))?,
        };
        let starttls = match target.security {
            Security::StartTls => true,
            Security::Opportunistic => connection.can_starttls(),
            Security::Plain | Security::Implicit => false,
        };
        if starttls {
            let parameters = target
                .tls_parameters()
                .map_err(|e| SendError::Transient(format!("TLS settings: {e}")))?;
            connection
                .starttls(parameters, &self.hello)
                .await
                .map_err(|e| classify(&e))?;
        }
        // Before AUTH: a second EHLO resets the session, and some servers forget the login.
        let pipelining = offers_pipelining(&mut connection, &self.hello)
            .await
            .map_err(|e| classify(&e))?;
        if let Some(credentials) = &target.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(Connection {
            smtp: connection,
            pipelining,
            in_content: false,
        })
    }

    async fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().await);
        for (mut connection, _) in idle {
            let _ = tokio::time::timeout(QUIT_WAIT, connection.smtp.quit()).await;
        }
    }
}

/// Whether the server lists PIPELINING in its EHLO answer. lettre keeps only the keywords it
/// uses itself, so the pool asks once more when it opens a connection.
async fn offers_pipelining(
    connection: &mut AsyncSmtpConnection,
    hello: &ClientId,
) -> Result<bool, SmtpError> {
    let answer = connection.command(Ehlo::new(hello.clone())).await?;
    Ok(answer.message().any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
    }))
}

impl Connection {
    async fn send(&mut self, envelope: &Envelope, content: &[u8]) -> Result<(), SendError> {
        // lettre's own send covers what the pipelined one leaves out: addresses or content
        // that need SMTPUTF8 or 8BITMIME.
        let ascii = |address: &lettre::Address| AsRef::<str>::as_ref(address).is_ascii();
        let plain = envelope.from().is_none_or(ascii) && envelope.to().iter().all(ascii);
        match std::str::from_utf8(content) {
            Ok(text) if self.pipelining && plain && text.is_ascii() => {
                self.send_pipelined(envelope, text).await
            }
            _ => self
                .smtp
                .send(envelope, content)
                .await
                .map(drop)
                .map_err(|e| classify(&e)),
        }
    }

    /// `MAIL`, every `RCPT` and `DATA` in one write, then their answers in order; the first
    /// refusal is the outcome. Only after `DATA`'s 354, and no refusal, does the content go,
    /// in one write with its final `.` line.
    async fn send_pipelined(
        &mut self,
        envelope: &Envelope,
        content: &str,
    ) -> Result<(), SendError> {
        use std::fmt::Write as _;
        // Writing into a String cannot fail.
        let mut commands = Mail::new(envelope.from().cloned(), Vec::new()).to_string();
        for to in envelope.to() {
            let _ = write!(commands, "{}", Rcpt::new(to.clone(), Vec::new()));
        }
        let _ = write!(commands, "{Data}");
        // One answer for MAIL, one per RCPT, one for DATA. After a failed connection (not a
        // refusal) no further answer comes.
        let answers = envelope.to().len() + 2;
        let broken = |reply: &Result<Response, SmtpError>| {
            reply
                .as_ref()
                .is_err_and(|e| !e.is_transient() && !e.is_permanent())
        };
        let mut replies = vec![self.smtp.command(commands).await];
        while replies.len() < answers && !replies.last().is_some_and(broken) {
            replies.push(self.smtp.read_response().await);
        }
        let data_accepted = replies.len() == answers
            && replies
                .last()
                .is_some_and(|data| data.as_ref().is_ok_and(|d| d.has_code(354)));
        if let Some(err) = replies.iter().find_map(|reply| reply.as_ref().err()) {
            // A server may take DATA even though a recipient was refused (RFC 2920 allows
            // it). It then reads message content, where a QUIT would be one more line of it.
            self.in_content = data_accepted;
            return Err(classify(err));
        }
        if !data_accepted {
            return Err(SendError::Transient(
                "the server did not answer DATA with 354".into(),
            ));
        }
        self.smtp
            .command(DotStuffed(content))
            .await
            .map(drop)
            .map_err(|e| classify(&e))
    }

    /// Closes the connection after a failed send. It says QUIT, waiting briefly for the
    /// answer, unless the server is reading message content: then the connection is only
    /// dropped, and the server discards the unfinished message.
    async fn discard(mut self) {
        if !self.in_content {
            let _ = tokio::time::timeout(QUIT_WAIT, self.smtp.abort()).await;
        }
    }
}

/// Message content as it goes after `DATA`: a `.` opening a line is doubled (RFC 5321
/// 4.5.2), and a line holding only `.` ends it.
struct DotStuffed<'a>(&'a str);

impl std::fmt::Display for DotStuffed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        if rest.starts_with('.') {
            f.write_str(".")?;
        }
        while let Some(at) = rest.find("\r\n.") {
            f.write_str(&rest[..at + 3])?;
            f.write_str(".")?;
            rest = &rest[at + 3..];
        }
        f.write_str(rest)?;
        f.write_str("\r\n.\r\n")
    }
}

/// 5xx is permanent; 4xx, I/O and connection errors are worth another attempt.
fn classify(err: &lettre::transport::smtp::Error) -> SendError {
    if err.is_permanent() {
        SendError::Permanent(err.to_string())
    } else {
        SendError::Transient(err.to_string())
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

    #[test]
    fn content_lines_opening_with_a_dot_are_stuffed_and_a_dot_line_ends_it() {
        let stuffed = |content: &str| DotStuffed(content).to_string();
        assert_eq!(stuffed("plain\r\ntext"), "plain\r\ntext\r\n.\r\n");
        assert_eq!(stuffed(".first\r\n"), "..first\r\n\r\n.\r\n");
        assert_eq!(
            stuffed("a\r\n.\r\n..b\r\nc.d\n.e"),
            "a\r\n..\r\n...b\r\nc.d\n.e\r\n.\r\n"
        );
        assert_eq!(stuffed(""), "\r\n.\r\n");
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
