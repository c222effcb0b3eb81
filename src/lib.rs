//! `shmkv`: a hash map in SysV shared memory, shared by unrelated processes.
//!
//! Worker pools read shared configuration or lookup tables millions of times
//! per second without a lock, a system call or a copy, while a few processes
//! update it with crash-atomic writes.
//!
//! # Usage
//!
//! ```
//! # fn main() -> shmkv::Result<()> {
//! use shmkv::{Options, ShmMap, Size};
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
//! struct Backend { host: String, port: u16, weight: u32 }
//!
//! let name = format!("doc-usage-{}", std::process::id());
//! # struct Cleanup(String);
//! # impl Drop for Cleanup { fn drop(&mut self) { let _ = shmkv::RawMap::destroy_by_name(&self.0, &shmkv::Options::new()); } }
//! # let _cleanup = Cleanup(name.clone());
//! let opts = Options::new().capacity(10_000).arena_size(Size::parse("4mb")?);
//! let map: ShmMap<str, Backend> = ShmMap::open_or_create(&name, &opts)?;
//! map.insert("api", &Backend { host: "10.0.0.7".into(), port: 8080, weight: 3 })?;
//!
//! // In any process: a zero-copy, validated read.
//! let b = map.get_archived("api")?.expect("present");
//! assert_eq!(b.port, 8080);
//! assert_eq!(b.host.as_str(), "10.0.0.7");
//! # drop(b);
//! # map.destroy()?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - Reads are lock-free: no lock, no system call and no write to shared
//!   memory; each bucket is read under a seqlock, so a read never sees a torn
//!   entry. A reference returned by `get_archived` stays valid and unchanged
//!   while it is held.
//! - Every write — a single `insert`/`remove` or a whole
//!   [`write`](ShmMap::write) batch — is atomic and crash-safe: if the writer
//!   is killed at any instruction, the next process that takes the lock
//!   restores the state before or after the write. A
//!   [`view`](ShmMap::view) sees all of a batch or none of it, and so do
//!   plain gets: once a get of a thread returned part of a batch, its later
//!   gets see all of it. From the moment a write is committed, readers
//!   (read-only ones included) read its result through its redo log, also
//!   when its writer died half-way through applying it: no reader waits for
//!   a dead writer or sees half of its write.
//! - Keys are hashed with XXH3-64 over their bytes with a per-map seed stored
//!   in the segment; the rkyv format is fingerprinted. A process whose build
//!   disagrees gets [`Error::Incompatible`] instead of wrong answers.
//! - A typed map records its schema when a [`ShmMap`] creates it: the key
//!   kind ([`Key::KIND`]: `str`, `bytes`, `u64`, `i64`, `u32`, `i32`) and
//!   the value type's identity ([`Options::schema`], or the type's name).
//!   A `ShmMap` of another schema gets
//!   [`Incompatible::Schema`] on open, naming both. What is detected: a
//!   different key kind (integer keys are 8 bytes little-endian, so `-1i32`,
//!   `-1i64` and `u64::MAX` are the same bytes: the kind tells them apart),
//!   a different value type name (`u64` vs `f64`, one struct path vs
//!   another). What is not: a struct whose fields changed but whose path
//!   did not (give [`Options::schema`] a versioned name for that), and maps
//!   made by a raw handle (no schema; their values are still validated by
//!   `get_archived`/`get`). Raw inserts into a typed map
//!   ([`RawMap::insert`], `shmkv put`) are refused with
//!   [`Error::TypedMap`] unless [`Options::raw_writes`] (`--raw`) allows them.
//!
//! - The map grows and compacts online: when the table or arena is full, or
//!   garbage passes a threshold, a writer builds a new generation and
//!   publishes it with one store; readers follow on their next operation.
//!   References obtained before a switch stay valid; retired mappings are
//!   detached once nothing in the process refers to them.
//!   [`Options::max_size`] bounds the total; past it writes fail with
//!   [`Error::Full`] and nothing stored is lost.
//! - [`RawMap::version`] counts committed writes;
//!   [`RawMap::wait_for_change`] waits until it moves: a read-write handle
//!   sleeps in the kernel (a futex in the segment; writers make the wake
//!   system call only when someone sleeps), a read-only handle, which may not
//!   write the segment, polls every millisecond. It returns
//!   [`Error::NotFound`] once the map is destroyed.
//!
//! # Multi-process use
//!
//! A map is found by name (hashed to a SysV key), by a raw key
//! ([`Options::sysv_key`]) or by `ftok` ([`Options::ftok`]). It lives in the
//! kernel until [`destroy`](ShmMap::destroy), surviving every process.
//! Permissions are SysV mode bits ([`Options::mode`], default 0600); reader
//! processes can attach read-only ([`Options::read_only`]).
//!
//! # Failure modes
//!
//! Every failure is an [`Error`] variant: missing or existing maps,
//! permissions, full table or arena (nothing stored is lost), oversized keys
//! and values, lock timeouts (with the holder's pid), incompatible or
//! corrupted segments, objects of another program at the map's key
//! ([`Error::KeyInUse`]: shmkv never removes or writes what it cannot prove
//! is its own). A writer that died leaves nothing for readers to wait for
//! (see above); only a segment scribbled on by another process can leave a
//! bucket locked with no committed write behind it, and then a read-write
//! reader takes the free lock and repairs it, a read-only one waits at most
//! the lock timeout and returns [`Error::LockTimeout`].
//! [`RawMap::verify`] checks a map completely, and the `shmkv` command-line
//! tool lists, inspects, dumps, loads and watches maps.
//!
//! # Whom a map trusts
//!
//! Processes that may write the map (its mode's write bits) are trusted not
//! to scribble on it: one that does can make reads return wrong values or
//! errors, and writes fail with [`Error::Corrupted`], but it cannot make
//! another process's `get`, `get_ref`, `view` or validated typed read touch
//! memory outside the map, crash or hang (every offset is bounds-checked,
//! every wait bounded); `get_archived_unchecked` trusts the bytes and has no
//! such protection. Processes that may only read cannot affect anyone.
//!
//! Every record carries an XXH3-64 checksum of its key and value.
//! `verify` checks all of them; with [`Options::verify_reads`] every read
//! checks the record it returns and gives [`Error::Corrupted`] instead of
//! bytes a stray write in another process damaged (off by default: it costs
//! about 5 ns per hot read of a 16-byte key and a 64-byte value, 19 → 24 ns,
//! ×1.26; when off, nothing measurable). A writer
//! refuses header counters that do not match their check word or the
//! segment's geometry (`Corrupted`) instead of writing where they point.
//!
//! # Performance
//!
//! A read hashes the key (XXH3), then touches the probed slots (two per cache
//! line) and the record's arena bytes: no header line, no system call. A
//! write costs one semaphore acquire and release plus the copy of the record
//! and its redo entry. `benches/compare.rs` measures reads and writes against
//! a process-local `std::collections::HashMap`, LMDB and mmap-sync
//! (`BENCHMARKS.md` has the figures); `DESIGN.md` gives the protocols.

