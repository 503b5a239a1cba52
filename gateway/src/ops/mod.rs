//! Ops: what operators see and drive — the Prometheus registry, the stop signals, config reload
//! on SIGHUP.
//!
//! Owns: metric names and labels ([`metrics`]), signals → cancellation ([`shutdown`]), the
//! reload loop ([`reload`]). Must not: hold request logic; the pipeline only bumps metrics.

pub mod metrics;
pub mod reload;
pub mod shutdown;
