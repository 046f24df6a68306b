//! The SMTP connection pool: sockets with TCP_NODELAY under lettre's connection, and what the
//! pool knows of the server's health.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::Message;
use lettre::transport::smtp::{
    authentication::Mechanism,
    client::{AsyncSmtpConnection, AsyncTokioStream},
    extension::ClientId,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::{Security, SendError, SmtpTarget, Window};

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
    pub(super) target: SmtpTarget,
    hello: ClientId,
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    pub(super) health: Arc<SmtpHealth>,
    /// Cancelled when the worker begins to stop.
    stopping: CancellationToken,
    /// Told each time a connection goes back to `idle`.
    returned: Notify,
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
            stopping: CancellationToken::new(),
            returned: Notify::new(),
        }
    }

    /// Sends waiting for a connection give up from now on; hand-overs under way go on.
    pub(super) fn begin_stop(&self) {
        self.stopping.cancel();
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `message` on a pooled connection, unless none is in hand by the window's
    /// `start_by`, or the worker begins to stop ([`SmtpPool::begin_stop`]) before one is: the
    /// wait for a connection, which a slow server can stretch to SMTP_TIMEOUT, never holds a
    /// stop up. The server's answers are waited for until the window's `answered_by`, and at
    /// least SMTP_TIMEOUT.
    pub(super) async fn send(&self, message: &Message, window: Window) -> Result<(), SendError> {
        let ready = async {
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| SendError::Transient("the SMTP pool is closed".into()))?;
            Ok::<_, SendError>((permit, self.connection().await?))
        };
        let (_permit, mut connection) = tokio::select! {
            biased;
            ready = ready => ready?,
            () = self.stopping.cancelled() => return Err(SendError::Stopping),
        };
        let began = Instant::now();
        if began > window.start_by {
            self.give_back(connection).await;
            return Err(SendError::TooLate);
        }
        crate::waiting::now("the SMTP server's answer");
        let answered_by = window.answered_by.max(began + self.timeout);
        let sent = tokio::time::timeout_at(
            answered_by.into(),
            connection.send(message.envelope(), &message.formatted()),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                self.give_back(connection).await;
                Ok(())
            }
            Ok(Err(err)) => {
                // After any error the session's state is uncertain (lettre marks its own
                // sends broken): the connection is not reused.
                let _ = tokio::time::timeout(QUIT_WAIT, connection.abort()).await;
                Err(classify(&err))
            }
            Err(_) => Err(SendError::Transient(format!(
                "no answer from the SMTP server within {:?}; it may have taken the mail, \
                 which a retry then sends twice",
                answered_by - began
            ))),
        }
    }

    /// An idle connection, else a new one, else whichever comes first: the new one, or one
    /// that another send gives back meanwhile. A server slow to take connections (a full
    /// listen backlog leaves a connection without its greeting for many seconds) then costs
    /// no mail more than the time until some other connection is free; the set-up it waited
    /// on is dropped.
    async fn connection(&self) -> Result<AsyncSmtpConnection, SendError> {
        if let Some(connection) = self.take_idle().await {
            return Ok(connection);
        }
        let opening = self.open();
        tokio::pin!(opening);
        loop {
            // Asked for before the idle list is looked at again, so that a connection given
            // back in between is not missed (Notify keeps one wake-up for a later waiter).
            let returned = self.returned.notified();
            tokio::select! {
                opened = &mut opening => return opened,
                () = returned => {
                    if let Some(connection) = self.take_idle().await {
                        return Ok(connection);
                    }
                }
            }
        }
    }

    /// Opens the pool's connections ahead of the first mail, so that a worker that joins
    /// just before a burst has its sessions ready rather than setting them up while the
    /// burst waits. Runs beside the sends: each opening holds one of the pool's places, so
    /// the pool never holds more than its size, and a send finds the connection when it is
    /// ready. One first, then the rest at once, so that a server that is away costs one try.
    /// Ends when the worker begins to stop.
    pub(super) async fn warm(&self) {
        let warming = async {
            let Some(first) = self.open_ahead().await else {
                return;
            };
            self.give_back(first).await;
            let rest = self.permits.available_permits().saturating_sub(1);
            let opened = futures::future::join_all((0..rest).map(|_| self.open_ahead())).await;
            for connection in opened.into_iter().flatten() {
                self.give_back(connection).await;
            }
        };
        tokio::select! {
            () = warming => {}
            () = self.stopping.cancelled() => {}
        }
    }

    /// A head start, not a send: a failure is logged for the operator but not taken as an
    /// outage, as the server may be up by the first mail, which then opens its own session
    /// without waiting out a retry.
    async fn open_ahead(&self) -> Option<AsyncSmtpConnection> {
        let _place = self.permits.try_acquire().ok()?;
        match tokio::time::timeout(self.timeout, self.connect()).await {
            Ok(Ok(connection)) => {
                self.health.connected();
                Some(connection)
            }
            Ok(Err(err)) => {
                tracing::info!(
                    stage = err.stage.as_str(),
                    error = %err.detail,
                    "no SMTP session opened ahead of the first mail"
                );
                None
            }
            Err(_) => None,
        }
    }

    /// Puts a connection that finished its send back for the next one.
    async fn give_back(&self, connection: AsyncSmtpConnection) {
        self.idle.lock().await.push((connection, Instant::now()));
        self.returned.notify_one();
    }

    async fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut connection, since) = self.idle.lock().await.pop()?;
            if connection.has_broken() {
                continue;
            }
            if since.elapsed() < CHECK_AFTER_IDLE {
                return Some(connection);
            }
            // A NOOP that gets no answer is a dead connection, not a wait without end.
            let alive = tokio::time::timeout(QUIT_WAIT, connection.test_connected()).await;
            if alive.unwrap_or(false) {
                return Some(connection);
            }
        }
    }

    /// Opens a connection unless set-up failed a moment ago: then every send fails at once
    /// with that failure until the next try is due, so an outage costs one attempt (and one
    /// log line) per wait rather than one per message.
    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        let began = self
            .health
            .admit(self.timeout)
            .map_err(SendError::Connection)?;
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
                self.health.failed(&err, &self.target, began);
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

    /// Says QUIT on every idle connection at once: one after another, a server slow to answer
    /// QUIT would hold the worker's stop for `QUIT_WAIT` per connection.
    pub(super) async fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().await);
        let quits = idle.into_iter().map(|(mut connection, _)| async move {
            let _ = tokio::time::timeout(QUIT_WAIT, connection.quit()).await;
        });
        futures::future::join_all(quits).await;
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
            // Servers quote addresses back (a refused AUTH user, say): logged and shown on
            // /readyz, so masked like every address in the logs.
            detail: shared::logging::mask_addresses(&detail.to_string()),
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
    state: std::sync::Mutex<HealthState>,
    /// `worker_smtp_connect_failures_total`, registered by the worker's metrics.
    pub failures: Family<StageLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

