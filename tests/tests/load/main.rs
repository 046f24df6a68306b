//! The system under load: stops under load, workers scaled out, both nats-server versions,
//! and the fault suite (ignored here; `faults/run` runs it). One test binary, a module per
//! subject.

mod faults;
mod graceful_stop;
mod nats_versions;
mod scaled_out;
