//! A write held open across calls ([`RawTxn`], `RawMap::begin`): the same
//! steps as `Engine::write_inner`, with the closure's body replaced by the
//! caller's later calls. For APIs that cannot pass a closure (the C ABI's
//! `shmkv_batch_begin` ... `shmkv_batch_commit`).

use std::mem::ManuallyDrop;

use super::batch::RawBatch;
use super::engine::{Engine, WriteGuard};
use super::gens::Pin;
use crate::error::Result;

/// An open write: the map's write lock is held from [`RawMap::begin`]
/// until [`commit`](RawTxn::commit), [`abort`](RawTxn::abort) or drop
/// (which aborts). Everything staged is applied as one atomic, crash-safe
/// write by `commit`, exactly as a [`RawMap::write`] closure's would be;
/// nothing of it if the transaction is aborted, dropped, or its process
/// dies. Other writers (threads and processes) wait for the lock
/// meanwhile, so keep it short. Not `Send`: it ends on the thread that
/// began it. Leaking it (`mem::forget`) keeps the lock until the process
/// exits (then `SEM_UNDO` releases it); meanwhile other writers get
/// `LockTimeout` and this handle's thread `NestedWrite`.
///
/// Its batch is reached only through its methods, never as a
/// `&mut RawBatch` that could be swapped with another transaction's (and
/// then outlive the lock and the pin it borrows):
///
/// ```compile_fail
/// # fn f(m1: &shmkv::RawMap, m2: &shmkv::RawMap) -> shmkv::Result<()> {
/// let (mut t1, mut t2) = (m1.begin()?, m2.begin()?);
/// std::mem::swap(t1.batch(), t2.batch());
/// # Ok(()) }
/// ```
///
/// and it stays on its thread:
///
/// ```compile_fail
/// # fn f(m: &'static shmkv::RawMap) -> shmkv::Result<()> {
/// let t = m.begin()?;
/// std::thread::spawn(move || t.commit());
/// # Ok(()) }
/// ```
///
/// [`RawMap::begin`]: crate::RawMap::begin
/// [`RawMap::write`]: crate::RawMap::write
pub struct RawTxn<'m> {
    // Drop order matters: the batch borrows the guard's lock token and the
    // generation the pin holds; the guard releases the lock after the batch
    // is gone; the pin goes last. `ManuallyDrop` for the batch so that
    // `commit` can move it out.
    batch: ManuallyDrop<RawBatch<'m>>,
    guard: Box<WriteGuard<'m>>,
    pin: Box<Pin<'m>>,
}

impl Engine {
    /// Takes the write lock and starts a batch (see [`RawTxn`]).
    pub(crate) fn begin(&self) -> Result<RawTxn<'_>> {
        let pin = Box::new(self.gens.pin());
        let guard = Box::new(self.lock()?);
        let base = self.recover_locked(&pin, guard.token())?;
        // SAFETY: `base` is a generation held by `*pin`, which lives in a
        // box (its address does not change when the box moves) that the
        // `RawTxn` drops after the batch, the only holder of this reference.
        let base = unsafe { &*std::ptr::from_ref(base) };
        // SAFETY: the token lives in `*guard`, boxed (stable address) and
        // dropped after the batch, the only holder of this reference.
        let token = unsafe { &*std::ptr::from_ref(guard.token()) };
        let batch = self.start_batch(base, token, false)?;
        Ok(RawTxn {
            batch: ManuallyDrop::new(batch),
            guard,
            pin,
        })
    }
}

impl<'m> RawTxn<'m> {
    // No `&mut RawBatch` is handed out: with two open transactions (on two
    // maps) safe code could `mem::swap` their batches, and a batch would
    // then outlive the pin and the lock it borrows (its owner dropped
    // first) and commit without the lock. The batch's operations are
    // forwarded instead.

    /// Stages `key → value` (as [`RawBatch::insert`]).
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.batch.insert(key, value)
    }

    /// Stages removal of `key`; returns whether it was present as this
    /// transaction sees the map (as [`RawBatch::remove`]).
    pub fn remove(&mut self, key: &[u8]) -> Result<bool> {
        self.batch.remove(key)
    }

    /// Stages the sync state (as [`RawBatch::set_sync_state`]).
    pub fn set_sync_state(&mut self, state: &crate::SyncState) -> Result<()> {
        self.batch.set_sync_state(state)
    }

    /// The sync state as this transaction sees the map (as
    /// [`RawBatch::sync_state`]).
    pub fn sync_state(&self) -> Result<Option<crate::SyncState>> {
        self.batch.sync_state()
    }

    /// The value of `key` as this transaction sees the map, its own writes
    /// included (as [`RawBatch::get`]).
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        self.batch.get(key)
    }

    /// Whether `key` is present as this transaction sees the map.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        self.batch.contains_key(key)
    }

    /// Applies everything staged as one atomic write and releases the lock.
    /// On an error nothing was applied (as for `RawMap::write`).
    pub fn commit(self) -> Result<()> {
        let me = ManuallyDrop::new(self);
        // SAFETY: each field is moved out of `me` exactly once; `me` is
        // never dropped (`ManuallyDrop`), so nothing is dropped twice, also
        // if the commit below panics. The locals then drop in the order
        // `write_inner`'s do: batch, guard (the lock), pin.
        let (pin, guard, batch) = unsafe {
            (
                std::ptr::read(&me.pin),
                std::ptr::read(&me.guard),
                ManuallyDrop::into_inner(std::ptr::read(&me.batch)),
            )
        };
        let map = batch.map;
        #[cfg(test)]
        tests::panic_if_armed();
        let r = batch.commit();
        if r.is_ok() {
            map.notify(&pin);
        }
        drop(guard);
        drop(pin);
        r
    }

    /// Discards everything staged and releases the lock (as dropping does).
    pub fn abort(self) {
        drop(self);
    }
}

impl Drop for RawTxn<'_> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here, before the guard and the pin (fields
        // drop after this body); `commit` forgets `self` instead.
        unsafe { ManuallyDrop::drop(&mut self.batch) };
    }
}

impl std::fmt::Debug for RawTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTxn").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! Over the heap provider (no SysV object): these run under Miri too.
    use std::cell::Cell;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use crate::raw::provider::HeapKernel;
    use crate::Options;

    thread_local! {
        static PANIC_IN_COMMIT: Cell<bool> = const { Cell::new(false) };
    }

    /// Stands for a panic inside `RawBatch::commit` (a bug there).
    pub(super) fn panic_if_armed() {
        if PANIC_IN_COMMIT.with(Cell::take) {
            panic!("planted panic in RawTxn::commit");
        }
    }

    /// A panic while the batch commits drops the batch once, releases the
    /// lock and applies nothing.
    #[test]
    fn a_panic_in_commit_drops_the_batch_once_and_releases_the_lock() {
        let k = HeapKernel::new();
        let m = k
            .create("txn-panic", &Options::new().capacity(4).arena_size(4096u64))
            .unwrap();
        let mut t = m.begin().unwrap();
        // Records on the heap (the batch's key list) and a new generation:
        // a second drop would free them twice.
        for i in 0..64u32 {
            t.insert(&i.to_le_bytes(), &[1u8; 48]).unwrap();
        }
        PANIC_IN_COMMIT.with(|p| p.set(true));
        let r = catch_unwind(AssertUnwindSafe(|| t.commit()));
        assert!(r.is_err(), "the planted panic");
        assert_eq!(m.len(), 0, "nothing applied");
        m.insert(b"after", b"1").unwrap();
        assert!(m.verify().unwrap().problems.is_empty());
    }
}
