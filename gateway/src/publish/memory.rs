//! An in-memory [`Publisher`] for tests: keeps every event, and can be told to fail.
//!
//! Owns: nothing durable — events vanish with the process. Never use it outside tests and
//! benchmarks.

use std::sync::Mutex;
use std::time::Duration;

use super::{BoxFuture, OutEvent, PublishError, PublishResults, Publisher};

/// Keeps published events in a `Vec`.
pub struct MemoryPublisher {
    events: Mutex<Vec<OutEvent>>,
    /// Errors to return for the next events published, one per event, in order.
    failures: Mutex<Vec<PublishError>>,
    delay: Mutex<Option<Duration>>,
    /// What `readiness` answers (tests flip it to simulate a sink outage).
    ready: Mutex<Result<(), String>>,
}

impl Default for MemoryPublisher {
    fn default() -> Self {
        Self {
            events: Mutex::default(),
            failures: Mutex::default(),
            delay: Mutex::default(),
            ready: Mutex::new(Ok(())),
        }
    }
}

impl MemoryPublisher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets what `readiness` answers.
    pub fn set_ready(&self, ready: Result<(), String>) {
        if let Ok(mut r) = self.ready.lock() {
            *r = ready;
        }
    }

    /// Every event published so far.
    pub fn events(&self) -> Vec<OutEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The next `errors.len()` events fail with these errors, in order.
    pub fn fail_next(&self, errors: Vec<PublishError>) {
        if let Ok(mut f) = self.failures.lock() {
            f.extend(errors);
        }
    }

    /// Each `publish` waits this long before answering (to test in-flight requests).
    pub fn set_delay(&self, delay: Option<Duration>) {
        if let Ok(mut d) = self.delay.lock() {
            *d = delay;
        }
    }
}

impl Publisher for MemoryPublisher {
    fn find_published(
        &self,
        ids: std::collections::HashSet<String>,
        _since_ms: u64,
    ) -> BoxFuture<'_, Option<std::collections::HashSet<String>>> {
        let found = self.events.lock().ok().map(|events| {
            events.iter().filter(|e| ids.contains(&e.message_id)).map(|e| e.message_id.clone()).collect()
        });
        Box::pin(async move { found })
    }

    fn publish(&self, events: Vec<OutEvent>) -> BoxFuture<'_, PublishResults> {
        Box::pin(async move {
            let delay = self.delay.lock().ok().and_then(|d| *d);
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let mut results = Vec::with_capacity(events.len());
            let (Ok(mut stored), Ok(mut failures)) = (self.events.lock(), self.failures.lock()) else {
                return events.iter().map(|_| Err(PublishError::Unavailable("poisoned".into()))).collect();
            };
            for ev in events {
                if failures.is_empty() {
                    stored.push(ev);
                    results.push(Ok(()));
                } else {
                    results.push(Err(failures.remove(0)));
                }
            }
            results
        })
    }

    fn readiness(&self) -> Result<(), String> {
        self.ready.lock().map_err(|_| "poisoned".to_string()).and_then(|r| r.clone())
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async { Ok(()) })
    }
}
