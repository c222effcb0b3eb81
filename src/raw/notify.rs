//! Change notification: the version in the futex word, and
//! `wait_for_change` (see `waiters` for who sleeps).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::engine::Engine;
use super::gens::Pin;
use super::layout::CURRENT_DESTROYED;
use super::waiters;
use crate::error::{Error, Result};
use crate::sys::{self};

impl Engine {
    /// After a commit (lock held): publishes the version in the futex word
    /// and wakes sleepers, with a system call only if someone sleeps.
    pub(super) fn notify(&self, pin: &Pin<'_>) {
        waiters::publish_version(self.root(), pin.current().table.version());
    }

    /// Sleeps until the map's version differs from `since` or `timeout`
    /// passes; returns the new version, or `None` on timeout. Writers wake
    /// sleepers through a futex in the root segment (a system call only
    /// when someone sleeps). A read-only handle cannot register as a
    /// sleeper and polls every millisecond instead.
    pub(crate) fn wait_for_change(&self, since: u64, timeout: Duration) -> Result<Option<u64>> {
        // A timeout too large for the clock waits forever.
        let deadline = Instant::now().checked_add(timeout);
        let r = self.root();
        // Unregistered (read-only, or every slot taken): writers do not
        // wake us, so poll.
        let registered = if self.read_only {
            None
        } else {
            waiters::register(r)
        };
        let tick = if registered.is_some() {
            Duration::from_millis(500)
        } else if self.read_only {
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
            if self.read_only {
                std::thread::sleep(left.min(tick));
            } else {
                sys::futex_wait(&r.change_seq, seen, left.min(tick));
            }
        }
    }
}
