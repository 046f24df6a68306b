//! The worker from outside: requests becoming mails in a real SMTP server, the delivery
//! rules, faults of one worker, operating it, starting and stopping, and the whole system as
//! the compose file runs it. One test binary, a module per subject.

mod compose_native;
mod lifecycle;
mod operating;
mod policy;
mod reports;
mod smtp;
mod startup;
mod worker;
mod worker_faults;
