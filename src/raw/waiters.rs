//! Sleepers in `wait_for_change`, recorded in the root so that writers make
//! a `FUTEX_WAKE` system call only when someone sleeps (DESIGN.md "Change
//! notification"). Each sleeping process holds one of the root's
//! `waiter_slots`, `pid << 32 | count` (compare-and-swap only, so a process
//! killed at any instruction leaves either its slot or nothing); writers
//! wake only if a slot is taken (one cache line to load), and a writer
//! whose wake-up found nobody asleep frees the slots of processes that no
//! longer exist.

use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::{RootHeader, ROOT_FLAG_WAKE_EVERY_WRITE};
use super::provider::Provider;
use crate::sys;

/// Bits of a waiter slot that hold the pid.
const PID_SHIFT: u32 = 32;
/// Mask of the count in a waiter slot.
const COUNT_MASK: u64 = (1 << PID_SHIFT) - 1;

/// This process's sleeper registration; leaves on drop.
pub(crate) struct Waiting<'r> {
    slot: &'r AtomicU64,
    pid: u64,
}

/// Registers one sleeper of this process in `r` (a writable root). `None`
/// if every slot is taken by other processes: the caller then polls.
pub(crate) fn register(r: &RootHeader) -> Option<Waiting<'_>> {
    let pid = u64::from(std::process::id());
    let slot = r.waiter_slots.iter().find(|s| {
        let mut w = s.load(Ordering::SeqCst);
        loop {
            let next = match w >> PID_SHIFT {
                p if p == pid && w & COUNT_MASK < COUNT_MASK => w + 1,
                0 if w == 0 => pid << PID_SHIFT | 1,
                _ => return false,
            };
            match s.compare_exchange(w, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
    })?;
    Some(Waiting { slot, pid })
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut w = self.slot.load(Ordering::Relaxed);
        loop {
            // Freed meanwhile (the pid looked dead to a writer, e.g. from
            // another pid namespace): nothing left to take back.
            if w >> PID_SHIFT != self.pid || w & COUNT_MASK == 0 {
                return;
            }
            let next = if w & COUNT_MASK == 1 { 0 } else { w - 1 };
            match self
                .slot
                .compare_exchange(w, next, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => w = now,
            }
        }
    }
}

/// Whether the map wakes on every write (see `Options::wake_every_write`).
pub(crate) fn wakes_every_write(r: &RootHeader) -> bool {
    r.flags.load(Ordering::Relaxed) & ROOT_FLAG_WAKE_EVERY_WRITE != 0
}

/// Whether any process has registered a sleeper.
fn anyone_waits(r: &RootHeader) -> bool {
    r.waiter_slots.iter().any(|s| s.load(Ordering::SeqCst) != 0)
}

/// Stores the version's low 32 bits in the futex word and wakes the
/// sleepers, with a system call only if a slot is taken. A wake-up that
/// found nobody asleep frees the slots of dead processes (dead as the
/// provider `p` tells).
pub(crate) fn publish_version(p: &dyn Provider, r: &RootHeader, version: u64) {
    let v = version as u32;
    if r.change_seq.load(Ordering::Relaxed) == v {
        return;
    }
    r.change_seq.store(v, Ordering::SeqCst);
    if wakes_every_write(r) {
        sys::futex_wake_all(&r.change_seq);
    } else if anyone_waits(r) && sys::futex_wake_all(&r.change_seq) == 0 {
        reap_dead(p, r);
    }
}

/// Wakes every sleeper whatever the version (the map was destroyed).
pub(crate) fn wake_all(r: &RootHeader) {
    r.change_seq.fetch_add(1, Ordering::SeqCst);
    if anyone_waits(r) || wakes_every_write(r) {
        sys::futex_wake_all(&r.change_seq);
    }
}

/// Frees the slots of processes that died while registered.
fn reap_dead(p: &dyn Provider, r: &RootHeader) {
    for s in &r.waiter_slots {
        let w = s.load(Ordering::Relaxed);
        if w != 0 && !p.process_alive((w >> PID_SHIFT) as u32) {
            let _ = s.compare_exchange(w, 0, Ordering::SeqCst, Ordering::Relaxed);
        }
    }
}
