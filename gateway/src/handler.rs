//! Handler: the only module that calls the stages in order —
//! auth (head) → access (origin, rate) → decode (body) → auth/access (body key) → normalise
//! (with consent) → access (call type) → dedup → access (quota) → publish → dedup confirm →
//! respond.
//!
//! Owns: the order of the stages and the shared [`AppState`]. Must not: contain stage logic;
//! each rule lives in its stage, each status in `respond`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Request, Response, StatusCode};

use crate::access::{self, Access, AccessError};
use crate::auth::{self, AuthError, Credential, KeyTable};
use crate::config::{Config, Source};
use crate::decode::{self, Body as Payload, EventType, RequestContext};
use crate::dedup::{self, Dedup, Verdict};
use crate::metrics::{LogSampler, Metrics};
use crate::publish::{OutEvent, PublishError, Publisher};
use crate::quota::EventCounts;
use crate::ratelimit::{self, Decision};
use crate::respond::{self, Body, Error, Outcome};
use crate::router::IngestRoute;
use crate::timestamp::Timestamp;
use crate::validate::{self, Plan, Plans, Policies, Verdict as ContractVerdict};

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
    /// Per-key state (rate-limit buckets, usage counts): survives reloads.
    pub access: Access,
    /// messageIds seen: survives reloads.
    pub dedup: Arc<Dedup>,
    pub clocks: Clocks,
}

/// The clocks the gateway reads, injectable so tests control time instead of sleeping.
#[derive(Clone)]
pub struct Clocks {
    /// Monotonic, for rate limits.
    pub rate: Arc<dyn ratelimit::Clock>,
    /// Monotonic + wall, for dedup expiry and snapshots.
    pub dedup: Arc<dyn dedup::Clock>,
    /// Wall time: `receivedAt`, usage days and months.
    pub wall: Arc<dyn Fn() -> Timestamp + Send + Sync>,
}

impl Default for Clocks {
    fn default() -> Self {
        Clocks {
            rate: Arc::new(ratelimit::MonotonicClock::new()),
            dedup: Arc::new(dedup::SystemClock::new()),
            wall: Arc::new(Timestamp::now),
        }
    }
}

/// The config and what is compiled from it.
pub struct Runtime {
    pub config: Config,
    pub keys: KeyTable,
    /// Compiled tracking plan and policies per source id (sources with a plan only).
    pub contracts: HashMap<Arc<str>, (Arc<Plan>, Policies)>,
}

impl Runtime {
    /// Builds everything a config needs — the key table, the compiled tracking plans — and
    /// fails without side effects (a reload that fails leaves the old runtime serving).
    pub fn build(config: Config) -> Result<Runtime, String> {
        let keys = KeyTable::new(&config.sources);
        let mut contracts = HashMap::new();
        if config.sources.iter().any(|s| s.contracts.is_some()) {
            let dir = &config.contracts_dir;
            let plans = Plans::load(dir).map_err(|e| format!("contracts in {}: {e}", dir.display()))?;
            for (i, source) in config.sources.iter().enumerate() {
                let Some((name, policies)) = &source.contracts else { continue };
                let plan = plans.get(name).ok_or_else(|| {
                    format!(
                        "sources[{i}].contracts.plan: '{name}' is not a plan in {} (plans: {})",
                        dir.display(),
                        plans.names().join(", ")
                    )
                })?;
                contracts.insert(source.id.clone(), (plan, *policies));
            }
        }
        Ok(Runtime { config, keys, contracts })
    }
}

impl AppState {
    pub fn new(config: Config, publisher: Arc<dyn Publisher>, metrics: Metrics) -> Result<AppState, String> {
        Self::with_clocks(config, publisher, metrics, Clocks::default())
    }

