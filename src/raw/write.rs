//! The write protocol (DESIGN.md "Write protocol"): stage records and a redo
//! list in the unpublished part of the arena, commit with one store of the
//! header's `commit` word, apply the redo list slot by slot under the
//! seqlocks, clear the marker. [`Table::recover`] finishes or discards
//! whatever a dead writer left. Callers hold the writer lock.

use crate::sync::{fence, weakened, Ordering, Weaken};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::hooks::{reached, CrashPoint};
use super::layout::{
    checked_align_up, data_geometry, record_checksum, ARENA_ALIGN, RECORD_CHECKSUM_AT,
    RECORD_HEADER, REDO_ENTRY, REDO_HEADER, REDO_MAGIC, ROOT_SIZE,
};
use super::slot::{Lens, SlotWord, Tag};
use super::table::{record_size, value_offset_in_record, Counters, ReadErr, Table};
use crate::error::{Error, Result};

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 64 * 1024;

/// Arena bytes records never use: room for the redo log of a write that
/// changes up to 32 slots, so that removals (which need no record) still
/// work when the arena is otherwise full.
pub(crate) const REDO_RESERVE: u64 = REDO_HEADER + 32 * REDO_ENTRY;

/// Geometry `(slots, arena bytes)` of the generation that replaces one of
/// `old_slots` and `old_arena` and must hold `keys` entries of `bytes`
/// record bytes. Roomy first (never smaller than before; twice the need, so
/// that growth is amortised and an update-heavy map compacts in place);
/// then, if `max_total` forbids that, the least that fits.
pub(crate) fn grow_geometry(
    old_slots: u64,
    old_arena: u64,
    keys: u64,
    bytes: u64,
    max_total: Option<u64>,
) -> Result<(u64, u64)> {
    // Bounded: at most 60 doublings, then `None` (a key count no table
    // can hold, e.g. from a scribbled `live`).
    let slots_for = |n: u64| -> Option<u64> {
        let mut s = 16u64;
        while max_used(s) < n {
            s = s.checked_mul(2)?;
        }
        Some(s)
    };
    let need_arena = bytes
        .saturating_add(REDO_RESERVE + REDO_HEADER + ARENA_ALIGN)
        .saturating_add(keys.saturating_mul(REDO_ENTRY));
    let roomy = slots_for(keys.saturating_mul(2)).and_then(|s| {
        Some((
            old_slots.max(s),
            checked_align_up(old_arena.max(need_arena.saturating_mul(2)), ARENA_ALIGN)?,
        ))
    });
    let tight = slots_for(keys).zip(checked_align_up(need_arena, ARENA_ALIGN));
    let mut smallest = u64::MAX;
    for (s, a) in [roomy, tight].into_iter().flatten() {
        let Some(total) = data_geometry(s, a).and_then(|(_, _, t)| t.checked_add(ROOT_SIZE as u64))
        else {
            continue;
        };
        smallest = smallest.min(total);
        if max_total.is_none_or(|m| total <= m) {
            return Ok((s, a));
        }
    }
    Err(Error::Full {
        what: if max_total.is_some() {
            "max_size"
        } else {
            "address space"
        },
        needed: smallest,
        available: max_total.unwrap_or(0),
    })
}

/// Table load bound: live keys plus tombstones stay at or below 7/8 of the
/// slots, so every probe sequence meets an EMPTY slot.
pub(crate) fn max_used(capacity: u64) -> u64 {
    capacity - capacity / 8
}

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

/// A planned slot image: the three data words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Image {
    pub(crate) hash: u64,
    pub(crate) rec: SlotWord,
    pub(crate) lens: Lens,
}

/// Where a key is in the planned table, and the first slot a new key may take.
struct Probe {
    existing: Option<(u64, Image)>,
    free: Option<u64>,
}

/// The writer's staging area for one write (one call or one batch).
pub(crate) struct Stager {
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
}

