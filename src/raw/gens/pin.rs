//! Pinning: [`Pin`] (a thread's hold on the generations it reads; it keeps
//! every generation [`Pin::current`] returned mapped while it lives,
//! PINNED-STAYS-MAPPED in DESIGN.md), how a pin publishes a generation in
//! a record slot and validates it against `current`, and the unpin that
//! clears the slot and may reclaim.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::barrier::{barrier_mode, BarrierMode};
use super::records::{ThreadRec, FREE, ORPHAN, OWNED, SLOTS};
use super::{Generation, Gens, Numbered};
use crate::sync::{fence, weakened, Ordering, Weaken};

/// A pin's holds, in the order taken: (record, slot) pairs, the first
/// one's first, the newest generation's last.
type Holds = Vec<(NonNull<ThreadRec>, usize)>;

/// `Pin::hold` tag: the slot of a single hold (the low bits of the
/// record's address; records are 8-aligned, `SLOTS <= 4`).
const HOLD_SLOT: usize = 3;
/// `Pin::hold` tag: the word is the address of a boxed [`Holds`] (the pin
/// took further holds because `current` moved while it was held).
const HOLD_MORE: usize = 4;
const _: () =
    assert!(SLOTS <= HOLD_SLOT + 1 && std::mem::align_of::<ThreadRec>() > HOLD_SLOT | HOLD_MORE);
const _: () = assert!(std::mem::align_of::<Holds>() > HOLD_SLOT | HOLD_MORE);

/// Keeps the generations it has returned from [`Pin::current`] mapped
/// (normally one; more if `current` moved while it was held).
///
/// Two words on purpose: a `Pin` travels inside every `Ref` and
/// `Result<Option<Ref>>` through the caller's stack; with a bigger pin the
/// compiler copies it in 16-byte pieces that straddle the 8-byte stores
/// that wrote it (store-to-load forwarding stalls), on the path from one
/// read's unpin to the next read's pin (DESIGN.md "Reclamation", the pin's shape).
pub(crate) struct Pin<'g, G: Numbered = Generation> {
    gens: &'g Gens<G>,
    /// What the pin holds: the address of the record of its first hold
    /// with the slot in the low bits (`HOLD_SLOT`), or, tagged `HOLD_MORE`,
    /// the address of a boxed [`Holds`] (owned by the pin). The slots
    /// named by the holds name the generations the pin keeps mapped; the
    /// last hold's names the newest. A pointer, not an integer, so that it
    /// keeps the provenance of what it points to (strict provenance: Miri
    /// checks every use, `-Zmiri-strict-provenance`); the tags live in the
    /// address's alignment bits (`map_addr`).
    hold: Cell<*mut ()>,
    /// Counts are per thread: `Pin` is neither Send nor Sync.
    _thread: PhantomData<*const ThreadRec>,
}

/// The single hold a `hold` word without `HOLD_MORE` packs.
#[inline(always)]
fn unpack(h: *mut ()) -> (NonNull<ThreadRec>, usize) {
    debug_assert!(h.addr() & HOLD_MORE == 0);
    // SAFETY: a hold word without HOLD_MORE is a record's (non-null)
    // pointer with the slot or-ed into its alignment bits.
    (
        unsafe { NonNull::new_unchecked(h.map_addr(|a| a & !HOLD_SLOT).cast::<ThreadRec>()) },
        h.addr() & HOLD_SLOT,
    )
}

/// The boxed holds a `HOLD_MORE` word points to.
#[inline(always)]
fn more(h: *mut ()) -> *mut Holds {
    debug_assert!(h.addr() & HOLD_MORE != 0);
    h.map_addr(|a| a & !HOLD_MORE).cast::<Holds>()
}

/// The `HOLD_MORE` word of boxed holds.
#[inline(always)]
fn pack_more(holds: Box<Holds>) -> *mut () {
    Box::into_raw(holds)
        .cast::<()>()
        .map_addr(|a| a | HOLD_MORE)
}