    /// Builds the state, loading persisted usage counts and the dedup snapshot.
    pub fn with_clocks(
        config: Config,
        publisher: Arc<dyn Publisher>,
        metrics: Metrics,
        clocks: Clocks,
    ) -> Result<AppState, String> {
        let access = Access::new(&config, clocks.rate.clone())?;
        let dedup = Arc::new(load_dedup(&config, clocks.dedup.clone())?);
        let runtime = Runtime::build(config)?;
        Ok(AppState {
            runtime: ArcSwap::from_pointee(runtime),
            publisher,
            metrics,
            draining: AtomicBool::new(false),
            request_ids: AtomicU64::new(1),
            access,
            dedup,
            clocks,
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
    /// changes. Settings that only apply at startup (listen address, connection cap, sink,
    /// dedup capacity, usage directory) are kept as they were, with a warning.
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
            || new.server.worker_threads != old.config.server.worker_threads
        {
            tracing::warn!("server.listen, server.max_connections and server.worker_threads only change on restart");
        }
        if std::mem::discriminant(&new.sink) != std::mem::discriminant(&old.config.sink) {
            return Err("sink.kind cannot change on reload; restart the gateway".into());
        }
        let runtime = Runtime::build(new)?;
        self.runtime.store(Arc::new(runtime));
        Ok(())
    }
}

/// The dedup cache, from its snapshot when there is one. A corrupt snapshot is set aside (and
/// logged): losing dedup history must not stop ingestion.
fn load_dedup(config: &Config, clock: Arc<dyn dedup::Clock>) -> Result<Dedup, String> {
    let cfg = &config.dedup.cache;
    let Some(path) = &config.dedup.snapshot_path else {
        return Dedup::with_clock(cfg, clock).map_err(|e| e.to_string());
    };
    match Dedup::load(path, cfg, clock.clone()) {
        Ok((d, report)) => {
            tracing::info!(?report, "dedup snapshot loaded");
            Ok(d)
        }
        Err(e) => {
            let aside = path.with_extension("corrupt");
            tracing::error!(code = e.code(), error = %e, aside = %aside.display(), "dedup snapshot unusable; starting empty");
            let _ = std::fs::rename(path, &aside);
            Dedup::with_clock(cfg, clock).map_err(|e| e.to_string())
        }
    }
}

/// Sampling of the log line for events the contract checker could not read.
static CHECK_FAILED_LOG: LogSampler = LogSampler::new();

/// What the response needs beyond the outcome: the rate-limit standing of the key.
#[derive(Default)]
struct Meta {
    rate: Option<Decision>,
}

/// An ingest request: one call or a batch.
pub async fn ingest<B>(state: &AppState, route: IngestRoute, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut meta = Meta::default();
    let rt = state.runtime();
    let ip = rt.config.server.client_ip.resolve(req.headers(), peer);
    let mut response = match ingest_inner(state, &rt, route, req, ip, &mut meta).await {
        Ok(r) => r,
        Err(e) => {
            // A request without a usable key is still a request from its IP: count it against
            // the per-IP window, so floods of bad keys are limited too (and a limited client
            // learns it with 429 instead of probing keys at full speed).
            let e = match e {
                Error::Auth(auth) => keyless_rate(state, &rt, ip, &mut meta).map_or_else(|r| r, |()| Error::Auth(auth)),
                e => e,
            };
            if e.status().is_server_error() {
                tracing::warn!(route = route.name, code = e.code(), error = %e, "request failed");
            } else {
                tracing::debug!(route = route.name, code = e.code(), error = %e, "request rejected");
            }
            respond::error(&e)
        }
    };
    if let Some(rate) = &meta.rate {
        add_rate_headers(response.headers_mut(), rate);
    }
    response
}

/// The key's standing in every window (`X-RateLimit-*`), and `Retry-After` when refused.
fn add_rate_headers(headers: &mut HeaderMap, rate: &Decision) {
    rate.for_each_header(|name, value| {
        headers.insert(name, HeaderValue::from(value));
    });
}

/// The per-IP window of a request whose key did not resolve: `Err` with the 429 to answer.
fn keyless_rate(state: &AppState, rt: &Runtime, ip: IpAddr, meta: &mut Meta) -> Result<(), Error> {
    let decision = state.access.check_ip(ip, rt.config.per_ip_limit.as_ref());
    let result = decision.result();
    if result.is_err() {
        state.metrics.rate_limited.with_label_values(&["unknown", "ip"]).inc();
    }
    meta.rate = Some(decision);
    result.map_err(|e| Error::Access(AccessError::RateLimited(e)))
}

/// Origin and request-rate checks of a resolved key; the decision is kept for the headers.
fn admit(
    state: &AppState,
    rt: &Runtime,
    cred: &Credential,
    origin: Option<&str>,
    ip: IpAddr,
    meta: &mut Meta,
) -> Result<(), Error> {
    let key = cred.key().ok_or(AuthError::Invalid)?;
    access::check_origin(key, origin)?;
    let decision = state.access.check_rate(key, ip, rt.config.per_ip_limit.as_ref());
    let result = decision.result();
    if let (Err(_), Some(w)) = (&result, decision.limited_by) {
        state.metrics.rate_limited.with_label_values(&[&cred.source.id, w.as_str()]).inc();
    }
    meta.rate = Some(decision);
    result.map_err(|e| Error::Access(AccessError::RateLimited(e)))
}

/// An event on its way through the per-event stages.
struct Candidate {
    index: usize,
    event: OutEvent,
    /// Position in the dedup reservation, when its messageId is deduplicated.
    dedup_slot: Option<usize>,
}

async fn ingest_inner<B>(
    state: &AppState,
    rt: &Runtime,
    route: IngestRoute,
    req: Request<B>,
    ip: IpAddr,
    meta: &mut Meta,
) -> Result<Response<Body>, Error>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body) = req.into_parts();
    let limits = &rt.config.limits;
    let origin = parts.headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok());

    // A key in the head is checked (and rate-limited) before a byte of the body is read.
    let head_cred = match auth::key_from_head(&parts)? {
        Some(key) => Some(rt.keys.resolve(&key)?),
        None => None,
    };
    if let Some(cred) = &head_cred {
        admit(state, rt, cred, origin, ip, meta)?;
    }
    let encoding = decode::check_headers(&parts.headers, limits)?;
    let timeout = Duration::from_millis(rt.config.server.body_read_timeout_ms);
    let bytes = decode::read_body(body, encoding, limits, timeout).await?;
    state.metrics.request_body_bytes.with_label_values(&[route.name]).observe(bytes.len() as f64);

    let received_at = (state.clocks.wall)();
    let payload = decode::parse_body(&bytes, route.batch, limits)?;
    let cred = match head_cred {
        Some(c) => c,
        None => {
            let key = payload.write_key().ok_or(AuthError::Missing)?;
            let cred = rt.keys.resolve(&key)?;
            admit(state, rt, &cred, origin, ip, meta)?;
            cred
        }
    };
    let source = cred.source.clone();
    let key = cred.key().ok_or(AuthError::Invalid)?;
    tracing::Span::current().record("source_id", &*source.id);

    let received_at_text = received_at.format();
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
    // sendBeacon cannot read the answer; `?beacon=1` asks for a body-less 204.
    let no_content =
        parts.uri.query().and_then(|q| auth::query_param(q, "beacon")).is_some_and(|v| v == "1" || v == "true");

    // ---- per event: decode checks, normalise (with consent), call type ------------------
    let mut outcome = Outcome::default();
    let mut candidates: Vec<Candidate> = Vec::new();
    // Violation records for the violations topic: published with the events, but their
    // delivery does not decide the answer.
    let mut aux: Vec<OutEvent> = Vec::new();
    let contract = rt.contracts.get(&source.id).cloned();
    let consider = |outcome: &mut Outcome,
                    candidates: &mut Vec<Candidate>,
                    aux: &mut Vec<OutEvent>,
                    index: usize,
                    result: Result<decode::Normalised, decode::EventError>| {
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                return outcome.reject(index, route.path_type, respond::event_status(&e), e.code(), e.to_string())
            }
        };
        if !access::type_allowed(key, n.event_type) {
            let msg = format!("this write key may not send {} calls", n.event_type);
            return outcome.reject(index, Some(n.event_type), StatusCode::FORBIDDEN, "event_type_not_allowed", msg);
        }
        if n.consent_drop {
            outcome.consent_dropped += 1;
            state.metrics.consent_dropped.with_label_values(&[&source.id, n.event_type.as_str()]).inc();
            return;
        }
        let mut n = n;
        if let Some((plan, policies)) = &contract {
            match plan.check(policies, &n.payload) {
                Ok(ContractVerdict::Pass) => {}
                Ok(ContractVerdict::Publish { payload, violations }) => {
                    let action = if payload.is_some() { "omitted" } else { "allowed" };
                    state.metrics.contract_violations.with_label_values(&[&source.id, action]).inc();
                    aux.push(violation_event(rt, &source, &n, &violations, false));
                    if let Some(p) = payload {
                        n.payload = p;
                    }
                }
                Ok(ContractVerdict::Block { violations }) => {
                    state.metrics.contract_violations.with_label_values(&[&source.id, "blocked"]).inc();
                    aux.push(violation_event(rt, &source, &n, &violations, true));
                    let msg = violation_summary(&violations);
                    return outcome.reject_with_violations(index, n.event_type, msg, violations);
                }
                // Decode only forwards what the checker can read, so this should not happen; if
                // it does, the plan's promise wins: an event that could not be checked is not
                // published (fail closed). Counted per event, logged at most once a second —
                // a client that found such an input must not be able to flood the log.
                Err(e) => {
                    state.metrics.contract_violations.with_label_values(&[&source.id, "check_failed"]).inc();
                    if let Some(suppressed) = CHECK_FAILED_LOG.admit() {
                        tracing::error!(code = e.code(), error = %e, suppressed, "contract check failed; event rejected");
                    }
                    let msg = format!("the event could not be checked against its tracking plan: {e}");
                    return outcome.reject(
                        index,
                        Some(n.event_type),
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "contract_check_failed",
                        msg,
                    );
                }
            }
        }
        let dedup = !n.message_id_generated && source.dedup_ttl.is_some();
        candidates.push(Candidate { index, event: out_event(&source, n), dedup_slot: dedup.then_some(0) });
    };
    match &payload {
        Payload::Single(ev) => {
            outcome.received = 1;
            consider(&mut outcome, &mut candidates, &mut aux, 0, decode::normalise(ev, &cx));
        }
        Payload::Batch(b) => {
            outcome.received = b.events.len();
            candidates.reserve(b.events.len());
            for (i, item) in b.events.iter().enumerate() {
                let result = decode::parse_event(item, limits).and_then(|ev| decode::normalise(ev, &cx));
                consider(&mut outcome, &mut candidates, &mut aux, i, result);
            }
        }
    }
    drop(payload);

    // The sink's own size limit (e.g. the broker's message.max.bytes) is checked before
    // producing: such an event could never be delivered, so it is not retriable.
    if let Some(max) = state.publisher.max_event_bytes() {
        candidates.retain(|c| {
            if c.event.payload.len() > max {
                outcome.add_publish_failure(
                    c.index,
                    c.event.event_type,
                    PublishError::TooLarge { size: c.event.payload.len(), limit: max },
                );
                false
            } else {
                true
            }
        });
    }

    // ---- dedup: reserve client messageIds; duplicates are answered 200, not published -------
    let ttl = source.dedup_ttl.unwrap_or_default();
    let mut reservations = {
        for (slot, c) in candidates.iter_mut().filter(|c| c.dedup_slot.is_some()).enumerate() {
            c.dedup_slot = Some(slot);
        }
        let ids = candidates.iter().filter(|c| c.dedup_slot.is_some()).map(|c| c.event.message_id.as_str());
        state.dedup.reserve(&source.id, ids, ttl).await
    };
    candidates.retain(|c| match c.dedup_slot.and_then(|s| reservations.verdict(s)) {
        Some(Verdict::Duplicate) => {
            outcome.duplicates += 1;
            state.metrics.duplicates.with_label_values(&[&source.id, c.event.event_type.as_str()]).inc();
            false
        }
        Some(Verdict::InFlight) => {
            let msg = "a request with the same messageId is still being published; retry".to_string();
            outcome.reject(c.index, Some(c.event.event_type), StatusCode::SERVICE_UNAVAILABLE, "dedup_in_flight", msg);
            outcome.retry = true;
            false
        }
        _ => true,
    });

    // ---- monthly quota: the events that fit are published, the rest get 402 ----------------
    let now = received_at.to_offset_date_time();
    let quota = state.access.quotas.try_consume(&source.id, candidates.len() as u64, source.monthly_event_quota, now);
    let granted = quota.granted() as usize;
    if granted < candidates.len() {
        for c in candidates.drain(granted..) {
            if let Some(s) = c.dedup_slot {
                reservations.release(s);
            }
            let msg = AccessError::QuotaExceeded.to_string();
            outcome.reject(c.index, Some(c.event.event_type), StatusCode::PAYMENT_REQUIRED, "quota_exceeded", msg);
        }
    }

    // ---- publish -------------------------------------------------------------------------
    let mut accepted_by_type = [0u64; EventType::COUNT];
    if !candidates.is_empty() || !aux.is_empty() {
        let mut meta_of = Vec::with_capacity(candidates.len());
        let mut events = Vec::with_capacity(candidates.len() + aux.len());
        for c in candidates {
            meta_of.push((c.index, c.dedup_slot, c.event.event_type));
            events.push(c.event);
        }
        let aux_count = aux.len();
        events.extend(aux);
        reservations.begin_publish();
        let started = Instant::now();
        let published = state.publisher.publish_tracked(events).await;
        let (mut results, late) = (published.results, published.late);
        state
            .metrics
            .publish_duration
            .with_label_values(&[sink_label(&rt.config)])
            .observe(started.elapsed().as_secs_f64());
        let aux_results = results.split_off(results.len().saturating_sub(aux_count));
        for e in aux_results.iter().filter_map(|r| r.as_ref().err()) {
            tracing::warn!(code = respond::publish_code(e), error = %e, "publishing a violation record failed");
        }
        // Events answered before their outcome was known keep their ids reserved until then.
        let mut late_at: Vec<Option<usize>> = Vec::new();
        if let Some(l) = &late {
            late_at.resize(results.len(), None);
            for (at, &i) in l.indices.iter().enumerate() {
                if let Some(slot) = late_at.get_mut(i) {
                    *slot = Some(at);
                }
            }
        }
        let mut deferred = Vec::new();
        for (i, (result, (index, slot, t))) in results.into_iter().zip(meta_of).enumerate() {
            match result {
                Ok(()) => {
                    outcome.accepted += 1;
                    accepted_by_type[t.index()] += 1;
                    if let Some(s) = slot {
                        reservations.confirm(s);
                    }
                }
                Err(e) => {
                    if let Some(s) = slot {
                        // A late event (still queued) keeps its id until the sink knows. A
                        // timed-out delivery may still land: keep the id reserved (until the
                        // reservation TTL) so a retry cannot publish it twice.
                        if let Some(at) = late_at.get(i).copied().flatten() {
                            deferred.extend(reservations.defer(s, &state.dedup).map(|d| (at, d)));
                        } else if e == PublishError::Timeout {
                            reservations.hold(s);
                        } else {
                            reservations.release(s);
                        }
                    }
                    outcome.add_publish_failure(index, t, e);
                }
            }
        }
        if let (Some(late), false) = (late, deferred.is_empty()) {
            tokio::spawn(settle_late(late, deferred));
        }
        if let Some(e) = &outcome.publish_error {
            tracing::warn!(source_id = %source.id, code = respond::publish_code(e), error = %e, "publish failed");
        }
    }
    drop(reservations);
    let rejected = outcome.errors.len() as u64;
    quota.settle(
        EventCounts { accepted: outcome.accepted as u64, rejected, duplicates: outcome.duplicates as u64 },
        now,
    );
    record_events(state, &source, &outcome, &accepted_by_type);
    outcome.errors.sort_by_key(|f| f.index);

    Ok(if route.batch { respond::batch(&outcome, no_content) } else { respond::single(&outcome, no_content) })
}