pub mod error;
mod hash;
pub mod key;
mod map;
pub mod options;
mod raw;
mod raw_map;
pub mod size;
mod stats;
mod sync;
mod sync_state;
mod sys;

pub use error::{Error, Incompatible, Result};
pub use hash::format_fingerprint;
pub use key::{Key, KeyBytes};
pub use map::{Batch, Checkable, Loadable, ShmMap, Storable, View};
pub use options::{key_from_name, HugePages, Options};
pub use raw::batch::RawBatch;
pub use raw::listing::{
    list_maps, list_orphans, remove_orphan, MapListing, MapState, Orphan, OrphanCause,
    OrphanRemoval,
};
pub use raw::reference::{Entry, Ref};
pub use raw::txn::RawTxn;
pub use raw::verify::VerifyReport;
pub use raw::view::RawView;
pub use raw::write::MAX_KEY_LEN;
pub use raw_map::RawMap;
pub use size::{Size, SizeError};
pub use stats::Stats;
pub use sync_state::{
    is_live_owner, is_reserved_key, process_start_time, SourceKind, SyncState, RESERVED_PREFIX,
    SYNC_STATE_KEY,
};

/// Seqlock retries of lock-free reads in this process so far: reads of a
/// slot that met it being written (odd, or changed while read) and read it
/// again. A diagnostic for how often readers meet writers (compare it
/// before and after a run, per read); process-local, counted only on the
/// retry path, so reads that meet no writer pay nothing for it.
pub fn read_retries() -> u64 {
    raw::seqlock::read_retries()
}

/// For bindings (the Python package): a process forked from now on keeps
/// the generations its parent's other threads had pinned at the fork
/// mapped in the child (for the child's life) instead of voiding those
/// pins, because the binding's pinned bytes (Python `get_buffer` views) can
/// be read by any thread, the forking one included. Rust code cannot reach
/// another thread's `Ref` (it is not `Send`) and has no need for it.
#[doc(hidden)]
pub fn retain_foreign_pins_at_fork() {
    raw::gens::retain_foreign_pins_at_fork();
}

/// Test support: crash points of the write protocol, the heap-backed table
/// for fuzzing, and the layout offsets tests scribble on. Not part of the
/// API: only with the feature `__test-hooks`, which the project's own tests
/// and fuzz targets turn on (`scripts/test.sh`: `--all-features`).
#[cfg(any(test, feature = "__test-hooks"))]
#[doc(hidden)]
pub mod __private {
    pub use crate::raw::hooks::{arm, CrashPoint};
    pub use crate::raw::provider::HeapKernel;

    /// Stages `bytes` as the sync state's stored value, bypassing
    /// [`SyncState`](crate::SyncState)'s encoding (to plant a corrupted or
    /// unknown-version state; user writes of the key are refused).
    pub fn set_raw_sync_state(b: &mut crate::RawBatch<'_>, bytes: &[u8]) -> crate::Result<()> {
        b.insert_system(crate::SYNC_STATE_KEY, bytes)
    }

