//! The job store: bulk and CSV imports accepted as durable files under the data directory,
//! their status, and what a resumed job needs after a crash.
//!
//! Owns: the layout (`<dir>/<jobId>/input.ndjson`, one Segment call a line as
//! `<index or row>\t<json>`, and `<dir>/<jobId>/job.json`, the record, replaced atomically),
//! the fsyncs that make a 202 honest, claiming queued jobs, the retention of finished ones, and
//! the caps (queued jobs, kept errors). Must not: run the pipeline (`ingest::jobs` does) or
//! answer HTTP.
//!
//! Durability: [`JobStore::create`] writes and fsyncs the input, the record, the job folder
//! and the store folder before it returns, so an accepted job survives `kill -9` and a power
//! loss. The record is rewritten (temporary file, fsync, rename, folder fsync) before each
//! chunk (`chunk_started_ms`) and after it (`lines_done`), so a restart knows which chunk may
//! have been published in part.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ImportError;

/// The store's settings (built by config from `[import]`).
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Where jobs live; `None`: `jobs` beside the usage counts (the data directory unless
    /// `usage.data_dir` says otherwise), see [`JobSettings::dir_or`].
    pub dir: Option<PathBuf>,
    /// Jobs processed at once; the others wait, so live traffic keeps its latency.
    pub max_running: usize,
    /// Jobs queued or processing before a new one gets 503 `too_many_jobs`.
    pub max_queued: usize,
    /// How long a finished job's status is kept.
    pub retention: Duration,
    /// Events per pipeline run of a job.
    pub chunk_events: usize,
    /// The longest a job's upload may take to arrive.
    pub upload_timeout: Duration,
}

impl JobSettings {
    /// The folder, given where the usage counts live.
    pub fn dir_or(&self, state_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| state_dir.join("jobs"))
    }
}

/// Most per-event errors a job keeps; the rest are counted in `moreErrors`.
pub const MAX_JOB_ERRORS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Processing,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Bulk,
    Csv,
}

/// One refused event of a job: by its index in the body (bulk) or its CSV row (header = 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
    pub code: String,
    pub message: String,
}

/// What the job API shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub total_events: usize,
    pub processed: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub duplicates: usize,
    pub errors: Vec<JobError>,
    pub more_errors: usize,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// The record on disk: the view and what the runner needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    #[serde(flatten)]
    pub view: JobView,
    pub source_id: String,
    /// The key's position in its source (the key itself is never written).
    pub key_index: usize,
    pub client_ip: String,
    /// Lines in `input.ndjson` (events that passed their shape at accept time).
    pub calls: usize,
    /// Lines fully processed (published, refused or counted).
    pub lines_done: usize,
    /// Set while a chunk runs: a restart looks for its events in the sink from then on.
    pub chunk_started_ms: Option<u64>,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
}

impl Job {
    /// Records a refused event, keeping at most [`MAX_JOB_ERRORS`].
    pub fn refuse(&mut self, origin: usize, code: &str, message: String) {
        self.view.rejected += 1;
        if self.view.errors.len() < MAX_JOB_ERRORS {
            let (index, row) = match self.view.kind {
                JobKind::Bulk => (Some(origin), None),
                JobKind::Csv => (None, Some(origin)),
            };
            self.view.errors.push(JobError { index, row, code: code.to_string(), message });
            // Refusals at upload and while running arrive in two passes: keep input order.
            self.view.errors.sort_by_key(|e| e.index.or(e.row));
        } else {
            self.view.more_errors += 1;
        }
    }
}

