//! The worker: consumes `ResetRequested` events from JetStream and sends the reset emails.
//!
//! Several worker processes share one durable pull consumer; each handles up to
//! `WORKER_CONCURRENCY` events at once. For each event it finds the account, decides under a
//! per-account lock whether a mail may go (throttling), mints a token whose hash it stores,
//! renders the email from the templates and hands it to SMTP (or the outbox). Failures are
//! retried on JetStream's schedule and end in the dead letters (`{prefix}.dead`).
//!
//! Layout:
//! - [`startup`]: building the worker ([`Worker::build`]) and running it until a stop;
//! - [`config`] (settings) and [`cli`] (the command line);
//! - [`jetstream`]: the consumers, the consume loop (acks, retries, a clean stop) and the
//!   dead letters;
//! - [`handle`]: one event, knowing nothing of JetStream;
//! - [`store`]: PostgreSQL, with claims and sent records written in batches; [`tokens`];
//! - [`mail`]: composing the emails from the [`mail::templates`];
//! - [`transport`]: the SMTP pool, the SMTP target and the outbox;
//! - [`status`]: metrics and health on `WORKER_ADDR`; [`waiting`]: what a slow event waits for;
//! - [`ops`]: the operator commands, `replay` and `dead-letters`, a file each.

#![warn(clippy::too_many_lines)]

pub mod cli;
pub mod config;
pub mod handle;
pub mod jetstream;
pub mod mail;
pub mod ops;
pub mod startup;
pub mod status;
pub mod store;
pub mod tokens;
pub mod transport;
pub mod waiting;
pub mod webhooks;

pub use config::Settings;
pub use startup::{Worker, WorkerError, run};
