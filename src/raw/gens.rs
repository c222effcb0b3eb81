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

use std::cell::{Cell, RefCell};
use std::ptr::{self, NonNull};

use super::table::Table;
use crate::sync::{fence, weakened, Arc, AtomicPtr, AtomicU64, AtomicUsize, Ordering, Weaken};
use crate::sys::{membarrier, Attached};

/// How a pin orders its slot store before re-reading `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BarrierMode {
    /// Reclaimers call `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`; a
    /// pin needs only a compiler fence.
    Membarrier,
    /// No usable membarrier: a `fence(SeqCst)` per pin.
    Fence,
}

/// Environment variable that forces [`BarrierMode::Fence`] (tests, and
/// kernels whose membarrier misbehaves).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) const FORCE_FENCE_ENV: &str = "SHMKV_PIN_FENCE";

/// The mode, given whether it is forced, the result of the membarrier
/// query and a registration attempt (called only if the query offers the
/// command). A failed registration falls back to the fence.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn choose_barrier(
    force_fence: bool,
    query: libc::c_long,
    register: impl FnOnce() -> libc::c_long,
) -> BarrierMode {
    let offered = query > 0 && query & libc::c_long::from(membarrier::PRIVATE_EXPEDITED) != 0;
    if !force_fence && offered && register() == 0 {
        BarrierMode::Membarrier
    } else {
        BarrierMode::Fence
    }
}

/// The process's barrier mode, decided on first use (0 = not yet, then
/// `1 + mode`). A plain atomic rather than a `OnceLock`: a `fork` while
/// another thread runs the registration (which can wait for an RCU grace
/// period) must not leave the child blocked on an initialisation that no
/// thread of the child will finish. Racing threads both register, which is
/// idempotent. Never membarrier under loom, which models the plain fence.
#[cfg(not(loom))]
static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// See [`MODE`].
#[inline]
pub(crate) fn barrier_mode() -> BarrierMode {
    #[cfg(loom)]
    {
        BarrierMode::Fence
    }
    #[cfg(not(loom))]
    {
        match MODE.load(std::sync::atomic::Ordering::Relaxed) {
            1 => BarrierMode::Membarrier,
            2 => BarrierMode::Fence,
            _ => init_barrier_mode(),
        }
    }
}

#[cfg(not(loom))]
#[cold]
fn init_barrier_mode() -> BarrierMode {
    let force = std::env::var_os(FORCE_FENCE_ENV).is_some_and(|v| v != "0" && !v.is_empty());
    let mode = choose_barrier(
        force,
        membarrier::query(),
        membarrier::register_private_expedited,
    );
    let code = match mode {
        BarrierMode::Membarrier => 1,
        BarrierMode::Fence => 2,
    };
    MODE.store(code, std::sync::atomic::Ordering::Relaxed);
    mode
}

/// The reclaimer's side of the asymmetric barrier: every running thread of
/// the process executes a full barrier before this returns. `false` if the
/// kernel refused (then nothing may be freed: pins made with only a
/// compiler fence are not ordered).
fn heavy_barrier() -> bool {
    #[cfg(not(loom))]
    if barrier_mode() == BarrierMode::Membarrier {
        for _ in 0..2 {
            if membarrier::private_expedited() == 0 {
                return true;
            }
            // Registration is inherited by `fork` and never revoked; if it
            // was lost anyway, register again and retry once.
            membarrier::register_private_expedited();
        }
        return false;
    }
    true
}

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

// ---------------------------------------------------------------------------
// fork

/// Process-local fork count, bumped in the child by a `pthread_atfork`
/// handler. `Gens` compares it with the value it last saw on its slow paths
/// (reclaim, stats, the switch lock): never on the read path.
static FORK_EPOCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// The token of the thread that called the latest `fork` (the only thread
/// the child has from the parent).
static SURVIVOR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
#[cfg_attr(loom, allow(dead_code))]
static NEXT_TOKEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

#[cfg(not(loom))]
thread_local! {
    /// This thread's token (0 = none yet); unique within the process, and
    /// kept by the thread that forks.
    static TOKEN: Cell<u32> = const { Cell::new(0) };
}

/// This thread's token (≥ 1). Under loom, 0: fork is not modelled.
fn token() -> u32 {
    #[cfg(loom)]
    {
        0
    }
    #[cfg(not(loom))]
    {
        TOKEN.with(|t| {
            if t.get() == 0 {
                t.set(NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            }
            t.get()
        })
    }
}

#[cfg(not(loom))]
extern "C" fn after_fork_in_child() {
    // Async-signal-safe: atomics and a const thread-local without a
    // destructor.
    SURVIVOR.store(TOKEN.with(Cell::get), std::sync::atomic::Ordering::Relaxed);
    FORK_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Release);
}

