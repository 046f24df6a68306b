//! Building and running the api: one path for `main` and for the tests.

use backon::Retryable;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use shared::stream::{StreamSettings, ensure_stream};
use tokio::net::TcpListener;

use crate::{
    config::{HttpSettings, Settings},
    http::auth::{ApiKeys, ApiKeysError, PLACEHOLDER_KEY},
    http::limit::Limiter,
    page::{PageError, Pages},
    publish::Publisher,
    reset::{ResetSettingsError, Resets},
    routes::{self, AppState},
};

/// Why the api cannot start. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    ApiKeys(#[from] ApiKeysError),
    #[error(transparent)]
    Reset(#[from] ResetSettingsError),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    CodeKey(#[from] shared::code::CodeKeyError),
    #[error("cannot listen on {addr} (API_ADDR): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the NATS client for {url} (NATS_URL): {source}")]
    Nats {
        url: String,
        source: async_nats::ConnectError,
    },
}

/// A bound, ready-to-run api.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    http: HttpSettings,
    stream: StreamSettings,
    client: async_nats::Client,
}

impl Application {
    /// Binds the listener and sets up the NATS client. NATS need not be up yet: the client
    /// connects in the background, requests get 503 until it has, and `/readyz` tells.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let dev_mode = settings.auth.dev_mode;
        let keys = ApiKeys::from_settings(
            settings.auth.api_keys.as_ref().map(|k| k.0.as_str()),
            dev_mode,
        )?;
        if dev_mode {
            tracing::warn!(
                placeholder_accepted = keys.accepts(PLACEHOLDER_KEY),
                "API_DEV_MODE is on: a development instance, not for anything others can reach"
            );
        }
        let http = settings.http;
        let listener = TcpListener::bind(http.addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: http.addr,
                source,
            })?;
        let client = shared::nats::connect(&settings.nats, "password-reset-api")
            .await
            .map_err(|source| StartupError::Nats {
                url: settings.nats.shown(),
                source,
            })?;
        let publisher = Publisher::new(
            client.clone(),
            settings.stream.subjects().requested(),
            http.publish_timeout,
        );
        let metrics = crate::metrics::ApiMetrics::default();
        let resets = Resets::new(
            &settings.reset,
            settings.stream.subjects(),
            settings.code.key()?,
            metrics.funnel.clone(),
        )?;
        let pages = Pages::load(&settings.page, settings.reset.password_min_length)?;
        let state = Arc::new(AppState {
            keys,
            limiter: Limiter::new(http.rate_limit),
            publisher,
            stream_name: settings.stream.stream.clone(),
            max_body: http.max_body,
            body_timeout: http.body_timeout,
            proxies: http.trust_proxy.then(|| http.trusted_proxies.clone()),
            metrics,
            reset_limiter: Limiter::new(http.rate_limit),
            unauthenticated_limiter: Limiter::new(http.rate_limit),
            resets,
            changed_subject: settings.stream.subjects().changed(),
            reported_subject: settings.stream.subjects().reported(),
            pages,
        });
        let app = Self {
            listener,
            state,
            http,
            stream: settings.stream,
            client,
        };
        tracing::info!(
            addr = %app.local_addr(),
            clients = ?app.state.keys,
            subject = %app.stream.subjects().requested(),
            stream = %app.stream.stream,
            "api listening"
        );
        Ok(app)
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.http.addr)
    }

    /// Serves until `shutdown` resolves, then stops accepting, gives in-flight requests up to
    /// `API_SHUTDOWN_TIMEOUT` to finish their publish, and flushes the NATS client.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let background = [
            tokio::spawn(keep_stream_ensured(
                self.state.publisher.jetstream().clone(),
                self.stream.clone(),
            )),
            tokio::spawn(forget_idle_clients(self.state.clone())),
            tokio::spawn(keep_database_ready(self.state.clone())),
        ];

        let mut builder = shared::http::http1_builder(self.http.header_timeout);
        builder.max_buf_size(routes::HEAD_BUFFER);
        let state = self.state.clone();
        let make_service = move |peer| {
            let state = state.clone();
            service_fn(move |req| routes::handle(state.clone(), peer, req))
        };
        let drained = shared::http::serve(
            self.listener,
            builder,
            usize::try_from(self.http.max_connections).unwrap_or(usize::MAX),
            make_service,
            async {
                shutdown.await;
                tracing::info!("no longer accepting connections; finishing in-flight requests");
            },
            self.http.shutdown_timeout,
        )
        .await;
        if !drained {
            tracing::warn!(
                "in-flight requests still running after {:?}; exiting anyway",
                self.http.shutdown_timeout
            );
        }
        for task in background {
            task.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        tracing::info!("api stopped");
    }
}

/// Creates or updates the stream, retrying until NATS answers. Until then publishes fail
/// with 503 and `/readyz` says why.
async fn keep_stream_ensured(js: async_nats::jetstream::Context, settings: StreamSettings) {
    let ensured = (|| ensure_stream(&js, &settings))
        .retry(shared::retry::forever(
            Duration::from_millis(200),
            Duration::from_secs(10),
        ))
        .notify(|err, delay| {
            tracing::warn!(error = %err, retry_in = ?delay, "event stream not ready");
        })
        .await;
    if ensured.is_ok() {
        tracing::info!(stream = %settings.stream, "event stream ready");
    }
}

/// Applies the migrations once PostgreSQL answers, then relays the event outbox: events
/// committed with a password change but not published at once (NATS down, the api stopped).
async fn keep_database_ready(state: Arc<AppState>) {
    let migrated = (|| shared::db::migrate(state.resets.pool()))
        .retry(shared::retry::forever(
            Duration::from_millis(500),
            Duration::from_secs(30),
        ))
        // A database migrated by another version of the schema will not change by waiting.
        .when(|err| !err.is_conflict())
        .notify(|err, delay| {
            tracing::warn!(error = %err, retry_in = ?delay, "database not ready; reset endpoints answer 503");
        })
        .await;
    if let Err(err) = migrated {
        tracing::error!(error = %err, "the database holds another schema: recreate it; reset endpoints answer 503");
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        match state.resets.relay_outbox(&state.publisher).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(published = n, "relayed queued events"),
            Err(err) => tracing::debug!(error = %err, "outbox relay"),
        }
    }
}

async fn forget_idle_clients(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        state.limiter.forget_idle();
        state.reset_limiter.forget_idle();
        state.unauthenticated_limiter.forget_idle();
    }
}
