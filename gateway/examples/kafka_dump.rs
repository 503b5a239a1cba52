//! Dumps Kafka topics in the local log's layout, so that tools written for the local log
//! (`scripts/check_clients.py`) can read what the Kafka sink published:
//!
//! ```sh
//! cargo run --release -p gateway --example kafka_dump -- --brokers 127.0.0.1:9092 --topic events --out DIR
//! ```
//!
//! For each `--topic T`, reads every partition from the beginning up to (at least) its current
//! high watermark and writes partition `p`'s payloads, one per line in offset order, to
//! `DIR/T/<p as 20 digits>.ndjson` — a one-partition topic gives exactly
//! `DIR/T/00000000000000000000.ndjson`. Each file is rewritten whole (to a temporary file, then
//! renamed). Since a partition only grows, a rewritten file only grows at its end, which is
//! what an incremental reader of the local log expects; one file for all partitions would not
//! be (new records of partition 0 would land in the middle).
//!
//! Owns nothing of the gateway; only reads topics (with `gateway::publish::kafka::read_topic`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::publish::kafka::{read_topic, ReadRecord};

/// Writes Kafka topics as NDJSON files in the local log's layout.
#[derive(Parser, Debug)]
struct Args {
    /// bootstrap.servers, e.g. 127.0.0.1:9092.
    #[arg(long)]
    brokers: String,
    /// Topic to dump (repeat for several).
    #[arg(long, required = true)]
    topic: Vec<String>,
    /// Output directory (one folder per topic is created in it).
    #[arg(long)]
    out: PathBuf,
    /// Give up on a topic after this many seconds.
    #[arg(long, default_value_t = 20)]
    timeout_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut failed = false;
    for topic in &args.topic {
        match dump(&args, topic) {
            Ok(n) => eprintln!("kafka_dump: {topic}: {n} records"),
            Err(e) => {
                eprintln!("kafka_dump: {topic}: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn dump(args: &Args, topic: &str) -> anyhow::Result<usize> {
    let records = read_topic(&args.brokers, topic, Duration::from_secs(args.timeout_s))?;
    let mut by_partition: BTreeMap<i32, Vec<&ReadRecord>> = BTreeMap::new();
    for r in &records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let dir = args.out.join(topic);
    std::fs::create_dir_all(&dir)?;
    for (partition, recs) in by_partition {
        let mut text = Vec::new();
        for r in recs {
            text.extend_from_slice(&r.payload);
            text.push(b'\n');
        }
        write_atomically(&dir.join(format!("{partition:020}.ndjson")), &text)?;
    }
    Ok(records.len())
}

/// Writes `path` through a temporary file and a rename, so a reader never sees a half file.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("ndjson.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}