#[derive(Debug, Default)]
struct HealthState {
    outage: Option<Outage>,
    /// When a set-up last succeeded: a failure of one begun before that is old news.
    last_success: Option<Instant>,
}

/// Set-up failing since `since`; the next try is due at `retry_at`.
#[derive(Debug)]
struct Outage {
    error: ConnectError,
    since: Instant,
    retry_at: Instant,
    wait: Duration,
    /// The one try under way during the outage, and since when.
    trying_since: Option<Instant>,
}

impl SmtpHealth {
    /// Why no connection can be had now, if set-up is failing.
    pub fn problem(&self) -> Option<ConnectError> {
        self.lock()
            .outage
            .as_ref()
            .map(|outage| outage.error.clone())
    }

    /// Connection set-ups that failed at `stage` so far.
    pub fn failures(&self, stage: ConnectStage) -> u64 {
        self.failures
            .get_or_create(&StageLabels {
                stage: stage.as_str(),
            })
            .get()
    }

    /// Lets a set-up go ahead, returning when it began, or fails with the last failure. During
    /// an outage one try goes ahead once the wait is over, and no other until it ends or
    /// `longest` (the set-up's own deadline) has passed: a try whose task was cancelled
    /// never reports back.
    fn admit(&self, longest: Duration) -> Result<Instant, ConnectError> {
        let mut state = self.lock();
        let now = Instant::now();
        let Some(outage) = state.outage.as_mut() else {
            return Ok(now);
        };
        let trying = outage
            .trying_since
            .is_some_and(|since| now.duration_since(since) < longest);
        if now < outage.retry_at || trying {
            return Err(outage.error.clone());
        }
        outage.trying_since = Some(now);
        Ok(now)
    }

    fn connected(&self) {
        let mut state = self.lock();
        state.last_success = Some(Instant::now());
        if let Some(outage) = state.outage.take() {
            tracing::info!(
                down_for = ?outage.since.elapsed(),
                "the SMTP server takes connections again"
            );
        }
    }

    /// A set-up begun at `began` failed.
    fn failed(&self, error: &ConnectError, target: &SmtpTarget, began: Instant) {
        self.failures
            .get_or_create(&StageLabels {
                stage: error.stage.as_str(),
            })
            .inc();
        let mut state = self.lock();
        if state.last_success.is_some_and(|success| success > began) {
            return;
        }
        let now = Instant::now();
        let wait = state
            .outage
            .as_ref()
            .map_or(RECONNECT_FIRST, |o| (o.wait * 2).min(RECONNECT_MAX));
        let since = state.outage.as_ref().map_or(now, |o| o.since);
        tracing::warn!(
            server = %format_args!("{}:{}", target.host, target.port),
            stage = error.stage.as_str(),
            error = %error.detail,
            next_try_in = ?wait,
            "cannot open an SMTP session; mail waits, nothing is dead-lettered"
        );
        state.outage = Some(Outage {
            error: error.clone(),
            since,
            retry_at: now + wait,
            wait,
            trying_since: None,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // A panic while holding this lock leaves a consistent state behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let longest = Duration::from_secs(30);
        let began = health.admit(longest).expect("no outage yet");
        let refused = ConnectStage::Hello.error("554 5.7.1 no");
        health.failed(&refused, &target, began);
        assert_eq!(health.problem(), Some(refused.clone()));
        assert_eq!(
            health.admit(longest),
            Err(refused.clone()),
            "within the wait"
        );
        assert_eq!(health.failures(ConnectStage::Hello), 1);
        if let Some(outage) = health.lock().outage.as_mut() {
            outage.retry_at = Instant::now();
        }
        let began = health.admit(longest).expect("the wait is over: one try");
        assert!(health.admit(longest).is_err(), "and only one while it runs");
        assert!(
            health.admit(Duration::ZERO).is_ok(),
            "unless it has outlived its own deadline"
        );
        health.failed(&refused, &target, began);
        let wait = health.lock().outage.as_ref().map(|o| o.wait);
        assert_eq!(wait, Some(RECONNECT_FIRST * 2));
        health.connected();
        assert_eq!(health.problem(), None);
        // A slow failure of a try begun before that success changes nothing.
        health.failed(&refused, &target, began);
        assert_eq!(health.problem(), None);
        assert!(health.admit(longest).is_ok());
    }
}
