//! Change notification: the version in the futex word, and
//! `wait_for_change` (see `waiters` for who sleeps).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::engine::Engine;
use super::gens::Pin;
use super::layout::{RootHeader, CURRENT_DESTROYED};
use super::root;
use super::waiters;
use crate::error::{Error, Result};
use crate::sys::{self};

impl Engine {
    /// After a commit (lock held): publishes the version in the futex word
    /// and wakes sleepers, with a system call only if someone sleeps.
    pub(super) fn notify(&self, pin: &Pin<'_>) {
        waiters::publish_version(&*self.provider, self.root(), pin.current().table.version());
    }

    /// The root, writable, for registering as a sleeper: this handle's
    /// mapping, or for a read-only handle a second, writable mapping of the
    /// same root segment, attached on first use; `None` if this process may
    /// not write the root.
    fn sleeper_root(&self) -> Option<&RootHeader> {
        if !self.read_only {
            return Some(self.root());
        }
        if self.waiter_root.get().is_none() {
            // Only a refusal is final; another failure is tried again at
            // the next wait (a racing thread's mapping wins, ours drops).
            match self.provider.attach(self.root.id, false, &self.name) {
                Ok(seg) => drop(self.waiter_root.set(Some(seg))),
                Err(Error::PermissionDenied { .. }) => drop(self.waiter_root.set(None)),
                Err(_) => return None,
            }
        }
        let seg = self.waiter_root.get()?.as_ref()?;
        // SAFETY: the segment is this handle's root (validated at open),
        // mapped by `seg`, which lives as long as `self`.
        unsafe { root::root_at(seg.base(), seg.len()) }
    }

    /// Sleeps until the map's version differs from `since` or `timeout`
    /// passes; returns the new version, or `None` on timeout. Writers wake
    /// sleepers through a futex in the root segment (a system call only
    /// when someone sleeps); a sleeper wakes on its own only every 500 ms
    /// (a safety net). A read-only handle registers through a second,
    /// writable mapping of the root; only a process that may not write the
    /// root at all (another user's map, mode 0644) cannot, and polls every
    /// millisecond instead.
    pub(crate) fn wait_for_change(&self, since: u64, timeout: Duration) -> Result<Option<u64>> {
        // A timeout too large for the clock waits forever.
        let deadline = Instant::now().checked_add(timeout);
        let r = self.root();
        // Unregistered (the root is not writable for us, or every slot is
        // taken): writers do not wake us, so poll.
        let sleeper = self.sleeper_root();
        let registered = sleeper.and_then(waiters::register);
        // A map that wakes on every write wakes unregistered sleepers too.
        let woken = registered.is_some() || waiters::wakes_every_write(r);
        let tick = if woken {
            Duration::from_millis(500)
        } else if sleeper.is_none() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        loop {
            let seen = r.change_seq.load(Ordering::SeqCst);
            if r.current.load(Ordering::Acquire) == CURRENT_DESTROYED {
                return Err(Error::NotFound {
                    name: self.name.clone(),
                });
            }
            let v = self.version();
            if v != since {
                return Ok(Some(v));
            }
            let left = deadline.map_or(tick, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Ok(None);
            }
            match sleeper {
                Some(w) => sys::futex_wait(&w.change_seq, seen, left.min(tick)),
                // FUTEX_WAIT only reads the word: a read-only mapping will do.
                None if woken => sys::futex_wait(&r.change_seq, seen, left.min(tick)),
                None => std::thread::sleep(left.min(tick)),
            }
        }
    }
}
