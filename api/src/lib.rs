//! The api: `POST /auth/forgot-password` in front of NATS JetStream.
//!
//! It also completes resets: `POST /auth/reset-password/verify` checks a mailed token and
//! `POST /auth/reset-password` sets the new password ([`reset`]).
//!
//! A request is authenticated (Bearer key), rate-limited per client IP, parsed from JSON, XML
//! or a form into an [`AccountRef`](shared::account::AccountRef), and published as a
//! [`ResetRequested`](shared::event::ResetRequested) event. The client hears 200 only once
//! JetStream has acknowledged the event. The api never looks the account up, so neither its
//! answer nor its timing tells whether the account exists.
//!
//! Layout: [`config`] (settings), [`startup`] (building and running the server, shared by
//! `main` and the tests), [`routes`] (the request pipeline, one file per endpoint),
//! [`http`] (body, auth, limits, replies), [`reset`] (completing a reset: policy, hashing,
//! the outbox relay), [`page`] (the hosted reset page and its routes), [`publish`],
//! [`metrics`].

#![warn(clippy::too_many_lines)]

pub mod config;
pub mod http;
pub mod metrics;
pub mod page;
pub mod publish;
pub mod reset;
pub mod routes;
pub mod startup;

pub use config::Settings;
pub use startup::Application;
