//! Router: maps (method, path) to what handles it, including `/health`, `/ready` and
//! `/metrics`, and wraps every answer with its metrics and CORS headers.
//!
//! Owns: the path table and the 404/405 answers. Must not: read request bodies.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tracing::Instrument;

use super::cors;
use super::endpoints;
use super::respond::{self, Body};
use crate::decode::EventType;
use crate::error::Error;
use crate::import::jobs::JobKind;
use crate::import::Shape;
use crate::ingest::{self, AppState, IngestRoute};

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Ingest(IngestRoute),
    /// analytics.js's own telemetry (`/v1/m`): accepted, never published.
    Telemetry,
    Health,
    Ready,
    Metrics,
    /// `GET /v1/usage`: counts and limits of the caller's source (secret keys only).
    Usage,
    /// `POST /v1/events/bulk`, `POST /v1/backfill/csv`: an import job (secret keys only).
    Job(JobKind),
    /// `GET /v1/jobs` and `GET /v1/jobs/{jobId}`.
    Jobs,
}

impl Route {
    fn name(&self) -> &'static str {
        match self {
            Route::Ingest(r) => r.name,
            Route::Telemetry => "telemetry",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Metrics => "metrics",
            Route::Usage => "usage",
            Route::Job(JobKind::Bulk) => "bulk_job",
            Route::Job(JobKind::Csv) => "csv_job",
            Route::Jobs => "jobs",
        }
    }
}

const fn single(name: &'static str, t: EventType) -> Route {
    Route::Ingest(IngestRoute { name, path_type: Some(t), batch: false, shape: None })
}
const fn batch(name: &'static str) -> Route {
    Route::Ingest(IngestRoute { name, path_type: None, batch: true, shape: None })
}
const fn shaped(name: &'static str, shape: Shape) -> Route {
    Route::Ingest(IngestRoute { name, path_type: None, batch: false, shape: Some(shape) })
}

/// The route of a path (any method), or `None` for 404.
pub fn lookup(path: &str) -> Option<Route> {
    let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
    Some(match path {
        "/v1/track" | "/v1/t" => single("track", EventType::Track),
        "/v1/identify" | "/v1/i" => single("identify", EventType::Identify),
        "/v1/page" | "/v1/p" => single("page", EventType::Page),
        "/v1/screen" | "/v1/s" => single("screen", EventType::Screen),
        "/v1/group" | "/v1/g" => single("group", EventType::Group),
        "/v1/alias" | "/v1/a" => single("alias", EventType::Alias),
        "/v1/batch" | "/v1/b" | "/v1/import" => batch("batch"),
        "/api/v1/events" => Route::Ingest(IngestRoute { name: "events", path_type: None, batch: false, shape: None }),
        "/v1/events" => shaped("reference_events", Shape::Events),
        "/api/client/events" => shaped("client_events", Shape::Client),
        "/api/v1/events/batch" => batch("events_batch"),
        "/v1/m" => Route::Telemetry,
        "/health" => Route::Health,
        "/ready" => Route::Ready,
        "/metrics" => Route::Metrics,
        "/v1/usage" => Route::Usage,
        "/v1/events/bulk" => Route::Job(JobKind::Bulk),
        "/v1/backfill/csv" => Route::Job(JobKind::Csv),
        "/v1/jobs" => Route::Jobs,
        p if p.strip_prefix("/v1/jobs/").is_some_and(|id| !id.is_empty() && !id.contains('/')) => Route::Jobs,
        _ => return None,
    })
}

