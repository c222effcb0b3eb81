//! [`RawMap`]: the map over byte keys and byte values, which [`ShmMap`]
//! (typed) is built on. A thin façade over the internal engine
//! (`raw::engine::Engine`), which owns the state; every method forwards.
//!
//! [`ShmMap`]: crate::ShmMap

use std::time::Duration;

use crate::error::Result;
use crate::options::Options;
use crate::raw::engine::Engine;
use crate::raw::provider::{Provider, SysV};
use crate::raw::verify::VerifyReport;
use crate::stats::Stats;
use crate::{Entry, RawBatch, RawView, Ref};
use std::sync::Arc;

/// A map in SysV shared memory with byte keys and byte values.
///
/// Values are returned as 16-byte aligned byte slices ([`Ref`]). All methods
/// take `&self`: the handle can be shared between threads; writes from
/// several threads or processes are serialised by the map's lock.
#[derive(Debug)]
pub struct RawMap {
    e: Engine,
}

impl RawMap {
    /// Creates a new map; [`Error::AlreadyExists`](crate::Error::AlreadyExists) if one is there.
    pub fn create(name: &str, opts: &Options) -> Result<RawMap> {
        RawMap::create_in(Arc::new(SysV), name, opts)
    }

    /// Opens an existing map; [`Error::NotFound`](crate::Error::NotFound) if there is none.
    pub fn open(name: &str, opts: &Options) -> Result<RawMap> {
        RawMap::open_in(Arc::new(SysV), name, opts)
    }

    /// Opens the map, creating it first if it does not exist. Safe against
    /// other processes doing the same at the same time.
    pub fn open_or_create(name: &str, opts: &Options) -> Result<RawMap> {
        RawMap::open_or_create_in(Arc::new(SysV), name, opts)
    }

    /// Removes every kernel object of the map named `name` without opening
    /// it through the usual checks (for maps that fail to open). Returns
    /// whether anything was removed.
    ///
    /// Only objects that are provably this map's are removed: the lock is
    /// taken first (with the lock timeout), a root is removed only if it
    /// carries a shmkv marker and the stored name is `name`
    /// ([`Error::NameMismatch`](crate::Error::NameMismatch) otherwise), each data segment only if its
    /// header names this root, and the semaphore set only if it is
    /// recognisably shmkv's. Objects of another program at the key give
    /// [`Error::KeyInUse`](crate::Error::KeyInUse) and are left alone.
    pub fn destroy_by_name(name: &str, opts: &Options) -> Result<bool> {
        Engine::destroy_by_name(&SysV, name, opts)
    }

    /// Removes the map from the kernel: its segments and its lock. Takes
    /// the write lock first (so no writer is publishing a new generation)
    /// and marks the map destroyed in the root's `current` word, so every
    /// handle still open gets [`Error::NotFound`](crate::Error::NotFound) on its next operation.
    /// Segments stay mapped in processes that have them until they drop
    /// their handles. Refused with [`Error::ReadOnly`](crate::Error::ReadOnly) on a read-only
    /// handle and with [`Error::PermissionDenied`](crate::Error::PermissionDenied) (nothing changed) for a
    /// process that may not remove the map.
    pub fn destroy(self) -> Result<()> {
        self.e.destroy()
    }

    /// [`create`](RawMap::create) over a provider.
    pub(crate) fn create_in(p: Arc<dyn Provider>, name: &str, opts: &Options) -> Result<RawMap> {
        Engine::create(p, name, opts).map(|e| RawMap { e })
    }

    /// [`open`](RawMap::open) over a provider.
    pub(crate) fn open_in(p: Arc<dyn Provider>, name: &str, opts: &Options) -> Result<RawMap> {
        Engine::open(p, name, opts).map(|e| RawMap { e })
    }

    /// [`open_or_create`](RawMap::open_or_create) over a provider.
    pub(crate) fn open_or_create_in(
        p: Arc<dyn Provider>,
        name: &str,
        opts: &Options,
    ) -> Result<RawMap> {
        Engine::open_or_create(p, name, opts).map(|e| RawMap { e })
    }

    /// [`destroy_by_name`](RawMap::destroy_by_name) over a provider.
    #[cfg(any(test, feature = "__test-hooks"))]
    pub(crate) fn destroy_by_name_in(p: &dyn Provider, name: &str, opts: &Options) -> Result<bool> {
        Engine::destroy_by_name(p, name, opts)
    }

