//! Tests of the local log: layout, rotation, torn tails, group commit, and the writer under
//! injected faults (failed writes, fsyncs and truncations, a hung disk).

use super::*;
use crate::decode::EventType;
use std::time::Instant;

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

/// The lines of `topic`, as text.
fn lines(dir: &Path, topic: &str) -> Vec<String> {
    read_topic(dir, topic).unwrap().into_iter().map(|l| String::from_utf8(l).unwrap()).collect()
}

/// A request spanning two topics (an event and its violation record).
fn pair(n: u32) -> Vec<OutEvent> {
    vec![ev("a", &format!("{{\"a\":{n}}}")), ev("b", &format!("{{\"b\":{n}}}"))]
}

fn all_unavailable(r: &PublishResults) -> bool {
    r.iter().all(|r| matches!(r, Err(PublishError::Unavailable(_))))
}

/// Issue #21, point 6: the bytes of a failed commit must not stay in the segments, or the
/// client's retry after the 503 makes them a second copy once a later fsync makes them durable.
async fn failed_commit_leaves_nothing(fault: Fault, topic: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = LocalLog::open(dir.path(), 1 << 20, true).unwrap();
    assert!(log.publish(pair(0)).await.iter().all(Result::is_ok));

    log.faults.set(fault, topic, true);
    let r = log.publish(pair(1)).await;
    assert!(all_unavailable(&r), "{r:?}");
    assert!(log.readiness().is_err());
    // Topic `a` is written before `b`: both are cut back to their length before the commit.
    assert_eq!((lines(dir.path(), "a"), lines(dir.path(), "b")), (vec!["{\"a\":0}".into()], vec!["{\"b\":0}".into()]));

    log.faults.set(fault, topic, false);
    assert!(log.publish(pair(1)).await.iter().all(Result::is_ok), "the retry");
    assert!(log.publish(pair(2)).await.iter().all(Result::is_ok));
    log.readiness().unwrap();
    log.close();
    let want = |t: &str| (0..3).map(|n| format!("{{\"{t}\":{n}}}")).collect::<Vec<_>>();
    assert_eq!(lines(dir.path(), "a"), want("a"));
    assert_eq!(lines(dir.path(), "b"), want("b"));
}

#[tokio::test]
async fn a_failed_fsync_cuts_every_topic_of_the_commit_back() {
    failed_commit_leaves_nothing(Fault::Sync, "b").await;
}

#[tokio::test]
async fn a_failed_later_write_cuts_the_earlier_topics_back() {
    failed_commit_leaves_nothing(Fault::Write, "b").await;
}

#[tokio::test]
async fn a_failed_cut_stops_the_topic_until_it_can_be_cut() {
    let dir = tempfile::tempdir().unwrap();
    let log = LocalLog::open(dir.path(), 1 << 20, true).unwrap();
    assert!(log.publish(vec![ev("a", "{\"n\":0}")]).await[0].is_ok());

    log.faults.set(Fault::Sync, "a", true);
    log.faults.set(Fault::Truncate, "a", true);
    assert!(all_unavailable(&log.publish(vec![ev("a", "{\"n\":1}")]).await));
    // The rejected line is still in the file: the topic takes no write until it is cut.
    log.faults.set(Fault::Sync, "a", false);
    for _ in 0..2 {
        let r = log.publish(vec![ev("a", "{\"n\":1}")]).await;
        assert!(all_unavailable(&r), "{r:?}");
        let why = log.readiness().unwrap_err();
        assert!(why.contains("Truncate"), "{why}");
    }
    assert_eq!(lines(dir.path(), "a"), ["{\"n\":0}", "{\"n\":1}"]);
    // Other topics go on.
    assert!(log.publish(vec![ev("b", "{}")]).await[0].is_ok());

    log.faults.set(Fault::Truncate, "a", false);
    assert!(log.publish(vec![ev("a", "{\"n\":1}")]).await[0].is_ok());
    log.readiness().unwrap();
    log.close();
    assert_eq!(lines(dir.path(), "a"), ["{\"n\":0}", "{\"n\":1}"]);
}

