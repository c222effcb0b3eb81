//! Pinning: [`Pin`] (a thread's hold on the generations it reads; it keeps
//! every generation [`Pin::current`] returned mapped while it lives,
//! PINNED-STAYS-MAPPED in DESIGN.md), how a pin publishes a generation in
//! a record slot and validates it against `current`, and the unpin that
//! clears the slot and may reclaim.

use std::cell::Cell;
use std::ptr::NonNull;

use super::barrier::{barrier_mode, BarrierMode};
use super::records::{ThreadRec, FREE, ORPHAN, OWNED, SLOTS};
use super::{Generation, Gens, Numbered};
use crate::sync::{fence, weakened, Ordering, Weaken};

/// A pin's further holds: (record, slot) pairs.
type Holds = Vec<(NonNull<ThreadRec>, usize)>;

/// Keeps the generations it has returned from [`Pin::current`] mapped
/// (normally one; more if `current` moved while it was held).
pub(crate) struct Pin<'g, G: Numbered = Generation> {
    gens: &'g Gens<G>,
    /// The record and slot of the first generation; also makes `Pin`
    /// neither Send nor Sync (counts are per thread).
    rec: NonNull<ThreadRec>,
    slot: usize,
    /// The newest generation it holds.
    gen: Cell<*mut G>,
    /// Further (record, slot)s held, if `current` moved.
    more: Cell<Option<Box<Holds>>>,
}

impl<G: Numbered> Gens<G> {
    /// Publishes `g` in slot `i` of `r` (free) and checks that it is still
    /// current. On success the slot holds one pin on `g`.
    #[inline(always)]
    fn try_publish(&self, r: &ThreadRec, i: usize, g: *mut G) -> bool {
        if weakened(Weaken::PinDerefFirst) {
            // The old order: read the generation before the pin is
            // published (it may have been reclaimed meanwhile).
            // SAFETY: reachable only under loom with this weakening planted
            // (`weakened` is a constant `false` otherwise); loom keeps
            // reclaimed generations alive (`graveyard`), so this reads live
            // memory, and the model's stand-in flags the use after reclaim.
            let _ = unsafe { (*g).number() };
        }
        r.named[i].store(g as usize, Ordering::Relaxed);
        // Store-load barrier against `install` + `reclaim`: either the
        // reclaimer sees the slot, or we see its new current. With
        // membarrier, the reclaimer's barrier makes our compiler fence a
        // full one.
        if barrier_mode() == BarrierMode::Membarrier {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else if !weakened(Weaken::PinFence) {
            fence(Ordering::SeqCst);
        }
        // Acquire: if `current` was swapped to a new generation at the same
        // address, we read that one's contents.
        if self.current.load(Ordering::Acquire) == g {
            r.counts[i].set(1);
            true
        } else {
            r.named[i].store(0, Ordering::Relaxed);
            false
        }
    }

    /// Pins the current generation for this thread. Returns the record,
    /// slot and generation.
    #[inline]
    fn pin_current(&self) -> (NonNull<ThreadRec>, usize, *mut G) {
        let rec = self.local();
        // SAFETY: records live while the registry (owned by `self`) does.
        let r = unsafe { rec.as_ref() };
        let g = self.current.load(Ordering::Acquire);
        let c = r.counts[0].get();
        if c > 0 {
            if r.named[0].load(Ordering::Relaxed) == g as usize {
                // Already protected by our own published slot.
                r.counts[0].set(if weakened(Weaken::PinCount) { c } else { c + 1 });
                return (rec, 0, g);
            }
        } else if self.try_publish(r, 0, g) {
            return (rec, 0, g);
        }
        self.pin_slow(rec)
    }

    #[cold]
    #[inline(never)]
    fn pin_slow(&self, head: NonNull<ThreadRec>) -> (NonNull<ThreadRec>, usize, *mut G) {
        loop {
            let g = self.current.load(Ordering::Acquire);
            let mut free = None;
            let mut last = head;
            let mut rec = Some(head);
            while let Some(p) = rec {
                // SAFETY: records of this thread's chain live while the
                // registry does.
                let r = unsafe { p.as_ref() };
                for i in 0..SLOTS {
                    let c = r.counts[i].get();
                    if c > 0 && r.named[i].load(Ordering::Relaxed) == g as usize {
                        r.counts[i].set(c + 1);
                        return (p, i, g);
                    }
                    if c == 0 && free.is_none() {
                        free = Some((p, i));
                    }
                }
                last = p;
                rec = r.more.borrow().as_ref().map(|m| NonNull::from(&**m));
            }
            let (p, i) = free.unwrap_or_else(|| {
                // All slots busy: chain another record of this thread.
                // SAFETY: as above.
                let l = unsafe { last.as_ref() };
                let m = self.claim(if l.orphan.get() { ORPHAN } else { OWNED });
                let p = NonNull::from(&*m);
                *l.more.borrow_mut() = Some(m);
                (p, 0)
            });
            // SAFETY: as above.
            if self.try_publish(unsafe { p.as_ref() }, i, g) {
                return (p, i, g);
            }
        }
    }

    /// Pins this thread: until the pin drops, the generation that is
    /// current now (and any that [`Pin::current`] returns later) stays
    /// mapped.
    #[inline]
    pub(crate) fn pin(&self) -> Pin<'_, G> {
        let (rec, slot, g) = self.pin_current();
        Pin {
            gens: self,
            rec,
            slot,
            gen: Cell::new(g),
            more: Cell::new(None),
        }
    }

