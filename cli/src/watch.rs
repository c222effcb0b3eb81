//! `shmkv watch`'s snapshots: a map's version, generation and entries (with
//! their records' offsets) from one view, and the diff of two.

use shmkv::{Error, RawMap};

/// One consistent look at a map for `watch`: its version, generation and
/// entries (with their records' offsets), all from the same view.
pub(crate) struct Snapshot {
    pub(crate) version: u64,
    pub(crate) generation: u64,
    pub(crate) entries: std::collections::HashMap<Vec<u8>, (Vec<u8>, u64)>,
}

pub(crate) fn snapshot(m: &RawMap) -> Result<Snapshot, Error> {
    m.view(|v| {
        Ok(Snapshot {
            version: v.version(),
            generation: v.generation(),
            entries: v
                .entries_with_records()?
                .into_iter()
                .map(|((k, val), rec)| (k.to_vec(), (val.to_vec(), rec)))
                .collect(),
        })
    })
}

impl Snapshot {
    /// `+key` added, `-key` removed, `~key` changed: another value, or
    /// (within one generation) the same value written again, e.g. removed
    /// and re-added between the two looks. Sorted by key.
    pub(crate) fn diff(&self, old: &Snapshot) -> Vec<String> {
        let same_gen = self.generation == old.generation;
        let mut diff: Vec<String> = Vec::new();
        for (k, (v2, r2)) in &self.entries {
            match old.entries.get(k) {
                None => diff.push(format!("+{}", String::from_utf8_lossy(k))),
                Some((v1, r1)) if v1 != v2 || (same_gen && r1 != r2) => {
                    diff.push(format!("~{}", String::from_utf8_lossy(k)))
                }
                _ => {}
            }
        }
        diff.extend(
            old.entries
                .keys()
                .filter(|k| !self.entries.contains_key(*k))
                .map(|k| format!("-{}", String::from_utf8_lossy(k))),
        );
        diff.sort_by(|a, b| a[1..].cmp(&b[1..]));
        diff
    }
}
