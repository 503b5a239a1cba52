//! Ops: what operators see and drive — the Prometheus registry and the stop signals. (Config
//! reload on SIGHUP swaps the pipeline's runtime, so it lives with it: `ingest::reload`.)
//!
//! Owns: metric names and labels ([`metrics`]), signals → cancellation ([`shutdown`]).
//! Must not: hold request logic or import the pipeline; every part only bumps metrics.

pub mod metrics;
pub mod shutdown;