/// Registers the fork handler once per process. A flag rather than a
/// `Once`, for the same reason as [`MODE`]; a race registers twice, which
/// only bumps the epoch twice per fork.
fn register_fork_handler() {
    #[cfg(not(loom))]
    {
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !DONE.swap(true, std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: registers a plain extern "C" function with no
            // captured state; it stays valid for the life of the process.
            unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        }
    }
}

/// A lock that a `fork` does not leave held in the child: the word names
/// the fork epoch and the thread that took it; a holder from an earlier
/// epoch that is not the forking thread does not exist in this process, so
/// its hold is void. Waits spin, then yield, then sleep (holds are short:
/// attaching or installing a segment, one reclaim).
#[derive(Debug, Default)]
pub(crate) struct ForkLock {
    /// 0 = free; else `epoch << 32 | token << 1 | 1`.
    word: AtomicU64,
}

/// Holds a [`ForkLock`]; releases it on drop.
#[derive(Debug)]
pub(crate) struct ForkGuard<'a> {
    lock: &'a ForkLock,
}

impl ForkLock {
    fn stale(w: u64) -> bool {
        let epoch = FORK_EPOCH.load(std::sync::atomic::Ordering::Acquire);
        let survivor = SURVIVOR.load(std::sync::atomic::Ordering::Relaxed);
        (w >> 32) as u32 != epoch && (w as u32) >> 1 != survivor & 0x7fff_ffff
    }

    /// Takes the lock if it is free (or held by a thread lost to a fork).
    pub(crate) fn try_lock(&self) -> Option<ForkGuard<'_>> {
        let w = self.word.load(Ordering::Relaxed);
        if w != 0 && !Self::stale(w) {
            return None;
        }
        let epoch = FORK_EPOCH.load(std::sync::atomic::Ordering::Acquire);
        let me = u64::from(epoch) << 32 | u64::from(token() & 0x7fff_ffff) << 1 | 1;
        self.word
            .compare_exchange(w, me, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| ForkGuard { lock: self })
    }

    /// Takes the lock (not reentrant).
    pub(crate) fn lock(&self) -> ForkGuard<'_> {
        let mut tries = 0u32;
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            tries += 1;
            if cfg!(loom) || tries < 64 {
                crate::sync::spin_loop();
            } else if tries < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }
}

impl Drop for ForkGuard<'_> {
    fn drop(&mut self) {
        self.lock.word.store(0, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------
// pin records

/// Generations one record can name at once; a thread that pins more
/// distinct generations at the same time chains another record.
/// (Two under loom, to keep the models small.)
const SLOTS: usize = if cfg!(loom) { 2 } else { 4 };

/// Record states (the low two bits of `ThreadRec::state`): a thread's
/// thread-local owns it.
const OWNED: u64 = 0;
/// The thread-local that owned it is gone; the last unpin frees it.
const ORPHAN: u64 = 1;
/// Unused: a thread may claim it.
const FREE: u64 = 2;
/// Never used again: its owner was lost to a `fork` in the middle of a
/// `RefCell` borrow of `more` (its slots are cleared).
const DEAD: u64 = 3;

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
struct ThreadRec {
    /// Addresses of the generations pinned (0 = free slot). Written only by
    /// the owning thread, read by reclaimers.
    named: [AtomicUsize; SLOTS],
    /// Pins per slot. Touched only by the owning thread (or by the fork
    /// reset, once the owner does not exist).
    counts: [Cell<u32>; SLOTS],
    /// The next record of the same thread when all slots are busy (owner
    /// only; records reach it through the registry, not through this).
    more: RefCell<Option<Arc<ThreadRec>>>,
    /// `OWNED`, `ORPHAN`, `FREE` or `DEAD`, with owner and epoch
    /// (`state_word`).
    state: std::sync::atomic::AtomicU64,
    /// Whether the state is ORPHAN (owner only: the unpin reads this, not
    /// the shared word).
    orphan: Cell<bool>,
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
            named: std::array::from_fn(|_| AtomicUsize::new(0)),
            counts: std::array::from_fn(|_| Cell::new(0)),
            more: RefCell::new(None),
            state: std::sync::atomic::AtomicU64::new(state_word(state)),
            orphan: Cell::new(state == ORPHAN),
        }
    }

    /// Sets the state, keeping owner and epoch (owner only). For FREE,
    /// this is the record's last access by its owner.
    fn set_state(&self, state: u64) {
        use std::sync::atomic::Ordering as O;
        self.orphan.set(state == ORPHAN);
        let w = self.state.load(O::Relaxed);
        self.state.store(w & !3 | state, O::Release);
    }

    fn idle(&self) -> bool {
        self.counts.iter().all(|c| c.get() == 0)
    }
}

