//! One table generation: the view of a data segment's header, slots and
//! arena (creating and attaching it), and the lock-free read path over it
//! (DESIGN.md "Read protocol": seqlock reads, VALIDATE-BEFORE-FOLLOW,
//! PUBLISHED-IMMUTABLE). Works over any memory region (a SysV segment or a
//! heap buffer). The rest of `impl Table` is by concern: the header's
//! counters in [`super::counters`], reads through a committed log in
//! [`super::overlay`], recovery in [`super::recovery`], the copy into a new
//! generation in [`super::migrate`], `verify` in [`super::verify`]; the
//! writer's staging is [`super::write`].

use crate::sync::{fence, Ordering};
use std::ptr::NonNull;

use super::layout::{
    align_up, counters_check, data_geometry, record_checksum, DataHeader, Slot, ARENA_ALIGN,
    DATA_HEADER_SIZE, DATA_MAGIC, LAYOUT_VERSION, RECORD_CHECKSUM_AT, RECORD_HEADER,
};
use super::seqlock::SlotRead;
use super::slot::{Lens, Tag};
use crate::error::{Error, Incompatible, Result};

/// Why a lock-free read did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadErr {
    /// A bucket (or the view sequence) stayed odd: a writer is slow or dead.
    Stalled,
    /// A word read from shared memory is out of bounds or impossible.
    Corrupted(&'static str),
}

impl ReadErr {
    pub(crate) fn into_error(self) -> Error {
        match self {
            ReadErr::Stalled => Error::corrupted("stalled"),
            ReadErr::Corrupted(what) => Error::corrupted(what),
        }
    }
}

/// Where a key's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// Slot index.
    pub(crate) slot: u64,
    /// Arena offset of the record.
    pub(crate) record: u64,
    /// Arena offset of the value bytes (16-byte aligned).
    pub(crate) value_off: u64,
    /// Length of the value.
    pub(crate) value_len: u64,
    /// Length of the key.
    pub(crate) key_len: u64,
}

/// Offset of the value within a record whose key has `key_len` bytes.
pub(crate) const fn value_offset_in_record(key_len: u64) -> u64 {
    align_up(RECORD_HEADER + key_len, ARENA_ALIGN)
}

/// Arena bytes a record of these lengths occupies.
pub(crate) const fn record_size(key_len: u64, value_len: u64) -> u64 {
    align_up(value_offset_in_record(key_len) + value_len, ARENA_ALIGN)
}

/// A view of one data segment. Holds raw pointers: its owner keeps the
/// memory mapped for as long as the `Table` (and anything borrowed from it)
/// lives.
#[derive(Debug)]
pub(crate) struct Table {
    header: NonNull<DataHeader>,
    slots: NonNull<Slot>,
    arena: NonNull<u8>,
    capacity: u64,
    mask: u64,
    arena_size: u64,
    generation: u64,
    segment_size: u64,
}

// SAFETY: the table only reads shared memory through atomics or through
// immutable published arena bytes; it holds no thread-bound state.
unsafe impl Send for Table {}
// SAFETY: as above.
unsafe impl Sync for Table {}

