//! The read path of the engine: lock-free lookups in the generation in
//! force, reads through a committed log while it is applied (`overlay`),
//! stall handling (a writer slow or dead in the middle of an apply), views.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::{Arc, TryLockError};
use std::time::{Duration, Instant};

use super::engine::{Engine, WriteGuard};
use super::gens::{Generation, Pin};
use super::overlay::{Overlay, ReadState};
use super::reference::{Entry, Ref};
use super::table::{ReadErr, Table};
use super::view::{check_record, RawView};
use crate::error::{Error, Result};
use crate::hash::hash_key;

impl Engine {
    /// Runs a lock-free read on generation `g`, handling stalls (a writer
    /// slow or dead in the middle of applying a write) without ever waiting
    /// forever.
    #[inline]
    pub(super) fn read_in<T>(
        &self,
        g: &Generation,
        mut op: impl FnMut(&Table) -> Result<T, ReadErr>,
    ) -> Result<T> {
        match op(&g.table) {
            Ok(v) => Ok(v),
            Err(ReadErr::Corrupted(what)) => Err(Error::corrupted(what)),
            Err(ReadErr::Stalled) => self.read_slow(g, op),
        }
    }

    #[cold]
    pub(super) fn read_slow<T>(
        &self,
        g: &Generation,
        mut op: impl FnMut(&Table) -> Result<T, ReadErr>,
    ) -> Result<T> {
        let start = Instant::now();
        loop {
            self.unstick(start)?;
            match op(&g.table) {
                Ok(v) => return Ok(v),
                Err(ReadErr::Corrupted(what)) => return Err(Error::corrupted(what)),
                Err(ReadErr::Stalled) => {}
            }
        }
    }

    /// A read while the root says a committed write is being applied: `op`
    /// gets the write's log (if it is still pending in `g`) and must read
    /// the after state through it (see `overlay`).
    #[cold]
    pub(super) fn read_applying<T>(
        &self,
        g: &Generation,
        mut op: impl FnMut(&Table, Option<&Overlay>) -> Result<T, ReadErr>,
    ) -> Result<T> {
        self.read_in(g, |t| {
            let state = self.read_state(g)?;
            op(t, state.overlay.as_deref())
        })
    }

    /// `Table::read_state` of `g`, with this process's cache of parsed logs.
    pub(super) fn read_state(&self, g: &Generation) -> Result<ReadState, ReadErr> {
        // Nothing committed is pending (the writer died before its commit
        // store, or finished meanwhile): no lock, no log.
        let h = g.table.header();
        let seq = h.view_seq.load(Ordering::Acquire);
        if seq & 1 == 0 && h.commit.load(Ordering::Acquire) == 0 {
            return Ok(ReadState { seq, overlay: None });
        }
        // The cache's lock is only tried, never waited for: the cache only
        // saves parsing, and a `fork` leaves the lock held for good in the
        // child if another thread of the parent held it then (std's lock
        // does not know about `fork`); a read must not wait for a thread
        // this process does not have. Contention only costs a parse.
        let cached = tried(self.overlay_cache.try_read()).and_then(|c| {
            c.as_ref()
                .filter(|(w, _)| *w == g.word)
                .map(|c| c.1.clone())
        });
        let state = g.table.read_state(cached.as_ref())?;
        if let Some(o) = &state.overlay {
            if cached.is_none_or(|c| !Arc::ptr_eq(&c, o)) {
                if let Some(mut slot) = tried(self.overlay_cache.try_write()) {
                    *slot = Some((g.word, o.clone()));
                }
            }
        }
        Ok(state)
    }

    /// A read found a bucket odd for too long. If the write lock is free the
    /// writer died: take the lock and recover. If it is held, back off. A
    /// read-only handle cannot recover and only backs off. Gives up with
    /// `LockTimeout` after the lock timeout.
    pub(super) fn unstick(&self, start: Instant) -> Result<()> {
        if start.elapsed() > self.lock_timeout {
            return Err(Error::LockTimeout {
                waited: start.elapsed(),
                holder_pid: self.sem.last_pid(),
            });
        }
        if !self.read_only
            && self.sem.value() == Some(1)
            && self.sem.try_acquire().map_err(|e| self.named(e))?
        {
            // SAFETY: `try_acquire` just took the semaphore for this thread.
            let guard = unsafe { WriteGuard::new(self) };
            let pin = self.gens.pin();
            let g = self.recover_locked(&pin, guard.token())?;
            if !g.table.needs_recovery() {
                g.table.close_odd_slots(guard.token());
            }
            self.notify(&pin);
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
        Ok(())
    }

    /// The value stored under `key`, zero-copy.
    ///
    /// The fast path (no write being applied, no `verify_reads`, the
    /// lookup completed) is kept small so that it inlines into callers;
    /// everything else is `get_ref_slow`.
    #[inline(always)]
    pub(crate) fn get_ref(&self, key: &[u8]) -> Result<Option<Ref<'_, [u8]>>> {
        let h = hash_key(self.seed, key);
        let pin = self.gens.pin();
        // `current_held`, not `current`: the pin stays in registers.
        if let Some(g) = pin.current_held() {
            let root = self.root();
            if root.current.load(Ordering::Acquire) == g.word
                && root.applying.load(Ordering::Acquire) == 0
                && !self.verify_reads
            {
                if let Ok(found) = g.table.find(key, h) {
                    let value = found.map(|f| NonNull::from(g.table.value_of(&f)));
                    return Ok(value.map(|value| Ref { value, _pin: pin }));
                }
            }
        }
        self.get_ref_slow(key, h, pin)
    }

