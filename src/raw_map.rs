//! [`RawMap`]: the map over byte keys and byte values, which [`ShmMap`]
//! (typed) is built on.
//!
//! [`ShmMap`]: crate::ShmMap

use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::hash::{hash_key, random_seed};
use crate::options::Options;
use crate::raw::gens::{Generation, Gens, Pin};
use crate::raw::geometry::{grow_geometry, MIN_ARENA, MIN_SLOTS};
use crate::raw::hooks::{reached, CrashPoint};
use crate::raw::layout::{
    data_geometry, pack_current, pack_owner, unpack_current, DataHeader, RootHeader,
    CURRENT_DESTROYED, DATA_MAGIC, PENDING_CREATING, REDO_ENTRY, ROOT_MAGIC, ROOT_SIZE,
};
use crate::raw::overlay::{Overlay, ReadState};
use crate::raw::root::{self, RootState};
use crate::raw::table::{record_size, Found, ReadErr, Table};
use crate::raw::verify::VerifyReport;
use crate::raw::waiters;
use crate::raw::write::Stager;
use crate::sys::{self, Attached, Removal, SemOpen, Semaphore, ShmInfo};

/// A zero-copy reference into the map's shared memory. It stays valid and
/// unchanged for as long as it is held, also across generation switches:
/// published arena bytes are never written again, and the mapping they live
/// in is detached only after every `Ref` into it is dropped.
///
/// A `Ref` pins its thread (see DESIGN.md "Reclamation") and so is not
/// `Send`.
pub struct Ref<'m, T: ?Sized> {
    value: NonNull<T>,
    _pin: Pin<'m>,
}

impl<'m, T: ?Sized> Ref<'m, T> {
    fn new(value: &T, pin: Pin<'m>) -> Ref<'m, T> {
        Ref {
            value: NonNull::from(value),
            _pin: pin,
        }
    }

    /// Turns a reference to the bytes into a reference to something inside.
    pub fn map<U: ?Sized>(r: Ref<'m, T>, f: impl for<'x> FnOnce(&'x T) -> &'x U) -> Ref<'m, U> {
        let value = NonNull::from(f(&*r));
        Ref {
            value,
            _pin: r._pin,
        }
    }

    /// Like [`Ref::map`] for a fallible projection.
    pub fn try_map<U: ?Sized, E>(
        r: Ref<'m, T>,
        f: impl for<'x> FnOnce(&'x T) -> Result<&'x U, E>,
    ) -> Result<Ref<'m, U>, E> {
        let value = NonNull::from(f(&*r)?);
        Ok(Ref {
            value,
            _pin: r._pin,
        })
    }
}

impl<T: ?Sized> Deref for Ref<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `value` points into published arena bytes (immutable) of a
        // generation that `_pin` keeps mapped while this Ref lives.
        unsafe { self.value.as_ref() }
    }
}

impl<T: ?Sized> Clone for Ref<'_, T> {
    fn clone(&self) -> Self {
        Ref {
            value: self.value,
            _pin: self._pin.clone(),
        }
    }
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for Ref<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// A key and its value, zero-copy.
pub type Entry<'m> = (Ref<'m, [u8]>, Ref<'m, [u8]>);

/// Counters and identity of a map, as `stats()` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The map's name.
    pub name: String,
    /// Its SysV key.
    pub key: i32,
    /// Table generation in force (1 for a new map).
    pub generation: u64,
    /// Number of slots.
    pub capacity: u64,
    /// Entries stored.
    pub live: u64,
    /// Slots holding tombstones.
    pub tombstones: u64,
    /// Bytes of the arena.
    pub arena_size: u64,
    /// Bytes of the arena published so far.
    pub arena_used: u64,
    /// Published arena bytes no entry refers to any more.
    pub garbage_bytes: u64,
    /// Bytes of the data segment.
    pub segment_size: u64,
    /// Committed writes so far.
    pub version: u64,
    /// Processes attached to the data segment.
    pub attached: u64,
    /// Whether the write lock is held now.
    pub lock_held: bool,
    /// Pid that last operated the lock (the holder while it is held).
    pub lock_pid: Option<i32>,
    /// shmid of the root segment.
    pub root_shmid: i32,
    /// shmid of the data segment.
    pub data_shmid: i32,
    /// semid of the lock.
    pub semid: i32,
    /// Data segments this handle has mapped now (the current one plus
    /// retired ones still referenced in this process).
    pub mapped_generations: usize,
    /// Retired data segments (shmids) that the writer who retired them was
    /// not allowed to remove (another user's); the next process that may
    /// (a writer or recovery of the map's owner) removes them.
    pub stale_segments: Vec<i32>,
}

/// How `connect` treats a map that is or is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Open,
    OpenOrCreate,
}

/// A map in SysV shared memory with byte keys and byte values.
///
/// Values are returned as 16-byte aligned byte slices ([`Ref`]). All methods
/// take `&self`: the handle can be shared between threads; writes from
/// several threads or processes are serialised by the map's lock.
#[derive(Debug)]
pub struct RawMap {
    name: String,
    key: libc::key_t,
    read_only: bool,
    lock_timeout: Duration,
    /// `Options::verify_reads`: reads check each record's checksum.
    verify_reads: bool,
    seed: u64,
    /// `max_size` from the root header (0 = none).
    max_size: u64,
    sem: Semaphore,
    gens: Gens,
    root: Attached,
    /// Process-local: the thread (address of a thread-local) holding the
    /// write lock through this handle, 0 if none. Detects nested writes.
    writer_thread: AtomicUsize,
    /// The last committed redo log readers parsed (generation word, log),
    /// so that reads during an apply parse each log once per process.
    overlay_cache: std::sync::RwLock<Option<(u64, Arc<Overlay>)>>,
}

thread_local! {
    static THREAD_MARK: u8 = const { 0 };
}

fn thread_mark() -> usize {
    THREAD_MARK.with(|m| m as *const u8 as usize)
}

/// Holds the write lock; releases it on drop, after finishing any committed
/// write that a panic interrupted (scope guard).
struct WriteGuard<'m> {
    map: &'m RawMap,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // Only a panic can leave a committed write unfinished (the steps
        // after the commit store return no errors): finish it.
        if std::thread::panicking() {
            let pin = self.map.gens.pin();
            let t = &pin.current().table;
            if t.needs_recovery() {
                let _ = t.recover();
            }
            self.map.root().applying.store(0, Ordering::Release);
        }
        self.map.writer_thread.store(0, Ordering::Relaxed);
        let _ = self.map.sem.release();
    }
}

/// Removes a half-built object when creation fails part-way.
struct Undo<F: FnMut()>(Option<F>);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.as_mut() {
            f();
        }
    }
}

