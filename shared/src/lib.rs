//! What the api and the worker agree on.
//!
//! The api publishes a [`ResetRequested`](event::ResetRequested) event for every accepted
//! `POST /auth/forgot-password`; the worker consumes it. This crate owns that contract and the
//! few pieces both binaries need to honour it:
//!
//! - [`event`]: the versioned JSON event, its headers and its decoder;
//! - [`account`]: [`AccountRef`](account::AccountRef), the validated `id` a request names;
//! - [`code`]: the one-time code a reset mail carries beside its link, keyed by `RESET_CODE_KEY`;
//! - [`report`]: the report links in the mails ("I did not ask for this"), keyed alike;
//! - [`stream`]: subject names and the JetStream stream both sides create or update;
//! - [`http`]: serving HTTP/1.1 and the `{code, message}` answer, for both processes;
//! - [`nats`]: connecting to NATS with the same options everywhere;
//! - [`retry`]: the backoff for waiting on a dependency;
//! - [`settings`]: reading settings from the environment, errors named by variable;
//! - [`db`]: the PostgreSQL schema (migrations) both binaries use;
//! - [`logging`]: `tracing` set-up (`LOG_FORMAT`) and masking of personal data in logs.

#![warn(clippy::too_many_lines)]

pub mod account;
pub mod code;
pub mod db;
pub mod event;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod report;
pub mod retry;
pub mod settings;
pub mod stream;

/// Resolves on the first SIGINT or SIGTERM: what both binaries stop on.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
