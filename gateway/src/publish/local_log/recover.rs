//! Finding messageIds in the log: which events of an import chunk that was in flight when the
//! gateway stopped are on disk already.
//!
//! Owns: the scan. It reads only segments modified at or after the chunk started (with a
//! margin for coarse file times), so its cost follows the data written since, not the log's
//! size. Must not: write, or be used on the request path.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;

use super::{segment_indices, segment_path};

/// File times may be coarse (and a segment's mtime is its last write): look a little earlier.
const MARGIN: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct Id<'a> {
    #[serde(rename = "messageId", borrow)]
    message_id: Option<std::borrow::Cow<'a, str>>,
}

/// The ids of `ids` found in the topics under `data_dir`, in segments written since `since_ms`.
pub(super) fn find_since(data_dir: &Path, ids: &HashSet<String>, since_ms: u64) -> io::Result<HashSet<String>> {
    let since = UNIX_EPOCH + Duration::from_millis(since_ms).saturating_sub(MARGIN);
    let mut found = HashSet::new();
    for topic in fs::read_dir(data_dir)? {
        let topic = topic?.path();
        if !topic.is_dir() {
            continue;
        }
        // Not a topic of ours (the job store, say): no segments, nothing to read.
        let Ok(indices) = segment_indices(&topic) else { continue };
        for i in indices {
            let path = segment_path(&topic, i);
            if fs::metadata(&path)?.modified()? < since {
                continue;
            }
            let data = fs::read(&path)?;
            for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Ok(Id { message_id: Some(id) }) = serde_json::from_slice::<Id>(line) {
                    if ids.contains(id.as_ref()) {
                        found.insert(id.into_owned());
                    }
                }
            }
        }
    }
    Ok(found)
}
