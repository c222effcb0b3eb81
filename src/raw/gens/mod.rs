//! Process-local management of table generations: which data segment this
//! process reads, pinning (a mapping is detached only once nothing in this
//! process can still refer to it), switching to a newer generation, and
//! reclamation of retired ones.
//!
//! The scheme is hazard pointers with generations as the protected objects
//! (DESIGN.md "Reclamation"). Each thread that uses a map owns a
//! `ThreadRec` in the map's registry: a few slots, each naming (by address)
//! one generation the thread has pinned, with a count of the pins on it. A
//! pin publishes the generation's address in a slot, then re-checks that
//! it is still current; nothing of the generation is read before that. A
//! retired generation is detached once no slot of any record names it, so
//! a process maps the current generation plus those its live pins (and
//! `Ref`s) name (and, until the next reclaim, one whose last unpin raced
//! with a reclaim).
//!
//! Records belong to the registry, not to the thread-local: a thread's
//! thread-local only refers to them, and when it is destroyed before the
//! thread's last `Ref` (thread-locals are destroyed in reverse registration
//! order), the record stays until that last unpin releases it.
//!
//! This file holds what a handle is: [`Numbered`], [`Generation`], the
//! [`Gens`] struct with its constructor, switch lock and drop. The rest is
//! split by concern:
//! - `barrier`: how a pin orders its slot store (membarrier or fence);
//! - `fork`: fork epochs, the atfork handler, [`ForkLock`] and the fork
//!   reset of records;
//! - `records`: per-thread pin records, the registry and the thread-locals;
//! - `pin`: [`Pin`], pinning and unpinning;
//! - `reclaim`: install, the retired list and reclaim rounds;
//! - `tests`: the unit tests.

mod barrier;
mod fork;
pub(crate) use fork::retain_foreign_pins_at_fork;
mod pin;
mod reclaim;
mod records;
#[cfg(all(test, not(loom)))]
mod tests;

use std::ptr;

use self::fork::{register_fork_handler, ForkGuard, ForkLock, FORK_EPOCH};

/// The process's fork count (bumped in a child by the atfork handler): a
/// mark taken before a `fork` is stale in the child.
pub(crate) fn fork_epoch() -> u32 {
    FORK_EPOCH.load(std::sync::atomic::Ordering::Acquire)
}
use self::reclaim::Retired;
use self::records::Node;
use super::provider::Segment;
use super::table::Table;
use crate::sync::{AtomicPtr, AtomicUsize, Ordering};

pub(crate) use self::pin::Pin;

/// What `Gens` manages. The library uses [`Generation`]; the loom model a
/// stand-in whose every access checks that it was not reclaimed.
pub(crate) trait Numbered {
    /// The generation number (≥ 1, increasing).
    fn number(&self) -> u64;
    /// Called when the item is reclaimed (loom models record it).
    fn reclaimed(&self) {}
}

impl Numbered for Generation {
    fn number(&self) -> u64 {
        #[cfg(loom)]
        loom_check::access(self);
        self.number
    }
    /// Under loom a reclaimed generation is kept (not dropped) so that a
    /// use after reclaim is a failed check instead of a use after free:
    /// its table header's generation word is poisoned, and every `number()`
    /// checks it.
    #[cfg(loom)]
    fn reclaimed(&self) {
        loom_check::poison(self);
    }
}

/// Use-after-reclaim checks of real `Generation`s in the loom models.
#[cfg(loom)]
pub(crate) mod loom_check {
    use super::Generation;
    use crate::sync::Ordering;

    /// The header's generation word of a reclaimed generation.
    const POISON: u64 = u64::MAX;
    /// Set (to the generation's number) when an access finds it reclaimed;
    /// loom runs a model's threads on one OS thread, a plain std atomic.
    pub(crate) static USED_AFTER_RECLAIM: std::sync::atomic::AtomicU64 =
        std::sync::atomic::AtomicU64::new(0);

