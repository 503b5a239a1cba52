//! Import jobs on the pipeline: accepting `/v1/events/bulk` and `/v1/backfill/csv` (a secret
//! key, room in the queue, the input durable before the 202), the runner that feeds each job's
//! chunks through [`run_calls`], and the reads of the job API.
//!
//! Owns: the order of a job's life — admit (one request against the key's rate windows),
//! stage the input (`import`), make it durable (`import::jobs`), then chunk after chunk:
//! record that the chunk started, publish it through the same stages as `/v1/batch`, record
//! what happened to each event. Must not: hold the shapes' rules (import does) or build HTTP
//! answers.
//!
//! Exactly once across a crash: every event's messageId is fixed when the job is accepted, so
//! a chunk run again after a restart carries the same ids; the dedup cache did not survive a
//! `kill -9`, so before running such a chunk again the runner asks the sink which of its ids
//! it already holds ([`crate::Publisher::find_published`]) and skips those. Retriable sink
//! failures are retried (with a pause) until they succeed or the gateway stops; everything
//! else is a per-event error of the job.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{admit, run_calls, AppState, FailureKind};
use crate::access::auth::AuthError;
use crate::access::{self, ratelimit::Decision};
use crate::decode::{self, timestamp::Timestamp, DecodeError};
use crate::error::Error;
use crate::import::jobs::{now_ms, InputWriter, Job, JobKind, JobStatus, JobView};
use crate::import::{self, csv, ImportError, Staged};

/// Most bytes of a bulk body (the CSV backfill's cap too).
pub const MAX_UPLOAD_BYTES: usize = csv::MAX_BYTES;
/// The pause before a chunk's retriable failures are tried again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The key of a job request: from the head, resolved, admitted, and a secret key.
fn admit_secret(
    state: &AppState,
    rt: &super::Runtime,
    parts: &http::request::Parts,
    ip: IpAddr,
    rate: &mut Option<Decision>,
) -> Result<(Arc<crate::access::keys::Source>, usize), Error> {
    let cred = admit::head_credential(rt, parts)?.ok_or(AuthError::Missing)?;
    let origin = parts.headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok());
    admit::admit(state, rt, &cred, origin, ip, rate)?;
    let key = cred.key().ok_or(AuthError::Invalid)?;
    access::check_secret(key)?;
    let index = cred.source.keys.iter().position(|k| k.key == key.key).ok_or(AuthError::Invalid)?;
    Ok((cred.source.clone(), index))
}

/// `POST /v1/events/bulk` and `POST /v1/backfill/csv`: the accepted job, queued.
pub async fn submit<B>(
    state: &AppState,
    kind: JobKind,
    req: Request<B>,
    peer: SocketAddr,
    rate: &mut Option<Decision>,
) -> Result<JobView, Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let rt = state.runtime();
    let ip = rt.config.server.client_ip.resolve(req.headers(), peer);
    let (parts, body) = req.into_parts();
    let (source, key_index) = admit_secret(state, &rt, &parts, ip, rate)?;
    state.jobs.check_room()?;
    let job_id = format!("job_{}", uuid::Uuid::new_v4().simple());
    let dir = state.jobs.new_job_dir(&job_id)?;
    let now = (state.clocks.wall)();
    let staged = stage(state, kind, &parts, body, &dir, now).await;
    let staged = match staged {
        Ok(s) => s,
        Err(e) => {
            // Nothing was accepted: leave no half-written job behind.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let (lines, staged) = staged;
    let mut job = Job {
        view: JobView {
            job_id: job_id.clone(),
            kind,
            status: JobStatus::Queued,
            total_events: staged.total,
            processed: staged.refused.len(),
            accepted: 0,
            rejected: 0,
            duplicates: 0,
            errors: Vec::new(),
            more_errors: 0,
            created_at: now.format(),
            started_at: None,
            finished_at: None,
        },
        source_id: source.id.to_string(),
        key_index,
        client_ip: ip.to_string(),
        calls: lines,
        lines_done: 0,
        chunk_started_ms: None,
        created_ms: now_ms(),
        finished_ms: None,
    };
    for r in &staged.refused {
        job.refuse(r.index, r.code, r.message.clone());
    }
    if lines == 0 {
        job.view.status = JobStatus::Completed;
        job.view.finished_at = Some(now.format());
        job.finished_ms = Some(job.created_ms);
    }
    if let Err(e) = state.jobs.create(job.clone()) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.into());
    }
    tracing::info!(job_id, kind = ?kind, events = staged.total, source_id = %source.id, "import job accepted");
    Ok(job.view)
}

