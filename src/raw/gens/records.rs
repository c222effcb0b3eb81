//! Per-thread pin records: [`ThreadRec`] (a thread's slots naming the
//! generations it has pinned, with their counts and state word), the
//! handle's registry of records (a lock-free list, pushed only; FREE
//! records are reused), and this thread's thread-locals (`PINS`, the
//! records it uses, and `LAST`, the one-entry cache of the read path) with
//! the destructor that hands records back.

use std::cell::{Cell, RefCell};
use std::ptr::{self, NonNull};

use super::fork::{token, FORK_EPOCH};
use super::{Gens, Numbered};
use crate::sync::{Arc, AtomicPtr, Ordering};

/// Generations one record can name at once; a thread that pins more
/// distinct generations at the same time chains another record.
/// (Two under loom, to keep the models small.)
pub(super) const SLOTS: usize = if cfg!(loom) { 2 } else { 4 };

/// Record states (the low two bits of `ThreadRec::state`): a thread's
/// thread-local owns it.
pub(super) const OWNED: u64 = 0;
/// The thread-local that owned it is gone; the last unpin frees it.
pub(super) const ORPHAN: u64 = 1;
/// Unused: a thread may claim it.
pub(super) const FREE: u64 = 2;
/// Never used again: its owner was lost to a `fork` in the middle of a
/// `RefCell` borrow of `more` (its slots are cleared), or whose pins a
/// binding asked to retain at that fork (`retain_foreign_pins_at_fork`:
/// its counted slots stay named for good).
pub(super) const DEAD: u64 = 3;

/// A record's state word: the state, the owner's token (bits 2..32) and
/// the fork epoch it was claimed in (bits 32..64), so that the fork reset
/// reads owner and state in one load.
fn state_word(state: u64) -> u64 {
    u64::from(FORK_EPOCH.load(std::sync::atomic::Ordering::Relaxed)) << 32
        | u64::from(token() & 0x3fff_ffff) << 2
        | state
}

/// One thread's pins for one map, owned by the map's registry.
#[derive(Debug)]
pub(super) struct ThreadRec {
    /// The generations pinned (null = free slot). Written only by the
    /// owning thread, read by reclaimers (who compare addresses only; the
    /// owner's pin dereferences what it stored, so these are pointers that
    /// keep their provenance, not integers).
    pub(super) named: [AtomicPtr<()>; SLOTS],
    /// Pins per slot. Touched only by the owning thread (or by the fork
    /// reset, once the owner does not exist).
    pub(super) counts: [Cell<u32>; SLOTS],
    /// The next record of the same thread when all slots are busy (owner
    /// only; records reach it through the registry, not through this).
    pub(super) more: RefCell<Option<Arc<ThreadRec>>>,
    /// `OWNED`, `ORPHAN`, `FREE` or `DEAD`, with owner and epoch
    /// (`state_word`).
    pub(super) state: std::sync::atomic::AtomicU64,
    /// Whether the state is ORPHAN (owner only: the unpin reads this, not
    /// the shared word).
    pub(super) orphan: Cell<bool>,
}

// SAFETY: the `Cell`/`RefCell` fields are touched only by the owning thread
// while it owns the record (state OWNED or ORPHAN), by a thread that claims
// it after a FREE state it observed with Acquire (the owner's last access
// happened before its Release store of FREE), or by the fork reset when the
// owner does not exist in the process. The atomics are shared.
unsafe impl Sync for ThreadRec {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for ThreadRec {}

impl ThreadRec {
    fn new(state: u64) -> ThreadRec {
        ThreadRec {
            named: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            counts: std::array::from_fn(|_| Cell::new(0)),
            more: RefCell::new(None),
            state: std::sync::atomic::AtomicU64::new(state_word(state)),
            orphan: Cell::new(state == ORPHAN),
        }
    }

    /// Sets the state, keeping owner and epoch (owner only). For FREE,
    /// this is the record's last access by its owner.
    pub(super) fn set_state(&self, state: u64) {
        use std::sync::atomic::Ordering as O;
        self.orphan.set(state == ORPHAN);
        let w = self.state.load(O::Relaxed);
        self.state.store(w & !3 | state, O::Release);
    }

