//! Server: the accept loop, the connection cap, hyper's connection limits, connection
//! lifetimes, and the drain.
//!
//! Owns: sockets and connections (HTTP/1.1 keep-alive and HTTP/2, via hyper-util's auto
//! builder). Must not: know anything about events — every request goes to `router::handle`.
//!
//! Every connection lives under a deadline of ours, on top of hyper's own limits, because hyper
//! leaves gaps: hyper-util's auto builder first reads up to 24 bytes to tell HTTP/1 from HTTP/2
//! with no timeout (hyper's `header_read_timeout` starts only after it), and HTTP/2 has no idle
//! timeout at all. So a socket that sent nothing, part of the HTTP/2 preface, or a preface and
//! then silence would hold its slot of the cap forever. The rules ([`drive`]):
//!
//! - from accept to the first request head: `header_read_timeout_ms`, for every protocol;
//! - no request in flight for `idle_timeout_ms`: close (HTTP/2 sends GOAWAY);
//! - HTTP/2 PINGs (`http2_keep_alive_*`) close a peer that stopped answering, even mid-request;
//! - at the cap, a waiting client makes one connection without a request in flight close (the
//!   first to claim the slot): the cap counts work, not sockets that merely stay open.
//!
//! A close we start is graceful; a client that does not let go within [`CLOSE_GRACE`] loses the
//! socket — never while one of its requests is in flight.
//!
//! Shutdown order (see `lib.rs`): stop accepting → mark draining (`/ready` 503) → let in-flight
//! requests finish within `shutdown_timeout_ms` → return, so that `run` can flush the sink.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;

use super::router;
use crate::config::ServerConfig;
use crate::ingest::AppState;

/// How long a client gets to let go of a connection we asked to close (HTTP/2 waits for a PING
/// answer before its last GOAWAY) before the socket is dropped. Only connections with no request
/// in flight are dropped, so this never cuts an answer short; a healthy client needs one round
/// trip.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_millis(cfg.http2_keep_alive_interval_ms))
        .keep_alive_timeout(Duration::from_millis(cfg.http2_keep_alive_timeout_ms));
    let timeouts = Timeouts::new(&cfg);

    // Each connection task holds a clone of `done`: when the receiver sees them all dropped,
    // every connection has ended.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let shared = Arc::new(Shared::new());
    let connections = Arc::new(Semaphore::new(cfg.max_connections));
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);

    loop {
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
        // Over the cap this one socket waits here (one over the cap, without a task) and later
        // clients queue in the kernel's backlog. Someone is waiting, so an idle connection closes.
        let permit = match connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.set_waiting(true);
                let p = tokio::select! {
                    p = connections.clone().acquire_owned() => p,
                    _ = &mut shutdown => { shared.set_waiting(false); break }
                };
                shared.set_waiting(false);
                match p {
                    Ok(p) => p,
                    Err(_) => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(shared.clone()));
        let st = state.clone();
        let tracked = activity.clone();
        let service = service_fn(move |req| {
            let st = st.clone();
            // Counted from the moment hyper has the head, before the pipeline runs.
            let in_flight = InFlight::begin(tracked.clone());
            async move {
                let response = router::handle(&st, req, peer).await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let gauge = state.metrics.open_connections.clone();
        gauge.inc();
        let done = done.clone();
        tokio::spawn(async move {
            drive(conn, activity, timeouts).await;
            gauge.dec();
            drop(permit);
            drop(done);
        });
    }

    drop(listener);
    state.draining.store(true, Ordering::Relaxed);
    shared.order(|o| o.drain = true);
    drop(done);
    let timeout = Duration::from_millis(cfg.shutdown_timeout_ms);
    tokio::select! {
        _ = all_done.recv() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!(timeout_ms = cfg.shutdown_timeout_ms, "drain timed out; closing remaining connections");
            shared.order(|o| o.abandon = true);
        }
    }
}

/// The `[server]` timings one connection needs.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    first_request: Duration,
    idle: Duration,
}

impl Timeouts {
    fn new(cfg: &ServerConfig) -> Self {
        Self {
            first_request: Duration::from_millis(cfg.header_read_timeout_ms),
            idle: Duration::from_millis(cfg.idle_timeout_ms),
        }
    }
}

/// What the accept loop tells every connection, all in one channel: each connection polls it
/// on every wake-up, so this is one shared lock there rather than one per kind of order.
#[derive(Debug, Clone, Copy, Default)]
struct Orders {
    /// Bumped each time a client starts waiting for a slot: idle connections try to claim it.
    make_room: u64,
    /// Shutdown: close gracefully.
    drain: bool,
    /// The drain deadline passed: drop the connection.
    abandon: bool,
}

