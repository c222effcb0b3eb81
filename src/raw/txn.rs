//! A write held open across calls ([`RawTxn`], `RawMap::begin`): the same
//! steps as `Engine::write_inner`, with the closure's body replaced by the
//! caller's later calls. For APIs that cannot pass a closure (the C ABI's
//! `shmkv_batch_begin` ... `shmkv_batch_commit`).

use std::mem::ManuallyDrop;

use super::batch::RawBatch;
use super::engine::{Engine, WriteGuard};
use super::gens::Pin;
use super::write::Stager;
use crate::error::Result;
use crate::sync::{fence, Ordering};

/// An open write: the map's write lock is held from [`RawMap::begin`]
/// until [`commit`](RawTxn::commit), [`abort`](RawTxn::abort) or drop
/// (which aborts). Everything staged is applied as one atomic, crash-safe
/// write by `commit`, exactly as a [`RawMap::write`] closure's would be;
/// nothing of it if the transaction is aborted, dropped, or its process
/// dies. Other writers (threads and processes) wait for the lock
/// meanwhile, so keep it short. Not `Send`: it ends on the thread that
/// began it.
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
        // As in `write_inner`: staging after the last write's log.
        fence(Ordering::Release);
        let mut batch = RawBatch {
            map: self,
            base,
            fresh: None,
            stager: Stager::new(&base.table, token),
        };
        if base.table.wants_compaction() {
            batch.migrate(None)?;
        }
        Ok(RawTxn {
            batch: ManuallyDrop::new(batch),
            guard,
            pin,
        })
    }
}

impl<'m> RawTxn<'m> {
    /// The batch: stage inserts and removals, read the map as it will be.
    pub fn batch(&mut self) -> &mut RawBatch<'m> {
        &mut self.batch
    }

    /// Applies everything staged as one atomic write and releases the lock.
    /// On an error nothing was applied (as for `RawMap::write`).
    pub fn commit(mut self) -> Result<()> {
        // SAFETY: the batch is taken out once; `self` is then forgotten
        // field by field below, so its `Drop` does not touch it again.
        let batch = unsafe { ManuallyDrop::take(&mut self.batch) };
        let map = batch.map;
        let r = batch.commit();
        // SAFETY: moving the remaining fields out of `self`, which is then
        // forgotten (no double drop); the batch was dropped by `commit`.
        let (guard, pin) = unsafe {
            let me = ManuallyDrop::new(self);
            (std::ptr::read(&me.guard), std::ptr::read(&me.pin))
        };
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