/// Handles one request end to end.
pub async fn handle<B>(state: &AppState, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let route = lookup(req.uri().path());
    let route_name = route.map_or("unknown", |r| r.name());
    let request_id = state.next_request_id();
    // One span per request: every log line inside carries these fields (never the key or body).
    let span = tracing::info_span!(
        "request",
        request_id,
        route = route_name,
        source_id = tracing::field::Empty,
        status = tracing::field::Empty
    );
    let mut response = dispatch(state, route, req, peer).instrument(span.clone()).await;
    let status = response.status();
    span.record("status", status.as_u16());
    if let Ok(v) = HeaderValue::from_str(&format!("{request_id:x}")) {
        response.headers_mut().insert("x-request-id", v);
    }
    tracing::debug!(parent: &span, status = status.as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request done");
    state.metrics.http_requests.with_label_values(&[route_name, status.as_str()]).inc();
    state.metrics.http_duration.with_label_values(&[route_name]).observe(started.elapsed().as_secs_f64());
    response
}

async fn dispatch<B>(state: &AppState, route: Option<Route>, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let origin = req.headers().get(http::header::ORIGIN).cloned();
    let method = req.method().clone();

    let mut response = match (route, &method) {
        (None, _) => respond::error(&Error::NotFound(truncate_path(req.uri().path()))),
        (Some(Route::Ingest(_) | Route::Telemetry), &Method::OPTIONS) => {
            let rt = state.runtime();
            match origin.as_ref().and_then(|o| o.to_str().ok()) {
                // No key of the config accepts this origin: the browser gets no grant.
                Some(o) if !crate::access::preflight_allows(&rt.config.sources, o) => respond::error_response(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    "no write key of this gateway accepts this origin",
                ),
                _ => cors::preflight(origin.as_ref(), rt.config.server.cors_max_age_s),
            }
        }
        (Some(Route::Ingest(r)), &Method::POST) => {
            state.metrics.in_flight.inc();
            let answer = ingest::ingest(state, r, req, peer).await;
            state.metrics.in_flight.dec();
            if let Err(e) = &answer.result {
                if e.status().is_server_error() {
                    tracing::warn!(route = r.name, code = e.code(), error = %e, "request failed");
                } else {
                    tracing::debug!(route = r.name, code = e.code(), error = %e, "request rejected");
                }
            }
            respond::answer(&answer)
        }
        (Some(Route::Telemetry), &Method::POST) => endpoints::telemetry(state, req).await,
        (Some(Route::Health), &Method::GET | &Method::HEAD) => health(),
        (Some(Route::Ready), &Method::GET | &Method::HEAD) => ready(state),
        (Some(Route::Metrics), &Method::GET) if state.runtime().config.server.admin_listen.is_some() => {
            // Served on the admin listener only: not exposed with the public port.
            respond::error(&Error::NotFound("/metrics (served on server.admin_listen)".into()))
        }
        (Some(Route::Metrics), &Method::GET) => metrics(state),
        (Some(Route::Usage), &Method::GET) => endpoints::usage(state, req).await,
        (Some(Route::Job(kind)), &Method::POST) => endpoints::submit_job(state, kind, req, peer).await,
        (Some(Route::Jobs), &Method::GET) => endpoints::jobs(state, req, peer),
        (Some(r), _) => respond::error(&Error::MethodNotAllowed {
            method: method.to_string(),
            path: truncate_path(req.uri().path()),
            allowed: match r {
                Route::Ingest(_) | Route::Telemetry => "POST, OPTIONS",
                Route::Health | Route::Ready => "GET, HEAD",
                Route::Metrics | Route::Usage | Route::Jobs => "GET",
                Route::Job(_) => "POST",
            },
        }),
    };
    if matches!(route, Some(Route::Ingest(_) | Route::Telemetry)) && method != Method::OPTIONS {
        cors::add_cors(response.headers_mut(), origin.as_ref());
    }
    response
}

/// The admin listener's routes: `/metrics`, `/health`, `/ready`.
pub fn handle_admin<B>(state: &AppState, req: Request<B>) -> Response<Body> {
    match (req.method(), lookup(req.uri().path())) {
        (&Method::GET, Some(Route::Metrics)) => metrics(state),
        (&Method::GET | &Method::HEAD, Some(Route::Health)) => health(),
        (&Method::GET | &Method::HEAD, Some(Route::Ready)) => ready(state),
        _ => respond::error(&Error::NotFound(truncate_path(req.uri().path()))),
    }
}

fn truncate_path(p: &str) -> String {
    p.chars().take(128).collect()
}

fn health() -> Response<Body> {
    respond::json_response(StatusCode::OK, br#"{"success":true,"status":"ok"}"#.to_vec())
}

fn ready(state: &AppState) -> Response<Body> {
    if state.draining.load(Ordering::Relaxed) {
        return respond::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "draining: the gateway is shutting down",
        );
    }
    match state.publisher.readiness() {
        Ok(()) => respond::json_response(StatusCode::OK, br#"{"success":true,"status":"ready"}"#.to_vec()),
        Err(why) => respond::error_response(StatusCode::SERVICE_UNAVAILABLE, "not_ready", &format!("sink: {why}")),
    }
}

fn metrics(state: &AppState) -> Response<Body> {
    // Gauges of long-lived state are read at scrape time.
    state.metrics.dedup_entries.set(state.dedup.len() as i64);
    state.metrics.ready.set(i64::from(ready(state).status() == StatusCode::OK));
    if let Some(stats) = state.publisher.stats() {
        state.metrics.record_sink_stats(&stats);
    }
    let mut r = Response::new(Full::new(Bytes::from(state.metrics.encode())));
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(lookup("/v1/t"), lookup("/v1/track"));
        assert_eq!(lookup("/v1/track/"), lookup("/v1/track"));
        assert_eq!(lookup("/v1/b"), lookup("/v1/batch"));
        assert_eq!(lookup("/v1/import"), lookup("/v1/batch"));
        assert_eq!(lookup("/v1/m"), Some(Route::Telemetry));
        assert_eq!(lookup("/v1/nope"), None);
        assert_eq!(lookup("/"), None);
    }
}
