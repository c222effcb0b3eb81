//! The heap provider's writer lock: a mutex-and-condvar lock per key in
//! the `HeapKernel` registry, with a timeout, the creator tag, and removal
//! (waiters get `NotFound`), standing in for a SysV semaphore set.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::heap::{locked, not_found, HeapKernel, Registry};
use super::LockSet;
use crate::error::{Error, Result};
use crate::sys::deadline_after;

/// A map's lock in the registry.
#[derive(Debug)]
pub(super) struct HeapLock {
    pub(super) id: i32,
    pub(super) state: Mutex<LockState>,
    pub(super) freed: Condvar,
}

#[derive(Debug, Default)]
pub(super) struct LockState {
    pub(super) held: bool,
    /// The pid of the last operation (like `GETPID`).
    pub(super) pid: i32,
    /// The creator-of-the-root tag.
    pub(super) creating: Option<i32>,
    pub(super) removed: bool,
}

/// A handle's reference to a lock of the registry.
#[derive(Debug)]
pub(super) struct HeapLockRef {
    lock: Arc<HeapLock>,
    key: libc::key_t,
    reg: Arc<Mutex<Registry>>,
}

impl HeapKernel {
    pub(super) fn lock_ref(&self, key: libc::key_t, lock: Arc<HeapLock>) -> HeapLockRef {
        HeapLockRef {
            lock,
            key,
            reg: self.reg.clone(),
        }
    }
}

impl HeapLockRef {
    fn op(&self) -> MutexGuard<'_, LockState> {
        let mut s = locked(&self.lock.state);
        s.pid = std::process::id() as i32;
        s
    }
}

impl LockSet for HeapLockRef {
    fn mark_creating_root(&self, _name: &str) -> Result<()> {
        self.op().creating = Some(std::process::id() as i32);
        Ok(())
    }

    fn unmark_creating_root(&self, _name: &str) -> Result<()> {
        self.op().creating = None;
        Ok(())
    }

    fn creating_root_pid(&self) -> Option<i32> {
        locked(&self.lock.state).creating
    }

    fn acquire(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let deadline = deadline_after(timeout);
        let mut s = locked(&self.lock.state);
        loop {
            if s.removed {
                return Err(not_found("(destroyed while open)"));
            }
            if !s.held {
                s.held = true;
                s.pid = std::process::id() as i32;
                return Ok(());
            }
            let wait = match deadline {
                None => Duration::from_secs(3600),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => {
                        return Err(Error::LockTimeout {
                            waited: start.elapsed(),
                            holder_pid: Some(s.pid),
                        })
                    }
                },
            };
            s = self
                .lock
                .freed
                .wait_timeout(s, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn try_acquire(&self) -> Result<bool> {
        let mut s = locked(&self.lock.state);
        if s.removed {
            return Err(not_found("(destroyed while open)"));
        }
        if s.held {
            return Ok(false);
        }
        s.held = true;
        s.pid = std::process::id() as i32;
        Ok(true)
    }

    fn release(&self) -> Result<()> {
        let mut s = self.op();
        if s.removed {
            return Err(not_found("(destroyed while open)"));
        }
        s.held = false;
        drop(s);
        self.lock.freed.notify_one();
        Ok(())
    }

    fn value(&self) -> Option<i32> {
        let s = locked(&self.lock.state);
        (!s.removed).then_some(i32::from(!s.held))
    }

    fn last_pid(&self) -> Option<i32> {
        let s = locked(&self.lock.state);
        (!s.removed && s.pid != 0).then_some(s.pid)
    }

    fn remove(&self) {
        self.op().removed = true;
        self.lock.freed.notify_all();
        // Lock order: a lock's state is never held while taking the registry.
        let mut r = locked(&self.reg);
        if r.locks
            .get(&self.key)
            .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            r.locks.remove(&self.key);
        }
    }

    fn id(&self) -> i32 {
        self.lock.id
    }
}