/// The hold word of one (record, slot).
#[inline(always)]
fn pack(rec: NonNull<ThreadRec>, slot: usize) -> *mut () {
    debug_assert!(slot < SLOTS);
    rec.as_ptr().cast::<()>().map_addr(|a| a | slot)
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
        r.named[i].store(g.cast(), Ordering::Relaxed);
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
            r.named[i].store(std::ptr::null_mut(), Ordering::Relaxed);
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
            if r.named[0].load(Ordering::Relaxed) == g.cast() {
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
                    if c > 0 && r.named[i].load(Ordering::Relaxed) == g.cast() {
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
        let (rec, slot, _) = self.pin_current();
        Pin {
            gens: self,
            hold: Cell::new(pack(rec, slot)),
            _thread: PhantomData,
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
            r.named[i].store(std::ptr::null_mut(), Ordering::Release);
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
                && self.current.load(Ordering::Relaxed).cast() != g
            {
                self.reclaim();
            }
        }
    }
}

impl<G: Numbered> Pin<'_, G> {
    /// The newest generation the pin holds: the one its last hold's slot
    /// names.
    #[inline(always)]
    fn newest(&self) -> *mut G {
        let h = self.hold.get();
        let (rec, slot) = if h.addr() & HOLD_MORE == 0 {
            unpack(h)
        } else {
            // SAFETY: a HOLD_MORE word points to the pin's boxed holds
            // (never empty), alive while the pin is.
            *unsafe { &*more(h) }.last().expect("holds are never empty")
        };
        // SAFETY: a held record is not FREE, and the registry (borrowed by
        // the pin) keeps it; only this thread writes its slots, and a slot
        // with a count > 0 keeps the address it was published with.
        unsafe { rec.as_ref() }.named[slot]
            .load(Ordering::Relaxed)
            .cast::<G>()
    }

    /// The current generation of this process if the pin already holds
    /// it (`current` did not move since the pin was taken, the usual case),
    /// else `None` (then [`Pin::current`] takes a further hold).
    ///
    /// For hot paths: unlike `current`, this neither writes to the pin nor
    /// passes its address anywhere, so the compiler can keep the pin in
    /// registers (see [`Pin`]).
    #[inline(always)]
    pub(crate) fn current_held(&self) -> Option<&G> {
        let c = self.gens.current.load(Ordering::Acquire);
        if c == self.newest() {
            // SAFETY: `c` is named by one of this pin's slots, so it stays
            // mapped while the pin lives (PINNED-STAYS-MAPPED).
            return Some(unsafe { &*c });
        }
        None
    }

    /// The current generation of this process; it stays mapped while the
    /// pin lives (the pin takes a further hold if `current` moved).
    #[inline]
    pub(crate) fn current(&self) -> &G {
        match self.current_held() {
            Some(g) => g,
            None => self.follow(),
        }
    }

    #[cold]
    fn follow(&self) -> &G {
        let (rec, slot, g) = self.gens.pin_current();
        let h = self.hold.get();
        let mut holds = if h.addr() & HOLD_MORE == 0 {
            Box::new(vec![unpack(h)])
        } else {
            // SAFETY: the pin's boxed holds (see `hold`); ownership moves
            // back into the word below.
            unsafe { Box::from_raw(more(h)) }
        };
        holds.push((rec, slot));
        self.hold.set(pack_more(holds));
        // SAFETY: just pinned: named by a slot this pin holds
        // (PINNED-STAYS-MAPPED).
        unsafe { &*g }
    }

    /// Drops the holds of a pin with further holds (hold word `h`), the
    /// first one last. Takes the pin's fields, not the pin (whose address
    /// would then escape, see [`Pin`]).
    #[cold]
    #[inline(never)]
    fn drop_more(gens: &Gens<G>, h: *mut ()) {
        // SAFETY: the pin's boxed holds (see `hold`), dropped with the pin.
        let holds = unsafe { Box::from_raw(more(h)) };
        for &(rec, i) in holds.iter().skip(1) {
            gens.unpin(rec, i);
        }
        gens.unpin(holds[0].0, holds[0].1);
    }
}

impl<G: Numbered> Clone for Pin<'_, G> {
    fn clone(&self) -> Self {
        let add = |&(rec, i): &(NonNull<ThreadRec>, usize)| {
            // SAFETY: held by this pin, on this thread (Pin is not Send).
            let r = unsafe { rec.as_ref() };
            r.counts[i].set(r.counts[i].get() + 1);
        };
        let h = self.hold.get();
        let hold = if h.addr() & HOLD_MORE == 0 {
            // One hold: the copy shares it (no allocation).
            add(&unpack(h));
            h
        } else {
            // SAFETY: the pin's boxed holds (see `hold`), borrowed.
            let holds = unsafe { &*more(h) }.clone();
            holds.iter().for_each(add);
            pack_more(Box::new(holds))
        };
        Pin {
            gens: self.gens,
            hold: Cell::new(hold),
            _thread: PhantomData,
        }
    }
}

impl<G: Numbered> Drop for Pin<'_, G> {
    #[inline]
    fn drop(&mut self) {
        let h = *self.hold.get_mut();
        if h.addr() & HOLD_MORE != 0 {
            return Self::drop_more(self.gens, h);
        }
        let (rec, slot) = unpack(h);
        self.gens.unpin(rec, slot);
    }
}
