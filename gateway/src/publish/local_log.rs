//! The local log: the embedded default sink. One folder per topic under the data directory,
//! holding NDJSON segment files (`00000000000000000000.ndjson`, `…01.ndjson`, …) rotated by
//! size; each line is one normalised event.
//!
//! Owns: the file layout, the group commit, the publish deadline, and crash recovery of a torn
//! last line.
//! Must not: know about HTTP, or hold an event it has acknowledged anywhere but on disk.
//!
//! Durability: `publish` resolves only after the records are written *and* `fsync`ed. One
//! writer thread does all file I/O; it takes every job waiting in its queue, writes them all,
//! then syncs each touched file once — so under load many requests share one fsync (group
//! commit), and an idle gateway still syncs each request at once.
//!
//! A failed group commit leaves nothing behind: when a write or an fsync fails, every file the
//! commit appended to (one group may span topics, e.g. `events` and `violations`) is cut back
//! to its length before the commit, so no byte of a request answered 503 becomes durable with
//! a later fsync (its retry would be a second copy). Should the cut itself fail, the topic is
//! marked dirty: its file is closed, `/ready` is 503, and every later write to that topic first
//! retries the cut and fails until it succeeds — nothing is appended behind rejected bytes.
//!
//! Deadline: a request waits at most `publish_timeout` (queueing for the writer included) and
//! then gets [`PublishError::Timeout`]. Its job is then either *cancelled* — when the writer has
//! not taken it yet: it is never written — or, when the writer is already writing it (a hung
//! disk), left to finish. Which of the two it was is reported as a [`Late`] outcome (failed, or
//! the writer's eventual answer), so the caller releases the messageIds of a cancelled job at
//! once and keeps those of a job in progress until it is settled. `/ready` is 503 while one
//! commit has been running for longer than the deadline (a stuck writer) or the queue is full.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{BoxFuture, Late, OutEvent, PublishError, PublishResults, Published, Publisher};

const SEGMENT_SUFFIX: &str = ".ndjson";
/// Jobs queued for the writer before `publish` waits (backpressure, never unbounded memory).
const QUEUE_JOBS: usize = 4096;
/// Most jobs one group commit takes.
const MAX_GROUP: usize = 1024;
/// The publish deadline unless [`LocalLog::with_publish_timeout`] sets another (the config's
/// default `sink.local_log.publish_timeout_ms` is the same).
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the late outcome of a job the writer was still writing at the deadline waits for
/// its answer. Past it the outcome stays unknown (`Timeout`): the caller keeps the messageIds
/// reserved until its own reservation TTL.
const LATE_LIMIT: Duration = Duration::from_secs(300);

/// Job states: queued, taken by the writer (it will be written), or cancelled by a request past
/// its deadline (it will not). Exactly one of the writer and the request moves it off `QUEUED`.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const CANCELLED: u8 = 2;

struct Job {
    records: Vec<(Arc<str>, Vec<u8>)>,
    state: Arc<AtomicU8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// What the writer thread tells readiness.
struct Status {
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    started: Instant,
    /// When the writer's current commit began (milliseconds after `started`, plus one); 0 while
    /// it waits for jobs.
    busy_since_ms: AtomicU64,
}

impl Status {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long the current commit has been running, if one is.
    fn busy_for(&self) -> Option<Duration> {
        match self.busy_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(self.now_ms().saturating_sub(since - 1))),
        }
    }
}

