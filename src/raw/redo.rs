//! The redo log (DESIGN.md "Redo log" and "Recovery protocol"): its format
//! (eight header words, then one four-word entry per slot, XXH3-checksummed),
//! building it from a planned write ([`Redo::build`]), reading it back from
//! the arena with atomic loads and validating every word before anything
//! follows it ([`Redo::parse`]), and applying it to the slots under their
//! seqlocks ([`Redo::apply`], idempotent, so recovery can run it again).

use crate::sync::{fence, weakened, Ordering, Weaken};

use super::counters::Counters;
use super::hooks::{reached, CrashPoint};
use super::layout::{REDO_ENTRY, REDO_HEADER, REDO_MAGIC};
use super::lock::WriteLock;
use super::slot::{Lens, SlotWord, Tag};
use super::table::Table;

/// Index of the checksum word in a redo log header (see `layout::REDO_HEADER`).
pub(crate) const REDO_CHECKSUM_WORD: u64 = 7;

/// A planned slot image: the three data words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Image {
    pub(crate) hash: u64,
    pub(crate) rec: SlotWord,
    pub(crate) lens: Lens,
}

/// A parsed, validated redo log.
pub(crate) struct Redo {
    /// `view_seq` once the log is applied (even).
    pub(crate) target: u64,
    arena_used: u64,
    /// `live` once the log is applied.
    pub(crate) live: u64,
    tombs: u64,
    garbage: u64,
    /// `(slot, image)`, sorted by slot.
    pub(crate) entries: Vec<(u64, Image)>,
    /// The log's checksum word.
    pub(crate) checksum: u64,
}

/// XXH3 of the redo words with the checksum word taken as zero.
/// The checksum word is skipped (taken as 0). `words` are little-endian.
fn redo_checksum(words: &[u64]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(le_bytes(&words[..7]));
    h.update(&[0u8; 8]);
    h.update(le_bytes(&words[8..]));
    h.digest()
}

/// The bytes of words already converted to little-endian.
pub(crate) fn le_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding and every byte pattern is a valid u8; the
    // slice covers exactly the words' memory, borrowed for the same lifetime.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

/// Loads `n` little-endian arena words from `off` with atomic loads: a
/// reader parses a committed log while the writer may already be staging
/// the next write over it (see `overlay`); the caller validates what it read
/// (and LOG-IMMUTABLE-WHILE-COMMITTED tells a reader whether it read the
/// log whole).
fn load_words(t: &Table, off: u64, n: u64) -> Option<Vec<u64>> {
    let end = n.checked_mul(8).and_then(|len| off.checked_add(len))?;
    if end > t.arena_size() || off % 8 != 0 {
        return None;
    }
    let words = (0..n)
        .map(|i| {
            // SAFETY: [off, end) is inside the arena (checked above) and
            // 8-aligned (the arena starts at least 8-aligned: 64 in a segment, 8 in a
            // loom table; `off % 8 == 0`); only
            // atomic loads are made, so a concurrent writer is no data race
            // on our side (VALIDATE-BEFORE-FOLLOW: callers check the words).
            let w = unsafe {
                std::sync::atomic::AtomicU64::from_ptr(t.arena_ptr(off + 8 * i).cast::<u64>())
            };
            u64::from_le(w.load(std::sync::atomic::Ordering::Relaxed))
        })
        .collect();
    Some(words)
}