    /// Drops one pin of slot `i` of `rec`.
    #[inline]
    fn unpin(&self, rec: NonNull<ThreadRec>, i: usize) {
        // SAFETY: the record is pinned (count > 0), so it is not FREE and
        // the registry (borrowed by the pin) keeps it.
        let r = unsafe { rec.as_ref() };
        let c = r.counts[i].get() - 1;
        r.counts[i].set(c);
        if c == 0 {
            let g = r.named[i].load(Ordering::Relaxed);
            // Release: our reads of the generation happen before a
            // reclaimer's Acquire load that sees the slot free.
            r.named[i].store(0, Ordering::Release);
            if r.orphan.get() && r.idle() {
                // The last pin of a thread whose thread-local is gone: the
                // record's last access by this thread.
                r.set_state(FREE);
            }
            // Only releasing a retired generation can free something (so a
            // long-held `Ref` does not make every read reclaim). No fence:
            // a reclaim racing with this may still see the slot; then the
            // next install or unpin of a retired generation frees it.
            if self.retired_count.load(Ordering::Relaxed) > 0
                && self.current.load(Ordering::Relaxed) as usize != g
            {
                self.reclaim();
            }
        }
    }
}

impl<G: Numbered> Pin<'_, G> {
    /// The current generation of this process; it stays mapped while the
    /// pin lives (the pin takes a further hold if `current` moved).
    #[inline]
    pub(crate) fn current(&self) -> &G {
        let c = self.gens.current.load(Ordering::Acquire);
        if c == self.gen.get() {
            // SAFETY: `gen` is named by one of this pin's slots, so it stays
            // mapped while the pin lives (PINNED-STAYS-MAPPED).
            return unsafe { &*c };
        }
        self.follow()
    }

    #[cold]
    fn follow(&self) -> &G {
        let (rec, slot, g) = self.gens.pin_current();
        let mut more = self.more.take().unwrap_or_default();
        more.push((rec, slot));
        self.more.set(Some(more));
        self.gen.set(g);
        // SAFETY: just pinned: named by a slot this pin holds
        // (PINNED-STAYS-MAPPED).
        unsafe { &*g }
    }
}

impl<G: Numbered> Clone for Pin<'_, G> {
    fn clone(&self) -> Self {
        let more = self.more.take();
        for &(rec, i) in
            std::iter::once(&(self.rec, self.slot)).chain(more.iter().flat_map(|m| m.iter()))
        {
            // SAFETY: held by this pin, on this thread (Pin is not Send).
            let r = unsafe { rec.as_ref() };
            r.counts[i].set(r.counts[i].get() + 1);
        }
        let copy = more.clone();
        self.more.set(more);
        Pin {
            gens: self.gens,
            rec: self.rec,
            slot: self.slot,
            gen: Cell::new(self.gen.get()),
            more: Cell::new(copy),
        }
    }
}

impl<G: Numbered> Drop for Pin<'_, G> {
    #[inline]
    fn drop(&mut self) {
        if let Some(more) = self.more.take() {
            for (rec, i) in more.into_iter() {
                self.gens.unpin(rec, i);
            }
        }
        self.gens.unpin(self.rec, self.slot);
    }
}
