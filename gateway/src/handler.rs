//! Handler: the only module that calls the stages in order —
//! auth (head) → decode (body) → auth (body key) → normalise → publish → respond.
//!
//! Owns: the order of the stages and the shared [`AppState`]. Must not: contain stage logic;
//! each rule lives in its stage, each status in `respond`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use ipnet::IpNet;

use arc_swap::ArcSwap;

use crate::auth::{self, AuthError, KeyTable};
use crate::config::{Config, Source};
use crate::decode::{self, Body as Payload, EventError, EventType, RequestContext};
use crate::metrics::Metrics;
use crate::publish::{OutEvent, PublishError, Publisher};
use crate::respond::{self, Body, Error, EventFailure, Outcome};
use crate::router::IngestRoute;
use crate::timestamp::Timestamp;

/// What every request shares.
pub struct AppState {
    /// Everything built from the config file; swapped whole by a reload, so a request sees
    /// either the old or the new config, never a mix.
    runtime: ArcSwap<Runtime>,
    pub publisher: Arc<dyn Publisher>,
    pub metrics: Metrics,
    /// Set when shutdown starts: `/ready` answers 503 from then on.
    pub draining: AtomicBool,
    request_ids: AtomicU64,
}

/// The config and what is compiled from it.
pub struct Runtime {
    pub config: Config,
    pub keys: KeyTable,
}

impl Runtime {
    /// Builds everything a config needs; fails without side effects.
    pub fn build(config: Config) -> Result<Runtime, String> {
        let keys = KeyTable::new(&config.sources);
        Ok(Runtime { config, keys })
    }
}

impl AppState {
    pub fn new(config: Config, publisher: Arc<dyn Publisher>, metrics: Metrics) -> Result<AppState, String> {
        let runtime = Runtime::build(config)?;
        Ok(AppState {
            runtime: ArcSwap::from_pointee(runtime),
            publisher,
            metrics,
            draining: AtomicBool::new(false),
            request_ids: AtomicU64::new(1),
        })
    }

    /// A process-unique request id (logged, and returned as `X-Request-Id`).
    pub fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// The runtime config as of now. Hold it for one request, not longer.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Replaces the runtime config after building the new one completely; on error nothing
    /// changes. Settings that only apply at startup (listen address, connection cap, sink) are
    /// kept as they were, with a warning.
    pub fn reload(&self, new: Config) -> Result<(), String> {
        let result = self.try_reload(new);
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.config_reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => tracing::error!(error = %e, "config reload refused; the previous config keeps serving"),
        }
        result
    }

    fn try_reload(&self, new: Config) -> Result<(), String> {
        let old = self.runtime();
        if new.server.listen != old.config.server.listen
            || new.server.max_connections != old.config.server.max_connections
        {
            tracing::warn!("server.listen and server.max_connections only change on restart");
        }
        if std::mem::discriminant(&new.sink) != std::mem::discriminant(&old.config.sink) {
            return Err("sink.kind cannot change on reload; restart the gateway".into());
        }
        let runtime = Runtime::build(new)?;
        self.runtime.store(Arc::new(runtime));
        Ok(())
    }
}

/// An ingest request: one call or a batch.
pub async fn ingest<B>(state: &AppState, route: IngestRoute, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match ingest_inner(state, route, req, peer).await {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(route = route.name, code = e.code(), error = %e, "request failed");
            } else {
                tracing::debug!(route = route.name, code = e.code(), error = %e, "request rejected");
            }
            respond::error(&e)
        }
    }
}