    pub(super) fn idle(&self) -> bool {
        self.counts.iter().all(|c| c.get() == 0)
    }
}

/// A registry entry (never removed while the registry lives; records are
/// reused instead).
pub(super) struct Node {
    pub(super) rec: Arc<ThreadRec>,
    pub(super) next: *const Node,
}

/// This thread's records, one chain per map it used (by map id). Its
/// destructor hands them back: idle records become FREE, pinned ones
/// ORPHAN (freed by their last unpin).
#[derive(Default)]
struct Locals(Vec<(usize, Arc<ThreadRec>)>);

impl Drop for Locals {
    fn drop(&mut self) {
        let _ = LAST.try_with(|l| l.set((0, ptr::null())));
        for (_, rec) in self.0.drain(..) {
            let mut chain = vec![rec];
            while let Some(m) = chain.last().and_then(|r| r.more.borrow_mut().take()) {
                chain.push(m);
            }
            for r in chain {
                // The record's last access by this thread-local.
                r.set_state(if r.idle() { FREE } else { ORPHAN });
            }
        }
    }
}

// This thread's records, and a one-entry cache of the last one used (the
// read path's fast path). The cache holds no ownership: the registry owns
// the record; `Locals::drop` clears the cache.
#[cfg(not(loom))]
thread_local! {
    static PINS: RefCell<Locals> = RefCell::new(Locals::default());
    static LAST: Cell<(usize, *const ThreadRec)> = const { Cell::new((0, ptr::null())) };
}
#[cfg(loom)]
loom::thread_local! {
    static PINS: RefCell<Locals> = RefCell::new(Locals::default());
    static LAST: Cell<(usize, *const ThreadRec)> = Cell::new((0, ptr::null()));
}

impl<G: Numbered> Gens<G> {
    /// The records of the registry.
    pub(super) fn records(&self) -> impl Iterator<Item = &ThreadRec> {
        let mut n = self.registry.load(Ordering::Acquire).cast_const();
        std::iter::from_fn(move || {
            // SAFETY: nodes are published by `claim` with Release
            // (read here with Acquire) and freed only when `self` drops.
            let node = unsafe { n.as_ref()? };
            n = node.next;
            Some(&*node.rec)
        })
    }

    /// A record in `state` for this thread: a FREE one reused, or a new
    /// one pushed to the registry.
    #[cold]
    pub(super) fn claim(&self, state: u64) -> Arc<ThreadRec> {
        use std::sync::atomic::Ordering as O;
        let mut n = self.registry.load(Ordering::Acquire).cast_const();
        // SAFETY: as in `records`.
        while let Some(node) = unsafe { n.as_ref() } {
            let r = &node.rec;
            let w = r.state.load(O::Relaxed);
            if w & 3 == FREE
                && r.state
                    .compare_exchange(w, state_word(state), O::Acquire, O::Relaxed)
                    .is_ok()
            {
                // Ours now (see the `Sync` impl).
                r.orphan.set(state == ORPHAN);
                *r.more.borrow_mut() = None;
                return r.clone();
            }
            n = node.next;
        }
        let rec = Arc::new(ThreadRec::new(state));
        let node = Box::into_raw(Box::new(Node {
            rec: rec.clone(),
            next: ptr::null(),
        }));
        let mut head = self.registry.load(Ordering::Relaxed);
        loop {
            // SAFETY: `node` is ours until the exchange below publishes it.
            unsafe { (*node).next = head };
            match self
                .registry
                .compare_exchange(head, node, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return rec,
                Err(h) => head = h,
            }
        }
    }

    /// This thread's first record for this handle.
    #[inline]
    pub(super) fn local(&self) -> NonNull<ThreadRec> {
        let (id, p) = LAST.with(Cell::get);
        if id == self.id {
            // SAFETY: the cache is set only from a live record of this map
            // and cleared when the thread-local that owns it is destroyed.
            return unsafe { NonNull::new_unchecked(p.cast_mut()) };
        }
        self.local_slow()
    }

    #[cold]
    fn local_slow(&self) -> NonNull<ThreadRec> {
        let cached = PINS.try_with(|pins| {
            let mut pins = pins.borrow_mut();
            if let Some((_, r)) = pins.0.iter().find(|(id, _)| *id == self.id) {
                return NonNull::from(&**r);
            }
            // Forget records of maps that were dropped (only our Arc left);
            // the cache may point at one of them.
            LAST.with(|l| l.set((0, ptr::null())));
            pins.0.retain(|(_, r)| Arc::strong_count(r) > 1);
            let rec = self.claim(OWNED);
            let p = NonNull::from(&*rec);
            pins.0.push((self.id, rec));
            p
        });
        match cached {
            Ok(p) => {
                LAST.with(|l| l.set((self.id, p.as_ptr().cast_const())));
                p
            }
            // The thread-local is being or was destroyed (a pin from a
            // later thread-local destructor): a record of its own, freed by
            // its last unpin; not cached.
            Err(_) => NonNull::from(&*self.claim(ORPHAN)),
        }
    }
}