/// How a job ended for its request.
enum Submitted {
    /// Within the deadline: the writer's answer.
    Done(Result<(), PublishError>),
    /// Past the deadline (answered `Timeout`): the final outcome, to come.
    Late(BoxFuture<'static, Result<(), PublishError>>),
}

/// The local-log sink.
pub struct LocalLog {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    status: Arc<Status>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
    publish_timeout: Duration,
    #[cfg(test)]
    faults: Faults,
}

impl LocalLog {
    /// Opens (creating) the data directory and starts the writer thread. Fails when the
    /// directory cannot be created or written: better to refuse to start than to 503 forever.
    pub fn open(dir: &Path, segment_max_bytes: u64, fsync: bool) -> io::Result<LocalLog> {
        fs::create_dir_all(dir)?;
        let probe = dir.join(".write-probe");
        fs::write(&probe, b"ok")?;
        fs::remove_file(&probe)?;

        let (tx, rx) = mpsc::channel::<Job>(QUEUE_JOBS);
        let status = Arc::new(Status {
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            started: Instant::now(),
            busy_since_ms: AtomicU64::new(0),
        });
        #[cfg(test)]
        let faults = Faults::default();
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            segment_max_bytes,
            fsync,
            open: HashMap::new(),
            dirty: HashMap::new(),
            #[cfg(test)]
            faults: faults.clone(),
        };
        let st = status.clone();
        let handle = std::thread::Builder::new().name("local-log-writer".into()).spawn(move || writer.run(rx, &st))?;
        Ok(LocalLog {
            tx: Mutex::new(Some(tx)),
            status,
            writer: Mutex::new(Some(handle)),
            dir: dir.to_path_buf(),
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            #[cfg(test)]
            faults,
        })
    }

    /// Sets the publish deadline (`sink.local_log.publish_timeout_ms`).
    pub fn with_publish_timeout(mut self, timeout: Duration) -> LocalLog {
        self.publish_timeout = timeout;
        self
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the writer after it has finished every queued job.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Hands the records to the writer and waits for its answer until `deadline`; past it the
    /// job is cancelled if the writer has not taken it yet (see the module doc).
    async fn submit(&self, records: Vec<(Arc<str>, Vec<u8>)>, deadline: tokio::time::Instant) -> Submitted {
        let Some(tx) = self.tx.lock().ok().and_then(|t| t.clone()) else {
            return Submitted::Done(Err(PublishError::ShuttingDown));
        };
        let (done, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job = Job { records, state: state.clone(), done };
        match tokio::time::timeout_at(deadline, tx.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Submitted::Done(Err(PublishError::ShuttingDown)),
            // Never entered the queue: certainly not written.
            Err(_) => return Submitted::Late(Box::pin(async { Err(not_written("its queue stayed full")) })),
        }
        if let Ok(answer) = tokio::time::timeout_at(deadline, &mut rx).await {
            return Submitted::Done(writer_answer(answer));
        }
        if state.compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return Submitted::Late(Box::pin(async { Err(not_written("it did not take the job in time")) }));
        }
        // The writer is writing it: the answer comes when it is done.
        Submitted::Late(Box::pin(async move {
            match tokio::time::timeout(LATE_LIMIT, rx).await {
                Ok(answer) => writer_answer(answer),
                Err(_) => Err(PublishError::Timeout),
            }
        }))
    }
}

/// The failure of a job cancelled at its deadline (never written).
fn not_written(why: &str) -> PublishError {
    PublishError::Unavailable(format!("the local log writer is stuck: {why}; the events were not written"))
}

fn writer_answer(answer: Result<Result<(), String>, oneshot::error::RecvError>) -> Result<(), PublishError> {
    match answer {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PublishError::Unavailable(e)),
        Err(_) => Err(PublishError::Unavailable("the log writer stopped".into())),
    }
}

