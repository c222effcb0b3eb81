//! The writer's side of the write protocol (DESIGN.md "Write protocol",
//! steps 3 to 7): the [`Stager`] copies each record into the unpublished
//! part of the arena and keeps the last operation per key; `prepare` plans
//! the slot images over the current slots (LOAD-BOUND, TOMBSTONE-TRIM) and
//! writes the redo log after the records; `commit` stores the header's
//! `commit` word (ONE-COMMIT-POINT) and applies the log. Also the cheap
//! hasher for maps keyed by hashes or slot indexes ([`IdMap`]). The log's
//! format is in [`super::redo`], the sizes in [`super::geometry`], and
//! [`Table::recover`] finishes or discards whatever a dead writer left.
//! Callers hold the writer lock.

use crate::sync::{weakened, Ordering, Weaken};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::counters::Counters;
use super::geometry::{max_used, REDO_RESERVE};
use super::hooks::{reached, CrashPoint};
use super::layout::{
    checked_align_up, record_checksum, ARENA_ALIGN, RECORD_CHECKSUM_AT, RECORD_HEADER, REDO_ENTRY,
    REDO_HEADER,
};
use super::lock::WriteLock;
use super::redo::{le_bytes, Image, Redo};
use super::slot::{Lens, SlotWord, Tag};
use super::table::{record_size, value_offset_in_record, ReadErr, Table};
use crate::error::{Error, Result};

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 64 * 1024;

/// Ends a chain of ops with the same key hash.
const NONE: usize = usize::MAX;

/// A hasher for keys that are already hashes or small indexes: one
/// multiplication (Fibonacci hashing) instead of SipHash.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by a hash or a slot index.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// What a batch did to one key.
#[derive(Debug, Clone, Copy)]
enum Staged {
    /// A new record at `record` (staged, not yet published).
    Put { record: u64, lens: Lens, hash: u64 },
    /// The key is removed.
    Remove { hash: u64 },
}

/// Where a key is in the planned table, and the first slot a new key may take.
struct Probe {
    existing: Option<(u64, Image)>,
    free: Option<u64>,
}

/// The writer's staging area for one write (one call or one batch).
pub(crate) struct Stager<'l> {
    /// The writer's proof that it holds the lock (commits apply with it).
    lock: &'l WriteLock,
    /// The header's counters when the write started, validated
    /// ([`Table::counters`]); an `Err` refuses every operation.
    base: std::result::Result<Counters, &'static str>,
    /// Next free arena byte; everything from `arena_used` up is unpublished.
    cursor: u64,
    /// Keys in the order they were first touched, and their final operation.
    ops: Vec<(Box<[u8]>, Staged)>,
    /// Key hash → the last op with that hash; `chain[i]` links op `i` to
    /// the previous op with the same hash (`NONE` ends the chain).
    index: IdMap<usize>,
    chain: Vec<usize>,
    /// Bytes of records staged and then superseded within this batch.
    staged_garbage: u64,
    /// Where a record is built before it is stored (reused).
    scratch: Vec<u8>,
}

impl<'l> Stager<'l> {
    /// Starts a write. The caller holds the writer lock and has run recovery.
    /// The header's counters are validated here once; if they are damaged,
    /// every staging operation and the commit return `Corrupted` (nothing
    /// is written).
    pub(crate) fn new(t: &Table, lock: &'l WriteLock) -> Stager<'l> {
        let base = t.counters();
        Stager {
            lock,
            cursor: base.map_or(0, |c| c.arena_used),
            base,
            ops: Vec::new(),
            index: IdMap::default(),
            chain: Vec::new(),
            staged_garbage: 0,
            scratch: Vec::new(),
        }
    }

    /// The writer's lock token (for the copy into a new generation).
    pub(crate) fn lock(&self) -> &'l WriteLock {
        self.lock
    }

    /// The validated counters the write started from.
    fn base(&self) -> Result<Counters> {
        self.base.map_err(Error::corrupted)
    }

