//! Reload: SIGHUP re-reads the config file and swaps it in atomically.
//!
//! Owns: the reload trigger. The new file is parsed and validated, and everything built from it
//! (key table, compiled contracts, limits) is built, before anything changes; a bad file is
//! refused, logged and counted (`gateway_config_reloads_total{result="error"}`), and the old
//! config keeps serving. Open connections are not touched.
//! Must not: change startup-only settings (listen address, sink) — see `AppState::reload`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::AppState;
use crate::config::{Config, Overrides};

/// Re-reads `path` (or the embedded default) and reloads `state` with it.
pub fn reload_from(state: &AppState, path: Option<&Path>, overrides: &Overrides) -> Result<(), String> {
    match Config::load(path, overrides) {
        Ok(config) => state.reload(config),
        Err(e) => {
            state.metrics.config_reloads.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "config reload refused; the previous config keeps serving");
            Err(e.to_string())
        }
    }
}

/// Reloads on every SIGHUP until the process ends.
#[cfg(unix)]
pub fn spawn_on_sighup(state: Arc<AppState>, path: Option<PathBuf>, overrides: Overrides) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload disabled");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading config");
            let _ = reload_from(&state, path.as_deref(), &overrides);
        }
    });
}

#[cfg(not(unix))]
pub fn spawn_on_sighup(_state: Arc<AppState>, _path: Option<PathBuf>, _overrides: Overrides) {}
