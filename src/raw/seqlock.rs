//! Per-bucket seqlock, in the manner of crossbeam-utils' `SeqLock`:
//! odd stamp = being written; readers do an Acquire load of the stamp,
//! Relaxed loads of the data words, an Acquire fence, and a Relaxed re-load.
//! Readers never write to the slot.

use crate::sync::{fence, weakened, Ordering, Weaken};

use super::layout::Slot;
use super::lock::WriteLock;
use super::slot::{Lens, SlotWord};

/// How many times a reader retries a bucket that is odd (being written)
/// before it reports a stall, so the caller can check whether the writer
/// is still alive.
#[cfg(not(loom))]
pub(crate) const SPIN_LIMIT: u32 = 1 << 12;
/// Under loom every retry is a branch of the model: keep it tiny.
#[cfg(loom)]
pub(crate) const SPIN_LIMIT: u32 = 2;

/// A consistent snapshot of a slot's data words.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotRead {
    pub(crate) hash: u64,
    pub(crate) rec: SlotWord,
    pub(crate) lens: Lens,
}

/// Slot reads that met a slot being written (odd, or changed while read)
/// and read it again, in this process (`crate::read_retries`). Counted only
/// on that path; a process-local counter, never shared memory.
static READ_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Adds a read's retries to the counter: one read-modify-write per read
/// that retried (not one per spin pass, which would have spinning readers
/// write one shared cache line thousands of times).
#[cold]
fn note_retries(n: u64) {
    READ_RETRIES.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// See [`crate::read_retries`].
pub(crate) fn read_retries() -> u64 {
    READ_RETRIES.load(std::sync::atomic::Ordering::Relaxed)
}

impl Slot {
    /// Reads the slot's words consistently, or `None` if the slot stayed
    /// odd (or kept changing) for [`SPIN_LIMIT`] tries.
    #[inline]
    pub(crate) fn read(&self) -> Option<SlotRead> {
        let mut retries = 0;
        for _ in 0..SPIN_LIMIT {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let hash = self.hash.load(Ordering::Relaxed);
                let rec = self.rec.load(Ordering::Relaxed);
                let lens = self.lens.load(Ordering::Relaxed);
                if !weakened(Weaken::SeqlockReadFence) {
                    fence(Ordering::Acquire);
                }
                if self.seq.load(Ordering::Relaxed) == s1 {
                    if retries != 0 {
                        note_retries(retries);
                    }
                    return Some(SlotRead {
                        hash,
                        rec: SlotWord(rec),
                        lens: Lens(lens),
                    });
                }
            }
            retries += 1;
            crate::sync::spin_loop();
        }
        note_retries(retries);
        None
    }

    /// Writes the slot under its seqlock. Only the lock holder calls this.
    /// A slot left odd by a dead writer is completed: its stamp is already
    /// odd, so it is kept and only the closing even store is made.
    pub(crate) fn write(
        &self,
        _lock: &WriteLock,
        hash: u64,
        rec: SlotWord,
        lens: Lens,
        crash_mid: impl FnOnce(),
    ) {
        let s = self.seq.load(Ordering::Relaxed);
        let odd = s | 1;
        self.seq.store(odd, Ordering::Relaxed);
        if !weakened(Weaken::SeqlockWriteFence) {
            fence(Ordering::Release);
        }
        crash_mid();
        self.hash.store(hash, Ordering::Relaxed);
        self.rec.store(rec.0, Ordering::Relaxed);
        self.lens.store(lens.0, Ordering::Relaxed);
        self.seq.store(odd.wrapping_add(1), Ordering::Release);
    }
}
