//! The endpoints that are not the ingest pipeline: `GET /v1/usage` (a source's counts and
//! limits, for a secret key), `/v1/m` (analytics.js's own telemetry, read and dropped), and the
//! import jobs' answers (`POST /v1/events/bulk`, `POST /v1/backfill/csv`, `GET /v1/jobs[/id]`).
//!
//! Owns: those answers. Must not: publish anything (jobs are run by `ingest::jobs`).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use super::respond::{self, Body};
use crate::access;
use crate::access::auth::{self, AuthError};
use crate::decode;
use crate::error::Error;
use crate::ingest::AppState;

/// `GET /v1/usage`: the source's counts, quota and rate-limit settings, for a secret key.
pub async fn usage<B>(state: &AppState, req: Request<B>) -> Response<Body> {
    let (parts, _body) = req.into_parts();
    let rt = state.runtime();
    let result = (|| -> Result<Response<Body>, Error> {
        let key = auth::key_from_head(&parts)?.ok_or(AuthError::Missing)?;
        let cred = rt.keys.resolve(&key)?;
        let key = cred.key().ok_or(AuthError::Invalid)?;
        access::check_secret(key)?;
        let source = &cred.source;
        let now = (state.clocks.wall)();
        let usage = state.access.quotas.usage(&source.id, source.monthly_event_quota, now.to_offset_date_time());
        let body = serde_json::json!({
            "success": true,
            "data": {
                "usage": usage,
                "rate_limits": {
                    "key": key.label,
                    "short": key.rate_limits.short,
                    "medium": key.rate_limits.medium,
                    "per_ip": rt.config.per_ip_limit,
                },
                "allowed_types": key.allowed_types.names(),
            },
            "timestamp": now.format(),
        });
        Ok(respond::json_response(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default()))
    })();
    result.unwrap_or_else(|e| respond::error(&e))
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

/// `POST /v1/events/bulk` and `POST /v1/backfill/csv`: 202 `{"jobId","totalEvents","status"}`
/// once the job's input is durable.
pub async fn submit_job<B>(
    state: &AppState,
    kind: crate::import::jobs::JobKind,
    req: Request<B>,
    peer: std::net::SocketAddr,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut rate = None;
    let mut r = match crate::ingest::jobs::submit(state, kind, req, peer, &mut rate).await {
        Ok(view) => {
            let body = serde_json::json!({
                "success": true,
                "jobId": view.job_id,
                "totalEvents": view.total_events,
                "status": view.status,
            });
            respond::json_response(StatusCode::ACCEPTED, serde_json::to_vec(&body).unwrap_or_default())
        }
        Err(e) => respond::error(&e),
    };
    respond::rate_headers(&mut r, rate.as_ref());
    r
}

/// `GET /v1/jobs/{jobId}` (one job) and `GET /v1/jobs` (the source's jobs, newest first).
pub fn jobs<B>(state: &AppState, req: Request<B>, peer: std::net::SocketAddr) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let job_id = parts.uri.path().strip_prefix("/v1/jobs/").map(|s| s.trim_end_matches('/').to_string());
    let mut rate = None;
    let mut r = match crate::ingest::jobs::read(state, &parts, peer, job_id.as_deref(), &mut rate) {
        Ok(data) => {
            let body =
                serde_json::json!({ "success": true, "data": data, "timestamp": (state.clocks.wall)().format() });
            respond::json_response(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default())
        }
        Err(e) => respond::error(&e),
    };
    respond::rate_headers(&mut r, rate.as_ref());
    r
}