/// Attaches and validates the data segment a `current` word names.
fn attach_generation(
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
    let seg = Attached::attach(data_id, read_only, name).map_err(|e| match e {
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
fn attach_current(
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
        match attach_generation(word, key, root_id, read_only, name) {
            Ok(g) => return Ok(g),
            Err(_) if r.current.load(Ordering::Acquire) != word => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::corrupted("the current generation keeps changing"))
}

impl RawMap {
    /// Creates a new map; [`Error::AlreadyExists`] if one is there.
    pub fn create(name: &str, opts: &Options) -> Result<RawMap> {
        RawMap::connect(name, opts, Mode::Create)
    }

    /// Opens an existing map; [`Error::NotFound`] if there is none.
    pub fn open(name: &str, opts: &Options) -> Result<RawMap> {
        RawMap::connect(name, opts, Mode::Open)
    }

    /// Opens the map, creating it first if it does not exist. Safe against
    /// other processes doing the same at the same time.
    pub fn open_or_create(name: &str, opts: &Options) -> Result<RawMap> {
        RawMap::connect(name, opts, Mode::OpenOrCreate)
    }

    fn connect(name: &str, opts: &Options, mode: Mode) -> Result<RawMap> {
        let key = opts.key_for(name)?;
        if mode == Mode::Open {
            return RawMap::open_existing(name, key, opts);
        }
        if opts.read_only {
            return Err(Error::ReadOnly);
        }
        let geometry = opts.geometry()?;
        // Creation is serialised by the map's lock, which is created first.
        let (sem, created_sem) =
            match Semaphore::open(key, true, opts.mode, opts.lock_timeout, name)? {
                SemOpen::CreatedAndHeld(s) => (s, true),
                SemOpen::Existing(s) => {
                    s.acquire(opts.lock_timeout)?;
                    (s, false)
                }
            };
        let result = RawMap::create_locked(name, key, opts, mode, geometry, &sem);
        if result.is_err() && created_sem {
            // Nothing of ours is at the key: do not leave a lock behind.
            sem.remove();
        } else {
            let _ = sem.release();
        }
        match result? {
            Some(()) => RawMap::open_existing(name, key, opts),
            None => Err(Error::AlreadyExists {
                name: name.to_string(),
            }),
        }
    }

    /// With the lock held: makes sure a complete map is at `key`. Returns
    /// `None` if one already was there and `mode` is `Create`. Only a root
    /// that is provably shmkv's (a root magic, or no marker yet but made by
    /// the creator the lock's tag names) is read, repaired or removed.
    fn create_locked(
        name: &str,
        key: libc::key_t,
        opts: &Options,
        mode: Mode,
        (slots, arena, data_size): (u64, u64, u64),
        sem: &Semaphore,
    ) -> Result<Option<()>> {
        // A creator killed between its `shmget` of the root and the root's
        // marker left a root in which nothing can be trusted; the lock's
        // tag names that creator (the root's `shm_cpid`): remove the root.
        if sem.creating_root_pid().is_some() {
            if let Ok(id) = sys::shm_get(key, 0, 0, name)? {
                if unmarked_root_of_dead_creator(key, id, sem, name)? {
                    sys::shm_remove(id)?;
                }
            }
        }
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | opts.mode as i32;
        sem.mark_creating_root(name)?;
        let mut unmark = Undo(Some(|| {
            let _ = sem.unmark_creating_root(name);
        }));
        let made = sys::shm_get(key, ROOT_SIZE, flags, name);
        let (root_id, fresh) = match made? {
            Ok(id) => (id, true),
            Err(_) => {
                if let Some(f) = unmark.0.take() {
                    f();
                }
                match sys::shm_get(key, 0, 0, name)? {
                    Ok(id) => (id, false),
                    Err(_) => return Err(Error::corrupted("root segment vanished during create")),
                }
            }
        };
        let mut undo_root = Undo(fresh.then_some(move || {
            let _ = sys::shm_remove(root_id);
        }));
        let root_seg = Attached::attach(root_id, false, name)?;
        // SAFETY: the mapping lives until `root_seg` drops at the end of this fn.
        let r = unsafe { root::root_at(root_seg.base(), root_seg.len()) }
            .ok_or_else(|| foreign_segment(key, root_id, name))?;
        if !fresh {
            match root::state(r) {
                RootState::Foreign => return Err(foreign_segment(key, root_id, name)),
                RootState::Complete => {
                    root::validate(r, Some(name))?;
                    undo_root.0 = None;
                    return Ok((mode == Mode::OpenOrCreate).then_some(()));
                }
                // A destroy died after marking the map (we hold the lock, so
                // it does not run): finish it, then create afresh. Not in
                // place: handles still open on the destroyed map must keep
                // seeing it destroyed, not follow a new map.
                RootState::Destroyed => {
                    check_stored_name(r, name)?;
                    discard_data_segments(r, pack_owner(key, root_id), false);
                    sys::shm_remove(root_id)?;
                    drop(root_seg);
                    return RawMap::create_locked(
                        name,
                        key,
                        opts,
                        mode,
                        (slots, arena, data_size),
                        sem,
                    );
                }
                // A creator died before finishing: we hold the lock, so it
                // does not run (nobody can have opened the map). Remove what
                // it left and start over, in place (only for the same name).
                RootState::Creating => {
                    check_stored_name(r, name)?;
                    if root::creator_alive(r) {
                        return Err(Error::corrupted(format!(
                            "map {name:?} is being created by pid {}, which does not hold its lock",
                            r.creator_pid.load(Ordering::Relaxed)
                        )));
                    }
                    discard_data_segments(r, pack_owner(key, root_id), true);
                }
            }
        }
        // Stores the ROOT_CREATING marker: from here on the root is ours.
        root::init_identity(
            r,
            name,
            random_seed(),
            opts.max_size.map_or(0, |s| s.bytes()),
        );
        if let Some(f) = unmark.0.take() {
            f();
        }
        let perms = sys::shm_stat(root_id, name)?;
        let data_id = make_pending_segment(r, data_size, &perms, name)?;
        let mut undo_data = Undo(Some(move || {
            let _ = sys::shm_remove(data_id);
        }));
        let data_seg = Attached::attach(data_id, false, name)?;
        // SAFETY: a new segment is zero-filled, mapped by `data_seg` for the
        // rest of this function, and not yet published anywhere.
        unsafe {
            Table::init(
                data_seg.base(),
                data_seg.len(),
                slots,
                arena,
                1,
                pack_owner(key, root_id),
            )?
        };
        reached(CrashPoint::MidCreate);
        r.current.store(pack_current(1, data_id), Ordering::Release);
        r.pending.store(0, Ordering::Release);
        r.magic.store(ROOT_MAGIC, Ordering::Release);
        undo_data.0 = None;
        undo_root.0 = None;
        Ok(Some(()))
    }

    fn open_existing(name: &str, key: libc::key_t, opts: &Options) -> Result<RawMap> {
        let root_id = match sys::shm_get(key, 0, 0, name)? {
            Ok(id) => id,
            Err(_) => {
                // No map; but say so if another program's set holds the key.
                if let Err(e @ Error::KeyInUse { .. }) = Semaphore::find(key, name) {
                    return Err(e);
                }
                return Err(Error::NotFound {
                    name: name.to_string(),
                });
            }
        };
        let root_seg = Attached::attach(root_id, opts.read_only, name)?;
        // SAFETY: `root_seg` keeps the mapping alive while `r` is used below;
        // the returned map owns `root_seg` and never re-borrows `r`.
        let r: &RootHeader = unsafe { root::root_at(root_seg.base(), root_seg.len()) }
            .ok_or_else(|| foreign_segment(key, root_id, name))?;
        let deadline = sys::deadline_after(opts.lock_timeout);
        loop {
            match root::state(r) {
                RootState::Complete => break,
                RootState::Destroyed => {
                    return Err(Error::NotFound {
                        name: name.to_string(),
                    })
                }
                RootState::Creating => {
                    check_stored_name(r, name)?;
                    if sys::passed(deadline) {
                        return Err(Error::corrupted(format!(
                            "map {name:?} was never completely created (creator pid {} died?); \
                             open_or_create repairs it, destroy removes it",
                            r.creator_pid.load(Ordering::Relaxed)
                        )));
                    }
                }
                // No marker: either a creator between its shmget and the
                // marker (the lock's tag names it), or not shmkv's at all.
                RootState::Foreign => {
                    let ours = Semaphore::find(key, name)
                        .ok()
                        .flatten()
                        .and_then(|s| s.creating_root_pid())
                        .is_some_and(|pid| {
                            sys::shm_stat(root_id, name).is_ok_and(|i| i.cpid == pid)
                        });
                    if !ours {
                        return Err(foreign_segment(key, root_id, name));
                    }
                    if sys::passed(deadline) {
                        return Err(Error::corrupted(format!(
                            "map {name:?} was never completely created (creator died?); \
                             open_or_create repairs it, destroy removes it"
                        )));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let seed = root::validate(r, Some(name))?;
        let sem = match Semaphore::open(key, false, opts.mode, opts.lock_timeout, name) {
            Ok(SemOpen::Existing(s) | SemOpen::CreatedAndHeld(s)) => s,
            Err(Error::NotFound { .. }) => {
                return Err(Error::corrupted(format!(
                    "the lock of map {name:?} is missing"
                )))
            }
            Err(e) => return Err(e),
        };
        let first = attach_current(r, key, root_id, opts.read_only, name)?;
        Ok(RawMap {
            name: name.to_string(),
            key,
            read_only: opts.read_only,
            lock_timeout: opts.lock_timeout,
            verify_reads: opts.verify_reads,
            seed,
            max_size: r.max_size.load(Ordering::Relaxed),
            sem,
            gens: Gens::new(first),
            root: root_seg,
            writer_thread: AtomicUsize::new(0),
            overlay_cache: std::sync::RwLock::new(None),
        })
    }

    /// Removes every kernel object of the map named `name` without opening
    /// it through the usual checks (for maps that fail to open). Returns
    /// whether anything was removed.
    ///
    /// Only objects that are provably this map's are removed: the lock is
    /// taken first (with the lock timeout), a root is removed only if it
    /// carries a shmkv marker and the stored name is `name`
    /// ([`Error::NameMismatch`] otherwise), each data segment only if its
    /// header names this root, and the semaphore set only if it is
    /// recognisably shmkv's. Objects of another program at the key give
    /// [`Error::KeyInUse`] and are left alone.
    pub fn destroy_by_name(name: &str, opts: &Options) -> Result<bool> {
        let key = opts.key_for(name)?;
        let sem = Semaphore::find(key, name)?;
        if let Some(s) = &sem {
            s.acquire(opts.lock_timeout)?;
        }
        // Released on every exit; harmless once the set is removed.
        let _release = Undo(sem.as_ref().map(|s| {
            move || {
                let _ = s.release();
            }
        }));
        let mut removed = false;
        if let Ok(root_id) = sys::shm_get(key, 0, 0, name)? {
            let (seg, writable) = match Attached::attach(root_id, false, name) {
                Ok(seg) => (seg, true),
                Err(Error::PermissionDenied { .. }) => {
                    (Attached::attach(root_id, true, name)?, false)
                }
                Err(e) => return Err(e),
            };
            // SAFETY: `seg` outlives `r`.
            let r = unsafe { root::root_at(seg.base(), seg.len()) }
                .ok_or_else(|| foreign_segment(key, root_id, name))?;
            match root::state(r) {
                RootState::Foreign => match &sem {
                    Some(s) if unmarked_root_of_dead_creator(key, root_id, s, name)? => {}
                    _ => return Err(foreign_segment(key, root_id, name)),
                },
                state => {
                    check_stored_name(r, name)?;
                    if !sys::shm_stat(root_id, name)?.removable_by_me() {
                        return Err(Error::PermissionDenied {
                            name: name.to_string(),
                            op: "shmctl(IPC_RMID)",
                        });
                    }
                    let owner = pack_owner(key, root_id);
                    if writable && state == RootState::Complete {
                        // Open handles get NotFound on their next operation.
                        mark_destroyed(r, owner);
                    }
                    discard_data_segments(r, owner, false);
                }
            }
            sys::shm_remove(root_id)?;
            removed = true;
        }
        if let Some(s) = &sem {
            s.remove();
            removed = true;
        }
        Ok(removed)
    }

    /// Removes the map from the kernel: its segments and its lock. Takes
    /// the write lock first (so no writer is publishing a new generation)
    /// and marks the map destroyed in the root's `current` word, so every
    /// handle still open gets [`Error::NotFound`] on its next operation.
    /// Segments stay mapped in processes that have them until they drop
    /// their handles. Refused with [`Error::ReadOnly`] on a read-only
    /// handle and with [`Error::PermissionDenied`] (nothing changed) for a
    /// process that may not remove the map.
    pub fn destroy(self) -> Result<()> {
        let _guard = self.lock()?;
        if !sys::shm_stat(self.root.shmid, &self.name)?.removable_by_me() {
            return Err(Error::PermissionDenied {
                name: self.name.clone(),
                op: "shmctl(IPC_RMID)",
            });
        }
        let r = self.root();
        let owner = pack_owner(self.key, self.root.shmid);
        mark_destroyed(r, owner);
        discard_data_segments(r, owner, false);
        {
            // This handle's own mapping (removing it twice is harmless).
            let pin = self.gens.pin();
            let _ = sys::shm_remove(pin.current().seg.shmid);
        }
        sys::shm_remove(self.root.shmid)?;
        self.sem.remove();
        Ok(())
    }

    fn root(&self) -> &RootHeader {
        // SAFETY: validated at open; `self.root` keeps the mapping alive.
        unsafe { self.root.base().cast::<RootHeader>().as_ref() }
    }

    /// The map's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The generation in force, switching this process to it if another
    /// process published a new one (one Acquire load of the root's
    /// read-mostly `current` word when nothing changed).
    #[inline]
    fn current<'p>(&self, pin: &'p Pin<'_>) -> Result<&'p Generation> {
        let g = pin.current();
        if self.root().current.load(Ordering::Acquire) == g.word {
            return Ok(g);
        }
        self.refresh()?;
        Ok(pin.current())
    }

    /// Like `current`, but keeps the generation this process has if the
    /// switch fails (for infallible counters).
    fn current_or_local<'p>(&self, pin: &'p Pin<'_>) -> &'p Generation {
        let _ = self.current(pin);
        pin.current()
    }

    #[cold]
    fn refresh(&self) -> Result<()> {
        let _switch = self.gens.lock_switch();
        let pin = self.gens.pin();
        if self.root().current.load(Ordering::Acquire) == pin.current().word {
            return Ok(());
        }
        let g = attach_current(
            self.root(),
            self.key,
            self.root.shmid,
            self.read_only,
            &self.name,
        )?;
        self.gens.install(g);
        Ok(())
    }

    /// Runs a lock-free read on generation `g`, handling stalls (a writer
    /// slow or dead in the middle of applying a write) without ever waiting
    /// forever.
    #[inline]
    fn read_in<T>(
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
    fn read_slow<T>(
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
    fn read_applying<T>(
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
    fn read_state(&self, g: &Generation) -> Result<ReadState, ReadErr> {
        // Nothing committed is pending (the writer died before its commit
        // store, or finished meanwhile): no lock, no log.
        let h = g.table.header();
        let seq = h.view_seq.load(Ordering::Acquire);
        if seq & 1 == 0 && h.commit.load(Ordering::Acquire) == 0 {
            return Ok(ReadState { seq, overlay: None });
        }
        let cached = self
            .overlay_cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(w, _)| *w == g.word)
            .map(|c| c.1.clone());
        let state = g.table.read_state(cached.as_ref())?;
        if let Some(o) = &state.overlay {
            if cached.is_none_or(|c| !Arc::ptr_eq(&c, o)) {
                *self
                    .overlay_cache
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Some((g.word, o.clone()));
            }
        }
        Ok(state)
    }

    /// A read found a bucket odd for too long. If the write lock is free the
    /// writer died: take the lock and recover. If it is held, back off. A
    /// read-only handle cannot recover and only backs off. Gives up with
    /// `LockTimeout` after the lock timeout.
    fn unstick(&self, start: Instant) -> Result<()> {
        if start.elapsed() > self.lock_timeout {
            return Err(Error::LockTimeout {
                waited: start.elapsed(),
                holder_pid: self.sem.last_pid(),
            });
        }
        if !self.read_only && self.sem.value() == Some(1) && self.sem.try_acquire()? {
            self.writer_thread.store(thread_mark(), Ordering::Relaxed);
            let _guard = WriteGuard { map: self };
            let pin = self.gens.pin();
            let g = self.recover_locked(&pin)?;
            if !g.table.needs_recovery() {
                g.table.close_odd_slots();
            }
            self.notify(&pin);
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
        Ok(())
    }

    /// The value stored under `key`, zero-copy.
    #[inline]
    pub fn get_ref(&self, key: &[u8]) -> Result<Option<Ref<'_, [u8]>>> {
        let h = hash_key(self.seed, key);
        let pin = self.gens.pin();
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
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_ref(key)?.map(|v| v.to_vec()))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get_ref(key)?.is_some())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        let pin = self.gens.pin();
        let g = self.current_or_local(&pin);
        if let Some(o) = self.applying_in(g) {
            return o.redo.live as usize;
        }
        g.table.header().live.load(Ordering::Acquire) as usize
    }

    /// The committed write being applied to `g`, if the root says one is
    /// (for counters: the after state's).
    fn applying_in(&self, g: &Generation) -> Option<Arc<Overlay>> {
        if self.root().applying.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.read_state(g).ok()?.overlay
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The map's version: the number of writes committed so far. Any write
    /// advances it; a reader can compare versions to detect changes.
    pub fn version(&self) -> u64 {
        let pin = self.gens.pin();
        let g = self.current_or_local(&pin);
        match self.applying_in(g) {
            Some(o) => o.version(),
            None => g.table.version(),
        }
    }

    /// Stores `value` under `key` (replacing any previous value), atomically.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(|b| b.insert(key, value))
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        self.write(|b| b.remove(key))
    }

    /// Every entry, as one consistent snapshot (see [`RawMap::view`]).
    pub fn entries(&self) -> Result<Vec<Entry<'_>>> {
        self.view(|v| v.entries())
    }

    fn lock(&self) -> Result<WriteGuard<'_>> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if self.writer_thread.load(Ordering::Relaxed) == thread_mark() {
            return Err(Error::NestedWrite);
        }
        self.sem.acquire(self.lock_timeout).map_err(|e| match e {
            // The semaphore is gone: the map was destroyed.
            Error::NotFound { .. } => Error::NotFound {
                name: self.name.clone(),
            },
            e => e,
        })?;
        self.writer_thread.store(thread_mark(), Ordering::Relaxed);
        Ok(WriteGuard { map: self })
    }

    /// With the lock held: removes segments a dead resize left behind,
    /// switches to the generation in force and finishes any committed
    /// write. Returns the generation to write to.
    fn recover_locked<'p>(&self, pin: &'p Pin<'_>) -> Result<&'p Generation> {
        let r = self.root();
        let (_, current_id) = unpack_current(r.current.load(Ordering::Acquire));
        discard_recorded(
            r,
            pack_owner(self.key, self.root.shmid),
            Some(current_id),
            true,
        );
        let g = self.current(pin)?;
        g.table.recover()?;
        r.applying.store(0, Ordering::Release);
        Ok(g)
    }

    /// Runs `f` with the write lock held and applies everything it staged
    /// as one atomic write: other processes see all of it or none of it (in
    /// a [`view`](RawMap::view)), and a crash at any point leaves the map
    /// before or after the whole batch. If `f` returns `Err` or panics,
    /// nothing is applied. If the table or the arena is too small, the
    /// write moves to a new, larger generation (see DESIGN.md "Growth").
    pub fn write<R>(&self, f: impl FnOnce(&mut RawBatch<'_>) -> Result<R>) -> Result<R> {
        self.write_inner(false, f)
    }

    /// Rewrites the live entries into a new generation without garbage or
    /// tombstones (same capacity unless the map needs more room), and
    /// publishes it. Readers keep working throughout.
    pub fn compact(&self) -> Result<()> {
        self.write_inner(true, |_| Ok(()))
    }

    fn write_inner<R>(
        &self,
        compact: bool,
        f: impl FnOnce(&mut RawBatch<'_>) -> Result<R>,
    ) -> Result<R> {
        let pin = self.gens.pin();
        let _guard = self.lock()?;
        let base = self.recover_locked(&pin)?;
        // Staging overwrites arena bytes above `arena_used`, where the last
        // write's log lay; readers that parsed that log validate it with
        // `view_seq`, which that write moved on before: this fence orders
        // our staging after it (the seqlock writer's Release fence).
        fence(Ordering::Release);
        let mut batch = RawBatch {
            map: self,
            base,
            fresh: None,
            stager: Stager::new(&base.table),
        };
        if compact || base.table.wants_compaction() {
            batch.migrate(None)?;
        }
        let r = f(&mut batch)?;
        batch.commit()?;
        self.notify(&pin);
        Ok(r)
    }

    /// Commits and applies a batch to the published generation `t` (steps
    /// 4–8 of the write protocol). The root's `applying` word is set before
    /// the commit store and cleared after the apply: readers that see it
    /// read the after state through the log (`overlay`), so no read sees
    /// part of the write, also if this process dies half-way.
    fn commit_in_place(&self, t: &Table, stager: &Stager) -> Result<bool> {
        let Some((word, redo)) = stager.prepare(t)? else {
            return Ok(false);
        };
        let r = self.root();
        r.applying.store(word, Ordering::Release);
        reached(CrashPoint::BeforeCommit);
        t.header().commit.store(word, Ordering::Release);
        // Sleepers may wake now: they read the after state through the log,
        // and are not left asleep if this process dies while applying.
        waiters::publish_version(r, redo.target >> 1);
        reached(CrashPoint::AfterCommit);
        redo.apply(t, true);
        r.applying.store(0, Ordering::Release);
        Ok(true)
    }

    /// After a commit (lock held): publishes the version in the futex word
    /// and wakes sleepers, with a system call only if someone sleeps.
    fn notify(&self, pin: &Pin<'_>) {
        waiters::publish_version(self.root(), pin.current().table.version());
    }

    /// Sleeps until the map's version differs from `since` or `timeout`
    /// passes; returns the new version, or `None` on timeout. Writers wake
    /// sleepers through a futex in the root segment (a system call only
    /// when someone sleeps). A read-only handle cannot register as a
    /// sleeper and polls every millisecond instead.
    pub fn wait_for_change(&self, since: u64, timeout: Duration) -> Result<Option<u64>> {
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

    /// Makes a new, unpublished data segment for generation `number`,
    /// recorded in the root's `pending` word (or `retiring`, see `migrate`),
    /// owned like the root. Refused (before anything is committed) if the
    /// segment in force could neither be removed by this process after the
    /// switch nor be recorded in the root's full `stale` list.
    fn new_generation(&self, number: u64, slots: u64, arena: u64) -> Result<Box<Generation>> {
        let (_, _, size) = data_geometry(slots, arena).ok_or_else(|| Error::corrupted("size"))?;
        let r = self.root();
        if root::stale_full(r) {
            let owner = pack_owner(self.key, self.root.shmid);
            let (_, current_id) = unpack_current(r.current.load(Ordering::Acquire));
            prune_stale(r, owner, Some(current_id), true);
            if root::stale_full(r) && !sys::shm_stat(current_id, &self.name)?.removable_by_me() {
                return Err(Error::PermissionDenied {
                    name: self.name.clone(),
                    op: "retire a generation (the list of segments left for their owners is full)",
                });
            }
        }
        let root_info = sys::shm_stat(self.root.shmid, &self.name)?;
        let id = make_pending_segment(r, size, &root_info, &self.name)?;
        let mut undo = Undo(Some(|| {
            let _ = sys::shm_remove(id);
            self.root().pending.store(0, Ordering::Release);
        }));
        let seg = Attached::attach(id, false, &self.name)?;
        let owner = pack_owner(self.key, self.root.shmid);
        // SAFETY: a new segment is zero-filled and unpublished; `seg` moves
        // into the returned generation with the table, which drops first.
        let table = unsafe { Table::init(seg.base(), seg.len(), slots, arena, number, owner) }?;
        undo.0 = None;
        Ok(Box::new(Generation {
            word: pack_current(number as u32, id),
            number,
            table,
            seg,
        }))
    }

    /// Publishes a complete new generation with one store of the root's
    /// `current` word, marks the old segment for removal, and switches this
    /// process to the new one. Nothing after the switch can fail: the write
    /// is committed. An old segment this process may not remove (another
    /// user's) is recorded in the root's `stale` list for one that may.
    fn publish(&self, old: &Generation, fresh: Box<Generation>) -> Result<()> {
        let r = self.root();
        r.retiring
            .store(old.seg.shmid as u64 + 1, Ordering::Release);
        reached(CrashPoint::MidResize);
        r.current.store(fresh.word, Ordering::Release);
        reached(CrashPoint::AfterPublish);
        // `old` is attached here and was validated as ours: its shmid
        // cannot have been reused.
        retire_segment(r, old.seg.shmid, true);
        r.retiring.store(0, Ordering::Release);
        r.pending.store(0, Ordering::Release);
        let _switch = self.gens.lock_switch();
        self.gens.install(fresh);
        Ok(())
    }

    /// Runs `f` over a consistent snapshot: no write is applied between the
    /// first and the last read `f` makes. `f` may run more than once (when a
    /// write raced with it); only the result of a consistent run is
    /// returned. After many races it runs under the write lock.
    pub fn view<'m, R>(&'m self, mut f: impl FnMut(&RawView<'m>) -> Result<R>) -> Result<R> {
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
                let _guard = self.lock()?;
                let g = self.recover_locked(&pin)?;
                return f(&RawView {
                    map: self,
                    gen: NonNull::from(g),
                    pin: pin.clone(),
                    overlay: None,
                    seq: g.table.header().view_seq.load(Ordering::Acquire),
                });
            }
            if tries >= OPTIMISTIC_TRIES {
                self.unstick(start)?;
            }
        }
    }

    /// A full consistency check of the generation in force: header, every
    /// slot, every record, counters. Reads one consistent snapshot (like
    /// [`view`](RawMap::view)); costs O(capacity).
    /// A committed write still being applied is not a problem: a writable
    /// handle finishes it first (taking the lock), a read-only one waits up
    /// to the lock timeout for its writer and then reports it.
    pub fn verify(&self) -> Result<VerifyReport> {
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
                let _guard = self.lock()?;
                self.recover_locked(&pin)?;
            }
        }
    }

    /// Counters and identity (costs a few system calls).
    pub fn stats(&self) -> Result<Stats> {
        let pin = self.gens.pin();
        let g = self.current(&pin)?;
        // A committed write being applied counts as applied (as for `len`).
        let pending = self.applying_in(g);
        let h = g.table.header();
        let info = sys::shm_stat(g.seg.shmid, &self.name)?;
        let value = self.sem.value();
        Ok(Stats {
            name: self.name.clone(),
            key: self.key,
            generation: g.number,
            capacity: g.table.capacity(),
            live: pending
                .as_ref()
                .map_or(h.live.load(Ordering::Acquire), |o| o.redo.live),
            tombstones: h.tombstones.load(Ordering::Relaxed),
            arena_size: g.table.arena_size(),
            arena_used: h.arena_used.load(Ordering::Relaxed),
            garbage_bytes: h.garbage.load(Ordering::Relaxed),
            segment_size: g.table.segment_size(),
            version: pending.as_ref().map_or(g.table.version(), |o| o.version()),
            attached: info.nattch,
            lock_held: value == Some(0),
            lock_pid: self.sem.last_pid(),
            root_shmid: self.root.shmid,
            data_shmid: g.seg.shmid,
            semid: self.sem.semid,
            mapped_generations: self.gens.mapped(),
            stale_segments: root::stale_list(self.root()),
        })
    }
}

/// The error for an object at the key that is not provably shmkv's.
fn foreign_segment(key: libc::key_t, shmid: i32, name: &str) -> Error {
    Error::KeyInUse {
        name: name.to_string(),
        key,
        object: "shared memory segment",
        id: shmid,
    }
}

/// `NameMismatch` unless the root (shmkv's: a marker was seen) stores `name`.
fn check_stored_name(r: &RootHeader, name: &str) -> Result<()> {
    let found = root::stored_name(r)?;
    if found != name {
        return Err(Error::NameMismatch {
            expected: name.to_string(),
            found,
        });
    }
    Ok(())
}

/// Whether segment `id` at `key` is a root whose creator died between its
/// `shmget` and the store of the `ROOT_CREATING` marker: the lock (held by
/// the caller) still carries that creator's mark, the segment was made by
/// that creator's pid and has a root's size, and its first word is still
/// zero. Nothing else in it is read.
fn unmarked_root_of_dead_creator(
    key: libc::key_t,
    id: i32,
    sem: &Semaphore,
    name: &str,
) -> Result<bool> {
    let Some(pid) = sem.creating_root_pid() else {
        return Ok(false);
    };
    let info = sys::shm_stat(id, name)?;
    if info.cpid != pid || info.size != ROOT_SIZE as u64 || info.key != key {
        return Ok(false);
    }
    let seg = Attached::attach(id, true, name)?;
    // SAFETY: `seg` outlives `r`.
    let Some(r) = (unsafe { root::root_at(seg.base(), seg.len()) }) else {
        return Ok(false);
    };
    Ok(r.magic.load(Ordering::Acquire) == 0)
}

/// With the lock held, writable root: marks the map destroyed (the
/// `current` word becomes `CURRENT_DESTROYED`, which sends every open
/// handle to `NotFound`). The data segment in force is recorded in
/// `retiring` first, so a destroyer that dies here leaves nothing that a
/// later repair (`create_locked`) or `destroy_by_name` cannot find.
fn mark_destroyed(r: &RootHeader, owner: u64) {
    let word = r.current.load(Ordering::Acquire);
    if word == CURRENT_DESTROYED {
        return;
    }
    let (generation, id) = unpack_current(word);
    discard_recorded(r, owner, Some(id), true);
    if generation != 0 {
        r.retiring.store(id as u64 + 1, Ordering::Release);
    }
    r.current.store(CURRENT_DESTROYED, Ordering::Release);
    waiters::wake_all(r);
}

/// Makes a private data segment of `size` bytes, recorded in the root's
/// `pending` word from before the `shmget` on (RECORDED-BEFORE-BUILT), so
/// that a writer killed inside or right after the system call leaves a
/// segment recovery can find. The segment gets the root's owner, group and
/// permission bits (`root`: the root's `IPC_STAT`), so that a writer who
/// is another user makes a generation every user of the map can use, and
/// that the map's owner may remove.
fn make_pending_segment(r: &RootHeader, size: u64, root: &ShmInfo, name: &str) -> Result<i32> {
    r.pending_size.store(size, Ordering::Relaxed);
    r.pending.store(
        PENDING_CREATING | u64::from(std::process::id()),
        Ordering::Release,
    );
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | root.mode as i32;
    let made = sys::shm_get(sys::IPC_PRIVATE, size as usize, flags, name);
    let id = match made {
        Ok(Ok(id)) => id,
        Ok(Err(errno)) => {
            r.pending.store(0, Ordering::Release);
            return Err(Error::os("shmget", errno as i32));
        }
        Err(e) => {
            r.pending.store(0, Ordering::Release);
            return Err(e);
        }
    };
    r.pending.store(id as u64 + 1, Ordering::Release);
    if let Err(e) = sys::shm_set_owner(id, root.uid, root.gid, root.mode, name) {
        let _ = sys::shm_remove(id);
        r.pending.store(0, Ordering::Release);
        return Err(e);
    }
    Ok(id)
}

/// Whether a data segment named by a root word is this map's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ownership {
    /// Its header names `owner`, or (with a size given) it is a private,
    /// never-initialised segment of exactly that size.
    Ours,
    /// Gone, or something else: never to be removed.
    NotOurs,
    /// This process may not look (permissions): keep it recorded.
    Unknown,
}

/// Reads segment `id`'s data header: removal of a shmid read from a root
/// needs this proof, because the kernel reuses shmids.
fn segment_ownership(id: i32, owner: u64, blank_size: Option<u64>) -> Ownership {
    let info = match sys::shm_stat(id, "") {
        Ok(i) => i,
        Err(Error::PermissionDenied { .. }) => return Ownership::Unknown,
        Err(_) => return Ownership::NotOurs,
    };
    let seg = match Attached::attach(id, true, "") {
        Ok(s) => s,
        Err(Error::PermissionDenied { .. }) => return Ownership::Unknown,
        Err(_) => return Ownership::NotOurs,
    };
    if seg.len() < std::mem::size_of::<DataHeader>() {
        return Ownership::NotOurs;
    }
    // SAFETY: the mapping holds a full header, is page-aligned and lives
    // until `seg` drops at the end of this function; atomics only.
    let h = unsafe { seg.base().cast::<DataHeader>().as_ref() };
    let magic = h.magic.load(Ordering::Acquire);
    let named = h.owner.load(Ordering::Relaxed) == owner;
    if magic == DATA_MAGIC && named {
        return Ownership::Ours;
    }
    // A writer killed before the header's magic store (RECORDED-BEFORE-BUILT).
    let blank = magic == 0 && (named || h.owner.load(Ordering::Relaxed) == 0);
    if blank && info.key == sys::IPC_PRIVATE && blank_size == Some(info.size) {
        return Ownership::Ours;
    }
    Ownership::NotOurs
}

/// Removes a segment proven to be this map's; if this process may not
/// (another user's) and `record`, records it in the root's `stale` list for
/// a process that may. Returns false if it is still there afterwards.
fn retire_segment(r: &RootHeader, id: i32, record: bool) -> bool {
    match sys::shm_try_remove(id) {
        Removal::Removed | Removal::Gone => true,
        Removal::Denied => {
            if record {
                root::push_stale(r, id);
            }
            false
        }
    }
}

/// Removes the segments the root's `pending`, `retiring` and `stale` words
/// record, except `keep`, each only if its header names this map (`owner`);
/// with `clear`, also resets the words (needs a writable mapping and the
/// lock), keeping in `stale` those this process may not remove. A `pending`
/// caught inside `shmget` names the dead writer's pid: its unattached
/// private segments of the recorded size that are still blank (or belong to
/// `owner`) are removed.
fn discard_recorded(r: &RootHeader, owner: u64, keep: Option<i32>, clear: bool) {
    let pending = r.pending.load(Ordering::Acquire);
    let size = r.pending_size.load(Ordering::Relaxed);
    if pending & PENDING_CREATING != 0 {
        for (id, sz) in sys::unattached_private_segments_of(pending as u32) {
            if sz == size && Some(id) != keep && blank_or_owned(id, owner, size) {
                retire_segment(r, id, clear);
            }
        }
    } else if pending != 0 {
        let id = (pending - 1) as i32;
        if Some(id) != keep {
            match segment_ownership(id, owner, Some(size)) {
                Ownership::Ours => {
                    retire_segment(r, id, clear);
                }
                Ownership::Unknown if clear => {
                    root::push_stale(r, id);
                }
                _ => {}
            }
        }
    }
    let retiring = r.retiring.load(Ordering::Acquire);
    if retiring != 0 && Some((retiring - 1) as i32) != keep {
        let id = (retiring - 1) as i32;
        match segment_ownership(id, owner, None) {
            Ownership::Ours => {
                retire_segment(r, id, clear);
            }
            Ownership::Unknown if clear => {
                root::push_stale(r, id);
            }
            _ => {}
        }
    }
    if clear {
        r.pending.store(0, Ordering::Release);
        r.retiring.store(0, Ordering::Release);
    }
    prune_stale(r, owner, keep, clear);
}

/// Tries to remove each segment of the root's `stale` list; with `clear`,
/// forgets those that are gone, removed or not this map's.
fn prune_stale(r: &RootHeader, owner: u64, keep: Option<i32>, clear: bool) {
    for w in &r.stale {
        let v = w.load(Ordering::Relaxed);
        if v == 0 {
            continue;
        }
        let id = (v - 1) as i32;
        let done = Some(id) == keep
            || match segment_ownership(id, owner, None) {
                Ownership::Ours => retire_segment(r, id, false),
                Ownership::NotOurs => true,
                Ownership::Unknown => false,
            };
        if done && clear {
            w.store(0, Ordering::Release);
        }
    }
}

/// Whether segment `id` (found by the pid and size of a writer that died
/// inside `shmget`) was never initialised, or is a data segment of `owner`.
fn blank_or_owned(id: i32, owner: u64, size: u64) -> bool {
    segment_ownership(id, owner, Some(size)) == Ownership::Ours
}

/// Removes every data segment a root names (current, pending, retiring,
/// stale), each only if its header names this map; with `clear`, also
/// forgets them in the root (needs a writable mapping).
fn discard_data_segments(r: &RootHeader, owner: u64, clear: bool) {
    let word = r.current.load(Ordering::Acquire);
    let (generation, id) = unpack_current(word);
    if word != CURRENT_DESTROYED
        && generation != 0
        && segment_ownership(id, owner, None) == Ownership::Ours
    {
        retire_segment(r, id, false);
    }
    discard_recorded(r, owner, None, clear);
    if clear {
        r.current.store(0, Ordering::Release);
    }
}

/// The operations of one atomic write (see [`RawMap::write`]).
pub struct RawBatch<'b> {
    map: &'b RawMap,
    /// The published generation the batch started on.
    base: &'b Generation,
    /// A new generation the batch moved to (unpublished until commit).
    fresh: Option<Box<Generation>>,
    stager: Stager,
}

impl RawBatch<'_> {
    fn table(&self) -> &Table {
        &self.fresh.as_deref().unwrap_or(self.base).table
    }

    /// Stages `key → value`.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let h = hash_key(self.map.seed, key);
        let t = &self.fresh.as_deref().unwrap_or(self.base).table;
        match self.stager.put(t, key, h, value) {
            Err(Error::Full { .. }) => {
                self.migrate(Some((key.len(), value.len())))?;
                let t = &self.fresh.as_deref().unwrap_or(self.base).table;
                self.stager.put(t, key, h, value)
            }
            r => r,
        }
    }

    /// Stages removal of `key`; returns whether it was present (as this
    /// batch sees the map).
    pub fn remove(&mut self, key: &[u8]) -> Result<bool> {
        let h = hash_key(self.map.seed, key);
        let t = &self.fresh.as_deref().unwrap_or(self.base).table;
        self.stager.remove(t, key, h)
    }

    /// The value of `key` as this batch sees the map (its own writes
    /// included).
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        let h = hash_key(self.map.seed, key);
        self.stager.get(self.table(), key, h)
    }

    /// Whether `key` is present as this batch sees the map.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Moves the batch to a new generation sized for the live entries, the
    /// batch and `extra` (a record that did not fit), copying the live
    /// entries and re-staging the batch there. Nothing is published yet.
    fn migrate(&mut self, extra: Option<(usize, usize)>) -> Result<()> {
        let base = &self.base.table;
        let h = base.header();
        let live = h.live.load(Ordering::Relaxed);
        let live_bytes = h
            .arena_used
            .load(Ordering::Relaxed)
            .saturating_sub(h.garbage.load(Ordering::Relaxed));
        let (dkeys, dbytes) = self.stager.footprint(base)?;
        let (xn, xb) = extra.map_or((0, 0), |(k, v)| (1, record_size(k as u64, v as u64)));
        let keys = (live as i64 + dkeys).max(0) as u64 + xn;
        let bytes =
            (live_bytes as i64 + dbytes).max(0) as u64 + xb + REDO_ENTRY * self.stager.op_count();
        let max_total = (self.map.max_size != 0).then_some(self.map.max_size);
        let (slots, arena) =
            match grow_geometry(base.capacity(), base.arena_size(), keys, bytes, max_total) {
                Ok(g) => g,
                Err(e) => {
                    // A record that does not fit even into an otherwise empty map.
                    if let (Some((_, v)), Some(max)) = (extra, max_total) {
                        if grow_geometry(MIN_SLOTS, MIN_ARENA, 1, xb, max_total).is_err() {
                            return Err(Error::ValueTooLarge {
                                len: v,
                                max: max as usize,
                            });
                        }
                    }
                    return Err(e);
                }
            };
        let r = self.map.root();
        // A second move within one batch: the previous fresh generation is
        // still recorded (as `retiring`) until it is removed below.
        if let Some(prev) = &self.fresh {
            r.retiring
                .store(prev.seg.shmid as u64 + 1, Ordering::Release);
        }
        let fresh = self
            .map
            .new_generation(self.base.number + 1, slots, arena)?;
        let mut discard = Undo(Some(|| {
            let _ = sys::shm_remove(fresh.seg.shmid);
            r.pending.store(0, Ordering::Release);
        }));
        // Keys the batch writes or removes are not copied: the replay below
        // stages their final state.
        fresh
            .table
            .load_from(base, |k, h| self.stager.touches(k, h))?;
        let mut stager = Stager::new(&fresh.table);
        let from = &self.fresh.as_deref().unwrap_or(self.base).table;
        self.stager.replay(from, &mut stager, &fresh.table)?;
        discard.0 = None;
        drop(discard);
        if let Some(prev) = self.fresh.replace(fresh) {
            sys::shm_remove(prev.seg.shmid)?;
            r.retiring.store(0, Ordering::Release);
        }
        self.stager = stager;
        Ok(())
    }

    /// Commits the batch: in place, or by moving to a new generation when
    /// the table or arena is full, then publishing it.
    fn commit(mut self) -> Result<()> {
        let mut moves = 0;
        loop {
            let result = match self.fresh.as_deref() {
                Some(fresh) => self.stager.commit(&fresh.table),
                None => self.map.commit_in_place(&self.base.table, &self.stager),
            };
            match result {
                Ok(_) => break,
                Err(Error::Full { .. }) if moves < 2 => {
                    moves += 1;
                    self.migrate(None)?;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(fresh) = self.fresh.take() {
            self.map.publish(self.base, fresh)?;
        }
        Ok(())
    }
}

impl Drop for RawBatch<'_> {
    fn drop(&mut self) {
        // An unpublished generation (the batch failed or panicked): remove it.
        if let Some(fresh) = self.fresh.take() {
            let _ = sys::shm_remove(fresh.seg.shmid);
            self.map.root().pending.store(0, Ordering::Release);
        }
    }
}

/// Consistent multi-key reads (see [`RawMap::view`]).
pub struct RawView<'m> {
    map: &'m RawMap,
    /// The generation the view reads (kept mapped by `pin`).
    gen: NonNull<Generation>,
    pin: Pin<'m>,
    /// The committed write being applied when the view started: the view
    /// reads its after state.
    overlay: Option<Arc<Overlay>>,
    /// `view_seq` when the view started.
    seq: u64,
}

