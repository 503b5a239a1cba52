//! The snapshot file that carries the window across a graceful restart: its format, writing it
//! atomically ([`Dedup::snapshot`]) and building a cache from it ([`Dedup::load`]).
//! Must not: be called on the request path (blocking I/O, at shutdown and start only), or write
//! reservations (only confirmed, unexpired entries and the hash key).
//!
//! Little-endian, fixed layout:
//! ```text
//!   header  "gwdedup\0" | version u32 = 1 | reserved u32 = 0 | hash key k0 u64, k1 u64 |
//!           written_at u64 (Unix seconds)                                     (40 bytes)
//!   entries key [u8; 16] | seconds left at written_at u32                     (20 bytes each)
//!   trailer entry count u64 | SipHash-1-3 (fixed key) of every byte before it (16 bytes)
//! ```

use std::fs::{self, File, OpenOptions};
use std::hash::Hasher;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use super::cache::Dedup;
use super::key::{expiry, expiry_of, is_confirmed, Key};
use super::settings::{Clock, DedupConfig, DedupError, MAX_TTL};

const MAGIC: &[u8; 8] = b"gwdedup\0";
const VERSION: u32 = 1;
pub(super) const HEADER_BYTES: u64 = 40;
const ENTRY_BYTES: u64 = 20;
const TRAILER_BYTES: u64 = 16;
const CHECKSUM_KEY: (u64, u64) = (0x6777_6465_6475_7031, 0x736e_6170_7368_6f74);

/// What [`Dedup::snapshot`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotReport {
    pub entries: u64,
    pub bytes: u64,
}

/// What [`Dedup::load`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// False when there was no snapshot (a first start): the cache starts empty.
    pub found: bool,
    /// Entries restored.
    pub loaded: u64,
    /// Entries that had expired since the snapshot.
    pub expired: u64,
}

/// Writes through to a checksum.
struct Summed<W> {
    inner: W,
    sum: siphasher::sip::SipHasher13,
}

impl<W: Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sum.write(bytes);
        self.inner.write_all(bytes)
    }
}

fn checksum_hasher() -> siphasher::sip::SipHasher13 {
    siphasher::sip::SipHasher13::new_with_keys(CHECKSUM_KEY.0, CHECKSUM_KEY.1)
}