    fn check_key(key: &[u8]) -> Result<()> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        Ok(())
    }

    /// Stages `key → value`: writes the record into unpublished arena bytes.
    pub(crate) fn put(&mut self, t: &Table, key: &[u8], hash: u64, value: &[u8]) -> Result<()> {
        Self::check_key(key)?;
        if value.len() > u32::MAX as usize {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: u32::MAX as usize,
            });
        }
        self.base()?;
        let overflow = || Error::corrupted("arena cursor overflows");
        let record = checked_align_up(self.cursor, ARENA_ALIGN).ok_or_else(overflow)?;
        // key ≤ MAX_KEY_LEN and value ≤ u32::MAX: no overflow in the size.
        let size = record_size(key.len() as u64, value.len() as u64);
        let end = record.checked_add(size).ok_or_else(overflow)?;
        let limit = t.arena_size().saturating_sub(REDO_RESERVE);
        if end > limit {
            return Err(Error::Full {
                what: "arena",
                needed: size,
                available: limit.saturating_sub(record),
            });
        }
        let lens = Lens::new(key.len() as u32, value.len() as u32);
        // The whole record is built here (zero padding included), then
        // stored word by word: a reader of a committed redo log that lay
        // here may still be loading these words (LOG-IMMUTABLE-WHILE-
        // COMMITTED: it discards what it read), so they are atomic stores.
        let value_at = value_offset_in_record(key.len() as u64) as usize;
        let buf = &mut self.scratch;
        buf.clear();
        buf.resize(size as usize, 0);
        buf[..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
        buf[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
        let key_at = RECORD_HEADER as usize;
        buf[key_at..key_at + key.len()].copy_from_slice(key);
        buf[value_at..value_at + value.len()].copy_from_slice(value);
        // The checksum covers the key, its zero padding and the value (one
        // contiguous range).
        let sum = record_checksum(&buf[key_at..value_at + value.len()]);
        let at = RECORD_CHECKSUM_AT as usize;
        buf[at..at + 8].copy_from_slice(&sum.to_le_bytes());
        // SAFETY: [record, end) lies inside the arena (checked above, and
        // again by write_arena_words) and at or above arena_used:
        // unpublished bytes no reader follows an offset into, and we hold
        // the writer lock so nobody else writes them.
        unsafe { Self::write_arena_words(t, record, buf)? };
        self.cursor = end;
        self.set(key, Staged::Put { record, lens, hash });
        Ok(())
    }

    /// Stages removal of `key`; returns whether it was present.
    pub(crate) fn remove(&mut self, t: &Table, key: &[u8], hash: u64) -> Result<bool> {
        Self::check_key(key)?;
        self.base()?;
        let present = self.get(t, key, hash)?.is_some();
        if present {
            self.set(key, Staged::Remove { hash });
        }
        Ok(present)
    }

    /// Reads `key` as this batch sees it (its own staged writes first).
    pub(crate) fn get<'a>(
        &'a self,
        t: &'a Table,
        key: &[u8],
        hash: u64,
    ) -> Result<Option<&'a [u8]>> {
        if let Some(i) = self.find_op(key, hash) {
            return Ok(match self.ops[i].1 {
                Staged::Put { record, lens, .. } => {
                    let f = t.locate(0, record, lens).map_err(ReadErr::into_error)?;
                    Some(t.value_of(&f))
                }
                Staged::Remove { .. } => None,
            });
        }
        Ok(t.find(key, hash)
            .map_err(ReadErr::into_error)?
            .map(|f| t.value_of(&f)))
    }

    /// The op of `key` in this batch, if any.
    fn find_op(&self, key: &[u8], hash: u64) -> Option<usize> {
        let mut i = *self.index.get(&hash)?;
        while i != NONE {
            if *self.ops[i].0 == *key {
                return Some(i);
            }
            i = self.chain[i];
        }
        None
    }

    fn set(&mut self, key: &[u8], op: Staged) {
        let hash = match op {
            Staged::Put { hash, .. } | Staged::Remove { hash } => hash,
        };
        match self.find_op(key, hash) {
            Some(i) => {
                if let Staged::Put { lens, .. } = self.ops[i].1 {
                    self.staged_garbage = self
                        .staged_garbage
                        .wrapping_add(record_size(lens.key_len(), lens.value_len()));
                }
                self.ops[i].1 = op;
            }
            None => {
                let prev = self.index.insert(hash, self.ops.len()).unwrap_or(NONE);
                self.chain.push(prev);
                self.ops.push((key.into(), op));
            }
        }
    }

    /// Copies `data` into the arena at `off`; `Corrupted` (and nothing
    /// written) if the range is not inside the arena, whatever the caller
    /// computed. A plain copy: only for a table no reader can see yet (a new
    /// generation being filled by `load_from`); staging into the
    /// generation in force uses [`Stager::write_arena_words`].
    ///
    /// # Safety
    /// `[off, off + data.len())` is unpublished (no reader holds a reference
    /// into it), and the caller holds the writer lock.
    pub(super) unsafe fn write_arena(t: &Table, off: u64, data: &[u8]) -> Result<()> {
        match off.checked_add(data.len() as u64) {
            Some(end) if end <= t.arena_size() => {}
            _ => return Err(Error::corrupted("arena write out of bounds")),
        }
        // SAFETY: in bounds of the arena (checked above), unpublished and
        // ours alone (forwarded from the caller); `data` is process-local
        // memory, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), t.arena_ptr(off), data.len()) };
        Ok(())
    }

    /// Stores `data` (a whole number of 8-byte words) into the arena at
    /// `off` (8-aligned) with atomic word stores; `Corrupted` (and nothing
    /// written) if the range is not inside the arena or not word-aligned.
    /// For staging into the generation in force, whose unpublished bytes a
    /// reader of the last committed log may still load (atomically).
    ///
    /// # Safety
    /// `[off, off + data.len())` is unpublished (no reader holds a reference
    /// into it), and the caller holds the writer lock.
    pub(super) unsafe fn write_arena_words(t: &Table, off: u64, data: &[u8]) -> Result<()> {
        match off.checked_add(data.len() as u64) {
            Some(end) if end <= t.arena_size() && off % 8 == 0 && data.len() % 8 == 0 => {}
            _ => return Err(Error::corrupted("arena write out of bounds")),
        }
        for (i, w) in data.chunks_exact(8).enumerate() {
            let word = u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
            // SAFETY: in bounds of the arena and 8-aligned (checked above;
            // the arena starts at least 8-aligned); unpublished and written by us
            // alone (forwarded from the caller); an atomic store, so a
            // reader's racing atomic load is no data race.
            unsafe {
                std::sync::atomic::AtomicU64::from_ptr(
                    t.arena_ptr(off + 8 * i as u64).cast::<u64>(),
                )
                .store(word, std::sync::atomic::Ordering::Relaxed)
            };
        }
        Ok(())
    }

    /// The slot image a planned or current slot has.
    fn image(t: &Table, plan: &IdMap<Image>, i: u64) -> Image {
        if let Some(img) = plan.get(&i) {
            return *img;
        }
        let s = t.slot(i);
        Image {
            hash: s.hash.load(Ordering::Relaxed),
            rec: SlotWord(s.rec.load(Ordering::Relaxed)),
            lens: Lens(s.lens.load(Ordering::Relaxed)),
        }
    }

    /// How this batch changes the number of keys and the live record bytes
    /// of `base` (the published table it started on).
    pub(crate) fn footprint(&self, base: &Table) -> Result<(i64, i64)> {
        self.base()?;
        let (mut keys, mut bytes) = (0i64, 0i64);
        for (key, op) in &self.ops {
            let hash = match *op {
                Staged::Put { hash, .. } | Staged::Remove { hash } => hash,
            };
            let old = base.find(key, hash).map_err(ReadErr::into_error)?;
            let old_size = old.map_or(0, |f| record_size(f.key_len, f.value_len)) as i64;
            match *op {
                Staged::Put { lens, .. } => {
                    keys += i64::from(old.is_none());
                    bytes += record_size(lens.key_len(), lens.value_len()) as i64 - old_size;
                }
                Staged::Remove { .. } if old.is_some() => {
                    keys -= 1;
                    bytes -= old_size;
                }
                Staged::Remove { .. } => {}
            }
        }
        Ok((keys, bytes))
    }

    /// Whether the batch writes or removes `key` (whose hash is `hash`).
    pub(crate) fn touches(&self, key: &[u8], hash: u64) -> bool {
        self.find_op(key, hash).is_some()
    }

    /// Number of keys the batch touches (each needs a redo entry).
    pub(crate) fn op_count(&self) -> u64 {
        self.ops.len() as u64
    }

    /// Stages this batch's operations again into `into` (over table `to`),
    /// reading staged records from `from`. Used when a batch moves to a new
    /// generation.
    pub(crate) fn replay(&self, from: &Table, into: &mut Stager<'_>, to: &Table) -> Result<()> {
        for (key, op) in &self.ops {
            match *op {
                Staged::Put { record, lens, hash } => {
                    let f = from.locate(0, record, lens).map_err(ReadErr::into_error)?;
                    into.put(to, key, hash, from.value_of(&f))?;
                }
                // Staged even though `to` lacks the key (`load_from` did not
                // copy it, because this batch touches it): a second move
                // copies from the published generation again and must still
                // skip the key, or the removal is lost.
                Staged::Remove { hash } => {
                    Self::check_key(key)?;
                    into.base()?;
                    into.set(key, Staged::Remove { hash });
                }
            }
        }
        Ok(())
    }

    /// Finds `key` in the planned table.
    fn probe(t: &Table, plan: &IdMap<Image>, key: &[u8], hash: u64) -> Result<Probe> {
        let mask = t.capacity() - 1;
        let mut i = hash & mask;
        let mut free = None;
        for _ in 0..t.capacity() {
            let img = Self::image(t, plan, i);
            match img.rec.tag() {
                Some(Tag::EMPTY) => {
                    return Ok(Probe {
                        existing: None,
                        free: free.or(Some(i)),
                    })
                }
                Some(Tag::TOMBSTONE) => {
                    free.get_or_insert(i);
                }
                Some(Tag::FULL) => {
                    if img.hash == hash && img.lens.key_len() == key.len() as u64 {
                        let f = t
                            .locate(i, img.rec.offset(), img.lens)
                            .map_err(ReadErr::into_error)?;
                        if t.key_of(&f) == key {
                            return Ok(Probe {
                                existing: Some((i, img)),
                                free,
                            });
                        }
                    }
                }
                _ => return Err(Error::corrupted("invalid slot tag")),
            }
            i = (i + 1) & mask;
        }
        Ok(Probe {
            existing: None,
            free,
        })
    }

    /// Plans, logs, commits and applies the batch. Returns whether anything
    /// was written.
    pub(crate) fn commit(&self, t: &Table) -> Result<bool> {
        let Some((word, redo)) = self.prepare(t)? else {
            return Ok(false);
        };
        t.header().commit.store(word, Ordering::Release);
        reached(CrashPoint::AfterCommit);
        redo.apply(t, self.lock, true);
        Ok(true)
    }

    /// Steps 4 and 5 of the write protocol: plans the batch and writes its
    /// redo log (unpublished). Returns the commit word to store and the log
    /// (as written, to apply without reading it back), or `None` for an
    /// empty batch.
    pub(crate) fn prepare(&self, t: &Table) -> Result<Option<(u64, Redo)>> {
        if self.ops.is_empty() {
            return Ok(None);
        }
        let base = self.base()?;
        let h = t.header();
        let cap = t.capacity();
        let mut live = base.live;
        let mut tombs = base.tombstones;
        // Counters come from shared memory (validated, but a planted value
        // could still disagree with the slots): wrapping arithmetic here,
        // and one sanity check of the results before anything is committed.
        let mut garbage = base.garbage.wrapping_add(self.staged_garbage);
        let mut plan: IdMap<Image> = IdMap::default();
        let mut removed = Vec::new();

        for (key, op) in &self.ops {
            match *op {
                Staged::Put { record, lens, hash } => {
                    let img = Image {
                        hash,
                        rec: SlotWord::full(record),
                        lens,
                    };
                    match Self::probe(t, &plan, key, hash)? {
                        Probe {
                            existing: Some((i, old)),
                            ..
                        } => {
                            garbage = garbage.wrapping_add(record_size(
                                old.lens.key_len(),
                                old.lens.value_len(),
                            ));
                            plan.insert(i, img);
                        }
                        Probe {
                            existing: None,
                            free: Some(i),
                        } => {
                            if Self::image(t, &plan, i).rec.tag() == Some(Tag::TOMBSTONE) {
                                tombs = tombs.wrapping_sub(1);
                            } else if live.saturating_add(tombs) >= max_used(cap) {
                                return Err(Error::Full {
                                    what: "slots",
                                    needed: live.saturating_add(tombs).saturating_add(1),
                                    available: max_used(cap),
                                });
                            }
                            live = live.wrapping_add(1);
                            plan.insert(i, img);
                        }
                        Probe {
                            existing: None,
                            free: None,
                        } => {
                            return Err(Error::Full {
                                what: "slots",
                                needed: 1,
                                available: 0,
                            })
                        }
                    }
                }
                Staged::Remove { hash } => {
                    if let Some((i, old)) = Self::probe(t, &plan, key, hash)?.existing {
                        garbage = garbage
                            .wrapping_add(record_size(old.lens.key_len(), old.lens.value_len()));
                        live = live.wrapping_sub(1);
                        tombs = tombs.wrapping_add(1);
                        plan.insert(
                            i,
                            Image {
                                hash: 0,
                                rec: SlotWord::TOMBSTONE,
                                lens: Lens(0),
                            },
                        );
                        removed.push(i);
                    }
                }
            }
        }

        // A tombstone followed by an EMPTY slot ends no live probe chain: turn
        // it (and the tombstones right before it) back into EMPTY.
        let mask = cap - 1;
        for i in removed {
            if Self::image(t, &plan, i).rec.tag() != Some(Tag::TOMBSTONE)
                || (!weakened(Weaken::TombstoneTrim)
                    && Self::image(t, &plan, (i + 1) & mask).rec.tag() != Some(Tag::EMPTY))
            {
                continue;
            }
            let mut j = i;
            while Self::image(t, &plan, j).rec.tag() == Some(Tag::TOMBSTONE) {
                plan.insert(
                    j,
                    Image {
                        hash: 0,
                        rec: SlotWord::EMPTY,
                        lens: Lens(0),
                    },
                );
                tombs = tombs.wrapping_sub(1);
                j = (j + cap - 1) & mask;
            }
        }

        if live.checked_add(tombs).is_none_or(|used| used > cap) || garbage > self.cursor {
            return Err(Error::corrupted("header counters disagree with the slots"));
        }
        let arena_used = self.cursor;
        let overflow = || Error::corrupted("arena cursor overflows");
        let log = checked_align_up(self.cursor, ARENA_ALIGN).ok_or_else(overflow)?;
        // The redo entries, in slot order.
        let mut entries: Vec<(u64, Image)> = plan.into_iter().collect();
        entries.sort_unstable_by_key(|e| e.0);
        let log_len = REDO_HEADER + REDO_ENTRY * entries.len() as u64;
        if log
            .checked_add(log_len)
            .is_none_or(|end| end > t.arena_size())
        {
            return Err(Error::Full {
                what: "arena",
                needed: log_len,
                available: t.arena_size().saturating_sub(log),
            });
        }
        reached(CrashPoint::AfterStage);

        let target = (h.view_seq.load(Ordering::Relaxed) | 1)
            .checked_add(1)
            .ok_or_else(|| Error::corrupted("view sequence at its limit"))?;
        let after = Counters {
            arena_used,
            live,
            tombstones: tombs,
            garbage,
        };
        let (redo, words) = Redo::build(target, after, entries);
        // SAFETY: [log, log + log_len) is inside the arena (checked above)
        // and above every staged record: unpublished (ONE-COMMIT-POINT).
        unsafe { Self::write_arena_words(t, log, le_bytes(&words))? };
        reached(CrashPoint::AfterRedoLog);
        Ok(Some(((log << 1) | 1, redo)))
    }
}
