//! Reclamation: [`Gens::install`] (make a generation current, retire the
//! previous one), the retired list (pushed lock-free by `install`, unlinked
//! only by the holder of `reclaiming`), and reclaim rounds with their
//! requests (`again`): a retired generation that no record slot names
//! after the heavy barrier is freed (DESIGN.md "Reclamation",
//! PINNED-STAYS-MAPPED).

use std::ptr;

use super::barrier::heavy_barrier;
use super::{Gens, Numbered};
use crate::sync::{fence, weakened, Ordering, Weaken};

/// A retired generation waiting for reclamation.
pub(super) struct Retired<G> {
    pub(super) gen: *mut G,
    pub(super) next: *mut Retired<G>,
}

impl<G: Numbered> Gens<G> {
    /// Makes `new` current and retires the previous generation. The caller
    /// holds the switch lock.
    pub(crate) fn install(&self, new: Box<G>) {
        let old = self.current.swap(Box::into_raw(new), Ordering::SeqCst);
        // Counted before it is pushed: the count never falls below the
        // list's length (a thread lost to a fork can only leave it above).
        self.retired_count.fetch_add(1, Ordering::Relaxed);
        let node = Box::into_raw(Box::new(Retired {
            gen: old,
            next: ptr::null_mut(),
        }));
        let mut head = self.retired.load(Ordering::Relaxed);
        loop {
            // SAFETY: `node` is ours until the exchange publishes it.
            unsafe { (*node).next = head };
            match self
                .retired
                .compare_exchange(head, node, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        self.reclaim();
    }

    /// The addresses every record names.
    fn named(&self, order: Ordering) -> Vec<usize> {
        let mut v = Vec::new();
        for r in self.records() {
            for s in &r.named {
                let a = s.load(order);
                if !a.is_null() {
                    v.push(a.addr());
                }
            }
        }
        v
    }

    /// Detaches every retired generation that no record names. If another
    /// thread is reclaiming, leaves it a request (`again`) and returns: the
    /// holder runs another round after releasing the lock, so a slot freed
    /// before this call is seen by a later scan. A holder serves at most
    /// `ROUNDS` rounds in a row (then the request waits for the next
    /// unpin or install).
    pub(crate) fn reclaim(&self) {
        const ROUNDS: usize = 8;
        self.after_fork();
        for _ in 0..ROUNDS {
            // Release: our slot clear happens before the holder's scan that
            // takes this request (its swap below is Acquire). A swap, not a
            // store: every write to `again` is a read-modify-write, so the
            // release sequence of a request is never broken by a later one.
            if !weakened(Weaken::ReclaimAgain) {
                self.again.swap(true, Ordering::AcqRel);
            }
            // Store-load against the holder's release-then-check below:
            // either we see the lock free, or it sees our request.
            fence(Ordering::SeqCst);
            let Some(guard) = self.reclaiming.try_lock() else {
                return;
            };
            // Takes every request made so far (AcqRel: their slot clears
            // happen before the scan below).
            self.again.swap(false, Ordering::AcqRel);
            self.reclaim_locked();
            drop(guard);
            fence(Ordering::SeqCst);
            if !self.again.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// One round of `reclaim`, holding `reclaiming`.
    fn reclaim_locked(&self) {
        let head = self.retired.load(Ordering::Acquire);
        // A cheap first look: a stale name only keeps more; if nothing
        // looks free, stop before paying for the barrier.
        let first = self.named(Ordering::Relaxed);
        let mut free_now = false;
        let mut n = head;
        while !n.is_null() {
            // SAFETY: nodes are published by `install` (Release, read with
            // Acquire) and unlinked and freed only under `reclaiming`.
            let node = unsafe { &*n };
            free_now |= !first.contains(&(node.gen as usize));
            n = node.next;
        }
        if !free_now || !heavy_barrier() {
            return;
        }
        fence(Ordering::SeqCst);
        let named = self.named(Ordering::Acquire);
        // Walk from the head seen above; `install` only pushes in front of
        // it, and only this (lock-holding) thread unlinks.
        let mut prev: *mut Retired<G> = ptr::null_mut();
        let mut n = head;
        while !n.is_null() {
            // SAFETY: as above.
            let next = unsafe { (*n).next };
            // SAFETY: as above.
            let gen = unsafe { (*n).gen };
            if named.contains(&gen.addr()) {
                prev = n;
            } else {
                self.unlink(prev, n, next);
                self.retired_count.fetch_sub(1, Ordering::Relaxed);
                // SAFETY: unlinked under the lock: ours. Its generation is
                // retired (not reachable through `current`) and named by no
                // pin after the barrier, so no thread uses it or can pin it
                // again (PINNED-STAYS-MAPPED: a pin publishes its slot
                // before it validates against `current`). Both came from
                // Box::into_raw.
                let (node, g) = unsafe { (Box::from_raw(n), Box::from_raw(gen)) };
                drop(node);
                g.reclaimed();
                #[cfg(loom)]
                self.graveyard
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(g);
                #[cfg(not(loom))]
                drop(g);
            }
            n = next;
        }
    }

    /// Removes `n` (whose predecessor is `prev`, or the list head if null)
    /// from the retired list. Holds `reclaiming`.
    fn unlink(&self, prev: *mut Retired<G>, n: *mut Retired<G>, next: *mut Retired<G>) {
        if !prev.is_null() {
            // SAFETY: a linked node; only the lock holder writes `next` of
            // linked nodes.
            unsafe { (*prev).next = next };
            return;
        }
        if self
            .retired
            .compare_exchange(n, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return;
        }
        // `install` pushed in front of `n`: find its predecessor now.
        let mut p = self.retired.load(Ordering::Acquire);
        // SAFETY: as in `reclaim`; `n` is still linked, after `p`.
        unsafe {
            while (*p).next != n {
                p = (*p).next;
            }
            (*p).next = next;
        }
    }

    /// Number of data segments this process has mapped for the handle.
    /// An observation only: it does not reclaim.
    pub(crate) fn mapped(&self) -> usize {
        self.after_fork();
        let _guard = self.reclaiming.lock();
        let mut count = 1;
        let mut n = self.retired.load(Ordering::Acquire);
        while !n.is_null() {
            count += 1;
            // SAFETY: as in `reclaim` (we hold `reclaiming`).
            n = unsafe { (*n).next };
        }
        count
    }
}
