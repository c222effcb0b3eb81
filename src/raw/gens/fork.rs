//! Surviving `fork`: the process-local fork epoch and thread tokens, the
//! `pthread_atfork` handler that bumps the epoch in the child, [`ForkLock`]
//! (a lock a `fork` does not leave held in the child), and the fork reset
//! of pin records (`Gens::after_fork`: the pins of threads the child does
//! not have are void).

#[cfg(not(loom))]
use std::cell::Cell;

use super::records::{DEAD, FREE};
use super::{Gens, Numbered};
use crate::sync::{AtomicU64, Ordering};

/// Process-local fork count, bumped in the child by a `pthread_atfork`
/// handler. `Gens` compares it with the value it last saw on its slow paths
/// (reclaim, stats, the switch lock), a batch with the epoch it began in
/// (`RawBatch::check_process`), and the writer lock with its guard's
/// (`Engine::lock`, `WriteGuard::drop`): never on the read path.
pub(super) static FORK_EPOCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
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
pub(super) fn token() -> u32 {
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

/// Whether the fork reset keeps, instead of voiding, the pins of threads
/// the child does not have (`retain_foreign_pins_at_fork`). Off unless a
/// binding turns it on.
static RETAIN_FOREIGN_PINS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// From now on, a forked child keeps the generations that other threads of
/// its parent had pinned at the fork mapped for its whole life (their
/// records become DEAD with their counted slots still named), instead of
/// voiding those pins. For bindings whose pinned bytes are reachable from
/// every thread (the Python package's `get_buffer` views: a view taken on
/// one thread may be read by the thread that forks, in the child). The
/// cost: those generations stay mapped in the child.
pub(crate) fn retain_foreign_pins_at_fork() {
    RETAIN_FOREIGN_PINS.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(loom))]
extern "C" fn after_fork_in_child() {
    // Async-signal-safe: atomics and a const thread-local without a
    // destructor.
    SURVIVOR.store(TOKEN.with(Cell::get), std::sync::atomic::Ordering::Relaxed);
    FORK_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Release);
}

/// Registers the fork handler once per process. A flag rather than a
/// `Once`, for the same reason as `barrier::MODE`. The flag is set only
/// after a registration returned, so no caller goes on (to begin a batch
/// that a child must see as its parent's) before some handler is in
/// place; first callers that race all register, which only bumps the
/// epoch more than once per fork. (Before, the flag was claimed first: a
/// second thread could open a map, begin a batch and fork while the first
/// was still registering, and the child took that batch for its own.)
pub(super) fn register_fork_handler() {
    #[cfg(not(loom))]
    {
        use std::sync::atomic::Ordering as O;
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !DONE.load(O::Acquire) {
            #[cfg(test)]
            registration_paused();
            // SAFETY: registers a plain extern "C" function with no
            // captured state; it stays valid for the life of the process.
            unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
            DONE.store(true, O::Release);
        }
    }
}

/// Test hook: 1 = the next registration pauses (the hook then reads 2)
/// until a test stores 0.
#[cfg(all(test, not(loom)))]
pub(super) static PAUSE_REGISTRATION: std::sync::atomic::AtomicU8 =
    std::sync::atomic::AtomicU8::new(0);

#[cfg(all(test, not(loom)))]
fn registration_paused() {
    use std::sync::atomic::Ordering as O;
    if PAUSE_REGISTRATION
        .compare_exchange(1, 2, O::SeqCst, O::SeqCst)
        .is_ok()
    {
        while PAUSE_REGISTRATION.load(O::SeqCst) != 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
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

impl<G: Numbered> Gens<G> {
    /// After a `fork`: drops the pins of threads the child does not have
    /// (records claimed in an earlier fork epoch by a thread other than the
    /// one that forked). Cheap when nothing forked: one load.
    pub(super) fn after_fork(&self) {
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
                // pins are void. Unless a binding asked to keep them (its
                // pinned bytes are reachable from the surviving thread):
                // then the counted slots stay named and the record DEAD,
                // never reused or released.
                if RETAIN_FOREIGN_PINS.load(O::Relaxed) && !r.idle() {
                    for (s, c) in r.named.iter().zip(&r.counts) {
                        if c.get() == 0 {
                            s.store(std::ptr::null_mut(), Ordering::Relaxed);
                        }
                    }
                    r.state.store(w & !3 | DEAD, O::Release);
                    continue;
                }
                for (s, c) in r.named.iter().zip(&r.counts) {
                    c.set(0);
                    s.store(std::ptr::null_mut(), Ordering::Relaxed);
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
}
