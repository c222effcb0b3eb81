//! Filling a new generation (DESIGN.md "Growth and compaction"): whether a
//! table wants compacting, and the copy of every live entry of the
//! generation in force into a new, unpublished one. No redo log is needed:
//! nobody sees the new table until the root's `current` names it
//! (ONE-SWITCH-POINT), and a crash before that leaves a segment that
//! recovery removes (RECORDED-BEFORE-BUILT).

use crate::sync::Ordering;

use super::counters::Counters;
use super::geometry::max_used;
use super::lock::WriteLock;
use super::slot::{SlotWord, Tag};
use super::table::{record_size, ReadErr, Table};
use super::write::Stager;
use crate::error::{Error, Result};

impl Table {
    /// Whether garbage or tombstones passed the compaction threshold: half
    /// the arena is garbage, or a quarter of the slots are tombstones.
    pub(crate) fn wants_compaction(&self) -> bool {
        let h = self.header();
        h.garbage.load(Ordering::Relaxed) > self.arena_size() / 2
            || h.tombstones.load(Ordering::Relaxed) > self.capacity() / 4
    }

    /// Copies every live entry of `src` whose key `skip` rejects not into
    /// this table, which must be new and unpublished (no reader can see it, so slots are written without
    /// a redo log: a crash leaves a segment that recovery removes). Also
    /// carries the version over.
    pub(crate) fn load_from(
        &self,
        lock: &WriteLock,
        src: &Table,
        skip: impl Fn(&[u8], u64) -> bool,
    ) -> Result<()> {
        let (mut cursor, mut live) = (0u64, 0u64);
        let mask = self.capacity() - 1;
        for i in 0..src.capacity() {
            let s = src
                .slot(i)
                .read()
                .ok_or_else(|| Error::corrupted("slot left odd"))?;
            if s.rec.tag() != Some(Tag::FULL) {
                continue;
            }
            let f = src
                .locate(i, s.rec.offset(), s.lens)
                .map_err(ReadErr::into_error)?;
            if skip(src.key_of(&f), s.hash) {
                continue;
            }
            let size = record_size(f.key_len, f.value_len);
            if cursor + size > self.arena_size() || live >= max_used(self.capacity()) {
                return Err(Error::Full {
                    what: "arena",
                    needed: size,
                    available: self.arena_size() - cursor,
                });
            }
            // The whole record as it is (header with its checksum, key,
            // padding, value), so a damaged record stays detectable.
            let bytes = src
                .bytes(f.record, size)
                .ok_or_else(|| Error::corrupted("record out of arena bounds"))?;
            // SAFETY: this table is unpublished and ours alone
            // (ONE-SWITCH-POINT: no reader sees it before `current` names
            // it); write_arena checks the range against the arena.
            unsafe { Stager::write_arena(self, cursor, bytes)? };
            let mut j = s.hash & mask;
            while self.slot(j).rec.load(Ordering::Relaxed) != SlotWord::EMPTY.0 {
                j = (j + 1) & mask;
            }
            self.slot(j)
                .write(lock, s.hash, SlotWord::full(cursor), s.lens, || {});
            cursor += size;
            live += 1;
        }
        self.store_counters(
            lock,
            Counters {
                arena_used: cursor,
                live,
                tombstones: 0,
                garbage: 0,
            },
        );
        let h = self.header();
        h.view_seq.store(
            src.header().view_seq.load(Ordering::Relaxed) & !1,
            Ordering::Relaxed,
        );
        Ok(())
    }
}