/// Reads the upload and writes the job's input; returns the lines written and what was staged.
async fn stage<B>(
    state: &AppState,
    kind: JobKind,
    parts: &http::request::Parts,
    body: B,
    dir: &Path,
    now: Timestamp,
) -> Result<(usize, Staged), Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let timeout = state.jobs.settings().upload_timeout;
    let now_text = now.format();
    let dir = dir.to_path_buf();
    match kind {
        JobKind::Bulk => {
            let encoding = decode::check_headers(&parts.headers, &upload_limits())?;
            let bytes = decode::read_body(body, encoding, &upload_limits(), timeout).await?;
            let value = import::parse_json(&bytes)?;
            drop(bytes);
            let staged = tokio::task::spawn_blocking(move || -> Result<(usize, Staged), ImportError> {
                let mut out = InputWriter::create(&dir)?;
                let staged = import::stage_bulk(value, &now_text, &mut out)?;
                Ok((out.finish()?, staged))
            })
            .await
            .map_err(|e| ImportError::Store(e.to_string()))??;
            Ok(staged)
        }
        JobKind::Csv => {
            let upload = dir.join("upload.csv");
            let as_strings =
                parts.uri.query().and_then(|q| crate::access::auth::query_param(q, "types")) == Some("string".into());
            match tokio::time::timeout(timeout, receive_csv(parts, body, &upload)).await {
                Err(_) => return Err(DecodeError::BodyTimeout(timeout.as_millis() as u64).into()),
                Ok(r) => r?,
            }
            let staged = tokio::task::spawn_blocking(move || -> Result<(usize, Staged), ImportError> {
                let mut out = InputWriter::create(&dir)?;
                let staged = csv::stage(&upload, as_strings, &now_text, &mut out)?;
                let lines = out.finish()?;
                let _ = std::fs::remove_file(&upload);
                Ok((lines, staged))
            })
            .await
            .map_err(|e| ImportError::Store(e.to_string()))??;
            Ok(staged)
        }
    }
}

fn upload_limits() -> decode::Limits {
    decode::Limits { max_request_bytes: MAX_UPLOAD_BYTES, max_event_bytes: MAX_UPLOAD_BYTES, max_batch_events: 1 }
}

/// Streams the CSV (the `file` field of a `multipart/form-data` body, or the raw body) into
/// `path`, refusing the byte past [`csv::MAX_BYTES`] with 413 while it arrives.
async fn receive_csv<B>(parts: &http::request::Parts, body: B, path: &Path) -> Result<(), Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut file = tokio::fs::File::create(path).await.map_err(|e| ImportError::Store(e.to_string()))?;
    let mut written = 0usize;
    let mut write = |chunk: Bytes| {
        written += chunk.len();
        if written > csv::MAX_BYTES {
            return Err(Error::from(DecodeError::PayloadTooLarge { what: "CSV upload", limit: csv::MAX_BYTES }));
        }
        Ok(chunk)
    };
    let content_type = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        let boundary =
            multer::parse_boundary(content_type).map_err(|e| ImportError::InvalidMultipart(e.to_string()))?;
        let mut multipart = multer::Multipart::new(body.into_data_stream(), boundary);
        let mut found = false;
        while let Some(mut field) =
            multipart.next_field().await.map_err(|e| ImportError::InvalidMultipart(e.to_string()))?
        {
            if field.name() != Some("file") || found {
                continue;
            }
            found = true;
            while let Some(chunk) = field.chunk().await.map_err(|e| ImportError::InvalidMultipart(e.to_string()))? {
                let chunk = write(chunk)?;
                file.write_all(&chunk).await.map_err(|e| ImportError::Store(e.to_string()))?;
            }
        }
        if !found {
            return Err(ImportError::InvalidMultipart("no 'file' field".into()).into());
        }
    } else {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| DecodeError::BodyRead(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                let chunk = write(data)?;
                file.write_all(&chunk).await.map_err(|e| ImportError::Store(e.to_string()))?;
            }
        }
    }
    file.flush().await.map_err(|e| ImportError::Store(e.to_string()))?;
    Ok(())
}

