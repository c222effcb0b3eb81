//! The shared-memory layout, declared once. Every field is a fixed-width
//! atomic so that only shared references to atomics are ever formed into a
//! segment. Offsets are asserted at compile time; DESIGN.md shows the same
//! table as a byte diagram.

use crate::sync::{AtomicU32, AtomicU64};
use std::mem::{offset_of, size_of};
// The root is not part of the loom models: always std atomics (its
// `change_seq` is also a futex word).
use std::sync::atomic::{AtomicU32 as StdAtomicU32, AtomicU64 as StdAtomicU64};

/// `"SHMKVRT\x01"`: a root segment (the one at the map's key).
pub(crate) const ROOT_MAGIC: u64 = u64::from_le_bytes(*b"SHMKVRT\x01");
/// `"SHMKVRC\x01"`: a root whose creation has not finished. Stored (with
/// Release) right after the creator made the segment and wrote the identity
/// fields, `creator_pid` and `creator_start`, so that no word of a root is
/// trusted unless shmkv wrote one of the two root magics.
pub(crate) const ROOT_CREATING: u64 = u64::from_le_bytes(*b"SHMKVRC\x01");
/// `"SHMKVDT\x01"`: a data segment (one table generation).
pub(crate) const DATA_MAGIC: u64 = u64::from_le_bytes(*b"SHMKVDT\x01");
/// `"SHMKVRD\x01"`: a redo log staged in the arena.
pub(crate) const REDO_MAGIC: u64 = u64::from_le_bytes(*b"SHMKVRD\x01");
/// Bumped on any change that makes a reader interpret a word of a segment
/// differently (a word taken from reserved space that older builds ignore,
/// such as `DataHeader::huge_page_size`, does not bump it).
pub(crate) const LAYOUT_VERSION: u32 = 2;
/// Hash algorithm id 1: XXH3-64 with the header's seed over the key bytes.
pub(crate) const HASH_XXH3_64: u32 = 1;
/// Longest map name stored in the root header.
pub(crate) const MAX_NAME_LEN: usize = 128;
/// Size of the root segment.
pub(crate) const ROOT_SIZE: usize = 512;
/// Size of the data segment header; the slots start right after it.
pub(crate) const DATA_HEADER_SIZE: usize = 256;
/// Arena records start at multiples of this (rkyv roots need ≤ 16).
pub(crate) const ARENA_ALIGN: u64 = 16;

/// The root segment, at the map's SysV key. Immutable after creation except
/// `current` (read-mostly: changes only when a new generation is published)
/// and `pending` (written by writers only).
#[repr(C)]
pub(crate) struct RootHeader {
    /// [`ROOT_CREATING`] from right after the creator's `shmget`, then
    /// [`ROOT_MAGIC`], stored last, with Release, when the map is complete.
    /// Any other value (zero included): not shmkv's, nothing else is read.
    pub(crate) magic: StdAtomicU64,
    /// [`LAYOUT_VERSION`].
    pub(crate) layout_version: StdAtomicU32,
    /// [`ROOT_SIZE`].
    pub(crate) root_size: StdAtomicU32,
    /// [`HASH_XXH3_64`].
    pub(crate) hash_algo: StdAtomicU32,
    /// Length of the name in `name`.
    pub(crate) name_len: StdAtomicU32,
    /// Seed of the key hash, random per map.
    pub(crate) hash_seed: StdAtomicU64,
    /// Hash of the fixed canary vector under `hash_seed`.
    pub(crate) hash_canary: StdAtomicU64,
    /// Fingerprint of the rkyv archive format of the creating build.
    pub(crate) format_fingerprint: StdAtomicU64,
    /// Upper bound on the total bytes of the map's segments (0 = none).
    pub(crate) max_size: StdAtomicU64,
    /// Pid of the creating process: with `creator_start`, the creator's
    /// identity while `magic` is [`ROOT_CREATING`]; diagnostics after.
    pub(crate) creator_pid: StdAtomicU64,
    /// The map's name, UTF-8, zero padded.
    pub(crate) name: [StdAtomicU64; MAX_NAME_LEN / 8],
    /// The generation in force: `generation << 32 | shmid` of its data segment.
    pub(crate) current: StdAtomicU64,
    /// The data segment's `commit` word while a committed write is being
    /// applied to the generation in force, 0 otherwise (same cache line as
    /// `current`: readers load both).
    pub(crate) applying: StdAtomicU64,
    _reserved_read_mostly: [StdAtomicU64; 6],
    /// `shmid + 1` of a data segment being built and not yet published, so
    /// that recovery can remove it; 0 = none.
    pub(crate) pending: StdAtomicU64,
    /// `shmid + 1` of the data segment being retired by a switch, until it
    /// is marked for removal; 0 = none.
    pub(crate) retiring: StdAtomicU64,
    /// Size of the segment `pending` is about to record (see
    /// [`PENDING_CREATING`]).
    pub(crate) pending_size: StdAtomicU64,
    /// Futex word: the low 32 bits of the map's version, stored by every
    /// writer after a commit.
    pub(crate) change_seq: StdAtomicU32,
    /// Reserved (the sleepers' count lives in `waiter_slots`).
    _reserved_waiters: StdAtomicU32,
    /// Start time of the creating process (clock ticks after boot, field 22
    /// of `/proc/<pid>/stat`): with `creator_pid`, the creator's identity,
    /// so that a repair can tell a dead creator from a live one.
    pub(crate) creator_start: StdAtomicU64,
    /// Retired data segments the writer that retired them was not allowed
    /// to remove (another user's): `shmid + 1`, 0 = free. Every lock
    /// holder tries to remove them (`discard_recorded`).
    pub(crate) stale: [StdAtomicU64; STALE_SLOTS],
    /// Flags chosen at creation: [`ROOT_FLAG_WAKE_EVERY_WRITE`],
    /// [`ROOT_FLAG_HUGE_TRY`], [`ROOT_FLAG_HUGE_REQUIRE`].
    pub(crate) flags: StdAtomicU64,
    /// Sleepers in `wait_for_change` by process: `pid << 32 | count`, so
    /// that the count of a process killed while sleeping can be taken back.
    pub(crate) waiter_slots: [StdAtomicU64; 8],
    /// The schema of a typed map (`src/raw/schema.rs`): XXH3-64 of its
    /// text, 0 = none recorded (a raw map, or made before schemas).
    pub(crate) schema_hash: StdAtomicU64,
    /// Bytes of the schema text kept in `schema_text` (at most 48).
    pub(crate) schema_len: StdAtomicU64,
    /// The schema text's first 48 bytes, UTF-8, zero padded (for messages).
    pub(crate) schema_text: [StdAtomicU64; 6],
}