impl<'m> RawView<'m> {
    fn gen(&self) -> &Generation {
        // SAFETY: `pin` keeps this generation mapped while the view lives.
        unsafe { self.gen.as_ref() }
    }

    fn found_ref(&self, f: &Found, value: bool) -> Ref<'m, [u8]> {
        let t = &self.gen().table;
        Ref::new(
            if value { t.value_of(f) } else { t.key_of(f) },
            self.pin.clone(),
        )
    }

    /// Runs one read of the view. A read that stalls because a write began
    /// after the view started fails at once with `ViewRaced`: this run of
    /// the closure fails its validation anyway, and the view runs it again
    /// from the new state.
    fn read<T>(
        &self,
        mut op: impl FnMut(&Table, Option<&Overlay>) -> Result<T, ReadErr>,
    ) -> Result<T> {
        let o = self.overlay.as_deref();
        let mut raced = false;
        let r = self.map.read_in(self.gen(), |t| match op(t, o) {
            Err(ReadErr::Stalled) if !t.view_validate(self.seq) => {
                raced = true;
                Err(ReadErr::Corrupted("raced"))
            }
            r => r,
        });
        if raced {
            return Err(Error::ViewRaced);
        }
        r
    }

    /// The value of `key`, zero-copy.
    pub fn get(&self, key: &[u8]) -> Result<Option<Ref<'m, [u8]>>> {
        let h = hash_key(self.map.seed, key);
        let found = self.read(|t, o| match o {
            Some(o) => o.find(t, key, h),
            None => t.find(key, h),
        })?;
        if self.map.verify_reads {
            check_record(&self.gen().table, found.as_ref())?;
        }
        Ok(found.map(|f| self.found_ref(&f, true)))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Every entry.
    pub fn entries(&self) -> Result<Vec<Entry<'m>>> {
        let mut out = Vec::new();
        for i in 0..self.gen().table.capacity() {
            let found = self.read(|t, o| match o {
                Some(o) => o.entry_at(t, i),
                None => t.entry_at(i),
            })?;
            if self.map.verify_reads {
                check_record(&self.gen().table, found.as_ref())?;
            }
            if let Some(f) = found {
                out.push((self.found_ref(&f, false), self.found_ref(&f, true)));
            }
        }
        Ok(out)
    }
}