/// `GET /v1/jobs/{jobId}` and `GET /v1/jobs`: a secret key reads its own source's jobs.
pub fn read(
    state: &AppState,
    parts: &http::request::Parts,
    peer: SocketAddr,
    job_id: Option<&str>,
    rate: &mut Option<Decision>,
) -> Result<serde_json::Value, Error> {
    let rt = state.runtime();
    let ip = rt.config.server.client_ip.resolve(&parts.headers, peer);
    let (source, _) = admit_secret(state, &rt, parts, ip, rate)?;
    match job_id {
        Some(id) => {
            let view = state.jobs.get(&source.id, id).ok_or_else(|| ImportError::JobNotFound(id.to_string()))?;
            Ok(serde_json::to_value(view).unwrap_or_default())
        }
        None => Ok(serde_json::to_value(state.jobs.list(&source.id)).unwrap_or_default()),
    }
}

/// Runs queued jobs, `max_running` at a time, until `stop`; a job stopped between chunks
/// is queued again and resumes where it was.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let workers: Vec<_> = (0..state.jobs.settings().max_running)
        .map(|_| {
            let (state, stop) = (state.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    match state.jobs.claim() {
                        Some(job) => run_job(&state, job, &stop).await,
                        None => {
                            let woken = state.jobs.wake.notified();
                            tokio::select! {
                                _ = woken => {}
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                _ = stop.cancelled() => {}
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}

async fn run_job(state: &AppState, mut job: Job, stop: &CancellationToken) {
    let id = job.view.job_id.clone();
    if job.view.started_at.is_none() {
        job.view.started_at = Some((state.clocks.wall)().format());
    }
    let chunk = state.jobs.settings().chunk_events;
    while job.lines_done < job.calls {
        if stop.is_cancelled() {
            job.view.status = JobStatus::Queued;
            let _ = state.jobs.save(&job);
            return;
        }
        let (from, to) = (job.lines_done, (job.lines_done + chunk).min(job.calls));
        match run_chunk(state, &mut job, from, to, stop).await {
            Ok(true) => {}
            // Stopped mid-chunk: queued again, the chunk resumes (with the sink check) later.
            Ok(false) => {
                job.view.status = JobStatus::Queued;
                let _ = state.jobs.save(&job);
                return;
            }
            Err(e) => {
                tracing::error!(job_id = id, error = %e, "import job failed");
                job.view.status = JobStatus::Failed;
                job.refuse(from, e.code(), e.to_string());
                break;
            }
        }
        // Let live requests run between chunks.
        tokio::task::yield_now().await;
    }
    if job.view.status != JobStatus::Failed {
        job.view.status = JobStatus::Completed;
    }
    job.view.finished_at = Some((state.clocks.wall)().format());
    job.finished_ms = Some(now_ms());
    if let Err(e) = state.jobs.save(&job) {
        tracing::error!(job_id = id, error = %e, "saving a finished import job failed");
    }
    tracing::info!(job_id = id, status = ?job.view.status, accepted = job.view.accepted, rejected = job.view.rejected, "import job finished");
}

/// One chunk, lines `from..to`. `Ok(false)` when the gateway stopped before it was done.
async fn run_chunk(
    state: &AppState,
    job: &mut Job,
    from: usize,
    to: usize,
    stop: &CancellationToken,
) -> Result<bool, Error> {
    let store = state.jobs.clone();
    let job_id = job.view.job_id.clone();
    let lines = tokio::task::spawn_blocking(move || store.read_lines(&job_id, from, to))
        .await
        .map_err(|e| ImportError::Store(e.to_string()))?
        .map_err(|e| ImportError::Store(e.to_string()))?;
    let ids: Vec<Option<String>> = lines.iter().map(|(_, call)| message_id(call)).collect();
    let (mut accepted, mut duplicates) = (0, 0);
    let mut pending: Vec<usize> = (0..lines.len()).collect();
    if let Some(since) = job.chunk_started_ms {
        // This chunk was running when the gateway stopped: its events already in the sink are
        // not published again.
        let wanted: HashSet<String> = ids.iter().flatten().cloned().collect();
        if let Some(found) = state.publisher.find_published(wanted, since).await {
            pending.retain(|&i| !ids[i].as_ref().is_some_and(|id| found.contains(id)));
            accepted += lines.len() - pending.len();
        }
    }
    job.chunk_started_ms = Some(now_ms());
    state.jobs.save(job)?;
    let rt = state.runtime();
    let Some(source) = rt.config.sources.iter().find(|s| *s.id == *job.source_id).cloned() else {
        return Err(AuthError::Invalid.into());
    };
    let Some(key) = source.keys.get(job.key_index) else {
        return Err(AuthError::Invalid.into());
    };
    if key.revoked {
        return Err(AuthError::Revoked.into());
    }
    let mut refused: Vec<(usize, &'static str, String)> = Vec::new();
    while !pending.is_empty() {
        let mut body = Vec::with_capacity(pending.len() * 256);
        body.extend_from_slice(b"{\"batch\":[");
        for (n, &i) in pending.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(lines[i].1.as_bytes());
        }
        body.extend_from_slice(b"]}");
        let outcome = match run_calls(state, &rt, &source, key, &body, &job.client_ip, pending.len()).await {
            Ok(o) => o,
            Err(e) => {
                // The whole chunk could not be decoded (it was written by us: a bug or a
                // damaged file): every event of it is refused with the reason.
                for &i in &pending {
                    refused.push((lines[i].0, e.code(), e.to_string()));
                }
                break;
            }
        };
        accepted += outcome.accepted + outcome.consent_dropped;
        duplicates += outcome.duplicates;
        let mut retry = Vec::new();
        for f in &outcome.errors {
            let Some(&i) = pending.get(f.index) else { continue };
            match f.kind {
                FailureKind::SinkRetriable | FailureKind::InFlight => retry.push(i),
                _ => refused.push((lines[i].0, f.code, f.message.clone())),
            }
        }
        pending = retry;
        if !pending.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stop.cancelled() => return Ok(false),
            }
        }
    }
    job.view.accepted += accepted;
    job.view.duplicates += duplicates;
    for (origin, code, message) in refused {
        job.refuse(origin, code, message);
    }
    job.lines_done = to;
    job.view.processed += to - from;
    job.chunk_started_ms = None;
    state.jobs.save(job)?;
    Ok(true)
}

/// The messageId of a call we wrote.
fn message_id(call: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "messageId")]
        message_id: Option<String>,
    }
    serde_json::from_str::<Id>(call).ok().and_then(|i| i.message_id)
}

/// Deletes finished jobs past their retention, every minute, until `stop`.
pub async fn sweep(state: Arc<AppState>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.cancelled() => return,
        }
        let jobs = state.jobs.clone();
        let _ = tokio::task::spawn_blocking(move || jobs.sweep(now_ms())).await;
    }
}
