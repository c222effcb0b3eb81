//! Process-local management of table generations: which data segment this
//! process reads, pinning (a mapping is detached only once nothing in this
//! process can still refer to it), switching to a newer generation, and
//! reclamation of retired ones.
//!
//! The scheme is epoch-based reclamation with generation numbers as epochs.
//! Each thread that uses a map has a `ThreadSlot` with the number of the
//! generation that was current when it pinned (0 = not pinned); pins nest
//! (a `Ref` keeps its pin). A retired generation is detached when every
//! pinned slot holds a larger number. The read path writes only its own
//! thread's slot (a plain store, no read-modify-write) and reads the
//! process-local `current` pointer.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use super::table::Table;
use crate::sync::{
    fence, weakened, Arc, AtomicPtr, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering, Weaken,
};
use crate::sysv::Attached;

/// Whether pins use a compiler fence only, because reclaimers issue
/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (registered once per
/// process). Decided once; never under loom, which models the plain fence.
#[inline]
fn asymmetric_barrier() -> bool {
    #[cfg(loom)]
    {
        false
    }
    #[cfg(not(loom))]
    {
        static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *READY.get_or_init(|| {
            const QUERY: libc::c_int = 0;
            const PRIVATE_EXPEDITED: libc::c_int = 8;
            const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 16;
            // SAFETY: membarrier with integer arguments only.
            let supported = unsafe { libc::syscall(libc::SYS_membarrier, QUERY, 0, 0) };
            supported > 0
                && supported & libc::c_long::from(PRIVATE_EXPEDITED) != 0
                // SAFETY: as above.
                && unsafe { libc::syscall(libc::SYS_membarrier, REGISTER_PRIVATE_EXPEDITED, 0, 0) } == 0
        })
    }
}

/// The reclaimer's side of the asymmetric barrier: every running thread of
/// the process executes a full barrier before this returns.
fn heavy_barrier() {
    #[cfg(not(loom))]
    if asymmetric_barrier() {
        const PRIVATE_EXPEDITED: libc::c_int = 8;
        // SAFETY: membarrier with integer arguments only; registered above.
        unsafe { libc::syscall(libc::SYS_membarrier, PRIVATE_EXPEDITED, 0, 0) };
    }
}

/// What `Gens` manages: anything with a generation number. (The loom model
/// uses a small stand-in; the library uses [`Generation`].)
pub(crate) trait Numbered {
    /// The generation number (≥ 1, increasing).
    fn number(&self) -> u64;
    /// Called when the item is reclaimed (loom models record it).
    fn reclaimed(&self) {}
}

impl Numbered for Generation {
    fn number(&self) -> u64 {
        self.number
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
    pub(crate) seg: Attached,
}

/// Per-thread pin record, read by reclaimers.
#[derive(Debug, Default)]
struct ThreadSlot {
    pinned: AtomicU64,
}

/// This thread's pin state for one map.
struct LocalPin {
    map_id: usize,
    slot: Arc<ThreadSlot>,
    depth: Cell<u32>,
}

// Each thread's pin records, boxed so that their addresses are stable (a
// `Pin` and the cache point at them: clippy's vec_box does not apply), and
// a one-entry cache of the last one used (the read path's fast path).
// Entries are removed only when their map is gone and they are unpinned.
#[cfg(not(loom))]
thread_local! {
    #[allow(clippy::vec_box)]
    static PINS: RefCell<Vec<Box<LocalPin>>> = const { RefCell::new(Vec::new()) };
    static LAST: Cell<(usize, NonNull<LocalPin>)> = const { Cell::new((0, NonNull::dangling())) };
}
#[cfg(loom)]
loom::thread_local! {
    #[allow(clippy::vec_box)]
    static PINS: RefCell<Vec<Box<LocalPin>>> = RefCell::new(Vec::new());
    static LAST: Cell<(usize, NonNull<LocalPin>)> = Cell::new((0, NonNull::dangling()));
}

/// Process-wide, not part of the models: a plain std atomic.
static NEXT_MAP_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// The generations this process has mapped for one map handle.
#[derive(Debug)]
pub(crate) struct Gens<G: Numbered = Generation> {
    id: usize,
    current: AtomicPtr<G>,
    // Boxed on purpose: pinned threads hold `&Generation` into these boxes,
    // so a retired generation must not move until it is reclaimed.
    #[allow(clippy::vec_box)]
    retired: Mutex<Vec<Box<G>>>,
    /// Under loom, reclaimed items are kept (and marked) instead of freed,
    /// so that a model that uses one after reclaim fails an assertion
    /// rather than touching freed memory.
    #[cfg(loom)]
    #[allow(clippy::vec_box)]
    graveyard: Mutex<Vec<Box<G>>>,
    retired_count: AtomicUsize,
    registry: Mutex<Vec<Arc<ThreadSlot>>>,
    /// Serialises switches within this process.
    pub(crate) switch: Mutex<()>,
}

/// Keeps every generation at or after the pinned one mapped.
pub(crate) struct Pin<'g, G: Numbered = Generation> {
    gens: &'g Gens<G>,
    /// This thread's record (see `PINS`); makes `Pin` neither Send nor Sync.
    local: NonNull<LocalPin>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<G: Numbered> Gens<G> {
    pub(crate) fn new(first: Box<G>) -> Gens<G> {
        Gens {
            id: NEXT_MAP_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            current: AtomicPtr::new(Box::into_raw(first)),
            retired: Mutex::new(Vec::new()),
            #[cfg(loom)]
            graveyard: Mutex::new(Vec::new()),
            retired_count: AtomicUsize::new(0),
            registry: Mutex::new(Vec::new()),
            switch: Mutex::new(()),
        }
    }

    /// This thread's pin record for this handle.
    #[inline]
    fn local(&self) -> NonNull<LocalPin> {
        let (id, p) = LAST.with(Cell::get);
        if id == self.id {
            return p;
        }
        self.local_slow()
    }

    #[cold]
    fn local_slow(&self) -> NonNull<LocalPin> {
        let p = PINS.with(|pins| {
            let mut pins = pins.borrow_mut();
            if let Some(p) = pins.iter().find(|p| p.map_id == self.id) {
                return NonNull::from(&**p);
            }
            // Forget entries of maps that were dropped (only our Arc left);
            // the cache may point at one of them.
            LAST.with(|l| l.set((0, NonNull::dangling())));
            pins.retain(|p| Arc::strong_count(&p.slot) > 1 || p.depth.get() > 0);
            let slot = Arc::new(ThreadSlot::default());
            let mut reg = lock(&self.registry);
            reg.retain(|s| Arc::strong_count(s) > 1);
            reg.push(slot.clone());
            let p = Box::new(LocalPin {
                map_id: self.id,
                slot,
                depth: Cell::new(0),
            });
            let ptr = NonNull::from(&*p);
            pins.push(p);
            ptr
        });
        LAST.with(|l| l.set((self.id, p)));
        p
    }

    /// Pins this thread: until the pin drops, the current generation and
    /// every later one stay mapped.
    #[inline]
    pub(crate) fn pin(&self) -> Pin<'_, G> {
        let ptr = self.local();
        // SAFETY: records live in boxes owned by this thread's `PINS` and are
        // removed only when unpinned and their map is gone (see `PINS`).
        let local = unsafe { ptr.as_ref() };
        if local.depth.get() == 0 {
            loop {
                let g = self.current.load(Ordering::Acquire);
                // SAFETY: `current` always points to a live generation; a
                // generation is freed only after it stopped being current and
                // no pin older than it exists, and we re-check below that it
                // is still current after publishing our pin.
                let number = unsafe { (*g).number() };
                local.slot.pinned.store(number, Ordering::Relaxed);
                // Store-load barrier against `install`/`reclaim`: either they
                // see our pin, or we see their new current. With membarrier,
                // the reclaimer's barrier makes our compiler fence a full one.
                if asymmetric_barrier() {
                    std::sync::atomic::compiler_fence(Ordering::SeqCst);
                } else if !weakened(Weaken::PinFence) {
                    fence(Ordering::SeqCst);
                }
                if self.current.load(Ordering::Relaxed) == g {
                    break;
                }
            }
        }
        local.depth.set(local.depth.get() + 1);
        Pin {
            gens: self,
            local: ptr,
        }
    }

    /// Makes `new` current and retires the previous generation. The caller
    /// holds `switch`.
    pub(crate) fn install(&self, new: Box<G>) {
        let old = self.current.swap(Box::into_raw(new), Ordering::SeqCst);
        // SAFETY: `old` came from Box::into_raw in `new`/`install` and is no
        // longer reachable through `current`; it is freed only by `reclaim`.
        let old = unsafe { Box::from_raw(old) };
        let mut retired = lock(&self.retired);
        retired.push(old);
        self.retired_count.store(retired.len(), Ordering::Relaxed);
        drop(retired);
        self.reclaim();
    }

    /// The smallest non-zero pin of any thread.
    fn oldest_pin(&self) -> Option<u64> {
        lock(&self.registry)
            .iter()
            .map(|s| s.pinned.load(Ordering::Relaxed))
            .filter(|&p| p != 0)
            .min()
    }

    /// Detaches retired generations that no pinned thread can still use.
    pub(crate) fn reclaim(&self) {
        let Ok(mut retired) = self.retired.try_lock() else {
            return;
        };
        // A cheap first look: a pin read here may be stale, but a stale
        // non-zero pin only keeps more; if nothing looks free, stop before
        // paying for the barrier.
        let first = self.oldest_pin();
        if retired
            .iter()
            .all(|g| first.is_some_and(|p| g.number() >= p))
        {
            return;
        }
        heavy_barrier();
        fence(Ordering::SeqCst);
        let oldest_pin = self.oldest_pin();
        let (keep, free): (Vec<_>, Vec<_>) = retired
            .drain(..)
            .partition(|g| oldest_pin.is_some_and(|p| g.number() >= p));
        *retired = keep;
        self.retired_count.store(retired.len(), Ordering::Relaxed);
        drop(retired);
        for g in free {
            g.reclaimed();
            #[cfg(loom)]
            lock(&self.graveyard).push(g);
        }
    }

    /// Number of data segments this process has mapped for the handle.
    pub(crate) fn mapped(&self) -> usize {
        1 + lock(&self.retired).len()
    }
}

impl<G: Numbered> Drop for Gens<G> {
    fn drop(&mut self) {
        // SAFETY: dropping the handle: no pin (which borrows it) is alive;
        // the pointer came from Box::into_raw.
        drop(unsafe { Box::from_raw(self.current.load(Ordering::Relaxed)) });
    }
}

impl<G: Numbered> Pin<'_, G> {
    /// The current generation of this process (at least the pinned one).
    #[inline]
    pub(crate) fn current(&self) -> &G {
        // SAFETY: generations at or after our pinned number are not freed
        // while we are pinned, and `current` only moves forward.
        unsafe { &*self.gens.current.load(Ordering::Acquire) }
    }
}

impl<G: Numbered> Pin<'_, G> {
    fn record(&self) -> &LocalPin {
        // SAFETY: a pinned record (depth > 0) is never removed, and a `Pin`
        // stays on the thread that owns the record (it is not Send).
        unsafe { self.local.as_ref() }
    }
}

impl<G: Numbered> Clone for Pin<'_, G> {
    fn clone(&self) -> Self {
        let r = self.record();
        r.depth.set(r.depth.get() + 1);
        Pin {
            gens: self.gens,
            local: self.local,
        }
    }
}

impl<G: Numbered> Drop for Pin<'_, G> {
    fn drop(&mut self) {
        let r = self.record();
        let d = r.depth.get() - 1;
        r.depth.set(d);
        if d == 0 {
            r.slot.pinned.store(0, Ordering::Release);
            if self.gens.retired_count.load(Ordering::Relaxed) > 0 {
                self.gens.reclaim();
            }
        }
    }
}
