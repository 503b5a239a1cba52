//! The local log: the embedded default sink. One folder per topic under the data directory,
//! holding NDJSON segment files (`00000000000000000000.ndjson`, `…01.ndjson`, …) rotated by
//! size; each line is one normalised event.
//!
//! Owns: the file layout, the group commit, and crash recovery of a torn last line.
//! Must not: know about HTTP, or hold an event it has acknowledged anywhere but on disk.
//!
//! Durability: `publish` resolves only after the records are written *and* `fsync`ed. One
//! writer thread does all file I/O; it takes every job waiting in its queue, writes them all,
//! then syncs each touched file once — so under load many requests share one fsync (group
//! commit), and an idle gateway still syncs each request at once.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{BoxFuture, OutEvent, PublishError, PublishResults, Publisher};

const SEGMENT_SUFFIX: &str = ".ndjson";
/// Jobs queued for the writer before `publish` waits (backpressure, never unbounded memory).
const QUEUE_JOBS: usize = 4096;
/// Most jobs one group commit takes.
const MAX_GROUP: usize = 1024;

struct Job {
    records: Vec<(Arc<str>, Vec<u8>)>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The local-log sink.
pub struct LocalLog {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    healthy: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
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
        let healthy = Arc::new(AtomicBool::new(true));
        let last_error = Arc::new(Mutex::new(None));
        let mut writer = Writer { dir: dir.to_path_buf(), segment_max_bytes, fsync, open: HashMap::new() };
        let (h, e) = (healthy.clone(), last_error.clone());
        let handle =
            std::thread::Builder::new().name("local-log-writer".into()).spawn(move || writer.run(rx, &h, &e))?;
        Ok(LocalLog {
            tx: Mutex::new(Some(tx)),
            healthy,
            last_error,
            writer: Mutex::new(Some(handle)),
            dir: dir.to_path_buf(),
        })
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

    async fn submit(&self, records: Vec<(Arc<str>, Vec<u8>)>) -> Result<(), PublishError> {
        let tx = self.tx.lock().ok().and_then(|t| t.clone()).ok_or(PublishError::ShuttingDown)?;
        let (done, rx) = oneshot::channel();
        tx.send(Job { records, done }).await.map_err(|_| PublishError::ShuttingDown)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError::Unavailable(e)),
            Err(_) => Err(PublishError::Unavailable("the log writer stopped".into())),
        }
    }
}