    pub(crate) fn access(g: &Generation) {
        if g.table.header().generation.load(Ordering::SeqCst) == POISON {
            USED_AFTER_RECLAIM.store(g.number, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(crate) fn poison(g: &Generation) {
        g.table.header().generation.store(POISON, Ordering::SeqCst);
    }
}

/// One attached data segment.
#[derive(Debug)]
pub(crate) struct Generation {
    /// The root's `current` word that named it.
    pub(crate) word: u64,
    /// Its generation number (≥ 1).
    pub(crate) number: u64,
    /// The table over it. Declared before `seg`, so it drops first.
    pub(crate) table: Table,
    /// The mapping; detached on drop.
    pub(crate) seg: Segment,
}

/// Process-wide, not part of the models: a plain std atomic.
static NEXT_MAP_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// The generations this process has mapped for one map handle.
pub(crate) struct Gens<G: Numbered = Generation> {
    id: usize,
    current: AtomicPtr<G>,
    /// Retired generations: a list that `install` pushes to (lock-free)
    /// and only the holder of `reclaiming` unlinks from, one pointer store
    /// at a time, so a `fork` never leaves it inconsistent. Boxed
    /// generations: pinned threads hold `&G` into them.
    retired: AtomicPtr<Retired<G>>,
    /// At least the length of `retired` (the unpin's cheap test).
    retired_count: AtomicUsize,
    /// Every thread's record (a lock-free list, pushed only).
    registry: AtomicPtr<Node>,
    /// The fork epoch this handle last cleaned up after.
    fork_epoch: std::sync::atomic::AtomicU32,
    /// Under loom, reclaimed items are kept (and marked) instead of freed,
    /// so that a model that uses one after reclaim fails an assertion
    /// rather than touching freed memory.
    #[cfg(loom)]
    #[allow(clippy::vec_box)]
    graveyard: loom::sync::Mutex<Vec<Box<G>>>,
    /// Serialises switches within this process.
    switch: ForkLock,
    /// Held by the thread that reclaims (unlinks from `retired`).
    reclaiming: ForkLock,
    /// A reclaim was requested while `reclaiming` was held.
    again: crate::sync::AtomicBool,
}

impl<G: Numbered> std::fmt::Debug for Gens<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gens")
            .field("id", &self.id)
            .field("retired", &self.retired_count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers are owned boxes (generations, list nodes) shared
// through atomics with the protocol described above; G is shared by `&G`.
unsafe impl<G: Numbered + Send + Sync> Send for Gens<G> {}
// SAFETY: as above.
unsafe impl<G: Numbered + Send + Sync> Sync for Gens<G> {}

impl<G: Numbered> Gens<G> {
    pub(crate) fn new(first: Box<G>) -> Gens<G> {
        register_fork_handler();
        Gens {
            id: NEXT_MAP_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            current: AtomicPtr::new(Box::into_raw(first)),
            retired: AtomicPtr::new(ptr::null_mut()),
            retired_count: AtomicUsize::new(0),
            registry: AtomicPtr::new(ptr::null_mut()),
            fork_epoch: std::sync::atomic::AtomicU32::new(
                FORK_EPOCH.load(std::sync::atomic::Ordering::Acquire),
            ),
            #[cfg(loom)]
            graveyard: loom::sync::Mutex::new(Vec::new()),
            switch: ForkLock::default(),
            reclaiming: ForkLock::default(),
            again: crate::sync::AtomicBool::new(false),
        }
    }

    /// Serialises switches within this process (see [`ForkLock`]).
    pub(crate) fn lock_switch(&self) -> ForkGuard<'_> {
        self.after_fork();
        self.switch.lock()
    }
}

impl<G: Numbered> Drop for Gens<G> {
    fn drop(&mut self) {
        // Dropping the handle: no pin (which borrows it) is alive.
        // SAFETY: the pointer came from Box::into_raw.
        drop(unsafe { Box::from_raw(self.current.load(Ordering::Relaxed)) });
        let mut n = self.retired.load(Ordering::Relaxed);
        while !n.is_null() {
            // SAFETY: nodes and generations came from Box::into_raw and are
            // unreachable now.
            let node = unsafe { Box::from_raw(n) };
            // SAFETY: as above.
            drop(unsafe { Box::from_raw(node.gen) });
            n = node.next;
        }
        let mut n = self.registry.load(Ordering::Relaxed);
        while !n.is_null() {
            // SAFETY: as above; a thread-local may still hold its own Arc.
            let node = unsafe { Box::from_raw(n) };
            n = node.next.cast_mut();
        }
    }
}
