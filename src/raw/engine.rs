//! The engine: the one internal type that owns a map's state (its root,
//! its generations, its lock) and that the public façades ([`RawMap`],
//! [`RawBatch`], [`RawView`], [`Ref`]) are thin layers over. This file holds
//! the state, following the generation in force, the write lock and its
//! guard, and the write driver (one write from `write` to the committed
//! slots: lock, recovery, staging, commit, apply, notify). Reads are in
//! `read.rs`, creation and removal in `lifecycle.rs`, growth in `resize.rs`,
//! notification in `notify.rs`.
//!
//! [`RawMap`]: crate::RawMap
//! [`RawView`]: crate::RawView
//! [`Ref`]: crate::Ref

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::RawBatch;
use super::gens::{Generation, Gens, Pin};
use super::hooks::{reached, CrashPoint};
use super::layout::{pack_owner, unpack_current, RootHeader, CURRENT_DESTROYED};
use super::lock::WriteLock;
use super::overlay::Overlay;
use super::provider::{Lock, Provider, Segment};
use super::resize::discard_recorded;
use super::root;
use super::table::Table;
use super::verify::VerifyReport;
use super::waiters;
use super::write::Stager;
use crate::error::{Error, Result};
use crate::stats::Stats;

/// A map in SysV shared memory with byte keys and byte values.
///
/// Values are returned as 16-byte aligned byte slices ([`Ref`](crate::Ref)). All methods
/// take `&self`: the handle can be shared between threads; writes from
/// several threads or processes are serialised by the map's lock.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(super) name: String,
    pub(super) key: libc::key_t,
    pub(super) read_only: bool,
    pub(super) lock_timeout: Duration,
    /// `Options::verify_reads`: reads check each record's checksum.
    pub(super) verify_reads: bool,
    pub(super) seed: u64,
    /// `max_size` from the root header (0 = none).
    pub(super) max_size: u64,
    /// Where the map's segments and lock come from (SysV or heap).
    pub(super) provider: Arc<dyn Provider>,
    pub(super) sem: Lock,
    pub(super) gens: Gens,
    pub(super) root: Segment,
    /// Process-local: the thread (address of a thread-local) holding the
    /// write lock through this handle, 0 if none. Detects nested writes.
    pub(super) writer_thread: AtomicUsize,
    /// The fork epoch `writer_thread` was set in: in a child forked while
    /// one of its parent's threads held the lock (the forking thread
    /// inside a batch), the mark is stale (the child does not hold the
    /// semaphore), so its writes wait for the lock instead of failing with
    /// `NestedWrite` for good.
    pub(super) writer_epoch: std::sync::atomic::AtomicU32,
    /// The last committed redo log readers parsed (generation word, log),
    /// so that reads during an apply parse each log about once per process
    /// (only tried, never waited for: see `read_state`).
    pub(super) overlay_cache: std::sync::RwLock<Option<(u64, Arc<Overlay>)>>,
    /// For a read-only handle: a writable mapping of the root, attached on
    /// the first `wait_for_change`, through which it registers as a
    /// sleeper (`None` inside: this process may not write the root).
    pub(super) waiter_root: std::sync::OnceLock<Option<Segment>>,
    /// Inserts into a typed map are allowed: a `ShmMap` handle, or
    /// `Options::raw_writes`.
    pub(super) raw_writes_ok: bool,
}

thread_local! {
    static THREAD_MARK: u8 = const { 0 };
}

pub(super) fn thread_mark() -> usize {
    THREAD_MARK.with(|m| m as *const u8 as usize)
}

/// Holds the write lock; releases it on drop, after finishing any committed
/// write that a panic interrupted (scope guard).
pub(super) struct WriteGuard<'m> {
    map: &'m Engine,
    lock: WriteLock,
    /// The fork epoch the lock was taken in: in a child forked while it
    /// was held, the semaphore is the parent's (`SEM_UNDO` adjustments are
    /// not inherited), so dropping the guard there releases nothing.
    epoch: u32,
}