/// Root flag: writers call `FUTEX_WAKE` after every write, also when no
/// sleeper is registered, so that waiters that cannot register (read-only
/// processes that may not write the root) sleep in the kernel too
/// (`Options::wake_every_write`).
pub(crate) const ROOT_FLAG_WAKE_EVERY_WRITE: u64 = 1;

/// Root flag: data segments are made on huge pages (`SHM_HUGETLB`) when the
/// kernel has them, on normal pages otherwise (`HugePages::Try`). Every
/// writer that makes a generation follows the root's flags, whatever its
/// own `Options` say.
pub(crate) const ROOT_FLAG_HUGE_TRY: u64 = 2;
/// Root flag: data segments are made on huge pages only; a write that needs
/// a new segment fails with `Error::HugePagesUnavailable` when the kernel
/// has none (`HugePages::Require`). Never set together with
/// [`ROOT_FLAG_HUGE_TRY`].
pub(crate) const ROOT_FLAG_HUGE_REQUIRE: u64 = 4;

/// `pending` while a writer is inside `shmget`: this bit, with the writer's
/// pid in the low 32 bits. Recovery then looks for a private segment of
/// `pending_size` bytes made by that (dead) process and not attached.
pub(crate) const PENDING_CREATING: u64 = 1 << 63;

const _: () = assert!(size_of::<RootHeader>() == ROOT_SIZE);
const _: () = assert!(offset_of!(RootHeader, magic) == 0);
const _: () = assert!(offset_of!(RootHeader, layout_version) == 8);
const _: () = assert!(offset_of!(RootHeader, root_size) == 12);
const _: () = assert!(offset_of!(RootHeader, hash_algo) == 16);
const _: () = assert!(offset_of!(RootHeader, name_len) == 20);
const _: () = assert!(offset_of!(RootHeader, hash_seed) == 24);
const _: () = assert!(offset_of!(RootHeader, hash_canary) == 32);
const _: () = assert!(offset_of!(RootHeader, format_fingerprint) == 40);
const _: () = assert!(offset_of!(RootHeader, max_size) == 48);
const _: () = assert!(offset_of!(RootHeader, creator_pid) == 56);
const _: () = assert!(offset_of!(RootHeader, name) == 64);
const _: () = assert!(offset_of!(RootHeader, current) == 192);
const _: () = assert!(offset_of!(RootHeader, applying) == 200);
const _: () = assert!(offset_of!(RootHeader, pending) == 256);
const _: () = assert!(offset_of!(RootHeader, retiring) == 264);
const _: () = assert!(offset_of!(RootHeader, pending_size) == 272);
const _: () = assert!(offset_of!(RootHeader, change_seq) == 280);
const _: () = assert!(offset_of!(RootHeader, _reserved_waiters) == 284);
const _: () = assert!(offset_of!(RootHeader, creator_start) == 288);
const _: () = assert!(offset_of!(RootHeader, stale) == 296);
const _: () = assert!(offset_of!(RootHeader, flags) == 376);
const _: () = assert!(offset_of!(RootHeader, waiter_slots) == 384);
const _: () = assert!(offset_of!(RootHeader, schema_hash) == 448);
const _: () = assert!(offset_of!(RootHeader, schema_len) == 456);
const _: () = assert!(offset_of!(RootHeader, schema_text) == 464);

