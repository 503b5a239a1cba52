//! Ingest: the pipeline of one ingest request, one stage after another —
//! auth → admit (origin, rate) → read body → decode → body key → normalise (with consent) →
//! type check → consent policy → contracts → sink size → dedup reserve → quota → publish →
//! settle → outcome.
//!
//! Owns: the order of the stages ([`ingest`] reads top to bottom) and the shared [`AppState`].
//! Must not: contain stage logic (each rule lives in its stage) or build HTTP answers: it
//! returns an [`Answer`] that `http::respond` renders.
//!
//! - [`state`]: [`AppState`], [`Runtime`] (config + compiled plans), [`Clocks`];
//! - [`admit`]: key from head or body, origin and rate checks, the keyless per-IP window;
//! - [`events`]: the per-event stages and their bookkeeping; [`contracts`]: the plan check;
//! - [`commit`]: sink size, dedup, quota, publish and settling;
//! - [`outcome`]: what happened to each event ([`Outcome`], [`FailureKind`]);
//! - [`reload`]: SIGHUP → re-read the config file → [`AppState::reload`];
//! - [`jobs`]: bulk and CSV jobs — accepting them (durable before the 202), the runner that
//!   feeds their chunks through [`run_calls`], and the job API's reads.

mod admit;
mod commit;
mod contracts;
mod events;
pub mod jobs;
mod outcome;
pub mod reload;
mod state;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::Request;

use crate::access::auth::{self, AuthError};
use crate::access::ratelimit::Decision;
use crate::decode::{self, EventType, RequestContext};
use crate::error::Error;
use crate::import::{self, Shape};

pub use outcome::{EventFailure, FailureKind, Outcome};
pub use state::{AppState, Clocks, Runtime};

/// How an ingest path reads its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestRoute {
    /// Route name: a metric label and log field.
    pub name: &'static str,
    /// `Some` on single-call paths: the type the path fixes.
    pub path_type: Option<EventType>,
    /// True when the body is `{"batch":[…]}`.
    pub batch: bool,
    /// `Some` on the reference APIs' paths: the body's own shape, turned into a Segment batch.
    pub shape: Option<Shape>,
}

/// What an ingest request came to, for `http::respond` to render.
#[derive(Debug)]
pub struct Answer {
    pub result: Result<Outcome, Error>,
    /// The key's (or the client IP's) rate standing, for the `X-RateLimit-*` headers.
    pub rate: Option<Decision>,
    /// A batch answers with its summary, a single call with its one result.
    pub batch: bool,
    /// sendBeacon cannot read the answer; `?beacon=1` asks for a body-less 204.
    pub no_content: bool,
    /// On the reference APIs' paths: the shape, and each input event's id (`None` when it
    /// was refused); the outcome's indices are the input's.
    pub import: Option<(Shape, Vec<Option<String>>)>,
}

/// An ingest request: one call or a batch.
pub async fn ingest<B>(state: &AppState, route: IngestRoute, req: Request<B>, peer: SocketAddr) -> Answer
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let rt = state.runtime();
    let ip = rt.config.server.client_ip.resolve(req.headers(), peer);
    let no_content =
        req.uri().query().and_then(|q| auth::query_param(q, "beacon")).is_some_and(|v| v == "1" || v == "true");
    let mut rate = None;
    let mut ids = None;
    let result = match pipeline(state, &rt, route, req, ip, &mut rate, &mut ids).await {
        Err(Error::Auth(e)) => Err(admit::keyless(state, &rt, ip, &mut rate).err().unwrap_or(Error::Auth(e))),
        r => r,
    };
    let import = route.shape.map(|s| (s, ids.unwrap_or_default()));
    Answer { result, rate, batch: route.batch, no_content, import }
}