    /// `get_ref` past its fast path: a write being applied (or a stalled
    /// or corrupted lookup, read again here), `verify_reads`, a switch.
    #[cold]
    #[inline(never)]
    fn get_ref_slow<'m>(
        &'m self,
        key: &[u8],
        h: u64,
        pin: Pin<'m>,
    ) -> Result<Option<Ref<'m, [u8]>>> {
        let g = self.current(&pin)?;
        let fast = if self.root().applying.load(Ordering::Acquire) == 0 {
            g.table.find(key, h)
        } else {
            Err(ReadErr::Stalled)
        };
        let found = match fast {
            Ok(found) => found,
            Err(ReadErr::Corrupted(what)) => return Err(Error::corrupted(what)),
            // A write is being applied (also one that began after our look
            // at `applying`, or whose writer died): read what it committed.
            Err(ReadErr::Stalled) => self.read_applying(g, |t, o| match o {
                Some(o) => o.find(t, key, h),
                None => t.find(key, h),
            })?,
        };
        if self.verify_reads {
            check_record(&g.table, found.as_ref())?;
        }
        let value = found.map(|f| NonNull::from(g.table.value_of(&f)));
        Ok(value.map(|value| Ref { value, _pin: pin }))
    }

    /// A copy of the value stored under `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_ref(key)?.map(|v| v.to_vec()))
    }

    /// Whether `key` is present.
    pub(crate) fn contains_key(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get_ref(key)?.is_some())
    }

    /// Number of entries, the hidden sync state not counted: the live
    /// count and the lookup of the state from one consistent snapshot, as
    /// a view reads it (read apart, a state written or removed between the
    /// two reads gave a count the map never had). After a few raced tries
    /// (writes committing back to back), the two reads apart. Takes the
    /// lock or sleeps only as any lookup does: after a writer died
    /// mid-write, leaving odd slots.
    pub(crate) fn len(&self) -> usize {
        const TRIES: u32 = 16;
        let pin = self.gens.pin();
        for _ in 0..TRIES {
            let Ok(g) = self.current(&pin) else { break };
            let Ok(state) = self.read_state(g) else {
                crate::sync::spin_loop();
                continue;
            };
            let seq = state.seq;
            let view = RawView {
                map: self,
                gen: NonNull::from(g),
                pin: pin.clone(),
                overlay: state.overlay,
                seq,
            };
            let n = view.user_len();
            if g.table.view_validate(seq) {
                return n;
            }
        }
        self.len_unsynchronised()
    }

    /// `len` from two reads that a write can fall between.
    fn len_unsynchronised(&self) -> usize {
        let live = {
            let pin = self.gens.pin();
            let g = self.current_or_local(&pin);
            match self.applying_in(g) {
                Some(o) => o.redo.live as usize,
                None => g.table.header().live.load(Ordering::Acquire) as usize,
            }
        };
        live.saturating_sub(usize::from(self.has_sync_state()))
    }

    /// Whether the map holds the sync state key (an error reads as no).
    fn has_sync_state(&self) -> bool {
        matches!(self.get_ref(crate::SYNC_STATE_KEY), Ok(Some(_)))
    }

    /// The committed write being applied to `g`, if the root says one is
    /// (for counters: the after state's).
    pub(super) fn applying_in(&self, g: &Generation) -> Option<Arc<Overlay>> {
        if self.root().applying.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.read_state(g).ok()?.overlay
    }

    /// Whether the map has no entries.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The map's version: the number of writes committed so far. Any write
    /// advances it; a reader can compare versions to detect changes.
    pub(crate) fn version(&self) -> u64 {
        let pin = self.gens.pin();
        let g = self.current_or_local(&pin);
        match self.applying_in(g) {
            Some(o) => o.version(),
            None => g.table.version(),
        }
    }

    /// Every entry, as one consistent snapshot (see [`RawMap::view`](crate::RawMap::view)).
    pub(crate) fn entries(&self) -> Result<Vec<Entry<'_>>> {
        self.view(|v| v.entries())
    }

    /// Runs `f` over a consistent snapshot: no write is applied between the
    /// first and the last read `f` makes. `f` may run more than once (when a
    /// write raced with it); only the result of a consistent run is
    /// returned. After many races a read-write handle runs it under the
    /// write lock; a read-only handle, which cannot, backs off (sleeps of
    /// up to 10 ms) and gives up with [`Error::Busy`](crate::Error::Busy) once the lock timeout
    /// has passed.
    pub(crate) fn view<'m, R>(&'m self, mut f: impl FnMut(&RawView<'m>) -> Result<R>) -> Result<R> {
        const OPTIMISTIC_TRIES: u32 = 64;
        let start = Instant::now();
        let pin = self.gens.pin();
        let mut tries = 0;
        loop {
            let g = self.current(&pin)?;
            let state = match self.read_state(g) {
                Ok(s) => s,
                Err(ReadErr::Stalled) => {
                    self.unstick(start)?;
                    continue;
                }
                Err(ReadErr::Corrupted(w)) => return Err(Error::corrupted(w)),
            };
            let view = RawView {
                map: self,
                gen: NonNull::from(g),
                pin: pin.clone(),
                overlay: state.overlay,
                seq: state.seq,
            };
            let r = f(&view);
            if g.table.view_validate(state.seq) {
                return r;
            }
            tries += 1;
            if tries >= OPTIMISTIC_TRIES && !self.read_only {
                let guard = self.lock()?;
                let g = self.recover_locked(&pin, guard.token())?;
                return f(&RawView {
                    map: self,
                    gen: NonNull::from(g),
                    pin: pin.clone(),
                    overlay: None,
                    seq: g.table.header().view_seq.load(Ordering::Acquire),
                });
            }
            if tries >= OPTIMISTIC_TRIES {
                // Read-only: writers keep committing (a stalled write is
                // handled above, by `unstick`). Back off, then give up with
                // the true cause.
                if start.elapsed() > self.lock_timeout {
                    return Err(Error::Busy {
                        name: self.name.clone(),
                        changes: u64::from(tries),
                        waited: start.elapsed(),
                    });
                }
                let backoff = 50u64 << (tries - OPTIMISTIC_TRIES).min(8);
                std::thread::sleep(Duration::from_micros(backoff.min(10_000)));
            }
        }
    }
}

