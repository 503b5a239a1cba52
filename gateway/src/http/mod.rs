//! HTTP: everything between a socket and the ingest pipeline — the accept loop and connection
//! limits ([`server`]), the path table and the non-ingest endpoints ([`router`],
//! [`endpoints`]), CORS ([`cors`]), and
//! [`respond`], the one place that turns errors and outcomes into a status and JSON.
//!
//! Owns: sockets, routes, statuses and headers. Must not: know anything about events beyond
//! the [`crate::ingest::Answer`] it renders.

pub mod cors;
pub mod endpoints;
pub mod respond;
pub mod router;
pub mod server;