#[tokio::test]
async fn a_hung_writer_times_out_publish_and_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let log = LocalLog::open(dir.path(), 1 << 20, true).unwrap().with_publish_timeout(Duration::from_millis(200));
    assert!(log.publish(vec![ev("t", "{\"n\":0}")]).await[0].is_ok());
    log.readiness().unwrap();

    let _unhang = Unhang(log.faults.clone());
    log.faults.hang(true);
    // Generous bounds: the point is that publish answers at all while the disk hangs.
    let within = Duration::from_secs(5);
    let taken = tokio::time::timeout(within, log.publish_tracked(vec![ev("t", "{\"n\":1}")])).await.unwrap();
    assert_eq!(taken.results, vec![Err(PublishError::Timeout)]);
    let taken = taken.late.expect("the writer took the job: its outcome comes later");
    assert_eq!(taken.indices, vec![0]);

    let deadline = Instant::now() + within;
    let why = loop {
        match log.readiness() {
            Err(why) => break why,
            Ok(()) => assert!(Instant::now() < deadline, "still ready while the writer hangs"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(why.contains("stuck"), "{why}");

    // The writer is stuck: the next job is not taken and is cancelled at its deadline.
    let cancelled = tokio::time::timeout(within, log.publish_tracked(vec![ev("t", "{\"n\":2}")])).await.unwrap();
    assert_eq!(cancelled.results, vec![Err(PublishError::Timeout)]);
    let outcome = tokio::time::timeout(within, cancelled.late.unwrap().outcome).await.unwrap();
    assert!(all_unavailable(&outcome), "a cancelled job is never written: {outcome:?}");

    log.faults.hang(false);
    let outcome = tokio::time::timeout(within, taken.outcome).await.unwrap();
    assert_eq!(outcome, vec![Ok(())], "the job in progress was written after all");
    assert!(log.publish(vec![ev("t", "{\"n\":3}")]).await[0].is_ok());
    log.readiness().unwrap();
    log.close();
    assert_eq!(lines(dir.path(), "t"), ["{\"n\":0}", "{\"n\":1}", "{\"n\":3}"]);
}

#[tokio::test]
async fn a_full_queue_times_out_and_its_jobs_are_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        Arc::new(LocalLog::open(dir.path(), 1 << 20, true).unwrap().with_publish_timeout(Duration::from_millis(200)));
    let _unhang = Unhang(log.faults.clone());
    log.faults.hang(true);
    // One job in the hung commit...
    let first = tokio::spawn({
        let log = log.clone();
        async move { log.publish(vec![ev("t", "{\"first\":1}")]).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.status.busy_for().is_none() {
        assert!(Instant::now() < deadline, "the writer did not take the job");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... and QUEUE_JOBS waiting behind it: the queue is full.
    let mut waiting = Vec::new();
    for i in 0..QUEUE_JOBS {
        let log = log.clone();
        waiting.push(tokio::spawn(async move { log.publish(vec![ev("t", &format!("{{\"q\":{i}}}"))]).await }));
    }
    while log.tx.lock().unwrap().as_ref().unwrap().capacity() > 0 {
        assert!(Instant::now() < deadline, "the queue did not fill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(log.readiness().is_err());
    let r =
        tokio::time::timeout(Duration::from_secs(5), log.publish_tracked(vec![ev("t", "{\"late\":1}")])).await.unwrap();
    assert_eq!(r.results, vec![Err(PublishError::Timeout)]);
    let outcome = r.late.unwrap().outcome.await;
    assert!(all_unavailable(&outcome), "{outcome:?}");
    for w in waiting {
        assert_eq!(w.await.unwrap(), vec![Err(PublishError::Timeout)]);
    }
    assert_eq!(first.await.unwrap(), vec![Err(PublishError::Timeout)]);
    log.faults.hang(false);
    assert!(log.publish(vec![ev("t", "{\"after\":1}")]).await[0].is_ok());
    log.close();
    // The job the writer had taken was written; every queued one was cancelled.
    let got = lines(dir.path(), "t");
    assert_eq!(got.len(), 2, "{} lines, e.g. {:?}", got.len(), &got[..got.len().min(4)]);
    assert_eq!(got, ["{\"first\":1}", "{\"after\":1}"]);
}

/// Lets a hung writer go when a test ends, also when it fails (dropping the log joins the
/// writer thread).
struct Unhang(Faults);

impl Drop for Unhang {
    fn drop(&mut self) {
        self.0.hang(false);
    }
}

#[tokio::test]
async fn find_published_sees_ids_written_since_and_skips_older_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = LocalLog::open(dir.path(), 1 << 20, true).unwrap();
    let line =
        |id: &str| format!("{{\"type\":\"track\",\"messageId\":\"{id}\",\"properties\":{{\"messageId\":\"nested\"}}}}");
    let r = log.publish(vec![ev("events", &line("a")), ev("violations", &line("b"))]).await;
    assert!(r.iter().all(Result::is_ok));
    let wanted: std::collections::HashSet<String> = ["a", "b", "c", "nested"].iter().map(|s| s.to_string()).collect();
    let since = crate::import::jobs::now_ms() - 1_000;
    let found = log.find_published(wanted.clone(), since).await.unwrap();
    // Every topic is searched; only the top-level messageId counts.
    assert_eq!(found, ["a", "b"].iter().map(|s| s.to_string()).collect());
    // A segment last written before `since` (less the margin) is not read.
    let later = crate::import::jobs::now_ms() + 60_000;
    assert!(log.find_published(wanted, later).await.unwrap().is_empty());
    log.close();
}