/// The guard of a `try_read`/`try_write`: also when poisoned (the cache
/// only saves parsing), `None` when the lock is taken.
fn tried<G>(r: std::sync::TryLockResult<G>) -> Option<G> {
    match r {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
mod fork_tests {
    //! The process-local cache of parsed redo logs across `fork()`.
    use std::time::Duration;

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    use crate::raw::hooks::{arm, CrashPoint};
    use crate::{Options, RawMap};

    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = RawMap::destroy_by_name(&self.0, &Options::new());
        }
    }

    /// A child forked while another thread of its parent held the cache's
    /// lock (storing a log it had just parsed) reads a map whose write is
    /// committed but not applied (its writer died): the read must not wait
    /// for a thread the child does not have. Before: the child's read
    /// blocked for good on the inherited `RwLock` (SIGALRM).
    #[test]
    #[cfg_attr(miri, ignore = "SysV segments, a crash point and fork")]
    fn a_child_reads_through_a_log_while_a_parent_thread_held_the_cache() {
        let name = format!("shmkv-unit-overlay-fork-{}", std::process::id());
        let _c = Cleanup(name.clone());
        let opts = Options::new()
            .capacity(16)
            .lock_timeout(Duration::from_millis(300));
        let m = RawMap::create(&name, &opts).unwrap();
        m.insert(b"k", b"old").unwrap();
        // A writer that dies right after its commit store.
        // SAFETY: the child only writes the map (and is killed there).
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                arm(CrashPoint::AfterCommit, 0);
                let _ = m.insert(b"k", b"new");
                // SAFETY: not reached (the crash point kills the process).
                unsafe { libc::_exit(3) };
            }
            ForkResult::Parent { child } => {
                let st = waitpid(child, None).unwrap();
                assert!(
                    matches!(st, WaitStatus::Signaled(_, nix::sys::signal::SIGKILL, _)),
                    "{st:?}"
                );
            }
        }
        // A read-only handle cannot recover: it reads through the log.
        let ro = RawMap::open(&name, &opts.clone().read_only(true)).unwrap();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let status = std::thread::scope(|s| {
            let ro = &ro;
            s.spawn(move || {
                let g = ro.engine().overlay_cache.write().unwrap();
                held_tx.send(()).unwrap();
                let _ = done_rx.recv();
                drop(g);
            });
            held_rx.recv().unwrap();
            // SAFETY: the child reads the map and `_exit`s.
            let st = match unsafe { fork() }.unwrap() {
                ForkResult::Child => {
                    // SAFETY: plain integer argument; a hung child dies.
                    unsafe { libc::alarm(5) };
                    let code = match ro.get(b"k") {
                        Ok(Some(v)) if v == b"new" => 0,
                        _ => 1,
                    };
                    // SAFETY: ends the child without the parent's destructors.
                    unsafe { libc::_exit(code) };
                }
                ForkResult::Parent { child } => waitpid(child, None).unwrap(),
            };
            done_tx.send(()).unwrap();
            st
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "the child's read: {status:?} (SIGALRM: it waited for the parent \
             thread's hold of the log cache; exit 1: a wrong value)"
        );
        assert_eq!(ro.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
        drop(ro);
        // A writable handle recovers the dead write; then remove the map.
        m.insert(b"k2", b"v").unwrap();
        m.destroy().unwrap();
    }
}