    /// `FUTEX_WAKE` calls this process made (writers wake only when someone
    /// waits).
    pub fn futex_wakes() -> u64 {
        crate::sys::FUTEX_WAKES.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `"SHMKVDT\x01"`: the magic of a data segment (to plant look-alikes).
    pub const DATA_MAGIC: u64 = crate::raw::layout::DATA_MAGIC;
    /// `"SHMKVRD\x01"`: the magic of a redo log (to plant a scribbled log).
    pub const REDO_MAGIC: u64 = crate::raw::layout::REDO_MAGIC;

    /// Byte offsets of root header fields, taken from the layout
    /// (`offset_of!` on `RootHeader`), so that tests never hard-code them.
    pub mod root_offsets {
        use crate::raw::layout::RootHeader;
        use std::mem::offset_of;

        pub const MAGIC: usize = offset_of!(RootHeader, magic);
        pub const LAYOUT_VERSION: usize = offset_of!(RootHeader, layout_version);
        pub const HASH_ALGO: usize = offset_of!(RootHeader, hash_algo);
        pub const HASH_CANARY: usize = offset_of!(RootHeader, hash_canary);
        pub const FORMAT_FINGERPRINT: usize = offset_of!(RootHeader, format_fingerprint);
        pub const NAME_LEN: usize = offset_of!(RootHeader, name_len);
        pub const CURRENT: usize = offset_of!(RootHeader, current);
        pub const APPLYING: usize = offset_of!(RootHeader, applying);
        pub const PENDING: usize = offset_of!(RootHeader, pending);
        pub const RETIRING: usize = offset_of!(RootHeader, retiring);
        /// First word of the `stale` list ([`STALE_SLOTS`] words).
        pub const STALE: usize = offset_of!(RootHeader, stale);
        /// Words in the `stale` list.
        pub const STALE_SLOTS: usize = crate::raw::layout::STALE_SLOTS;
        /// Bytes of a root segment.
        pub const SIZE: usize = crate::raw::layout::ROOT_SIZE;
    }

    /// Byte offsets in a data segment: header words (`offset_of!` on
    /// `DataHeader`), and the parts of the first slot and record tests
    /// scribble on.
    pub mod data_offsets {
        use crate::raw::layout::DataHeader;
        use std::mem::offset_of;

        pub const MAGIC: usize = offset_of!(DataHeader, magic);
        pub const CAPACITY: usize = offset_of!(DataHeader, capacity);
        pub const ARENA_OFFSET: usize = offset_of!(DataHeader, arena_offset);
        pub const ARENA_SIZE: usize = offset_of!(DataHeader, arena_size);
        pub const SEGMENT_SIZE: usize = offset_of!(DataHeader, segment_size);
        pub const VIEW_SEQ: usize = offset_of!(DataHeader, view_seq);
        pub const ARENA_USED: usize = offset_of!(DataHeader, arena_used);
        pub const LIVE: usize = offset_of!(DataHeader, live);
        pub const TOMBSTONES: usize = offset_of!(DataHeader, tombstones);
        pub const GARBAGE: usize = offset_of!(DataHeader, garbage);
        pub const COMMIT: usize = offset_of!(DataHeader, commit);
        pub const COUNTERS_CHECK: usize = offset_of!(DataHeader, counters_check);
        pub const OWNER: usize = offset_of!(DataHeader, owner);
        /// Bytes of the data header (a data segment is at least this long).
        pub const HEADER_SIZE: usize = crate::raw::layout::DATA_HEADER_SIZE;
        /// Arena records (and redo logs) start at multiples of this.
        pub const ARENA_ALIGN: u64 = crate::raw::layout::ARENA_ALIGN;
        /// Where the slots start.
        pub const SLOTS: usize = crate::raw::layout::DATA_HEADER_SIZE;
        /// Bytes of a slot.
        pub const SLOT_SIZE: usize = crate::raw::layout::SLOT_SIZE;
        /// Bytes of a record header (`key_len`, `value_len`, checksum).
        pub const RECORD_HEADER: usize = crate::raw::layout::RECORD_HEADER as usize;

        /// Offset of the arena in a segment of `capacity` slots.
        pub fn arena(capacity: u64) -> usize {
            crate::raw::layout::data_geometry(capacity, 0).map_or(0, |(_, a, _)| a as usize)
        }

        /// Offset of a record's value within the record, for a key of
        /// `key_len` bytes.
        pub fn value_in_record(key_len: usize) -> usize {
            crate::raw::table::value_offset_in_record(key_len as u64) as usize
        }

        /// The `counters_check` word for these counters (to plant values
        /// that pass the check and reach the range checks).
        pub fn counters_check(arena_used: u64, live: u64, tombstones: u64, garbage: u64) -> u64 {
            crate::raw::layout::counters_check(arena_used, live, tombstones, garbage)
        }
    }
}