impl Drop for LocalLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl Publisher for LocalLog {
    fn publish(&self, events: Vec<OutEvent>) -> BoxFuture<'_, PublishResults> {
        Box::pin(async move { self.publish_tracked(events).await.results })
    }

    fn find_published(
        &self,
        ids: std::collections::HashSet<String>,
        since_ms: u64,
    ) -> BoxFuture<'_, Option<std::collections::HashSet<String>>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || recover::find_since(&dir, &ids, since_ms).ok()).await.ok().flatten()
        })
    }

    fn publish_tracked(&self, events: Vec<OutEvent>) -> BoxFuture<'_, Published> {
        Box::pin(async move {
            let n = events.len();
            if n == 0 {
                return Published { results: Vec::new(), late: None };
            }
            let records = events.into_iter().map(|e| (e.topic, e.payload)).collect();
            // All events of a request are written in one job: they succeed or fail together.
            let deadline = tokio::time::Instant::now() + self.publish_timeout;
            match self.submit(records, deadline).await {
                Submitted::Done(result) => Published { results: vec![result; n], late: None },
                Submitted::Late(outcome) => {
                    tracing::warn!(events = n, "local log: no answer within the publish deadline");
                    let outcome = Box::pin(async move { vec![outcome.await; n] });
                    Published {
                        results: vec![Err(PublishError::Timeout); n],
                        late: Some(Late { indices: (0..n).collect(), outcome }),
                    }
                }
            }
        })
    }

    fn readiness(&self) -> Result<(), String> {
        let status = &self.status;
        if !status.healthy.load(Ordering::Relaxed) {
            let e = status.last_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
            return Err(format!("local log not writable: {e}"));
        }
        if let Some(busy) = status.busy_for().filter(|b| *b > self.publish_timeout) {
            return Err(format!("local log writer stuck: one write has taken {} ms", busy.as_millis()));
        }
        match self.tx.lock().ok().and_then(|t| t.clone()) {
            Some(tx) if tx.is_closed() => Err("local log writer stopped".into()),
            Some(tx) if tx.capacity() == 0 => {
                Err(format!("local log queue full ({QUEUE_JOBS} jobs waiting for the writer)"))
            }
            _ => Ok(()),
        }
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), PublishError>> {
        // Every acknowledged job is already fsync'ed; an empty job waits for the queue to drain.
        Box::pin(async move {
            match self.submit(Vec::new(), tokio::time::Instant::now() + timeout).await {
                Submitted::Done(r) => r,
                Submitted::Late(_) => Err(PublishError::Timeout),
            }
        })
    }
}

struct Segment {
    file: File,
    size: u64,
    index: u64,
}

