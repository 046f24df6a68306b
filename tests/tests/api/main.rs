//! The api from outside: the front door, completing a reset, the hosted page (over HTTP and
//! in a real browser), the published API description, credentials kept out of sight, and the
//! deployment files. One test binary, a module per subject.

mod browser;
mod deploy;
mod forgot_password;
mod kubernetes;
mod openapi;
mod outsiders;
mod reset_page;
mod reset_password;
mod secrets;
