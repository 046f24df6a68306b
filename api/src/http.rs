//! The HTTP plumbing every route shares: reading bodies in any of the accepted forms
//! ([`body`]), the API key ([`auth`]), the rate limits and the client's address ([`limit`]),
//! and the answers, errors included ([`reply`]).

pub mod auth;
pub mod body;
pub mod limit;
pub mod reply;