/// The jobs of one gateway.
pub struct JobStore {
    settings: JobSettings,
    dir: PathBuf,
    jobs: Mutex<BTreeMap<String, Job>>,
    /// Wakes the runner when a job is queued.
    pub wake: tokio::sync::Notify,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl JobStore {
    /// Opens (or creates) the store and loads every job; a job that was processing when the
    /// gateway stopped is queued again, to resume where its record says.
    pub fn open(settings: JobSettings, dir: PathBuf) -> io::Result<JobStore> {
        fs::create_dir_all(&dir)?;
        let mut jobs = BTreeMap::new();
        for entry in fs::read_dir(&dir)? {
            let dir = entry?.path();
            let record = dir.join("job.json");
            if !record.exists() {
                // A job whose 202 was never sent (the gateway stopped while writing it).
                let _ = fs::remove_dir_all(&dir);
                continue;
            }
            let mut job: Job = serde_json::from_slice(&fs::read(&record)?)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", record.display())))?;
            if job.view.status == JobStatus::Processing {
                job.view.status = JobStatus::Queued;
            }
            jobs.insert(job.view.job_id.clone(), job);
        }
        Ok(JobStore { settings, dir, jobs: Mutex::new(jobs), wake: tokio::sync::Notify::new() })
    }

    pub fn settings(&self) -> &JobSettings {
        &self.settings
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Job>>, ImportError> {
        self.jobs.lock().map_err(|_| ImportError::Store("the job table is poisoned".into()))
    }

    /// Refuses a new job when the queue is full.
    pub fn check_room(&self) -> Result<(), ImportError> {
        let jobs = self.lock()?;
        let open = jobs.values().filter(|j| matches!(j.view.status, JobStatus::Queued | JobStatus::Processing));
        if open.count() >= self.settings.max_queued {
            return Err(ImportError::TooManyJobs(self.settings.max_queued));
        }
        Ok(())
    }

    /// A new job's folder, to write its input into with [`InputWriter`].
    pub fn new_job_dir(&self, job_id: &str) -> Result<PathBuf, ImportError> {
        let dir = self.dir.join(job_id);
        fs::create_dir_all(&dir).map_err(store_error)?;
        Ok(dir)
    }

    /// Makes a job durable (its input is written already) and queues it.
    pub fn create(&self, job: Job) -> Result<(), ImportError> {
        self.check_room()?;
        let dir = self.dir.join(&job.view.job_id);
        write_record(&dir, &job).map_err(store_error)?;
        sync_dir(&self.dir).map_err(store_error)?;
        self.lock()?.insert(job.view.job_id.clone(), job);
        self.wake.notify_waiters();
        Ok(())
    }

    /// Claims the oldest queued job, marking it processing.
    pub fn claim(&self) -> Option<Job> {
        let mut jobs = self.jobs.lock().ok()?;
        let next = jobs
            .values_mut()
            .filter(|j| j.view.status == JobStatus::Queued)
            .min_by_key(|j| (j.created_ms, j.view.job_id.clone()))?;
        next.view.status = JobStatus::Processing;
        Some(next.clone())
    }

    /// Saves a job's progress (durably) and updates the table.
    pub fn save(&self, job: &Job) -> Result<(), ImportError> {
        write_record(&self.dir.join(&job.view.job_id), job).map_err(store_error)?;
        self.lock()?.insert(job.view.job_id.clone(), job.clone());
        Ok(())
    }

    pub fn get(&self, source_id: &str, job_id: &str) -> Option<JobView> {
        let jobs = self.jobs.lock().ok()?;
        jobs.get(job_id).filter(|j| j.source_id == source_id).map(|j| j.view.clone())
    }

    /// A source's jobs, newest first.
    pub fn list(&self, source_id: &str) -> Vec<JobView> {
        let Ok(jobs) = self.jobs.lock() else { return Vec::new() };
        let mut out: Vec<&Job> = jobs.values().filter(|j| j.source_id == source_id).collect();
        out.sort_by_key(|j| std::cmp::Reverse(j.created_ms));
        out.into_iter().map(|j| j.view.clone()).collect()
    }

    /// The input lines `from..to` of a job: `(origin, call)`.
    pub fn read_lines(&self, job_id: &str, from: usize, to: usize) -> io::Result<Vec<(usize, String)>> {
        let file = File::open(self.dir.join(job_id).join("input.ndjson"))?;
        let mut out = Vec::with_capacity(to.saturating_sub(from));
        for line in BufReader::new(file).lines().skip(from).take(to.saturating_sub(from)) {
            let line = line?;
            let (origin, call) = line
                .split_once('\t')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "an input line without its index"))?;
            let origin =
                origin.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "an input line's index"))?;
            out.push((origin, call.to_string()));
        }
        Ok(out)
    }

    /// Deletes finished jobs older than the retention; returns how many.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let Ok(mut jobs) = self.jobs.lock() else { return 0 };
        let keep = self.settings.retention.as_millis() as u64;
        let old: Vec<String> = jobs
            .values()
            .filter(|j| j.finished_ms.is_some_and(|f| now_ms.saturating_sub(f) > keep))
            .map(|j| j.view.job_id.clone())
            .collect();
        for id in &old {
            if fs::remove_dir_all(self.dir.join(id)).is_ok() {
                jobs.remove(id);
            }
        }
        old.len()
    }
}

/// Writes a job's input, one call a line; [`InputWriter::finish`] fsyncs it.
pub struct InputWriter {
    out: BufWriter<File>,
    lines: usize,
}

impl InputWriter {
    pub fn create(dir: &Path) -> Result<InputWriter, ImportError> {
        let file = File::create(dir.join("input.ndjson")).map_err(store_error)?;
        Ok(InputWriter { out: BufWriter::with_capacity(256 * 1024, file), lines: 0 })
    }

    pub fn push(&mut self, origin: usize, call: &serde_json::Value) -> Result<(), ImportError> {
        write!(self.out, "{origin}\t").map_err(store_error)?;
        serde_json::to_writer(&mut self.out, call).map_err(|e| ImportError::Store(e.to_string()))?;
        self.out.write_all(b"\n").map_err(store_error)?;
        self.lines += 1;
        Ok(())
    }

    /// Flushes and fsyncs; returns the number of lines.
    pub fn finish(self) -> Result<usize, ImportError> {
        let lines = self.lines;
        let file = self.out.into_inner().map_err(|e| store_error(e.into_error()))?;
        file.sync_all().map_err(store_error)?;
        Ok(lines)
    }
}

fn store_error(e: io::Error) -> ImportError {
    ImportError::Store(e.to_string())
}

fn write_record(dir: &Path, job: &Job) -> io::Result<()> {
    let tmp = dir.join("job.json.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(job).map_err(io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("job.json"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