/// A registry entry (never removed while the registry lives; records are
/// reused instead).
struct Node {
    rec: Arc<ThreadRec>,
    next: *const Node,
}

/// A retired generation waiting for reclamation.
struct Retired<G> {
    gen: *mut G,
    next: *mut Retired<G>,
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

    /// The records of the registry.
    fn records(&self) -> impl Iterator<Item = &ThreadRec> {
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
    fn claim(&self, state: u64) -> Arc<ThreadRec> {
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
    fn local(&self) -> NonNull<ThreadRec> {
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
                if a != 0 {
                    v.push(a);
                }
            }
        }
        v
    }

    /// After a `fork`: drops the pins of threads the child does not have
    /// (records claimed in an earlier fork epoch by a thread other than the
    /// one that forked). Cheap when nothing forked: one load.
    fn after_fork(&self) {
        use std::sync::atomic::Ordering as O;
        let now = FORK_EPOCH.load(O::Acquire);
        let seen = self.fork_epoch.load(O::Relaxed);
        if seen == now
            || self
                .fork_epoch
                .compare_exchange(seen, now, O::Relaxed, O::Relaxed)
                .is_err()
        {
            return;
        }
        let survivor = SURVIVOR.load(O::Relaxed) & 0x3fff_ffff;
        for r in self.records() {
            let w = r.state.load(O::Acquire);
            let (epoch, owner) = ((w >> 32) as u32, (w >> 2) as u32 & 0x3fff_ffff);
            if w & 3 < FREE && epoch != now && owner != survivor {
                // The owner does not exist in this process (claimers only
                // take FREE records, so nobody else changes this one): its
                // pins are void.
                for (s, c) in r.named.iter().zip(&r.counts) {
                    c.set(0);
                    s.store(0, Ordering::Relaxed);
                }
                r.orphan.set(false);
                let state = match r.more.try_borrow_mut() {
                    Ok(mut m) => {
                        drop(m.take());
                        FREE
                    }
                    Err(_) => DEAD,
                };
                r.state.store(w & !3 | state, O::Release);
            }
        }
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
            if named.contains(&(gen as usize)) {
                prev = n;
            } else {
                self.unlink(prev, n, next);
                self.retired_count.fetch_sub(1, Ordering::Relaxed);
                // SAFETY: unlinked under the lock: ours. Its generation is
                // retired (not reachable through `current`) and named by no
                // pin after the barrier, so no thread uses it or can pin it
                // again. Both came from Box::into_raw.
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

impl<G: Numbered> Pin<'_, G> {
    /// The current generation of this process; it stays mapped while the
    /// pin lives (the pin takes a further hold if `current` moved).
    #[inline]
    pub(crate) fn current(&self) -> &G {
        let c = self.gens.current.load(Ordering::Acquire);
        if c == self.gen.get() {
            // SAFETY: `gen` is named by one of this pin's slots.
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
        // SAFETY: just pinned.
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize as StdUsize, Ordering as O};
    use std::time::Duration;

    /// A stand-in generation.
    struct D(u64);

    impl Numbered for D {
        fn number(&self) -> u64 {
            self.0
        }
    }

    impl Drop for D {
        fn drop(&mut self) {
            // SAFETY: a valid, exclusively borrowed u64; volatile so that
            // the poison is written although the memory is freed next.
            unsafe { std::ptr::write_volatile(&mut self.0, u64::MAX) };
        }
    }

    #[test]
    fn a_failed_membarrier_registration_selects_the_fence() {
        let offered = libc::c_long::from(crate::sys::membarrier::PRIVATE_EXPEDITED | 1);
        assert_eq!(
            choose_barrier(false, offered, || 0),
            BarrierMode::Membarrier
        );
        assert_eq!(choose_barrier(false, offered, || -1), BarrierMode::Fence);
        assert_eq!(
            choose_barrier(true, offered, || panic!("forced: no registration")),
            BarrierMode::Fence
        );
        assert_eq!(
            choose_barrier(false, -1, || panic!("not offered: no registration")),
            BarrierMode::Fence
        );
        assert_eq!(
            choose_barrier(false, 1, || panic!("not offered: no registration")),
            BarrierMode::Fence
        );
    }

    /// Pins, installs and reclaims from several threads; every generation a
    /// pin returns stays intact until the pin drops.
    fn hammer(gens: &Gens<D>) {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while !stop.load(O::Relaxed) {
                        let p = gens.pin();
                        let g = p.current();
                        let n = g.0;
                        let q = gens.pin();
                        assert!(q.current().0 >= n);
                        drop(q);
                        let h = p.current();
                        std::thread::yield_now();
                        // Still intact (a reclaimed D is poisoned first).
                        assert_eq!((g.0, h.0 >= n), (n, true));
                    }
                });
            }
            for n in 2..2000 {
                let _g = gens.lock_switch();
                gens.install(Box::new(D(n)));
            }
            stop.store(true, O::Relaxed);
        });
        // An unpin racing with the last install's reclaim may have been
        // missed by it (no fence on unpin); the next reclaim frees it.
        gens.reclaim();
        assert_eq!(gens.mapped(), 1);
    }

    /// Runs `test` in a child process of this test binary with `env`.
    fn rerun(test: &str, env: (&str, &str)) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--test-threads=1", "--nocapture"])
            .env(env.0, env.1)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{test} failed in the child: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }

    #[test]
    fn the_fence_fallback_pins_correctly() {
        if std::env::var_os(FORCE_FENCE_ENV).is_none() {
            rerun(
                "raw::gens::tests::the_fence_fallback_pins_correctly",
                (FORCE_FENCE_ENV, "1"),
            );
            return;
        }
        assert_eq!(barrier_mode(), BarrierMode::Fence);
        hammer(&Gens::new(Box::new(D(1))));
    }

    #[test]
    fn pins_hold_under_contention() {
        hammer(&Gens::new(Box::new(D(1))));
    }

    #[test]
    fn exited_threads_records_are_reused() {
        let gens = std::sync::Arc::new(Gens::new(Box::new(D(1))));
        for n in 0..50 {
            // `join` returns after the thread's thread-locals are destroyed.
            let g = gens.clone();
            std::thread::spawn(move || drop(g.pin())).join().unwrap();
            gens.install(Box::new(D(n + 2)));
        }
        assert!(gens.records().count() <= 2, "{}", gens.records().count());
        assert_eq!(gens.mapped(), 1);
    }

    #[test]
    fn fork_lock_excludes() {
        let lock = ForkLock::default();
        let n = StdUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let _g = lock.lock();
                        let v = n.load(O::Relaxed);
                        std::hint::spin_loop();
                        n.store(v + 1, O::Relaxed);
                    }
                });
            }
        });
        assert_eq!(n.load(O::Relaxed), 8000);
    }

    /// A fork while one thread of the parent holds the switch and reclaim
    /// locks and another is pinned: the child takes both locks, reclaims
    /// past the stale pin and exits; a hang is ended by SIGALRM.
    #[test]
    fn a_fork_child_does_not_inherit_held_locks_or_pins() {
        let gens = Gens::new(Box::new(D(1)));
        let held = StdUsize::new(0);
        let release = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _a = gens.lock_switch();
                let _b = gens.reclaiming.lock();
                held.fetch_add(1, O::SeqCst);
                while !release.load(O::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            s.spawn(|| {
                let p = gens.pin();
                held.fetch_add(1, O::SeqCst);
                while !release.load(O::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert_eq!(p.current().0, 1);
            });
            while held.load(O::SeqCst) < 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
            // SAFETY: the child only uses `gens` (and the allocator, which
            // glibc makes fork-safe) and then `_exit`s.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // SAFETY: plain integer argument.
                unsafe { libc::alarm(10) };
                let mut code = 0;
                for n in 2..22 {
                    let _g = gens.lock_switch();
                    gens.install(Box::new(D(n)));
                    if gens.mapped() > 1 {
                        code = 1;
                    }
                }
                // SAFETY: ends the child without unwinding into the harness.
                unsafe { libc::_exit(code) };
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            release.store(true, O::SeqCst);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child: exited {} with {}, signal {}",
                libc::WIFEXITED(status),
                libc::WEXITSTATUS(status),
                libc::WTERMSIG(status)
            );
        });
    }
}