async fn ingest_inner<B>(
    state: &AppState,
    route: IngestRoute,
    req: Request<B>,
    peer: SocketAddr,
) -> Result<Response<Body>, Error>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body) = req.into_parts();
    let rt = state.runtime();
    let limits = &rt.config.limits;

    // A key in the head is checked before a byte of the body is read.
    let head_source = match auth::key_from_head(&parts)? {
        Some(key) => Some(rt.keys.resolve(&key)?),
        None => None,
    };
    let encoding = decode::check_headers(&parts.headers, limits)?;
    let timeout = Duration::from_millis(rt.config.server.body_read_timeout_ms);
    let bytes = decode::read_body(body, encoding, limits, timeout).await?;
    state.metrics.request_body_bytes.with_label_values(&[route.name]).observe(bytes.len() as f64);

    let received_at = Timestamp::now();
    let payload = decode::parse_body(&bytes, route.batch, limits)?;
    let source = match head_source {
        Some(s) => s,
        None => {
            let key = payload.write_key().ok_or(AuthError::Missing)?;
            rt.keys.resolve(&key)?
        }
    };
    tracing::Span::current().record("source_id", &*source.id);

    let received_at_text = received_at.format();
    let client_ip = client_ip(&parts.headers, peer, &rt.config.server.trusted_proxies).to_string();
    let cx = RequestContext {
        path_type: route.path_type,
        received_at,
        received_at_text: &received_at_text,
        batch_sent_at: decode::batch_sent_at(&payload),
        client_ip: &client_ip,
        source_id: &source.id,
    };
    // sendBeacon cannot read the answer; `?beacon=1` asks for a body-less 204.
    let no_content =
        parts.uri.query().and_then(|q| auth::query_param(q, "beacon")).is_some_and(|v| v == "1" || v == "true");

    let mut outcome = Outcome::default();
    let mut first_error: Option<EventError> = None;
    let mut events = Vec::new();
    let mut indices = Vec::new();
    let mut reject = |outcome: &mut Outcome, index: usize, e: EventError| {
        outcome.any_invalid = true;
        outcome.errors.push(EventFailure { index, code: e.code(), message: e.to_string() });
        if first_error.is_none() {
            first_error = Some(e);
        }
    };
    match &payload {
        Payload::Single(ev) => {
            outcome.received = 1;
            match decode::normalise(ev, &cx) {
                Ok(n) => {
                    events.push(out_event(&source, n));
                    indices.push(0);
                }
                Err(e) => reject(&mut outcome, 0, e),
            }
        }
        Payload::Batch(b) => {
            outcome.received = b.events.len();
            events.reserve(b.events.len());
            for (i, item) in b.events.iter().enumerate() {
                match decode::parse_event(item, limits).and_then(|ev| decode::normalise(ev, &cx)) {
                    Ok(n) => {
                        events.push(out_event(&source, n));
                        indices.push(i);
                    }
                    Err(e) => reject(&mut outcome, i, e),
                }
            }
        }
    }
    drop(payload);

    // The sink's own size limit (e.g. the broker's message.max.bytes) is checked before
    // producing: such an event could never be delivered, so it is not retriable.
    if let Some(max) = state.publisher.max_event_bytes() {
        let mut kept = Vec::with_capacity(events.len());
        let mut kept_idx = Vec::with_capacity(indices.len());
        for (ev, i) in events.into_iter().zip(indices) {
            if ev.payload.len() > max {
                outcome.add_publish_failure(i, PublishError::TooLarge { size: ev.payload.len(), limit: max });
            } else {
                kept.push(ev);
                kept_idx.push(i);
            }
        }
        events = kept;
        indices = kept_idx;
    }

    let mut accepted_by_type = [0u64; EventType::COUNT];
    if !events.is_empty() {
        let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
        let started = Instant::now();
        let results = state.publisher.publish(events).await;
        state.metrics.publish_duration.with_label_values(&["sink"]).observe(started.elapsed().as_secs_f64());
        for ((result, i), t) in results.into_iter().zip(indices).zip(types) {
            match result {
                Ok(()) => {
                    outcome.accepted += 1;
                    accepted_by_type[t.index()] += 1;
                }
                Err(e) => outcome.add_publish_failure(i, e),
            }
        }
        if let Some(e) = &outcome.publish_error {
            tracing::warn!(source_id = %source.id, code = respond::publish_code(e), error = %e, "publish failed");
        }
    }
    record_events(state, &source, &outcome, &accepted_by_type);
    outcome.errors.sort_by_key(|f| f.index);

    Ok(if route.batch {
        respond::batch(&outcome, no_content)
    } else {
        respond::single(&outcome, first_error.as_ref(), no_content)
    })
}

fn out_event(source: &Arc<Source>, n: decode::Normalised) -> OutEvent {
    OutEvent {
        topic: source.topics[n.event_type.index()].clone(),
        key: n.key,
        event_type: n.event_type,
        source_id: source.id.clone(),
        message_id: n.message_id,
        payload: n.payload,
    }
}

fn record_events(state: &AppState, source: &Source, outcome: &Outcome, accepted: &[u64; EventType::COUNT]) {
    let m = &state.metrics;
    m.events_received.with_label_values(&[&source.id]).inc_by(outcome.received as u64);
    for t in EventType::ALL {
        if accepted[t.index()] > 0 {
            m.events_accepted.with_label_values(&[&source.id, t.as_str()]).inc_by(accepted[t.index()]);
        }
    }
    for f in &outcome.errors {
        m.events_rejected.with_label_values(&[&source.id, f.code]).inc();
    }
}

/// analytics.js's telemetry (`/v1/m`): read (within the caps) and acknowledged, never
/// published — it describes the library, not the user.
pub async fn telemetry<B>(state: &AppState, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let rt = state.runtime();
    let limits = &rt.config.limits;
    let (parts, body) = req.into_parts();
    let timeout = Duration::from_millis(rt.config.server.body_read_timeout_ms);
    let result = match decode::check_headers(&parts.headers, limits) {
        Ok(enc) => decode::read_body(body, enc, limits, timeout).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => respond::ok(false),
        Err(e) => respond::error(&Error::Decode(e)),
    }
}

/// The client's address: the peer, or the left-most `X-Forwarded-For` entry when the peer is a
/// trusted proxy.
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = peer.ip().to_canonical();
    if trusted.iter().any(|n| n.contains(&peer_ip)) {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded {
            return ip;
        }
    }
    peer_ip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.7, 10.0.0.2".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let trusted = vec!["10.0.0.0/8".parse::<IpNet>().unwrap()];
        assert_eq!(client_ip(&h, proxy, &trusted).to_string(), "198.51.100.7");
        assert_eq!(client_ip(&h, proxy, &[]).to_string(), "10.0.0.2");
        let stranger: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert_eq!(client_ip(&h, stranger, &trusted).to_string(), "192.0.2.1");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(&h, proxy, &trusted).to_string(), "10.0.0.2");
    }
}
