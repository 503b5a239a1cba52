//! segment-gateway: a Segment-compatible tracking gateway on hyper 1.x.
//!
//! # Layout (data-flow order)
//! - [`config`]: TOML → validated [`config::Config`]; every default lives there.
//! - [`server`]: accept loop, connection cap, hyper limits, drain.
//! - [`router`]: (method, path) → handler, plus `/health`, `/ready`, `/metrics`.
//! - [`handler`]: calls the stages in order; no stage logic of its own.
//! - [`auth`]: write key → source.
//! - [`decode`]: body caps, gzip, typed parse, per-event checks, normalisation.
//! - [`publish`]: the [`publish::Publisher`] trait and its sinks (local log, memory).
//! - [`respond`]: the one mapping from errors/outcomes to status and JSON.
//! - [`metrics`]: the Prometheus registry.
//! - [`shutdown`]: signals → cancellation; [`reload`]: SIGHUP → atomic config swap.
//! - [`timestamp`]: RFC 3339 parse/format on the hot path (shared by decode and responses).
//!
//! Validation against contracts and messageId dedup plug in between decode and publish.
//!
//! Errors: each stage has its own `thiserror` enum; [`respond::Error`] joins them and is the
//! only thing that knows HTTP statuses. Only `main` uses `anyhow`.

pub mod auth;
pub mod config;
pub mod consent;
pub mod decode;
pub mod dedup;
pub mod handler;
pub mod metrics;
pub mod publish;
pub mod quota;
pub mod ratelimit;
pub mod reload;
pub mod respond;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod timestamp;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;
pub use handler::AppState;
pub use publish::Publisher;

/// Serves on `listener` until `shutdown` resolves; then drains connections and flushes the
/// sink. Returns once everything acknowledged is durable (or the flush deadline passed).
pub async fn run(
    config: Config,
    listener: TcpListener,
    publisher: Arc<dyn Publisher>,
    metrics: metrics::Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let state = Arc::new(AppState::new(config, publisher, metrics)?);
    serve(state, listener, shutdown).await;
    Ok(())
}

/// [`run`] with a state built by the caller (who may keep it, e.g. to reload the config).
pub async fn serve(state: Arc<AppState>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let flush_timeout = Duration::from_millis(state.runtime().config.server.shutdown_timeout_ms);
    server::serve(listener, state.clone(), shutdown).await;
    if let Err(e) = state.publisher.flush(flush_timeout).await {
        tracing::error!(error = %e, "sink flush at shutdown failed");
    }
}