impl Drop for LocalLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl Publisher for LocalLog {
    fn publish(&self, events: Vec<OutEvent>) -> BoxFuture<'_, PublishResults> {
        Box::pin(async move {
            let n = events.len();
            if n == 0 {
                return Vec::new();
            }
            let records = events.into_iter().map(|e| (e.topic, e.payload)).collect();
            // All events of a request are written in one job: they succeed or fail together.
            let result = self.submit(records).await;
            vec![result; n]
        })
    }

    fn readiness(&self) -> Result<(), String> {
        if self.healthy.load(Ordering::Relaxed) {
            Ok(())
        } else {
            let e = self.last_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
            Err(format!("local log not writable: {e}"))
        }
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), PublishError>> {
        // Every acknowledged job is already fsync'ed; an empty job waits for the queue to drain.
        Box::pin(async move {
            match tokio::time::timeout(timeout, self.submit(Vec::new())).await {
                Ok(r) => r,
                Err(_) => Err(PublishError::Timeout),
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
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>, healthy: &AtomicBool, last_error: &Mutex<Option<String>>) {
        let mut buffers: HashMap<Arc<str>, Vec<u8>> = HashMap::new();
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            for job in &jobs {
                for (topic, payload) in &job.records {
                    let buf = buffers.entry(topic.clone()).or_default();
                    buf.extend_from_slice(payload);
                    buf.push(b'\n');
                }
            }
            let result = self.commit(&mut buffers);
            for b in buffers.values_mut() {
                b.clear();
            }
            match &result {
                Ok(()) => healthy.store(true, Ordering::Relaxed),
                Err(e) => {
                    tracing::error!(error = %e, "local log write failed");
                    healthy.store(false, Ordering::Relaxed);
                    if let Ok(mut le) = last_error.lock() {
                        *le = Some(e.to_string());
                    }
                }
            }
            let result = result.map_err(|e| e.to_string());
            for job in jobs {
                let _ = job.done.send(result.clone());
            }
        }
    }

    /// Writes every topic's buffer, then syncs. On a failed write the file is cut back to its
    /// previous length, so that no half-written line stays behind an error answer.
    fn commit(&mut self, buffers: &mut HashMap<Arc<str>, Vec<u8>>) -> io::Result<()> {
        let mut touched = Vec::new();
        for (topic, buf) in buffers.iter() {
            if buf.is_empty() {
                continue;
            }
            self.ensure_segment(topic, buf.len() as u64)?;
            let Some(seg) = self.open.get_mut(topic) else { continue };
            let before = seg.size;
            if let Err(e) = seg.file.write_all(buf) {
                let _ = seg.file.set_len(before);
                let _ = seg.file.seek(SeekFrom::Start(before));
                return Err(e);
            }
            seg.size += buf.len() as u64;
            touched.push(topic.clone());
        }
        if self.fsync {
            for t in touched {
                if let Some(seg) = self.open.get(&t) {
                    seg.file.sync_data()?;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::EventType;

    fn ev(topic: &str, payload: &str) -> OutEvent {
        OutEvent {
            topic: topic.into(),
            key: None,
            event_type: EventType::Track,
            source_id: "s".into(),
            message_id: "m".into(),
            payload: payload.as_bytes().to_vec(),
            consent_header: None,
        }
    }

    #[tokio::test]
    async fn writes_rotates_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalLog::open(dir.path(), 1024, true).unwrap();
        let line = format!("{{\"x\":\"{}\"}}", "a".repeat(300));
        for _ in 0..10 {
            let r = log.publish(vec![ev("t1", &line), ev("t2", "{}")]).await;
            assert!(r.iter().all(Result::is_ok));
        }
        log.close();
        assert_eq!(read_topic(dir.path(), "t1").unwrap().len(), 10);
        assert_eq!(read_topic(dir.path(), "t2").unwrap().len(), 10);
        // 10 lines of 309 B with a 1 KiB cap: 3 per segment → 4 segments.
        assert_eq!(segment_indices(&dir.path().join("t1")).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(segment_indices(&dir.path().join("t2")).unwrap(), vec![0]);
    }

    #[tokio::test]
    async fn reopen_appends_and_drops_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LocalLog::open(dir.path(), 1 << 20, true).unwrap();
            log.publish(vec![ev("t", "{\"n\":1}")]).await;
        }
        // Simulate a crash in the middle of a write.
        let seg = segment_path(&dir.path().join("t"), 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"n\":2,\"tor").unwrap();
        drop(f);
        let log = LocalLog::open(dir.path(), 1 << 20, true).unwrap();
        log.publish(vec![ev("t", "{\"n\":3}")]).await;
        log.close();
        let lines = read_topic(dir.path(), "t").unwrap();
        assert_eq!(lines, vec![b"{\"n\":1}".to_vec(), b"{\"n\":3}".to_vec()]);
    }

    #[tokio::test]
    async fn concurrent_publishers_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(LocalLog::open(dir.path(), 1 << 20, true).unwrap());
        let mut tasks = Vec::new();
        for i in 0..50 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move { log.publish(vec![ev("t", &format!("{{\"i\":{i}}}"))]).await }));
        }
        for t in tasks {
            assert!(t.await.unwrap()[0].is_ok());
        }
        log.flush(Duration::from_secs(5)).await.unwrap();
        assert_eq!(read_topic(dir.path(), "t").unwrap().len(), 50);
    }

    #[test]
    fn unwritable_dir_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(LocalLog::open(&file.join("sub"), 1024, true).is_err());
    }
}