impl Dedup {
    /// Writes the confirmed, unexpired entries and the hash key to `path`, atomically (a
    /// temporary file beside it, fsync, rename, fsync of the folder). Blocking I/O: call it
    /// from `spawn_blocking` or after the runtime stops serving, once in-flight requests have
    /// drained (reservations are not written). Locks one shard at a time, copying it out.
    pub fn snapshot(&self, path: &Path) -> Result<SnapshotReport, DedupError> {
        let io_err = |source| DedupError::Io { path: path.to_path_buf(), source };
        let name = path.file_name().ok_or_else(|| io_err(io::Error::other("the path names no file")))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let result = self.write_snapshot(&tmp).and_then(|report| {
            fs::rename(&tmp, path)?;
            sync_parent(path)?;
            Ok(report)
        });
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(e)
        })
    }

    fn write_snapshot(&self, tmp: &Path) -> io::Result<SnapshotReport> {
        // A leftover from an interrupted snapshot would keep its permissions through `create`.
        match fs::remove_file(tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(tmp)?;
        let mut out = Summed { inner: BufWriter::with_capacity(1 << 20, file), sum: checksum_hasher() };
        let written_at = self.clock.unix_secs();
        let mut header = Vec::with_capacity(HEADER_BYTES as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&self.seed.0.to_le_bytes());
        header.extend_from_slice(&self.seed.1.to_le_bytes());
        header.extend_from_slice(&written_at.to_le_bytes());
        out.put(&header)?;
        let mut entries = 0u64;
        let mut buf = Vec::new();
        for shard in self.shards.iter() {
            buf.clear();
            {
                let m = shard.lock();
                let now = self.now();
                for (key, &v) in m.map.iter() {
                    if is_confirmed(v) && expiry_of(v) > now {
                        buf.extend_from_slice(&key.to_bytes());
                        buf.extend_from_slice(&(expiry_of(v) - now).to_le_bytes());
                    }
                }
            }
            entries += buf.len() as u64 / ENTRY_BYTES;
            out.put(&buf)?;
        }
        out.put(&entries.to_le_bytes())?;
        let sum = out.sum.finish();
        out.inner.write_all(&sum.to_le_bytes())?;
        let file = out.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(SnapshotReport { entries, bytes: HEADER_BYTES + entries * ENTRY_BYTES + TRAILER_BYTES })
    }

    /// Builds the cache from the snapshot at `path`: its hash key, and its entries that are
    /// still unexpired by `clock`'s Unix time (evicting, closest to expiry first, if they no
    /// longer fit `config.capacity`). A missing file gives an empty cache
    /// (`LoadReport::found == false`); an unreadable or corrupt one an error — the caller then
    /// starts with [`Dedup::new`]. Blocking I/O: call it at start, before serving.
    pub fn load(path: &Path, config: &DedupConfig, clock: Arc<dyn Clock>) -> Result<(Dedup, LoadReport), DedupError> {
        let io_err = |source| DedupError::Io { path: path.to_path_buf(), source };
        let corrupt = |reason: &str| DedupError::Corrupt { path: path.to_path_buf(), reason: reason.to_string() };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((Dedup::with_clock(config, clock)?, LoadReport::default()));
            }
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut sum = checksum_hasher();
        let mut read = |buf: &mut [u8]| -> Result<(), DedupError> {
            input.read_exact(buf).map_err(io_err)?;
            sum.write(buf);
            Ok(())
        };
        let mut header = [0u8; HEADER_BYTES as usize];
        if len < HEADER_BYTES {
            return Err(corrupt("truncated"));
        }
        read(&mut header)?;
        let word = |at: usize| header.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
        if header.get(..8) != Some(MAGIC.as_slice()) {
            return Err(corrupt("not a dedup snapshot"));
        }
        let version = header.get(8..12).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
        if version != VERSION {
            return Err(corrupt(&format!("unsupported version {version}")));
        }
        let body = len - HEADER_BYTES;
        if body < TRAILER_BYTES || (body - TRAILER_BYTES) % ENTRY_BYTES != 0 {
            return Err(corrupt("truncated"));
        }
        let count = (body - TRAILER_BYTES) / ENTRY_BYTES;
        let (seed, written_at) = ((word(16), word(24)), word(32));
        let dedup = Dedup::build(config, clock, seed)?;
        let elapsed = dedup.clock.unix_secs().saturating_sub(written_at);
        let now = dedup.now();
        let mut report = LoadReport { found: true, ..LoadReport::default() };
        let mut entry = [0u8; ENTRY_BYTES as usize];
        for _ in 0..count {
            read(&mut entry)?;
            let (key_bytes, left_bytes) = entry.split_at(16);
            let key = key_bytes.try_into().map(Key::from_bytes).map_err(|_| corrupt("bad entry"))?;
            let left = left_bytes.try_into().map(u32::from_le_bytes).map_err(|_| corrupt("bad entry"))?;
            let Some(left) = u64::from(left).checked_sub(elapsed).filter(|&l| l > 0) else {
                report.expired += 1;
                continue;
            };
            let exp = expiry(now, left.min(MAX_TTL.as_secs()));
            dedup.shard(key).with(|m| m.confirm(key, exp, now));
            report.loaded += 1;
        }
        let mut trailer = [0u8; 8];
        read(&mut trailer)?;
        if u64::from_le_bytes(trailer) != count {
            return Err(corrupt("entry count mismatch"));
        }
        let expected = sum.finish();
        let mut stored = [0u8; 8];
        input.read_exact(&mut stored).map_err(io_err)?;
        if u64::from_le_bytes(stored) != expected {
            return Err(corrupt("checksum mismatch"));
        }
        Ok((dedup, report))
    }
}

/// Makes a rename durable: fsync of the folder that holds `path`.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}
