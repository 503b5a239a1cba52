//! segment-gateway: a Segment-compatible tracking gateway on hyper 1.x.
//!
//! # Layout: one folder per part, in the order a request meets them
//! - [`http`]: sockets to requests and back — the accept loop, connection cap and lifetimes
//!   (`http::server`), the path table and the non-ingest endpoints (`http::router`,
//!   `http::endpoints`), CORS, and
//!   `http::respond`, the one place that turns an error or an outcome into a status and JSON.
//! - [`ingest`]: the pipeline of one ingest request, one function per stage in order
//!   (auth → admit → read body → decode → normalise → type check → consent → contracts → sink
//!   size → dedup → quota → publish → settle), the shared [`AppState`], and the [`ingest::Outcome`]
//!   it hands back to `http` to render.
//! - The stages, each knowing no broker and building no answer:
//!   - [`access`]: keys and what a key may do — write keys (`access::auth`), the client address
//!     behind trusted proxies (`access::client_ip`), origins, call
//!     types, rate limits (`access::ratelimit`), monthly quotas and usage (`access::quota`);
//!   - [`decode`]: body caps and gzip, the typed borrowed parse, the Segment checks,
//!     normalisation (messageId, timestamps and clock skew, `context.ip`), `decode::timestamp`;
//!   - [`consent`]: TCF v2 / US Privacy decoding, categories, per-source policy;
//!   - [`validate`]: tracking plans (JSON Schema contracts) compiled once, checked per event;
//!   - [`dedup`]: messageId reservations, bounded by TTL and capacity, with a snapshot;
//!   - [`import`]: the reference APIs' bodies (`/v1/events`, `/api/client/events`) turned into
//!     Segment calls before decode, so that they take the same path.
//! - [`publish`]: the [`Publisher`] trait and its sinks (local log, Kafka, memory): the promise
//!   behind a 2xx.
//! - [`ops`]: metrics, signals and shutdown (config reload is `ingest::reload`).
//! - [`config`]: TOML → validated [`Config`]; it builds each stage's own settings type, and no
//!   stage imports it.
//! - [`error`]: the request path's error, joining each stage's own enum, with its codes;
//!   [`json`]: the borrowed JSON string type decode and consent share.
//!
//! Dependencies point one way (checked by `gateway/tests/layout.rs`): `http` → `ingest` →
//! `config` → the stages → `json`; `ops` and `error` sit below `ingest`; no stage imports
//! `config`, `http` or `ingest`. Only `main` uses `anyhow`.

pub mod access;
pub mod config;
pub mod consent;
pub mod decode;
pub mod dedup;
pub mod error;
pub mod http;
pub mod import;
pub mod ingest;
pub mod json;
pub mod ops;
pub mod publish;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;
pub use ingest::AppState;
pub use publish::Publisher;

/// Serves on `listener` until `shutdown` resolves; then drains connections and flushes the
/// sink. Returns once everything acknowledged is durable (or the flush deadline passed).
pub async fn run(
    config: Config,
    listener: TcpListener,
    publisher: Arc<dyn Publisher>,
    metrics: ops::metrics::Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let state = Arc::new(AppState::new(config, publisher, metrics)?);
    serve(state, listener, shutdown).await;
    Ok(())
}

/// [`run`] with a state built by the caller (who may keep it, e.g. to reload the config).
///
/// Order at shutdown: stop accepting and drain (server) → flush the sink → stop the background
/// tasks → persist usage counts and the dedup snapshot.
pub async fn serve(state: Arc<AppState>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    serve_with_admin(state, listener, None, shutdown).await
}

/// [`serve`], plus an admin listener for `/metrics`, `/health` and `/ready` when given.
pub async fn serve_with_admin(
    state: Arc<AppState>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let rt = state.runtime();
    let flush_timeout = Duration::from_millis(rt.config.server.shutdown_timeout_ms);
    let background = tokio_util::sync::CancellationToken::new();
    let sweeper = state
        .dedup
        .clone()
        .spawn_sweeper(Duration::from_millis(rt.config.dedup.sweep_interval_ms), background.clone().cancelled_owned());
    let housekeeping = tokio::spawn(housekeeping(state.clone(), background.clone()));
    // Import jobs run beside live traffic and stop between chunks at shutdown (a stopped job
    // resumes at the next start).
    let jobs = tokio::spawn(ingest::jobs::run(state.clone(), background.clone()));
    let job_sweeper = tokio::spawn(ingest::jobs::sweep(state.clone(), background.clone()));
    drop(rt);

    let admin_task = admin.map(|l| tokio::spawn(http::server::serve_admin(l, state.clone(), background.clone())));
    http::server::serve(listener, state.clone(), shutdown).await;
    if let Err(e) = state.publisher.flush(flush_timeout).await {
        tracing::error!(error = %e, "sink flush at shutdown failed");
    }
    background.cancel();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    let _ = sweeper.await;
    let _ = jobs.await;
    let _ = job_sweeper.await;
    let _ = housekeeping.await;
    let st = state.clone();
    let persisted = tokio::task::spawn_blocking(move || {
        if let Err(e) = st.access.persist_usage() {
            tracing::error!(error = %e, "persisting usage counts at shutdown failed");
        }
        if let Some(path) = &st.runtime().config.dedup.snapshot_path {
            match st.dedup.snapshot(path) {
                Ok(report) => tracing::info!(?report, "dedup snapshot written"),
                Err(e) => tracing::error!(code = e.code(), error = %e, "dedup snapshot failed"),
            }
        }
    })
    .await;
    if persisted.is_err() {
        tracing::error!("persisting state at shutdown panicked");
    }
}

/// Periodic work off the request path: persist changed usage counts, sweep rate-limit state.
async fn housekeeping(state: Arc<AppState>, stop: tokio_util::sync::CancellationToken) {
    let persist_every = Duration::from_millis(state.runtime().config.usage_persist_interval_ms);
    let mut persist = tokio::time::interval(persist_every);
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = persist.tick() => {
                let st = state.clone();
                match tokio::task::spawn_blocking(move || st.access.persist_usage()).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "persisting usage counts failed"),
                    Err(_) => tracing::warn!("persisting usage counts panicked"),
                    Ok(Ok(_)) => {}
                }
            }
            _ = sweep.tick() => {
                state.access.sweep();
            }
        }
    }
}