struct Writer {
    dir: PathBuf,
    segment_max_bytes: u64,
    fsync: bool,
    open: HashMap<Arc<str>, Segment>,
    /// Topics whose segment could not be cut back after a failed commit: (segment index, good
    /// length). Written to again only once the cut succeeds.
    dirty: HashMap<Arc<str>, (u64, u64)>,
    #[cfg(test)]
    faults: Faults,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>, status: &Status) {
        // Ordered by topic, so that a commit writes its files in a fixed order.
        let mut buffers: BTreeMap<Arc<str>, Vec<u8>> = BTreeMap::new();
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            // A job its request cancelled at the deadline is dropped unwritten.
            jobs.retain(|j| j.state.compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok());
            if jobs.is_empty() {
                continue;
            }
            status.busy_since_ms.store(status.now_ms() + 1, Ordering::Relaxed);
            for job in &jobs {
                for (topic, payload) in &job.records {
                    let buf = buffers.entry(topic.clone()).or_default();
                    buf.extend_from_slice(payload);
                    buf.push(b'\n');
                }
            }
            let result = self.commit(&buffers);
            for b in buffers.values_mut() {
                b.clear();
            }
            if let Err(e) = &result {
                tracing::error!(error = %e, "local log write failed");
                if let Ok(mut le) = status.last_error.lock() {
                    *le = Some(e.to_string());
                }
            }
            status.healthy.store(result.is_ok() && self.dirty.is_empty(), Ordering::Relaxed);
            status.busy_since_ms.store(0, Ordering::Relaxed);
            let result = result.map_err(|e| e.to_string());
            for job in jobs {
                let _ = job.done.send(result.clone());
            }
        }
    }

    /// Writes every topic's buffer, then syncs. On any failure every file written to is cut
    /// back to its length before the commit, so that no byte of a failed commit stays.
    fn commit(&mut self, buffers: &BTreeMap<Arc<str>, Vec<u8>>) -> io::Result<()> {
        #[cfg(test)]
        self.faults.wait_while_hung();
        // (topic, length before this commit) of every segment appended to.
        let mut touched: Vec<(Arc<str>, u64)> = Vec::new();
        let result = self.write(buffers, &mut touched).and_then(|()| self.sync(&touched));
        if result.is_err() {
            self.roll_back(&touched);
        }
        result
    }

    fn write(&mut self, buffers: &BTreeMap<Arc<str>, Vec<u8>>, touched: &mut Vec<(Arc<str>, u64)>) -> io::Result<()> {
        for (topic, buf) in buffers {
            if buf.is_empty() {
                continue;
            }
            self.repair(topic)?;
            self.ensure_segment(topic, buf.len() as u64)?;
            let Some(seg) = self.open.get_mut(topic) else { continue };
            // Noted before writing: a write that fails half-way is cut back too.
            touched.push((topic.clone(), seg.size));
            seg.file.write_all(buf)?;
            #[cfg(test)]
            self.faults.check(Fault::Write, topic)?;
            seg.size += buf.len() as u64;
        }
        Ok(())
    }

    fn sync(&self, touched: &[(Arc<str>, u64)]) -> io::Result<()> {
        if !self.fsync {
            return Ok(());
        }
        for (topic, _) in touched {
            if let Some(seg) = self.open.get(topic) {
                #[cfg(test)]
                self.faults.check(Fault::Sync, topic)?;
                seg.file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Cuts each touched segment back to its length before the failed commit (and makes the
    /// cut durable). A segment that cannot be cut is closed and its topic marked dirty.
    fn roll_back(&mut self, touched: &[(Arc<str>, u64)]) {
        for (topic, before) in touched {
            let Some(mut seg) = self.open.remove(topic) else { continue };
            match self.cut(topic, &seg.file, *before) {
                Ok(()) => {
                    seg.size = *before;
                    self.open.insert(topic.clone(), seg);
                }
                Err(e) => {
                    tracing::error!(
                        error = %e, topic = %topic,
                        "local log: could not cut a failed write back; the topic takes no writes until it can"
                    );
                    self.dirty.insert(topic.clone(), (seg.index, *before));
                }
            }
        }
    }

    /// Truncates `file` to `len`, durably when fsync is on. The file is opened for append, so
    /// the next write goes to the new end.
    fn cut(&self, _topic: &str, file: &File, len: u64) -> io::Result<()> {
        #[cfg(test)]
        self.faults.check(Fault::Truncate, _topic)?;
        file.set_len(len)?;
        if self.fsync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Retries the cut of a dirty topic's segment, reopening the file.
    fn repair(&mut self, topic: &Arc<str>) -> io::Result<()> {
        let Some(&(index, len)) = self.dirty.get(topic) else { return Ok(()) };
        let file = OpenOptions::new().write(true).open(segment_path(&self.dir.join(&**topic), index))?;
        self.cut(topic, &file, len)?;
        self.dirty.remove(topic);
        tracing::info!(topic = %topic, "local log: cut back the failed write; the topic takes writes again");
        Ok(())
    }

    /// Makes sure the topic has an open segment with room for `incoming` bytes (a record larger
    /// than a whole segment still goes into a fresh one).
    fn ensure_segment(&mut self, topic: &Arc<str>, incoming: u64) -> io::Result<()> {
        if !self.open.contains_key(topic) {
            let seg = open_last_segment(&self.dir.join(&**topic))?;
            self.open.insert(topic.clone(), seg);
        }
        let roll = match self.open.get(topic) {
            Some(seg) => seg.size > 0 && seg.size + incoming > self.segment_max_bytes,
            None => false,
        };
        if roll {
            let next = self.open.get(topic).map_or(0, |s| s.index + 1);
            let seg = create_segment(&self.dir.join(&**topic), next)?;
            self.open.insert(topic.clone(), seg);
        }
        Ok(())
    }
}

fn segment_path(topic_dir: &Path, index: u64) -> PathBuf {
    topic_dir.join(format!("{index:020}{SEGMENT_SUFFIX}"))
}

fn create_segment(topic_dir: &Path, index: u64) -> io::Result<Segment> {
    let file = OpenOptions::new().create(true).append(true).read(true).open(segment_path(topic_dir, index))?;
    // The new file's directory entry must be durable too, or a crash could lose the segment.
    File::open(topic_dir)?.sync_all()?;
    let size = file.metadata()?.len();
    Ok(Segment { file, size, index })
}

/// Indices of a topic folder's segments, in order.
fn segment_indices(topic_dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(topic_dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
            if let Ok(i) = stem.parse::<u64>() {
                out.push(i);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Opens the newest segment of a topic (creating the folder and a first segment), dropping a
/// torn last line left by a crash mid-write: it was never acknowledged.
fn open_last_segment(topic_dir: &Path) -> io::Result<Segment> {
    let created = !topic_dir.exists();
    fs::create_dir_all(topic_dir)?;
    if created {
        if let Some(parent) = topic_dir.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    let index = segment_indices(topic_dir)?.last().copied().unwrap_or(0);
    let mut seg = create_segment(topic_dir, index)?;
    if seg.size > 0 {
        let keep = complete_prefix_len(&mut seg.file, seg.size)?;
        if keep < seg.size {
            tracing::warn!(segment = %segment_path(topic_dir, index).display(), dropped_bytes = seg.size - keep, "dropping a torn last line");
            seg.file.set_len(keep)?;
            seg.file.sync_data()?;
            seg.size = keep;
        }
    }
    Ok(seg)
}

/// Length of the file up to and including its last newline.
fn complete_prefix_len(file: &mut File, size: u64) -> io::Result<u64> {
    let mut pos = size;
    let mut buf = [0u8; 8192];
    while pos > 0 {
        let start = pos.saturating_sub(buf.len() as u64);
        let len = (pos - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..len])?;
        if let Some(i) = buf[..len].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        pos = start;
    }
    Ok(0)
}

/// Reads every record of a topic, oldest first (for tests, tools and the restart check).
pub fn read_topic(data_dir: &Path, topic: &str) -> io::Result<Vec<Vec<u8>>> {
    let dir = data_dir.join(topic);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for i in segment_indices(&dir)? {
        let data = fs::read(segment_path(&dir, i))?;
        out.extend(data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
    }
    Ok(out)
}

/// Test-only faults of the writer: I/O errors injected after a write, before an fsync or
/// before a truncation of a given topic, and a hang before each commit (a stuck disk).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Write,
    Sync,
    Truncate,
}

#[cfg(test)]
#[derive(Clone, Default)]
struct Faults(Arc<FaultState>);

#[cfg(test)]
#[derive(Default)]
struct FaultState {
    active: Mutex<Vec<(Fault, String)>>,
    hung: Mutex<bool>,
    unhung: std::sync::Condvar,
}

#[cfg(test)]
impl Faults {
    fn set(&self, fault: Fault, topic: &str, on: bool) {
        let mut active = self.0.active.lock().unwrap();
        active.retain(|(f, t)| (*f, t.as_str()) != (fault, topic));
        if on {
            active.push((fault, topic.to_string()));
        }
    }

    fn check(&self, fault: Fault, topic: &str) -> io::Result<()> {
        if self.0.active.lock().unwrap().iter().any(|(f, t)| *f == fault && t == topic) {
            return Err(io::Error::other(format!("injected {fault:?} failure")));
        }
        Ok(())
    }

    fn hang(&self, on: bool) {
        *self.0.hung.lock().unwrap() = on;
        self.0.unhung.notify_all();
    }

    fn wait_while_hung(&self) {
        let mut hung = self.0.hung.lock().unwrap();
        while *hung {
            hung = self.0.unhung.wait(hung).unwrap();
        }
    }
}

mod recover;
#[cfg(test)]
mod tests;