impl<'m> WriteGuard<'m> {
    /// The guard of a lock the caller just took.
    ///
    /// # Safety
    /// The calling thread holds `map`'s semaphore (acquired, not yet
    /// released) and nothing else will release it.
    pub(super) unsafe fn new(map: &'m Engine) -> WriteGuard<'m> {
        let epoch = super::gens::fork_epoch();
        map.writer_epoch.store(epoch, Ordering::Relaxed);
        map.writer_thread.store(thread_mark(), Ordering::Relaxed);
        WriteGuard {
            map,
            // SAFETY: the caller holds the map's semaphore (forwarded).
            lock: unsafe { WriteLock::assume_held() },
            epoch,
        }
    }

    /// The proof that this thread holds the lock.
    pub(super) fn token(&self) -> &WriteLock {
        &self.lock
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.epoch != super::gens::fork_epoch() {
            // A child forked while the lock was held (inside a batch): the
            // lock, the `applying` word and the nested-write mark are the
            // parent's (the mark is stale here by its epoch).
            return;
        }
        // Only a panic can leave a committed write unfinished (the steps
        // after the commit store return no errors): finish it.
        if std::thread::panicking() {
            let pin = self.map.gens.pin();
            let t = &pin.current().table;
            if t.needs_recovery() {
                let _ = t.recover(&self.lock);
            }
            self.map.root().applying.store(0, Ordering::Release);
        }
        self.map.writer_thread.store(0, Ordering::Relaxed);
        let _ = self.map.sem.release();
    }
}

/// Removes a half-built object when creation fails part-way.
pub(super) struct Undo<F: FnMut()>(pub(super) Option<F>);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.as_mut() {
            f();
        }
    }
}

/// Attaches and validates the data segment a `current` word names.
pub(super) fn attach_generation(
    p: &dyn Provider,
    word: u64,
    key: i32,
    root_id: i32,
    read_only: bool,
    name: &str,
) -> Result<Box<Generation>> {
    let (number, data_id) = unpack_current(word);
    if number == 0 {
        return Err(Error::corrupted("root names no data segment"));
    }
    let bad = |e: Error| Error::corrupted(format!("data segment {data_id} named by the root: {e}"));
    let seg = p.attach(data_id, read_only, name).map_err(|e| match e {
        e @ Error::PermissionDenied { .. } => e,
        e => bad(e),
    })?;
    // SAFETY: `seg` moves into the returned generation together with the
    // table, and the table field drops first.
    let table = unsafe { Table::attach(seg.base(), seg.len()) }.map_err(bad)?;
    if table.owner() != pack_owner(key, root_id) || table.generation() != u64::from(number) {
        return Err(Error::corrupted(format!(
            "data segment {data_id} belongs to another map or generation"
        )));
    }
    Ok(Box::new(Generation {
        word,
        number: u64::from(number),
        table,
        seg,
    }))
}