impl Table {
    /// Writes a fresh data header into zero-filled memory, magic last.
    ///
    /// # Safety
    /// `base` points to `len` bytes, 64-byte aligned, zero-filled, that
    /// nobody else reads or writes until this returns (or that readers only
    /// access after seeing the magic), and that stay mapped while the
    /// returned table lives.
    pub(crate) unsafe fn init(
        base: NonNull<u8>,
        len: usize,
        (capacity, arena_size): (u64, u64),
        generation: u64,
        owner: u64,
        huge_page_size: u64,
    ) -> Result<Table> {
        let (slots_offset, arena_offset, total) = data_geometry(capacity, arena_size)
            .ok_or_else(|| Error::corrupted("geometry overflow"))?;
        if total > len as u64 || !capacity.is_power_of_two() || arena_size % ARENA_ALIGN != 0 {
            return Err(Error::corrupted("data segment too small for its geometry"));
        }
        // SAFETY: `base` is valid for DATA_HEADER_SIZE bytes (len >= total),
        // aligned, and DataHeader consists of atomics only.
        let h = unsafe { base.cast::<DataHeader>().as_ref() };
        h.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.header_size
            .store(DATA_HEADER_SIZE as u32, Ordering::Relaxed);
        h.generation.store(generation, Ordering::Relaxed);
        h.segment_size.store(total, Ordering::Relaxed);
        h.capacity.store(capacity, Ordering::Relaxed);
        h.slots_offset.store(slots_offset, Ordering::Relaxed);
        h.arena_offset.store(arena_offset, Ordering::Relaxed);
        h.arena_size.store(arena_size, Ordering::Relaxed);
        h.owner.store(owner, Ordering::Relaxed);
        h.huge_page_size.store(huge_page_size, Ordering::Relaxed);
        h.counters_check
            .store(counters_check(0, 0, 0, 0), Ordering::Relaxed);
        h.magic.store(DATA_MAGIC, Ordering::Release);
        // SAFETY: forwarded from the caller.
        unsafe { Table::attach(base, len) }
    }