impl Redo {
    /// The log of a write that moves `view_seq` to `target` and leaves the
    /// counters `after` and the slots `entries` (sorted by slot), with its
    /// words as they go into the arena: little-endian, checksum filled in
    /// (their bytes are [`le_bytes`]).
    pub(crate) fn build(
        target: u64,
        after: Counters,
        entries: Vec<(u64, Image)>,
    ) -> (Redo, Vec<u64>) {
        let log_len = REDO_HEADER + REDO_ENTRY * entries.len() as u64;
        let mut words: Vec<u64> = Vec::with_capacity((log_len / 8) as usize);
        words.extend_from_slice(&[
            REDO_MAGIC,
            entries.len() as u64,
            target,
            after.arena_used,
            after.live,
            after.tombstones,
            after.garbage,
            0,
        ]);
        for (i, img) in &entries {
            words.extend_from_slice(&[*i, img.hash, img.rec.0, img.lens.0]);
        }
        for w in &mut words {
            *w = w.to_le();
        }
        words[REDO_CHECKSUM_WORD as usize] = redo_checksum(&words).to_le();
        let redo = Redo {
            target,
            arena_used: after.arena_used,
            live: after.live,
            tombs: after.tombstones,
            garbage: after.garbage,
            entries,
            checksum: u64::from_le(words[REDO_CHECKSUM_WORD as usize]),
        };
        (redo, words)
    }

    /// Reads and validates the redo log a commit word points at.
    pub(crate) fn parse(t: &Table, commit: u64) -> std::result::Result<Redo, String> {
        let log = commit >> 1;
        let head = load_words(t, log, REDO_HEADER / 8).ok_or("redo log offset out of bounds")?;
        if head[0] != REDO_MAGIC {
            return Err("redo log has a bad magic".into());
        }
        let count = head[1];
        if count > t.capacity() {
            return Err("redo log longer than the table".into());
        }
        let words = load_words(t, log, (REDO_HEADER + count * REDO_ENTRY) / 8)
            .ok_or("redo log out of bounds")?;
        let le: Vec<u64> = words.iter().map(|w| w.to_le()).collect();
        if redo_checksum(&le) != words[REDO_CHECKSUM_WORD as usize] {
            return Err("redo log checksum mismatch".into());
        }
        let redo = Redo {
            target: words[2],
            arena_used: words[3],
            live: words[4],
            tombs: words[5],
            garbage: words[6],
            entries: words[8..]
                .chunks_exact(4)
                .map(|e| {
                    (
                        e[0],
                        Image {
                            hash: e[1],
                            rec: SlotWord(e[2]),
                            lens: Lens(e[3]),
                        },
                    )
                })
                .collect(),
            checksum: words[REDO_CHECKSUM_WORD as usize],
        };
        if redo.target & 1 != 0
            || redo.target == 0
            || redo.arena_used > t.arena_size()
            || redo
                .live
                .checked_add(redo.tombs)
                .is_none_or(|n| n > t.capacity())
        {
            return Err("redo log header out of range".into());
        }
        for (i, img) in &redo.entries {
            let ok = *i < t.capacity()
                && match img.rec.tag() {
                    Some(Tag::FULL) => t.locate(*i, img.rec.offset(), img.lens).is_ok(),
                    Some(_) => true,
                    None => false,
                };
            if !ok {
                return Err(format!("redo entry for slot {i} is invalid"));
            }
        }
        if redo.entries.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err("redo entries are not in slot order".into());
        }
        Ok(redo)
    }

    /// Applies the log: view sequence odd, each slot under its seqlock,
    /// counters, view sequence even (= target), commit marker cleared.
    /// Idempotent; `crash_hooks` enables the test crash points.
    pub(crate) fn apply(&self, t: &Table, lock: &WriteLock, crash_hooks: bool) {
        let h = t.header();
        if h.view_seq.load(Ordering::Relaxed) != self.target {
            if !weakened(Weaken::ViewSeq) {
                h.view_seq.store(self.target - 1, Ordering::Relaxed);
                fence(Ordering::Release);
            }
            for (i, img) in &self.entries {
                t.slot(*i).write(lock, img.hash, img.rec, img.lens, || {
                    if crash_hooks {
                        reached(CrashPoint::MidApply);
                    }
                });
            }
            t.store_counters(
                lock,
                Counters {
                    arena_used: self.arena_used,
                    live: self.live,
                    tombstones: self.tombs,
                    garbage: self.garbage,
                },
            );
            h.view_seq.store(self.target, Ordering::Release);
        }
        if crash_hooks {
            reached(CrashPoint::AfterApply);
        }
        h.commit.store(0, Ordering::Release);
    }
}