/// With `Options::verify_reads`: the record's checksum must hold. Kept out
/// of line so that the read path without it stays as it was.
#[cold]
#[inline(never)]
fn check_record(t: &Table, found: Option<&Found>) -> Result<()> {
    match found {
        Some(f) if !t.record_intact(f) => Err(Error::corrupted("record checksum mismatch")),
        _ => Ok(()),
    }
}

/// One map found by [`list_maps`].
#[derive(Debug, Clone)]
pub struct MapListing {
    /// The SysV key of its root segment.
    pub key: i32,
    /// Its name, from the root header.
    pub name: String,
    /// Its counters, if it could be opened (read-only).
    pub stats: Option<Stats>,
    /// Why it could not be opened, otherwise.
    pub error: Option<String>,
}

/// Every shmkv map on this machine that this process can see: scans
/// `/proc/sysvipc/shm` for root segments (attached read-only, checked by
/// their magic). Maps this process may not read are listed with an error.
pub fn list_maps() -> Result<Vec<MapListing>> {
    let rows = sys::sysvipc_shm().map_err(|e| Error::Os {
        op: "read /proc/sysvipc/shm",
        source: e,
    })?;
    let mut out = Vec::new();
    for row in rows {
        if row.key == 0 || row.size != ROOT_SIZE as u64 {
            continue;
        }
        let (key, shmid) = (row.key, row.shmid);
        let seg = match Attached::attach(shmid, true, "") {
            Ok(seg) => seg,
            Err(e @ Error::PermissionDenied { .. }) => {
                out.push(MapListing {
                    key,
                    name: String::new(),
                    stats: None,
                    error: Some(e.to_string()),
                });
                continue;
            }
            Err(_) => continue,
        };
        // SAFETY: `seg` outlives `r`.
        let Some(r) = (unsafe { root::root_at(seg.base(), seg.len()) }) else {
            continue;
        };
        if root::state(r) != RootState::Complete {
            continue;
        }
        let Ok(name) = root::stored_name(r) else {
            continue;
        };
        let opts = Options::new()
            .sysv_key(key)
            .read_only(true)
            .lock_timeout(Duration::from_millis(200));
        let (stats, error) = match RawMap::open(&name, &opts).and_then(|m| m.stats()) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(MapListing {
            key,
            name,
            stats,
            error,
        });
    }
    Ok(out)
}