impl Stager {
    /// Starts a write. The caller holds the writer lock and has run recovery.
    /// The header's counters are validated here once; if they are damaged,
    /// every staging operation and the commit return `Corrupted` (nothing
    /// is written).
    pub(crate) fn new(t: &Table) -> Stager {
        let base = t.counters();
        Stager {
            cursor: base.map_or(0, |c| c.arena_used),
            base,
            ops: Vec::new(),
            index: IdMap::default(),
            chain: Vec::new(),
            staged_garbage: 0,
        }
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
        let mut head = [0u8; RECORD_HEADER as usize];
        head[..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
        head[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
        let key_end = record + RECORD_HEADER + key.len() as u64;
        let value_at = record + value_offset_in_record(key.len() as u64);
        let zeros = [0u8; ARENA_ALIGN as usize];
        let pad = &zeros[..(value_at - key_end) as usize];
        // SAFETY: [record, end) lies inside the arena (checked above, and
        // again by write_arena) and at or above arena_used: unpublished
        // bytes no reader follows an offset into, and we hold the writer
        // lock so nobody else writes them.
        unsafe {
            Self::write_arena(t, record + RECORD_HEADER, key)?;
            Self::write_arena(t, key_end, pad)?;
            Self::write_arena(t, value_at, value)?;
        }
        // The checksum covers the key, its zero padding and the value as
        // they now lie in the arena (one contiguous range).
        let body = t
            .bytes(
                record + RECORD_HEADER,
                value_at + value.len() as u64 - record - RECORD_HEADER,
            )
            .ok_or_else(overflow)?;
        let sum = record_checksum(body);
        head[RECORD_CHECKSUM_AT as usize..].copy_from_slice(&sum.to_le_bytes());
        // SAFETY: as above.
        unsafe { Self::write_arena(t, record, &head)? };
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
    /// computed.
    ///
    /// # Safety
    /// `[off, off + data.len())` is unpublished (no reader holds a reference
    /// into it), and the caller holds the writer lock.
    unsafe fn write_arena(t: &Table, off: u64, data: &[u8]) -> Result<()> {
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
    pub(crate) fn replay(&self, from: &Table, into: &mut Stager, to: &Table) -> Result<()> {
        for (key, op) in &self.ops {
            match *op {
                Staged::Put { record, lens, hash } => {
                    let f = from.locate(0, record, lens).map_err(ReadErr::into_error)?;
                    into.put(to, key, hash, from.value_of(&f))?;
                }
                Staged::Remove { hash } => {
                    into.remove(to, key, hash)?;
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
        redo.apply(t, true);
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
        let mut words: Vec<u64> = Vec::with_capacity((log_len / 8) as usize);
        words.extend_from_slice(&[
            REDO_MAGIC,
            entries.len() as u64,
            target,
            arena_used,
            live,
            tombs,
            garbage,
            0,
        ]);
        for (i, img) in &entries {
            words.extend_from_slice(&[*i, img.hash, img.rec.0, img.lens.0]);
        }
        for w in &mut words {
            *w = w.to_le();
        }
        words[7] = redo_checksum(&words).to_le();
        // SAFETY: [log, log + log_len) is inside the arena (checked above)
        // and above every staged record: unpublished.
        unsafe { Self::write_arena(t, log, le_bytes(&words))? };
        reached(CrashPoint::AfterRedoLog);
        let redo = Redo {
            target,
            arena_used,
            live,
            tombs,
            garbage,
            entries,
            checksum: u64::from_le(words[7]),
        };
        Ok(Some(((log << 1) | 1, redo)))
    }
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
fn le_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding and every byte pattern is a valid u8; the
    // slice covers exactly the words' memory, borrowed for the same lifetime.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
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

/// Loads `n` little-endian arena words from `off` with atomic loads: a
/// reader parses a committed log while the writer may already be staging
/// the next write over it (see `overlay`); the caller validates what it read.
fn load_words(t: &Table, off: u64, n: u64) -> Option<Vec<u64>> {
    let end = n.checked_mul(8).and_then(|len| off.checked_add(len))?;
    if end > t.arena_size() || off % 8 != 0 {
        return None;
    }
    let words = (0..n)
        .map(|i| {
            // SAFETY: [off, end) is inside the arena (checked above) and
            // 8-aligned (the arena starts 64-aligned, `off % 8 == 0`); only
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
        if redo_checksum(&le) != words[7] {
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
            checksum: words[7],
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
    pub(crate) fn apply(&self, t: &Table, crash_hooks: bool) {
        let h = t.header();
        if h.view_seq.load(Ordering::Relaxed) != self.target {
            if !weakened(Weaken::ViewSeq) {
                h.view_seq.store(self.target - 1, Ordering::Relaxed);
                fence(Ordering::Release);
            }
            for (i, img) in &self.entries {
                t.slot(*i).write(img.hash, img.rec, img.lens, || {
                    if crash_hooks {
                        reached(CrashPoint::MidApply);
                    }
                });
            }
            t.store_counters(Counters {
                arena_used: self.arena_used,
                live: self.live,
                tombstones: self.tombs,
                garbage: self.garbage,
            });
            h.view_seq.store(self.target, Ordering::Release);
        }
        if crash_hooks {
            reached(CrashPoint::AfterApply);
        }
        h.commit.store(0, Ordering::Release);
    }
}

impl Table {
    /// Copies every live entry of `src` whose key `skip` rejects not into
    /// this table, which must be new and unpublished (no reader can see it, so slots are written without
    /// a redo log: a crash leaves a segment that recovery removes). Also
    /// carries the version over.
    pub(crate) fn load_from(&self, src: &Table, skip: impl Fn(&[u8], u64) -> bool) -> Result<()> {
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
            // SAFETY: this table is unpublished and ours alone; write_arena
            // checks the range against the arena.
            unsafe { Stager::write_arena(self, cursor, bytes)? };
            let mut j = s.hash & mask;
            while self.slot(j).rec.load(Ordering::Relaxed) != SlotWord::EMPTY.0 {
                j = (j + 1) & mask;
            }
            self.slot(j)
                .write(s.hash, SlotWord::full(cursor), s.lens, || {});
            cursor += size;
            live += 1;
        }
        self.store_counters(Counters {
            arena_used: cursor,
            live,
            tombstones: 0,
            garbage: 0,
        });
        let h = self.header();
        h.view_seq.store(
            src.header().view_seq.load(Ordering::Relaxed) & !1,
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Whether garbage or tombstones passed the compaction threshold: half
    /// the arena is garbage, or a quarter of the slots are tombstones.
    pub(crate) fn wants_compaction(&self) -> bool {
        let h = self.header();
        h.garbage.load(Ordering::Relaxed) > self.arena_size() / 2
            || h.tombstones.load(Ordering::Relaxed) > self.capacity() / 4
    }

    /// Brings the table to a consistent state after a writer died: a
    /// committed redo log is applied again (idempotent), an uncommitted one
    /// is ignored (its bytes are above `arena_used`). Returns whether
    /// anything was repaired. The caller holds the writer lock.
    pub(crate) fn recover(&self) -> Result<bool> {
        let h = self.header();
        let commit = h.commit.load(Ordering::Acquire);
        if commit == 0 {
            let seq = h.view_seq.load(Ordering::Relaxed);
            if seq & 1 == 1 {
                let next = seq
                    .checked_add(1)
                    .ok_or_else(|| Error::corrupted("view sequence at its limit"))?;
                h.view_seq.store(next, Ordering::Release);
                return Ok(true);
            }
            return Ok(false);
        }
        let redo = Redo::parse(self, commit).map_err(Error::corrupted)?;
        if weakened(Weaken::Recovery) {
            // Planted bug: only close what is open, do not redo.
            self.close_odd_slots();
            let seq = h.view_seq.load(Ordering::Relaxed);
            h.view_seq
                .store((seq | 1).wrapping_add(1), Ordering::Release);
            h.commit.store(0, Ordering::Release);
            return Ok(true);
        }
        redo.apply(self, false);
        Ok(true)
    }

    /// Closes slot stamps left odd with no committed write (which no writer
    /// does: the segment was scribbled on). Called under the lock when a
    /// reader stalled and recovery found nothing to redo, so that readers
    /// see (bounds-checked) data instead of stalling forever.
    pub(crate) fn close_odd_slots(&self) -> u64 {
        let mut closed = 0;
        for i in 0..self.capacity() {
            let seq = &self.slot(i).seq;
            let s = seq.load(Ordering::Relaxed);
            if s & 1 == 1 {
                seq.store(s.wrapping_add(1), Ordering::Release);
                closed += 1;
            }
        }
        closed
    }

    /// Whether a committed write is waiting to be applied (cheap check).
    pub(crate) fn needs_recovery(&self) -> bool {
        self.header().commit.load(Ordering::Acquire) != 0
            || self.header().view_seq.load(Ordering::Relaxed) & 1 == 1
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A key count no table can hold (a scribbled `live`) is an error, in
    /// bounded time: `slots_for` used to double until it wrapped to 0 and
    /// then loop forever, holding the write lock.
    #[test]
    fn grow_geometry_refuses_impossible_key_counts() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = [u64::MAX, 1 << 62, (1 << 60) + 1]
                .map(|keys| grow_geometry(16, 4096, keys, 0, None).is_err());
            let _ = tx.send(r);
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("grow_geometry hung (or panicked) on a huge key count");
        assert_eq!(r, [true; 3]);
        // Huge byte counts saturate instead of wrapping.
        assert!(grow_geometry(16, 4096, 1, u64::MAX, None).is_err());
        assert!(grow_geometry(16, 4096, 1, u64::MAX - 100, Some(1 << 20)).is_err());
        assert!(grow_geometry(16, 4096, 10, 1000, None).is_ok());
    }
}