    /// The engine (for the crate's own tests).
    #[cfg(test)]
    pub(crate) fn engine(&self) -> &Engine {
        &self.e
    }

    /// The map's name.
    #[inline]
    pub fn name(&self) -> &str {
        self.e.name()
    }

    /// The value stored under `key`, zero-copy.
    #[inline(always)]
    pub fn get_ref(&self, key: &[u8]) -> Result<Option<Ref<'_, [u8]>>> {
        self.e.get_ref(key)
    }

    /// A copy of the value stored under `key`.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.e.get(key)
    }

    /// Whether `key` is present.
    #[inline]
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        self.e.contains_key(key)
    }

    /// Number of entries (the hidden sync state, [`SYNC_STATE_KEY`](crate::SYNC_STATE_KEY),
    /// not counted).
    #[inline]
    pub fn len(&self) -> usize {
        self.e.len()
    }

    /// Whether the map has no entries.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.e.is_empty()
    }

    /// The map's version: the number of writes committed so far. Any write
    /// advances it; a reader can compare versions to detect changes.
    #[inline]
    pub fn version(&self) -> u64 {
        self.e.version()
    }

    /// Stores `value` under `key` (replacing any previous value), atomically.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.e.write(|b| b.insert(key, value))
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        self.e.write(|b| b.remove(key))
    }

    /// Every entry, as one consistent snapshot (see [`RawMap::view`](crate::RawMap::view));
    /// the hidden sync state is left out.
    pub fn entries(&self) -> Result<Vec<Entry<'_>>> {
        self.e.entries()
    }

    /// Runs `f` with the write lock held and applies everything it staged
    /// as one atomic write: other processes see all of it or none of it (in
    /// a [`view`](RawMap::view)), and a crash at any point leaves the map
    /// before or after the whole batch. If `f` returns `Err` or panics,
    /// nothing is applied. If the table or the arena is too small, the
    /// write moves to a new, larger generation (see DESIGN.md "Growth").
    pub fn write<R>(&self, f: impl FnOnce(&mut RawBatch<'_>) -> Result<R>) -> Result<R> {
        self.e.write(f)
    }

    /// Takes the write lock and opens a batch that stays open across calls,
    /// for callers that cannot pass a closure to [`write`](RawMap::write)
    /// (the C API). [`RawTxn::commit`](crate::RawTxn::commit) applies it
    /// atomically; dropping or aborting it applies nothing. Other writers
    /// wait for the lock until then.
    pub fn begin(&self) -> Result<crate::RawTxn<'_>> {
        self.e.begin()
    }

    /// Rewrites the live entries into a new generation without garbage or
    /// tombstones (same capacity unless the map needs more room), and
    /// publishes it. Readers keep working throughout.
    pub fn compact(&self) -> Result<()> {
        self.e.compact()
    }

    /// Sleeps until the map's version differs from `since` or `timeout`
    /// passes; returns the new version, or `None` on timeout. Writers wake
    /// sleepers through a futex in the root segment (a system call only
    /// when someone sleeps). A read-only handle cannot register as a
    /// sleeper and polls every millisecond instead.
    pub fn wait_for_change(&self, since: u64, timeout: Duration) -> Result<Option<u64>> {
        self.e.wait_for_change(since, timeout)
    }

    /// Runs `f` over a consistent snapshot: no write is applied between the
    /// first and the last read `f` makes. `f` may run more than once (when a
    /// write raced with it); only the result of a consistent run is
    /// returned. After many races a read-write handle runs it under the
    /// write lock; a read-only handle, which cannot, backs off (sleeps of
    /// up to 10 ms) and gives up with [`Error::Busy`](crate::Error::Busy) once the lock timeout
    /// has passed.
    pub fn view<'m, R>(&'m self, f: impl FnMut(&RawView<'m>) -> Result<R>) -> Result<R> {
        self.e.view(f)
    }

    /// A full consistency check of the generation in force: header, every
    /// slot, every record, counters. Reads one consistent snapshot (like
    /// [`view`](RawMap::view)); costs O(capacity).
    /// A committed write still being applied is not a problem: a writable
    /// handle finishes it first (taking the lock), a read-only one waits up
    /// to the lock timeout for its writer and then reports it.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.e.verify()
    }

    /// Counters and identity (costs a few system calls).
    pub fn stats(&self) -> Result<Stats> {
        self.e.stats()
    }
}