/// Slots of the root's `stale` list.
pub(crate) const STALE_SLOTS: usize = 10;

/// The root's `current` word of a destroyed map: `destroy` stores it (with
/// the lock held) before it removes anything, so every open handle's next
/// operation finds `current` changed and gets `NotFound`. No real word has
/// it: shmids are non-negative.
pub(crate) const CURRENT_DESTROYED: u64 = u64::MAX;

/// Packs the root's `current` word.
pub(crate) const CURRENT_GEN_SHIFT: u32 = 32;
/// Mask of the shmid part of `current`.
pub(crate) const CURRENT_SHMID_MASK: u64 = (1 << CURRENT_GEN_SHIFT) - 1;

/// `current` word for `generation` living in segment `shmid`.
pub(crate) fn pack_current(generation: u32, shmid: i32) -> u64 {
    (u64::from(generation) << CURRENT_GEN_SHIFT) | u64::from(shmid as u32)
}

/// The data header's `owner` word for a root.
pub(crate) fn pack_owner(key: i32, root_shmid: i32) -> u64 {
    (u64::from(key as u32) << 32) | u64::from(root_shmid as u32)
}

/// `(generation, shmid)` of a `current` word.
pub(crate) fn unpack_current(word: u64) -> (u32, i32) {
    (
        (word >> CURRENT_GEN_SHIFT) as u32,
        (word & CURRENT_SHMID_MASK) as u32 as i32,
    )
}

/// Header of a data segment (one table generation). The first cache line is
/// immutable after creation; the second holds the counters writers change.
#[repr(C)]
pub(crate) struct DataHeader {
    /// [`DATA_MAGIC`]; stored last, with Release.
    pub(crate) magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub(crate) layout_version: AtomicU32,
    /// [`DATA_HEADER_SIZE`].
    pub(crate) header_size: AtomicU32,
    /// Generation number (1 for the first).
    pub(crate) generation: AtomicU64,
    /// Bytes of the whole segment.
    pub(crate) segment_size: AtomicU64,
    /// Number of slots (a power of two).
    pub(crate) capacity: AtomicU64,
    /// Byte offset of slot 0.
    pub(crate) slots_offset: AtomicU64,
    /// Byte offset of the arena.
    pub(crate) arena_offset: AtomicU64,
    /// Bytes of the arena.
    pub(crate) arena_size: AtomicU64,
    /// Global seqlock: odd while a write is being applied; `view_seq / 2` is
    /// the map's version (committed writes so far).
    pub(crate) view_seq: AtomicU64,
    /// Published end of the arena: bytes below are immutable.
    pub(crate) arena_used: AtomicU64,
    /// Slots holding a key.
    pub(crate) live: AtomicU64,
    /// Slots holding a tombstone.
    pub(crate) tombstones: AtomicU64,
    /// Arena bytes of records no slot points to any more.
    pub(crate) garbage: AtomicU64,
    /// Commit marker: `(redo_offset << 1) | 1` while a committed redo log is
    /// being applied, 0 otherwise.
    pub(crate) commit: AtomicU64,
    /// [`counters_check`] of `arena_used`, `live`, `tombstones` and
    /// `garbage`, stored with them: a writer refuses counters that do not
    /// match it (a scribbled header) instead of writing where they point.
    pub(crate) counters_check: AtomicU64,
    _reserved_counters: [AtomicU64; 1],
    /// The root this generation belongs to: `key << 32 | root shmid`
    /// (immutable; checked at open so a stray shmid is never accepted).
    pub(crate) owner: AtomicU64,
    /// Size of the huge pages the segment was made on (`SHM_HUGETLB`),
    /// 0 for normal pages (immutable; for `Stats::huge_pages`).
    pub(crate) huge_page_size: AtomicU64,
    _reserved: [AtomicU64; 14],
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<DataHeader>() == DATA_HEADER_SIZE);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, magic) == 0);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, layout_version) == 8);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, header_size) == 12);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, generation) == 16);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, segment_size) == 24);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, capacity) == 32);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, slots_offset) == 40);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, arena_offset) == 48);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, arena_size) == 56);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, view_seq) == 64);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, arena_used) == 72);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, live) == 80);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, tombstones) == 88);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, garbage) == 96);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, commit) == 104);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, counters_check) == 112);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, owner) == 128);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(DataHeader, huge_page_size) == 136);