/// The stages, in order.
async fn pipeline<B>(
    state: &AppState,
    rt: &Runtime,
    route: IngestRoute,
    req: Request<B>,
    ip: IpAddr,
    rate: &mut Option<Decision>,
    ids: &mut Option<Vec<Option<String>>>,
) -> Result<Outcome, Error>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body) = req.into_parts();
    let limits = &rt.config.limits;
    let origin = parts.headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok());

    // auth → admit: a key in the head is checked (and rate-limited) before the body is read.
    let head_cred = admit::head_credential(rt, &parts)?;
    if let Some(cred) = &head_cred {
        admit::admit(state, rt, cred, origin, ip, rate)?;
    }

    // read body → decode → the body's key when the head had none.
    let encoding = decode::check_headers(&parts.headers, limits)?;
    let timeout = Duration::from_millis(rt.config.server.body_read_timeout_ms);
    let bytes = decode::read_body(body, encoding, limits, timeout).await?;
    state.metrics.request_body_bytes.with_label_values(&[route.name]).observe(bytes.len() as f64);
    let received_at = (state.clocks.wall)();
    let received_at_text = received_at.format();
    let sent_as = |e: decode::DecodeError| e.sent_as(decode::content_type(&parts.headers).as_deref());
    // The reference APIs' shapes become a Segment batch here; from then on they are Segment.
    let converted = match route.shape {
        Some(shape) => Some(import::convert(shape, &bytes, &received_at_text).map_err(sent_as)?),
        None => None,
    };
    if let Some(c) = converted.as_ref().filter(|c| c.origin.is_empty()) {
        // Every event was refused by its shape: nothing to decode (the key is still checked).
        head_cred.as_ref().ok_or(AuthError::Missing)?;
        *ids = Some(c.event_ids.clone());
        return Ok(Outcome::of_import(Outcome::default(), c));
    }
    let body = converted.as_ref().map_or(&bytes[..], |c| &c.body[..]);
    // A reference body's own cap (100 events, two calls each at most) stands for the batch cap.
    let import_limits =
        decode::Limits { max_batch_events: limits.max_batch_events.max(2 * import::MAX_EVENTS), ..*limits };
    let parse_limits = if converted.is_some() { &import_limits } else { limits };
    let payload = decode::parse_body(body, route.batch || converted.is_some(), parse_limits).map_err(sent_as)?;
    let cred = match head_cred {
        Some(c) => c,
        None => admit::body_credential(state, rt, &payload, origin, ip, rate)?,
    };
    let source = cred.source.clone();
    let key = cred.key().ok_or(AuthError::Invalid)?;
    tracing::Span::current().record("source_id", &*source.id);

    // per event: normalise (with consent) → type check → consent policy → contracts.
    let client_ip = ip.to_string();
    let cx = RequestContext {
        path_type: route.path_type,
        received_at,
        received_at_text: &received_at_text,
        batch_sent_at: decode::batch_sent_at(&payload),
        client_ip: &client_ip,
        source_id: &source.id,
        consent: &source.consent,
    };
    let mut events = events::Events::new(state, rt, &source, key);
    events.consider_all(&payload, &cx, limits);
    drop(payload);

    // sink size → dedup reserve → quota → publish → settle.
    let outcome = commit::commit(events, received_at).await;
    Ok(match &converted {
        Some(c) => {
            let outcome = Outcome::of_import(outcome, c);
            let failed: std::collections::HashSet<usize> = outcome.errors.iter().map(|e| e.index).collect();
            let ids_of = c.event_ids.iter().enumerate();
            *ids = Some(ids_of.map(|(i, id)| id.clone().filter(|_| !failed.contains(&i))).collect());
            outcome
        }
        None => outcome,
    })
}

/// A batch of Segment calls of one source and key through the stages after admission
/// (decode → normalise → consent → contracts → dedup → quota → publish): how an import job's
/// chunk takes the same path as `/v1/batch`. `ip` is the submitter's address.
pub(crate) async fn run_calls(
    state: &AppState,
    rt: &Runtime,
    source: &std::sync::Arc<crate::access::keys::Source>,
    key: &crate::access::keys::WriteKey,
    body: &[u8],
    ip: &str,
    chunk: usize,
) -> Result<Outcome, Error> {
    let limits = decode::Limits { max_batch_events: rt.config.limits.max_batch_events.max(chunk), ..rt.config.limits };
    let received_at = (state.clocks.wall)();
    let received_at_text = received_at.format();
    let payload = decode::parse_body(body, true, &limits)?;
    let cx = RequestContext {
        path_type: None,
        received_at,
        received_at_text: &received_at_text,
        batch_sent_at: None,
        client_ip: ip,
        source_id: &source.id,
        consent: &source.consent,
    };
    let mut events = events::Events::new(state, rt, source, key);
    events.consider_all(&payload, &cx, &limits);
    drop(payload);
    Ok(commit::commit(events, received_at).await)
}
