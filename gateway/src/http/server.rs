//! Server: the accept loop, the connection cap, hyper's connection limits, and the drain.
//!
//! Owns: sockets and connections (HTTP/1.1 keep-alive and HTTP/2, via hyper-util's auto
//! builder). Must not: know anything about events — every request goes to `router::handle`.
//!
//! Shutdown order (see `lib.rs`): stop accepting → mark draining (`/ready` 503) → let in-flight
//! requests finish within `shutdown_timeout_ms` → return, so that `run` can flush the sink.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::router;
use crate::ingest::AppState;

/// Serves `listener` until `shutdown` resolves, then drains.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let cfg = state.runtime().config.server.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms))
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);

    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(cfg.max_connections));
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);

    loop {
        // Wait for a free connection slot first: over the cap, new clients queue in the
        // kernel's backlog instead of each costing us a task.
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(5); x }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let st = state.clone();
        let service = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(router::handle(&st, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        let gauge = state.metrics.open_connections.clone();
        gauge.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            gauge.dec();
            drop(permit);
        });
    }

    state.draining.store(true, Ordering::Relaxed);
    drop(listener);
    let timeout = Duration::from_millis(cfg.shutdown_timeout_ms);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(timeout) => tracing::warn!(timeout_ms = cfg.shutdown_timeout_ms, "drain timed out; closing remaining connections"),
    }
}

/// The admin listener: `/metrics`, `/health`, `/ready` only, HTTP/1.1, until `stop`.
pub async fn serve_admin(listener: TcpListener, state: Arc<AppState>, stop: tokio_util::sync::CancellationToken) {
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let st = state.clone();
        let service = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(router::handle_admin(&st, req)) }
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}