/// Settles the reservations of events answered before the sink knew their outcome, once it
/// does: confirmed if the event became durable after all, released if it failed for good, held
/// (until the reservation TTL) if the outcome is still unknown.
async fn settle_late(late: crate::publish::Late, deferred: Vec<(usize, dedup::Deferred)>) {
    let outcomes = late.outcome.await;
    for (at, d) in deferred {
        match outcomes.get(at) {
            Some(Ok(())) => d.confirm(),
            Some(Err(PublishError::Timeout)) | None => drop(d),
            Some(Err(_)) => d.release(),
        }
    }
}

/// The violations-topic record of one event.
fn violation_event(
    rt: &Runtime,
    source: &Arc<Source>,
    n: &decode::Normalised,
    violations: &[validate::Violation],
    blocked: bool,
) -> OutEvent {
    let name = validate::event_name(&n.payload);
    let payload = validate::violation_record(
        &source.id,
        &n.message_id,
        name.as_deref(),
        n.event_type.as_str(),
        violations,
        blocked,
        &n.payload,
    );
    OutEvent {
        topic: rt.config.violations_topic.clone(),
        key: Some(n.message_id.clone()),
        event_type: n.event_type,
        source_id: source.id.clone(),
        message_id: n.message_id.clone(),
        payload,
        consent_header: None,
    }
}

