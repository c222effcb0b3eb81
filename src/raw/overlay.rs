//! Reads while a committed write is being applied (DESIGN.md "Reads during
//! an apply"). Between the commit store and the end of the apply, some slots
//! hold the new state and some the old; a writer killed there leaves them so
//! until the next lock holder recovers. A reader that finds the data
//! header's `commit` word set reads the *after* state instead: each slot
//! the committed redo log names is taken from the log (immutable once
//! committed), every other slot from the table (the write does not touch
//! it). So every read sees a committed write whole, also after its writer
//! died, without waiting and without writing anything shared.

use std::sync::Arc;

use super::redo::{Redo, REDO_CHECKSUM_WORD};
use super::seqlock::{SlotRead, SPIN_LIMIT};
use super::table::{Found, ReadErr, Table};
use crate::sync::{fence, Ordering};

/// A committed, validated redo log of one generation, as readers use it.
pub(crate) struct Overlay {
    /// The `commit` word that named the log.
    commit: u64,
    /// The log (its checksum word, from the parsed words themselves, tells
    /// two logs at the same offset apart).
    pub(crate) redo: Redo,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("commit", &self.commit)
            .field("entries", &self.redo.entries.len())
            .finish()
    }
}

/// What a reader reads in a generation right now.
pub(crate) struct ReadState {
    /// `view_seq` when the state was taken (what `view_validate` checks).
    pub(crate) seq: u64,
    /// The committed write being applied, if any: reads go through it.
    pub(crate) overlay: Option<Arc<Overlay>>,
}

impl Table {
    /// The state a consistent read starts from: `view_seq` and, if a
    /// committed write is pending, its log (from `cache` when it holds the
    /// same log). Returns `Stalled` if no stable state was seen within
    /// [`SPIN_LIMIT`] tries (a writer is writing very fast, or the log does
    /// not validate: a scribbled segment, for the stall path to sort out).
    pub(crate) fn read_state(&self, cache: Option<&Arc<Overlay>>) -> Result<ReadState, ReadErr> {
        let h = self.header();
        for _ in 0..SPIN_LIMIT {
            let seq = h.view_seq.load(Ordering::Acquire);
            let commit = h.commit.load(Ordering::Acquire);
            if commit == 0 {
                if seq & 1 == 0 {
                    return Ok(ReadState { seq, overlay: None });
                }
                crate::sync::spin_loop();
                continue;
            }
            let overlay = match cache {
                Some(c)
                    if c.commit == commit && self.log_checksum(commit) == Some(c.redo.checksum) =>
                {
                    Some(c.clone())
                }
                _ => Redo::parse(self, commit)
                    .ok()
                    .map(|redo| Arc::new(Overlay { commit, redo })),
            };
            // Seqlock check of what was read: the log is overwritten only
            // by a later write, which first moves `view_seq` on.
            fence(Ordering::Acquire);
            // The checksum word again: a log staged later at the same offset
            // and committed with the same word (a batch that staged no
            // record after a writer that died before its commit) differs.
            let stable = h.view_seq.load(Ordering::Relaxed) == seq
                && h.commit.load(Ordering::Relaxed) == commit
                && overlay
                    .as_ref()
                    .is_none_or(|o| self.log_checksum(commit) == Some(o.redo.checksum));
            if !stable {
                crate::sync::spin_loop();
                continue;
            }
            // Read whole and still committed: it validates or it is broken
            // (a scribble; parsing it again would not help).
            return match overlay {
                Some(o) if o.covers(seq) => Ok(ReadState {
                    seq,
                    overlay: Some(o),
                }),
                _ => Err(ReadErr::Stalled),
            };
        }
        Err(ReadErr::Stalled)
    }

    /// The checksum word of the log `commit` names, if in bounds.
    fn log_checksum(&self, commit: u64) -> Option<u64> {
        let off = (commit >> 1).checked_add(REDO_CHECKSUM_WORD * 8)?;
        if off.checked_add(8)? > self.arena_size() || off % 8 != 0 {
            return None;
        }
        // SAFETY: in bounds and 8-aligned (checked above); atomic load only.
        let w =
            unsafe { std::sync::atomic::AtomicU64::from_ptr(self.arena_ptr(off).cast::<u64>()) };
        Some(u64::from_le(w.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

impl Overlay {
    /// Whether `view_seq = seq` belongs to this log's write: before its
    /// apply (target − 2), during it (target − 1) or after it (target).
    fn covers(&self, seq: u64) -> bool {
        let t = self.redo.target;
        seq == t || seq.wrapping_add(1) == t || seq.wrapping_add(2) == t
    }

    /// The map's version once this write is applied.
    pub(crate) fn version(&self) -> u64 {
        self.redo.target >> 1
    }

    /// Slot `i` as it is after the write: from the log if the write changes
    /// it, else from the table (under its seqlock).
    fn image(&self, t: &Table, i: u64) -> Result<SlotRead, ReadErr> {
        let e = &self.redo.entries;
        if let Ok(k) = e.binary_search_by_key(&i, |(slot, _)| *slot) {
            let img = e[k].1;
            return Ok(SlotRead {
                hash: img.hash,
                rec: img.rec,
                lens: img.lens,
            });
        }
        t.slot(i).read().ok_or(ReadErr::Stalled)
    }

    /// [`Table::find`] in the after state.
    pub(crate) fn find(&self, t: &Table, key: &[u8], hash: u64) -> Result<Option<Found>, ReadErr> {
        t.probe(key, hash, |i| self.image(t, i))
    }

    /// [`Table::entry_at`] in the after state.
    pub(crate) fn entry_at(&self, t: &Table, i: u64) -> Result<Option<Found>, ReadErr> {
        t.entry_of(i, self.image(t, i)?)
    }
}
