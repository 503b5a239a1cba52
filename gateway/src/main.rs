//! The `gateway` binary: parses arguments, loads config, sets up logging, builds the sink,
//! binds, and calls [`gateway::run`]. It handles no requests itself.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use gateway::config::{Config, Overrides, SinkConfig};
use gateway::publish::{kafka::KafkaPublisher, local_log::LocalLog, memory::MemoryPublisher, Publisher};
use tokio_util::sync::CancellationToken;

// glibc's malloc spent ≈30 % of the CPU under batch load (fragmentation of per-event buffers:
// `malloc_consolidate`, `unlink_chunk`); mimalloc's thread-local free lists avoid that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Segment-compatible tracking gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it the embedded config/gateway.toml is used.
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the config, print every problem, and exit (non-zero when invalid).
    #[arg(long)]
    check: bool,
    /// Listen address, overriding server.listen.
    #[arg(long, env = "GATEWAY_LISTEN")]
    listen: Option<String>,
    /// Data directory of the local log, overriding sink.local_log.data_dir.
    #[arg(long, env = "GATEWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Kafka bootstrap servers, overriding kafka.brokers.
    #[arg(long, env = "GATEWAY_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Folder of tracking plans, overriding contracts.dir.
    #[arg(long, env = "GATEWAY_CONTRACTS_DIR")]
    contracts_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = Overrides {
        listen: args.listen.clone(),
        data_dir: args.data_dir.clone(),
        kafka_brokers: args.kafka_brokers.clone(),
        contracts_dir: args.contracts_dir.clone(),
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("config is invalid: {} problem(s)", e.problems.len());
            return ExitCode::from(2);
        }
    };
    if args.check {
        let name = args.config.as_ref().map_or(gateway::config::EMBEDDED_NAME.to_string(), |p| p.display().to_string());
        // Everything the config needs is built too: tracking plans are compiled.
        if let Err(e) = gateway::ingest::Runtime::build(config) {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
        println!("{name}: ok");
        return ExitCode::SUCCESS;
    }
    init_tracing(&config);
    match run(config, args.config, overrides) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, path: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = config.worker_threads(cpus);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        tracing::info!(config = %config.summary(), workers, cpus, "effective configuration");
        let publisher: Arc<dyn Publisher> = match &config.sink {
            SinkConfig::LocalLog { data_dir, segment_max_bytes, fsync, publish_timeout_ms } => Arc::new(
                LocalLog::open(data_dir, *segment_max_bytes, *fsync)
                    .with_context(|| format!("opening the local log at {}", data_dir.display()))?
                    .with_publish_timeout(std::time::Duration::from_millis(*publish_timeout_ms)),
            ),
            SinkConfig::Kafka(kafka) => Arc::new(KafkaPublisher::new(kafka).context("starting the Kafka sink")?),
            SinkConfig::Memory => {
                tracing::warn!("sink.kind = memory: events are NOT stored anywhere");
                Arc::new(MemoryPublisher::new())
            }
        };
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(%addr, "listening");
        let admin = match config.server.admin_listen {
            Some(a) => {
                let l = tokio::net::TcpListener::bind(a).await.with_context(|| format!("binding admin {a}"))?;
                tracing::info!(addr = %l.local_addr().context("reading the admin address")?, "admin listening (/metrics, /health, /ready)");
                Some(l)
            }
            None => None,
        };
        let token = CancellationToken::new();
        gateway::ops::shutdown::cancel_on_signal(token.clone());
        let state = Arc::new(
            gateway::AppState::new(config, publisher, gateway::ops::metrics::Metrics::new()).map_err(anyhow::Error::msg)?,
        );
        gateway::ingest::reload::spawn_on_sighup(state.clone(), path, overrides);
        gateway::serve_with_admin(state, listener, admin, token.cancelled_owned()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    use std::io::IsTerminal;
    let text = match config.log.format.as_str() {
        "text" => true,
        "json" => false,
        _ => std::io::stderr().is_terminal(),
    };
    if text {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    }
}
