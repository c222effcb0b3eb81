//! A full consistency check of one generation (`RawMap::verify`).

use crate::sync::Ordering;

use super::geometry::max_used;
use super::layout::RECORD_HEADER;
use super::slot::Tag;
use super::table::{record_size, Table};
use crate::hash::hash_key;

/// What `verify` found. `problems` is empty for a consistent map.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Generation checked.
    pub generation: u64,
    /// Slots in the table.
    pub capacity: u64,
    /// FULL slots found.
    pub live: u64,
    /// TOMBSTONE slots found.
    pub tombstones: u64,
    /// Arena bytes of the records FULL slots point to.
    pub live_bytes: u64,
    /// `arena_used` from the header.
    pub arena_used: u64,
    /// `garbage` from the header.
    pub garbage_bytes: u64,
    /// Every inconsistency found, in words.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True if no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Table {
    /// Checks the header, every slot and every record this table points to.
    pub(crate) fn verify(&self, seed: u64) -> VerifyReport {
        let h = self.header();
        let mut r = VerifyReport {
            generation: self.generation(),
            capacity: self.capacity(),
            arena_used: h.arena_used.load(Ordering::Relaxed),
            garbage_bytes: h.garbage.load(Ordering::Relaxed),
            ..VerifyReport::default()
        };
        let mut p = Vec::new();
        if h.commit.load(Ordering::Acquire) != 0 {
            p.push(
                "a committed write is not applied yet (the next writer recovers it)".to_string(),
            );
        }
        if h.view_seq.load(Ordering::Relaxed) & 1 == 1 {
            p.push("view sequence is odd".to_string());
        }
        if r.arena_used > self.arena_size() {
            p.push(format!(
                "arena_used {} exceeds the arena ({})",
                r.arena_used,
                self.arena_size()
            ));
        }
        if let Err(what) = self.counters() {
            p.push(what.to_string());
        }
        for i in 0..self.capacity() {
            let Some(s) = self.slot(i).read() else {
                p.push(format!("slot {i}: stamp stays odd"));
                continue;
            };
            match s.rec.tag() {
                Some(Tag::FULL) => {
                    r.live += 1;
                    let f = match self.locate(i, s.rec.offset(), s.lens) {
                        Ok(f) => f,
                        Err(_) => {
                            p.push(format!("slot {i}: record out of bounds"));
                            continue;
                        }
                    };
                    let size = record_size(f.key_len, f.value_len);
                    r.live_bytes = r.live_bytes.saturating_add(size);
                    if f.record.saturating_add(size) > r.arena_used {
                        p.push(format!("slot {i}: record beyond arena_used"));
                    }
                    let mut head = [0u8; RECORD_HEADER as usize];
                    if let Some(b) = self.bytes(f.record, RECORD_HEADER) {
                        head.copy_from_slice(b);
                    }
                    let klen = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                    let vlen = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                    if u64::from(klen) != f.key_len || u64::from(vlen) != f.value_len {
                        p.push(format!(
                            "slot {i}: record header disagrees with the slot's lengths"
                        ));
                    } else if !self.record_intact(&f) {
                        p.push(format!(
                            "slot {i}: record checksum mismatch (key or value bytes damaged)"
                        ));
                    }
                    let key = self.key_of(&f);
                    if hash_key(seed, key) != s.hash {
                        p.push(format!("slot {i}: stored hash is not the hash of the key"));
                    }
                    match self.find(key, s.hash) {
                        Ok(Some(g)) if g.slot == i => {}
                        Ok(Some(g)) => p.push(format!("slot {i}: key also in slot {}", g.slot)),
                        Ok(None) => {
                            p.push(format!("slot {i}: key unreachable by its probe sequence"))
                        }
                        Err(e) => p.push(format!("slot {i}: lookup failed: {e:?}")),
                    }
                }
                Some(Tag::TOMBSTONE) => r.tombstones += 1,
                Some(_) => {
                    if s.hash != 0 || s.lens.0 != 0 {
                        p.push(format!("slot {i}: EMPTY with data words set"));
                    }
                }
                None => p.push(format!("slot {i}: invalid tag")),
            }
        }
        let live = h.live.load(Ordering::Relaxed);
        let tombs = h.tombstones.load(Ordering::Relaxed);
        if live != r.live {
            p.push(format!(
                "header counts {live} live entries, slots hold {}",
                r.live
            ));
        }
        if tombs != r.tombstones {
            p.push(format!(
                "header counts {tombs} tombstones, slots hold {}",
                r.tombstones
            ));
        }
        if r.live + r.tombstones > max_used(self.capacity()) {
            p.push("table above its load bound".to_string());
        }
        if r.live_bytes.checked_add(r.garbage_bytes) != Some(r.arena_used) {
            p.push(format!(
                "live bytes {} + garbage {} != arena_used {}",
                r.live_bytes, r.garbage_bytes, r.arena_used
            ));
        }
        r.problems = p;
        r
    }
}