/// One bucket: a seqlock word and three data words, all atomics.
#[repr(C)]
pub(crate) struct Slot {
    /// Per-bucket sequence: odd while the bucket is being written.
    pub(crate) seq: AtomicU64,
    /// XXH3-64 of the key (0 unless FULL).
    pub(crate) hash: AtomicU64,
    /// A [`SlotWord`](super::slot::SlotWord): tag and record offset.
    pub(crate) rec: AtomicU64,
    /// A [`Lens`](super::slot::Lens): key and value length.
    pub(crate) lens: AtomicU64,
}

/// Bytes per slot: two slots per 64-byte cache line.
pub(crate) const SLOT_SIZE: usize = 32;
#[cfg(not(loom))]
const _: () = assert!(size_of::<Slot>() == SLOT_SIZE);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(Slot, seq) == 0);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(Slot, hash) == 8);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(Slot, rec) == 16);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(Slot, lens) == 24);

/// Bytes of a record header in the arena: `key_len: u32, value_len: u32,
/// checksum: u64` (little-endian), then the key, zero padding to 16, the
/// value, padding to 16. `checksum` is [`record_checksum`] of the bytes from
/// the end of the header to the end of the value (key, zero padding, value).
pub(crate) const RECORD_HEADER: u64 = 16;
/// Offset of the checksum word in a record header.
pub(crate) const RECORD_CHECKSUM_AT: u64 = 8;

/// XXH3-64 (seed 0) of a record's key, zero padding and value, as one
/// contiguous byte range (one call, no streaming state).
#[inline]
pub(crate) fn record_checksum(key_pad_value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key_pad_value)
}

/// The header's `counters_check` for these counters: XXH3-64 (seed 0) of the
/// four words, little-endian, in header order.
pub(crate) fn counters_check(arena_used: u64, live: u64, tombstones: u64, garbage: u64) -> u64 {
    let mut b = [0u8; 32];
    for (i, w) in [arena_used, live, tombstones, garbage].iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&b)
}

/// Bytes of a redo log header in the arena: eight little-endian u64 words
/// `magic, count, target_view_seq, arena_used, live, tombstones, garbage,
/// checksum`, followed by `count` entries of four u64 words
/// `slot, hash, rec, lens`.
pub(crate) const REDO_HEADER: u64 = 64;
/// Bytes of one redo entry.
pub(crate) const REDO_ENTRY: u64 = 32;

/// Rounds `x` up to the arena alignment.
/// Callers pass values known to be far below `u64::MAX` (lengths and
/// offsets already bounded); for values read from shared memory use
/// [`checked_align_up`].
pub(crate) const fn align_up(x: u64, to: u64) -> u64 {
    (x + to - 1) & !(to - 1)
}

/// [`align_up`], or `None` if it would wrap.
pub(crate) const fn checked_align_up(x: u64, to: u64) -> Option<u64> {
    match x.checked_add(to - 1) {
        Some(y) => Some(y & !(to - 1)),
        None => None,
    }
}

/// Geometry of a data segment for `capacity` slots and `arena` bytes.
pub(crate) fn data_geometry(capacity: u64, arena: u64) -> Option<(u64, u64, u64)> {
    let slots_offset = DATA_HEADER_SIZE as u64;
    let arena_offset = checked_align_up(
        slots_offset.checked_add(capacity.checked_mul(SLOT_SIZE as u64)?)?,
        64,
    )?;
    let total = arena_offset.checked_add(arena)?;
    Some((slots_offset, arena_offset, total))
}

/// All-zero headers and slots built as objects, for the loom models (loom
/// atomics cannot be laid over raw bytes).
#[cfg(all(loom, test))]
mod loom_zeroed {
    use super::*;

    fn z() -> AtomicU64 {
        AtomicU64::new(0)
    }

    impl DataHeader {
        pub(crate) fn zeroed() -> DataHeader {
            DataHeader {
                magic: z(),
                layout_version: AtomicU32::new(0),
                header_size: AtomicU32::new(0),
                generation: z(),
                segment_size: z(),
                capacity: z(),
                slots_offset: z(),
                arena_offset: z(),
                arena_size: z(),
                view_seq: z(),
                arena_used: z(),
                live: z(),
                tombstones: z(),
                garbage: z(),
                commit: z(),
                counters_check: AtomicU64::new(counters_check(0, 0, 0, 0)),
                _reserved_counters: std::array::from_fn(|_| z()),
                owner: z(),
                huge_page_size: z(),
                _reserved: std::array::from_fn(|_| z()),
            }
        }
    }

    impl Slot {
        pub(crate) fn zeroed() -> Slot {
            Slot {
                seq: z(),
                hash: z(),
                rec: z(),
                lens: z(),
            }
        }
    }
}