/// Shared by the accept loop and every connection.
#[derive(Debug)]
struct Shared {
    orders: watch::Sender<Orders>,
    /// A client waits for a slot that no idle connection has claimed yet. The first idle
    /// connection to claim it closes, so one waiting client closes one connection, not every
    /// idle one (which would make their clients all reconnect at once). Connections that become
    /// idle while it is unclaimed see it in [`InFlight`]'s drop. An atomic rather than part of
    /// `orders`: it is read at the end of every request.
    waiting: AtomicBool,
}

impl Shared {
    fn new() -> Self {
        Self { orders: watch::Sender::new(Orders::default()), waiting: AtomicBool::new(false) }
    }
    fn set_waiting(&self, on: bool) {
        self.waiting.store(on, Ordering::Release);
        if on {
            self.order(|o| o.make_room = o.make_room.wrapping_add(1));
        }
    }
    fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }
    /// True for the one connection that gets to close for the waiting client.
    fn claim(&self) -> bool {
        self.waiting.compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
    fn order(&self, change: impl FnOnce(&mut Orders)) {
        self.orders.send_modify(change);
    }
}

/// What one connection's requests are doing, shared by its service and its task. Plain atomics:
/// a request costs two increments and a clock read, and the task looks only when a deadline
/// comes (or a client waits for a slot).
#[derive(Debug)]
struct Activity {
    /// When the connection got its slot and started being served.
    opened: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended, in ms after `opened`; [`NEVER`] before the first one.
    idle_since_ms: AtomicU64,
    /// Woken when the last request in flight ends while a client waits for a slot.
    became_idle: Notify,
    shared: Arc<Shared>,
}

const NEVER: u64 = u64::MAX;

impl Activity {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(NEVER),
            became_idle: Notify::new(),
            shared,
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// When the connection is due to close if nothing happens: `None` while a request is in
    /// flight.
    fn deadline(&self, timeouts: Timeouts) -> Option<Instant> {
        if !self.is_idle() {
            return None;
        }
        Some(match self.idle_since_ms.load(Ordering::Acquire) {
            NEVER => self.opened + timeouts.first_request,
            ms => self.opened + Duration::from_millis(ms) + timeouts.idle,
        })
    }
}

/// One request in flight on a connection; dropping it (also when the request is cancelled)
/// ends it.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // The time first, then the count: whoever sees the count at zero sees this time.
        let ms = u64::try_from(a.opened.elapsed().as_millis()).unwrap_or(NEVER - 1);
        a.idle_since_ms.store(ms, Ordering::Release);
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 && a.shared.is_waiting() {
            a.became_idle.notify_one();
        }
    }
}

/// Runs one connection to its end under the rules of the module doc.
async fn drive<C>(conn: C, activity: Arc<Activity>, timeouts: Timeouts)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut orders = activity.shared.orders.subscribe();
    let mut make_room = orders.borrow().make_room;
    let mut closing = false;
    // Deadlines are looked at lazily: a request that starts and ends between two looks sets
    // a deadline no earlier than one idle period after the look, so the next look is never
    // later than that.
    let mut check_at = activity.opened + timeouts.first_request.min(timeouts.idle);
    loop {
        let close = tokio::select! {
            // The connection first: a head that is already buffered makes it busy before any
            // deadline or order is looked at.
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            Ok(()) = orders.changed() => {
                let o = *orders.borrow_and_update();
                if o.abandon {
                    return;
                }
                let asked = std::mem::replace(&mut make_room, o.make_room) != o.make_room;
                !closing && (o.drain || (asked && activity.is_idle() && activity.shared.claim()))
            }
            _ = activity.became_idle.notified(), if !closing => activity.is_idle() && activity.shared.claim(),
            _ = tokio::time::sleep_until(check_at) => {
                let now = Instant::now();
                match activity.deadline(timeouts) {
                    // Closing, and still not let go with nothing in flight: drop the socket.
                    Some(_) if closing => return,
                    Some(at) if at <= now => true,
                    Some(at) => { check_at = at.min(now + timeouts.idle); false }
                    // Busy: look again one idle period from now; the deadline cannot be earlier.
                    None => { check_at = now + if closing { CLOSE_GRACE } else { timeouts.idle }; false }
                }
            }
        };
        if close {
            conn.as_mut().graceful_shutdown();
            closing = true;
            check_at = Instant::now() + CLOSE_GRACE;
        }
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