/// A one-line reason for a blocked event (the full list goes in `violations`).
fn violation_summary(violations: &[validate::Violation]) -> String {
    let first: Vec<String> =
        violations.iter().take(3).map(|v| format!("{} ({}): {}", v.pointer, v.keyword, v.message)).collect();
    let more = violations.len().saturating_sub(3);
    let tail = if more > 0 { format!("; and {more} more") } else { String::new() };
    format!("the event breaks its tracking plan: {}{tail}", first.join("; "))
}

fn sink_label(config: &Config) -> &'static str {
    match config.sink {
        crate::config::SinkConfig::LocalLog { .. } => "local_log",
        crate::config::SinkConfig::Kafka(_) => "kafka",
        crate::config::SinkConfig::Memory => "memory",
    }
}

fn out_event(source: &Arc<Source>, n: decode::Normalised) -> OutEvent {
    OutEvent {
        topic: source.topics[n.event_type.index()].clone(),
        key: n.key,
        event_type: n.event_type,
        source_id: source.id.clone(),
        message_id: n.message_id,
        payload: n.payload,
        consent_header: n.consent_header,
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
        let t = f.event_type.map_or("unknown", EventType::as_str);
        m.events_rejected.with_label_values(&[&source.id, t, f.code]).inc();
    }
}

/// `GET /v1/usage`: the source's counts, quota and rate-limit settings, for a secret key.
pub async fn usage<B>(state: &AppState, req: Request<B>) -> Response<Body> {
    let (parts, _body) = req.into_parts();
    let rt = state.runtime();
    let result = (|| -> Result<Response<Body>, Error> {
        let key = auth::key_for_read(&parts)?.ok_or(AuthError::Missing)?;
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