/// Attaches the generation the root names now. It may be switched (and its
/// segment removed) while we attach: then retry with the new word.
pub(super) fn attach_current(
    p: &dyn Provider,
    r: &RootHeader,
    key: i32,
    root_id: i32,
    read_only: bool,
    name: &str,
) -> Result<Box<Generation>> {
    for _ in 0..100 {
        let word = r.current.load(Ordering::Acquire);
        if word == CURRENT_DESTROYED {
            return Err(Error::NotFound {
                name: name.to_string(),
            });
        }
        match attach_generation(p, word, key, root_id, read_only, name) {
            Ok(g) => return Ok(g),
            Err(_) if r.current.load(Ordering::Acquire) != word => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::corrupted("the current generation keeps changing"))
}

impl Engine {
    pub(super) fn root(&self) -> &RootHeader {
        // SAFETY: validated at open; `self.root` keeps the mapping alive.
        unsafe { self.root.base().cast::<RootHeader>().as_ref() }
    }

    /// The map's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The generation in force, switching this process to it if another
    /// process published a new one (one Acquire load of the root's
    /// read-mostly `current` word when nothing changed).
    #[inline]
    pub(super) fn current<'p>(&self, pin: &'p Pin<'_>) -> Result<&'p Generation> {
        let g = pin.current();
        if self.root().current.load(Ordering::Acquire) == g.word {
            return Ok(g);
        }
        self.refresh()?;
        Ok(pin.current())
    }

    /// Like `current`, but keeps the generation this process has if the
    /// switch fails (for infallible counters).
    pub(super) fn current_or_local<'p>(&self, pin: &'p Pin<'_>) -> &'p Generation {
        let _ = self.current(pin);
        pin.current()
    }

    #[cold]
    pub(super) fn refresh(&self) -> Result<()> {
        let _switch = self.gens.lock_switch();
        let pin = self.gens.pin();
        if self.root().current.load(Ordering::Acquire) == pin.current().word {
            return Ok(());
        }
        let g = attach_current(
            &*self.provider,
            self.root(),
            self.key,
            self.root.id,
            self.read_only,
            &self.name,
        )?;
        self.gens.install(g);
        Ok(())
    }

    /// A lock error with this map's name: the lock's own errors do not
    /// know it (a removed lock means the map was destroyed).
    pub(super) fn named(&self, e: Error) -> Error {
        match e {
            Error::NotFound { .. } => Error::NotFound {
                name: self.name.clone(),
            },
            Error::PermissionDenied { op, .. } => Error::PermissionDenied {
                name: self.name.clone(),
                op,
            },
            e => e,
        }
    }

    pub(super) fn lock(&self) -> Result<WriteGuard<'_>> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        // Only this thread stores its own mark, so a match means it holds
        // the lock, unless the mark dates from before a fork.
        if self.writer_thread.load(Ordering::Relaxed) == thread_mark()
            && self.writer_epoch.load(Ordering::Relaxed) == super::gens::fork_epoch()
        {
            return Err(Error::NestedWrite);
        }
        self.sem
            .acquire(self.lock_timeout)
            .map_err(|e| self.named(e))?;
        // SAFETY: the semaphore was just acquired by this thread.
        Ok(unsafe { WriteGuard::new(self) })
    }

    /// With the lock held: removes segments a dead resize left behind,
    /// switches to the generation in force and finishes any committed
    /// write. Returns the generation to write to.
    pub(super) fn recover_locked<'p>(
        &self,
        pin: &'p Pin<'_>,
        lock: &WriteLock,
    ) -> Result<&'p Generation> {
        let r = self.root();
        let (_, current_id) = unpack_current(r.current.load(Ordering::Acquire));
        discard_recorded(
            &*self.provider,
            r,
            pack_owner(self.key, self.root.id),
            Some(current_id),
            true,
        );
        let g = self.current(pin)?;
        g.table.recover(lock)?;
        r.applying.store(0, Ordering::Release);
        Ok(g)
    }

    /// Runs `f` with the write lock held and applies everything it staged
    /// as one atomic write: other processes see all of it or none of it (in
    /// a [`view`](crate::RawMap::view)), and a crash at any point leaves the map
    /// before or after the whole batch. If `f` returns `Err` or panics,
    /// nothing is applied. If the table or the arena is too small, the
    /// write moves to a new, larger generation (see DESIGN.md "Growth").
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut RawBatch<'_>) -> Result<R>) -> Result<R> {
        self.write_inner(false, f)
    }

    /// Rewrites the live entries into a new generation without garbage or
    /// tombstones (same capacity unless the map needs more room), and
    /// publishes it. Readers keep working throughout.
    pub(crate) fn compact(&self) -> Result<()> {
        self.write_inner(true, |_| Ok(()))
    }

    pub(super) fn write_inner<R>(
        &self,
        compact: bool,
        f: impl FnOnce(&mut RawBatch<'_>) -> Result<R>,
    ) -> Result<R> {
        let pin = self.gens.pin();
        let guard = self.lock()?;
        let base = self.recover_locked(&pin, guard.token())?;
        let mut batch = self.start_batch(base, guard.token(), compact)?;
        let r = f(&mut batch)?;
        batch.commit()?;
        self.notify(&pin);
        Ok(r)
    }

    /// A batch on `base` under the lock `token` (of `write_inner` and
    /// `begin`), moved to a fresh generation first when `compact` is asked
    /// for or the table wants compaction.
    pub(super) fn start_batch<'b>(
        &'b self,
        base: &'b Generation,
        token: &'b WriteLock,
        compact: bool,
    ) -> Result<RawBatch<'b>> {
        // Staging overwrites arena bytes above `arena_used`, where the last
        // write's log lay; readers that parsed that log validate it with
        // `view_seq`, which that write moved on before: this fence orders
        // our staging after it (the seqlock writer's Release fence).
        fence(Ordering::Release);
        let mut batch = RawBatch {
            map: self,
            base,
            fresh: None,
            stager: Stager::new(&base.table, token),
            owner: RawBatch::owner_here(),
        };
        if compact || base.table.wants_compaction() {
            batch.migrate(None)?;
        }
        Ok(batch)
    }

    /// Commits and applies a batch to the published generation `t` (steps
    /// 4–8 of the write protocol). The root's `applying` word is set before
    /// the commit store and cleared after the apply: readers that see it
    /// read the after state through the log (`overlay`), so no read sees
    /// part of the write, also if this process dies half-way.
    pub(super) fn commit_in_place(&self, t: &Table, stager: &Stager<'_>) -> Result<bool> {
        let Some((word, redo)) = stager.prepare(t)? else {
            return Ok(false);
        };
        let r = self.root();
        r.applying.store(word, Ordering::Release);
        reached(CrashPoint::BeforeCommit);
        t.header().commit.store(word, Ordering::Release);
        // Sleepers may wake now: they read the after state through the log,
        // and are not left asleep if this process dies while applying.
        waiters::publish_version(&*self.provider, r, redo.target >> 1);
        reached(CrashPoint::AfterCommit);
        redo.apply(t, stager.lock(), true);
        r.applying.store(0, Ordering::Release);
        Ok(true)
    }

    /// A full consistency check of the generation in force: header, every
    /// slot, every record, counters. Reads one consistent snapshot (like
    /// [`view`](crate::RawMap::view)); costs O(capacity).
    /// A committed write still being applied is not a problem: a writable
    /// handle finishes it first (taking the lock), a read-only one waits up
    /// to the lock timeout for its writer and then reports it.
    pub(crate) fn verify(&self) -> Result<VerifyReport> {
        let seed = self.seed;
        let start = Instant::now();
        loop {
            let (pending, report) =
                self.view(|v| Ok((v.overlay.is_some(), v.gen().table.verify(seed))))?;
            if !pending || (self.read_only && start.elapsed() > self.lock_timeout) {
                return Ok(report);
            }
            if self.read_only {
                std::thread::sleep(Duration::from_millis(1));
            } else {
                let pin = self.gens.pin();
                let guard = self.lock()?;
                self.recover_locked(&pin, guard.token())?;
            }
        }
    }

    /// Counters and identity (costs a few system calls).
    pub(crate) fn stats(&self) -> Result<Stats> {
        // User entries: the hidden sync state is not counted (`len` reads
        // the count and the key from one consistent snapshot). Read before
        // this pin is taken: `len` pins the generation in force on its own,
        // and a generation published in between would otherwise be mapped
        // and pinned twice over when `mapped_generations` is counted.
        let live = self.len() as u64;
        let pin = self.gens.pin();
        let g = self.current(&pin)?;
        // A committed write being applied counts as applied (as for `len`).
        let pending = self.applying_in(g);
        let h = g.table.header();
        let info = self.provider.stat(g.seg.id, &self.name)?;
        let value = self.sem.value();
        Ok(Stats {
            name: self.name.clone(),
            key: self.key,
            generation: g.number,
            capacity: g.table.capacity(),
            live,
            tombstones: h.tombstones.load(Ordering::Relaxed),
            arena_size: g.table.arena_size(),
            arena_used: h.arena_used.load(Ordering::Relaxed),
            garbage_bytes: h.garbage.load(Ordering::Relaxed),
            segment_size: g.table.segment_size(),
            version: pending.as_ref().map_or(g.table.version(), |o| o.version()),
            attached: info.nattch,
            lock_held: value == Some(0),
            lock_pid: self.sem.last_pid(),
            root_shmid: self.root.id,
            data_shmid: g.seg.id,
            semid: self.sem.id(),
            mapped_generations: self.gens.mapped(),
            stale_segments: root::stale_list(self.root()),
            schema: super::schema::recorded(self.root()).map(|(_, t)| t),
            wake_every_write: waiters::wakes_every_write(self.root()),
            huge_pages: g.table.huge_page_size() != 0,
            huge_page_policy: super::resize::huge_policy(self.root()),
        })
    }
}