    /// Validates a data header and returns a view of it.
    ///
    /// # Safety
    /// `base` points to `len` readable bytes, 8-byte aligned, that stay
    /// mapped while the returned table lives. Their content may be anything.
    pub(crate) unsafe fn attach(base: NonNull<u8>, len: usize) -> Result<Table> {
        if len < DATA_HEADER_SIZE || base.as_ptr() as usize % 64 != 0 {
            return Err(Error::corrupted("data segment smaller than its header"));
        }
        // SAFETY: len >= DATA_HEADER_SIZE and the alignment was checked;
        // the header is atomics only, so any bit pattern is a valid value.
        let h = unsafe { base.cast::<DataHeader>().as_ref() };
        if h.magic.load(Ordering::Acquire) != DATA_MAGIC {
            return Err(Error::Incompatible(Incompatible::NotShmkv));
        }
        let version = h.layout_version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(Error::Incompatible(Incompatible::LayoutVersion {
                found: version,
                expected: LAYOUT_VERSION,
            }));
        }
        let capacity = h.capacity.load(Ordering::Relaxed);
        let arena_size = h.arena_size.load(Ordering::Relaxed);
        let segment_size = h.segment_size.load(Ordering::Relaxed);
        let geometry = data_geometry(capacity, arena_size);
        let ok = h.header_size.load(Ordering::Relaxed) as usize == DATA_HEADER_SIZE
            && capacity.is_power_of_two()
            && arena_size % ARENA_ALIGN == 0
            && matches!(geometry, Some((s, a, t))
                if s == h.slots_offset.load(Ordering::Relaxed)
                && a == h.arena_offset.load(Ordering::Relaxed)
                && t == segment_size
                && t <= len as u64);
        if !ok {
            return Err(Error::corrupted("data header geometry is inconsistent"));
        }
        let (slots_offset, arena_offset, _) = geometry.expect("checked above");
        // SAFETY: both offsets lie inside the mapping (geometry checked
        // against `len` above), so the pointers stay in bounds.
        let (slots, arena) = unsafe {
            (
                NonNull::new_unchecked(base.as_ptr().add(slots_offset as usize).cast::<Slot>()),
                NonNull::new_unchecked(base.as_ptr().add(arena_offset as usize)),
            )
        };
        Ok(Table {
            header: base.cast::<DataHeader>(),
            slots,
            arena,
            capacity,
            mask: capacity - 1,
            arena_size,
            generation: h.generation.load(Ordering::Relaxed),
            segment_size,
        })
    }

    pub(crate) fn header(&self) -> &DataHeader {
        // SAFETY: validated at attach: the mapping holds a full header, is
        // aligned, and outlives `self`. Atomics only.
        unsafe { self.header.as_ref() }
    }

    /// Slot `i`; callers pass `i < capacity` (asserted in debug builds).
    /// The index is masked as well, so even a wrong one stays in bounds.
    #[inline]
    pub(crate) fn slot(&self, i: u64) -> &Slot {
        debug_assert!(i < self.capacity);
        // SAFETY: `i & mask < capacity`, and attach checked that capacity
        // slots fit inside the mapping. Slots are 8-byte aligned atomics;
        // only shared references are formed.
        unsafe { &*self.slots.as_ptr().add((i & self.mask) as usize) }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn arena_size(&self) -> u64 {
        self.arena_size
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// The huge page size the segment was made on, 0 for normal pages.
    pub(crate) fn huge_page_size(&self) -> u64 {
        self.header().huge_page_size.load(Ordering::Relaxed)
    }

    /// Raw pointer to arena byte `off`.
    ///
    /// # Safety
    /// `off <= arena_size` (the pointer stays inside the mapping). Reading
    /// or writing through it has its own conditions: published bytes are
    /// never written (PUBLISHED-IMMUTABLE), unpublished ones only by the
    /// lock holder, and bytes another process may write are read only with
    /// atomic loads and validated (VALIDATE-BEFORE-FOLLOW).
    pub(crate) unsafe fn arena_ptr(&self, off: u64) -> *mut u8 {
        debug_assert!(off <= self.arena_size);
        // SAFETY: `off <= arena_size` (the caller's contract), and the arena
        // lies inside the mapping (checked at attach).
        unsafe { self.arena.as_ptr().add(off as usize) }
    }

    /// The arena bytes `[off, off + len)`, if in bounds.
    ///
    /// Sound because arena bytes below `arena_used` are never written again
    /// in this generation, and callers only pass ranges of published records
    /// they reached through a validated seqlock read (or staged records of
    /// the current lock holder, which only that holder reads).
    #[inline]
    pub(crate) fn bytes(&self, off: u64, len: u64) -> Option<&[u8]> {
        let end = off.checked_add(len)?;
        if end > self.arena_size {
            return None;
        }
        // SAFETY: in bounds of the arena (checked above), immutable while
        // borrowed (see above); u8 has no alignment or validity needs.
        Some(unsafe { std::slice::from_raw_parts(self.arena_ptr(off), len as usize) })
    }

    /// Where the record of a FULL slot with these words lies, bounds-checked.
    #[inline]
    pub(crate) fn locate(&self, slot: u64, record: u64, lens: Lens) -> Result<Found, ReadErr> {
        let key_len = lens.key_len();
        let value_len = lens.value_len();
        let value_off = record
            .checked_add(value_offset_in_record(key_len))
            .ok_or(ReadErr::Corrupted("record offset overflows"))?;
        match value_off.checked_add(value_len) {
            Some(end) if end <= self.arena_size => Ok(Found {
                slot,
                record,
                value_off,
                value_len,
                key_len,
            }),
            _ => Err(ReadErr::Corrupted("record out of arena bounds")),
        }
    }

    /// The key bytes of a located record.
    #[inline]
    pub(crate) fn key_of(&self, f: &Found) -> &[u8] {
        self.bytes(f.record + RECORD_HEADER, f.key_len)
            .expect("locate checked bounds")
    }

    /// The value bytes of a located record.
    #[inline]
    pub(crate) fn value_of(&self, f: &Found) -> &[u8] {
        self.bytes(f.value_off, f.value_len)
            .expect("locate checked bounds")
    }

    /// Whether the record's stored checksum matches its key and value
    /// bytes (`Options::verify_reads`, `verify`). A located record's bytes
    /// are in bounds (checked by `locate`); anything else reads as damaged.
    #[inline]
    pub(crate) fn record_intact(&self, f: &Found) -> bool {
        let body_at = f.record + RECORD_HEADER;
        let (Some(stored), Some(body)) = (
            self.bytes(f.record + RECORD_CHECKSUM_AT, 8),
            self.bytes(body_at, (f.value_off + f.value_len).saturating_sub(body_at)),
        ) else {
            return false;
        };
        let mut w = [0u8; 8];
        w.copy_from_slice(stored);
        record_checksum(body) == u64::from_le_bytes(w)
    }

    /// Lock-free lookup: linear probing from `hash`, each slot read under
    /// its seqlock; the offset is followed only after the read validated.
    #[inline(always)]
    pub(crate) fn find(&self, key: &[u8], hash: u64) -> Result<Option<Found>, ReadErr> {
        self.probe(key, hash, |i| self.slot(i).read().ok_or(ReadErr::Stalled))
    }

    /// Linear probing from `hash` over slot images that `image` gives (the
    /// table's own under their seqlocks, or the state after a committed
    /// write, see `overlay`): the key's record, `None` at an EMPTY slot or
    /// after `capacity` slots. Offsets are followed only after `locate`
    /// bounds-checked them (VALIDATE-BEFORE-FOLLOW).
    #[inline(always)]
    pub(crate) fn probe(
        &self,
        key: &[u8],
        hash: u64,
        mut image: impl FnMut(u64) -> Result<SlotRead, ReadErr>,
    ) -> Result<Option<Found>, ReadErr> {
        let mut i = hash & self.mask;
        for _ in 0..self.capacity {
            let s = image(i)?;
            match s.rec.tag() {
                Some(Tag::EMPTY) => return Ok(None),
                Some(Tag::FULL) => {
                    if s.hash == hash && s.lens.key_len() == key.len() as u64 {
                        let f = self.locate(i, s.rec.offset(), s.lens)?;
                        if self.key_of(&f) == key {
                            return Ok(Some(f));
                        }
                    }
                }
                Some(_) => {}
                None => return Err(ReadErr::Corrupted("invalid slot tag")),
            }
            i = (i + 1) & self.mask;
        }
        Ok(None)
    }

    /// Reads slot `i` under its seqlock: the record if the slot is FULL.
    pub(crate) fn entry_at(&self, i: u64) -> Result<Option<Found>, ReadErr> {
        self.entry_of(i, self.slot(i).read().ok_or(ReadErr::Stalled)?)
    }

    /// The record of slot `i` with image `s`, if it is FULL.
    pub(crate) fn entry_of(&self, i: u64, s: SlotRead) -> Result<Option<Found>, ReadErr> {
        match s.rec.tag() {
            Some(Tag::FULL) => self.locate(i, s.rec.offset(), s.lens).map(Some),
            Some(_) => Ok(None),
            None => Err(ReadErr::Corrupted("invalid slot tag")),
        }
    }

    /// True if no write was applied since `read_state` returned `seq = s`.
    pub(crate) fn view_validate(&self, s: u64) -> bool {
        fence(Ordering::Acquire);
        self.header().view_seq.load(Ordering::Relaxed) == s
    }

    /// The root this generation belongs to (see `pack_owner`).
    pub(crate) fn owner(&self) -> u64 {
        self.header().owner.load(Ordering::Relaxed)
    }

    /// The map's version: committed writes so far.
    pub(crate) fn version(&self) -> u64 {
        self.header().view_seq.load(Ordering::Acquire) >> 1
    }
}

/// A table over objects on the heap, for the loom models.
#[cfg(all(loom, test))]
pub(crate) struct LoomTable {
    pub(crate) table: Table,
    _header: Box<DataHeader>,
    _slots: Box<[Slot]>,
    _arena: Box<[u64]>,
}

#[cfg(all(loom, test))]
impl LoomTable {
    /// The table, and what keeps its memory alive (to be dropped after it).
    pub(crate) fn into_parts(self) -> (Table, Box<dyn Send + Sync>) {
        (
            self.table,
            Box::new((self._header, self._slots, self._arena)),
        )
    }

    pub(crate) fn new(capacity: u64, arena_size: u64) -> LoomTable {
        let header = Box::new(DataHeader::zeroed());
        let slots: Box<[Slot]> = (0..capacity).map(|_| Slot::zeroed()).collect();
        let mut arena = vec![0u64; (arena_size / 8) as usize].into_boxed_slice();
        let table = Table {
            header: NonNull::from(&*header),
            slots: NonNull::from(&slots[0]),
            arena: NonNull::from(&mut arena[0]).cast::<u8>(),
            capacity,
            mask: capacity - 1,
            arena_size,
            generation: 1,
            segment_size: 0,
        };
        LoomTable {
            table,
            _header: header,
            _slots: slots,
            _arena: arena,
        }
    }
}
