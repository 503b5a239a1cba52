//! The shared state of every request: the swappable runtime (config, key table, compiled
//! plans), the sink, metrics, per-key and dedup state, and the injectable clocks.
//!
//! Owns: building a [`Runtime`] from a config and swapping it atomically on reload.
//! Must not: handle requests (the pipeline in [`super`] does).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access::auth::KeyTable;
use crate::access::ratelimit;
use crate::access::Access;
use crate::config::Config;
use crate::decode::timestamp::Timestamp;
use crate::dedup::{self, Dedup};
use crate::import::jobs::JobStore;
use crate::ops::metrics::Metrics;
use crate::publish::Publisher;
use crate::validate::{Plan, Plans, Policies};

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
    /// Import jobs (bulk, CSV): opened once, survives reloads.
    pub jobs: Arc<JobStore>,
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
        let access = Access::new(&config.usage_dir, clocks.rate.clone())?;
        let dedup = Arc::new(load_dedup(&config, clocks.dedup.clone())?);
        let jobs_dir = config.jobs.dir_or(&config.usage_dir);
        let jobs = JobStore::open(config.jobs.clone(), jobs_dir.clone())
            .map_err(|e| format!("opening the job store at {}: {e}", jobs_dir.display()))?;
        let runtime = Runtime::build(config)?;
        Ok(AppState {
            runtime: ArcSwap::from_pointee(runtime),
            publisher,
            metrics,
            draining: AtomicBool::new(false),
            request_ids: AtomicU64::new(1),
            access,
            dedup,
            jobs: Arc::new(jobs),
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
