//! [`RawMap`]: the map over byte keys and byte values, which [`ShmMap`]
//! (typed) is built on.
//!
//! [`ShmMap`]: crate::ShmMap

use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::hash::{hash_key, random_seed};
use crate::options::Options;
use crate::raw::gens::{Generation, Gens, Pin};
use crate::raw::hooks::{reached, CrashPoint};
use crate::raw::layout::{
    data_geometry, pack_current, pack_owner, unpack_current, DataHeader, RootHeader,
    PENDING_CREATING, REDO_ENTRY, ROOT_MAGIC, ROOT_SIZE,
};
use crate::raw::root::{self, RootState};
use crate::raw::table::{record_size, Found, ReadErr, Table};
use crate::raw::verify::VerifyReport;
use crate::raw::write::{grow_geometry, Stager};
use crate::sysv::{self, Attached, SemOpen, Semaphore};

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
    /// Permission bits of the root, used for new generations.
    mode: u32,
    /// `max_size` from the root header (0 = none).
    max_size: u64,
    sem: Semaphore,
    gens: Gens,
    root: Attached,
    /// Process-local: the thread (address of a thread-local) holding the
    /// write lock through this handle, 0 if none. Detects nested writes.
    writer_thread: AtomicUsize,
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
    /// `None` if one already was there and `mode` is `Create`.
    fn create_locked(
        name: &str,
        key: libc::key_t,
        opts: &Options,
        mode: Mode,
        (slots, arena, data_size): (u64, u64, u64),
        _locked: &Semaphore,
    ) -> Result<Option<()>> {
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | opts.mode as i32;
        let (root_id, fresh) = match sysv::shm_get(key, ROOT_SIZE, flags, name)? {
            Ok(id) => (id, true),
            Err(_) => match sysv::shm_get(key, 0, 0, name)? {
                Ok(id) => (id, false),
                Err(_) => return Err(Error::corrupted("root segment vanished during create")),
            },
        };
        let mut undo_root = Undo(fresh.then_some(move || {
            let _ = sysv::shm_remove(root_id);
        }));
        let root_seg = Attached::attach(root_id, false, name)?;
        // SAFETY: the mapping lives until `root_seg` drops at the end of this fn.
        let r = unsafe { root::root_at(root_seg.base(), root_seg.len()) }?;
        if !fresh {
            match root::state(r)? {
                RootState::Complete => {
                    root::validate(r, Some(name))?;
                    undo_root.0 = None;
                    return Ok((mode == Mode::OpenOrCreate).then_some(()));
                }
                // A creator died before finishing; we hold the lock, so no
                // creator is running: remove what it left and start over.
                RootState::Incomplete => discard_data_segments(r, pack_owner(key, root_id), true),
            }
        }
        root::init_identity(
            r,
            name,
            random_seed(),
            opts.max_size.map_or(0, |s| s.bytes()),
        );
        let data_id = make_pending_segment(r, data_size, opts.mode, name)?;
        let mut undo_data = Undo(Some(move || {
            let _ = sysv::shm_remove(data_id);
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
        let root_id = match sysv::shm_get(key, 0, 0, name)? {
            Ok(id) => id,
            Err(_) => {
                return Err(Error::NotFound {
                    name: name.to_string(),
                })
            }
        };
        let root_seg = Attached::attach(root_id, opts.read_only, name)?;
        // SAFETY: `root_seg` keeps the mapping alive while `r` is used below;
        // the returned map owns `root_seg` and never re-borrows `r`.
        let r: &RootHeader = unsafe { root::root_at(root_seg.base(), root_seg.len()) }?;
        let deadline = crate::options::deadline(opts.lock_timeout);
        loop {
            match root::state(r)? {
                RootState::Complete => break,
                RootState::Incomplete if deadline.is_none_or(|d| Instant::now() < d) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                RootState::Incomplete => {
                    return Err(Error::corrupted(format!(
                        "map {name:?} was never completely created (creator died?); \
                         open_or_create repairs it, destroy removes it"
                    )))
                }
            }
        }
        let seed = root::validate(r, Some(name))?;
        let mode = sysv::shm_stat(root_id, name)?.mode;
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
            mode,
            max_size: r.max_size.load(Ordering::Relaxed),
            sem,
            gens: Gens::new(first),
            root: root_seg,
            writer_thread: AtomicUsize::new(0),
        })
    }

    /// Removes every kernel object of the map named `name` without opening
    /// it through the usual checks (for maps that fail to open). Returns
    /// whether anything was removed.
    pub fn destroy_by_name(name: &str, opts: &Options) -> Result<bool> {
        let key = opts.key_for(name)?;
        let mut removed = false;
        if let Ok(root_id) = sysv::shm_get(key, 0, 0, name)? {
            let seg = Attached::attach(root_id, true, name)?;
            // SAFETY: `seg` outlives `r`.
            let r = unsafe { root::root_at(seg.base(), seg.len()) }?;
            root::state(r)?;
            discard_data_segments(r, pack_owner(key, root_id), false);
            sysv::shm_remove(root_id)?;
            removed = true;
        }
        // SAFETY: plain integer arguments.
        let semid = unsafe { libc::semget(key, 1, 0) };
        if semid >= 0 {
            Semaphore { semid }.remove();
            removed = true;
        }
        Ok(removed)
    }

    /// Removes the map from the kernel: its segments and its lock. Other
    /// processes that have it open keep their mappings until they drop them;
    /// their writes fail from now on.
    pub fn destroy(self) -> Result<()> {
        discard_data_segments(self.root(), pack_owner(self.key, self.root.shmid), false);
        let pin = self.gens.pin();
        sysv::shm_remove(pin.current().seg.shmid)?;
        drop(pin);
        sysv::shm_remove(self.root.shmid)?;
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
        let _switch = self.gens.switch.lock().unwrap_or_else(|e| e.into_inner());
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
        let value = self
            .read_in(g, |t| t.find_verified(key, h, self.verify_reads))?
            .map(|f| NonNull::from(g.table.value_of(&f)));
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
        g.table.header().live.load(Ordering::Relaxed) as usize
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The map's version: the number of writes committed so far. Any write
    /// advances it; a reader can compare versions to detect changes.
    pub fn version(&self) -> u64 {
        let pin = self.gens.pin();
        self.current_or_local(&pin).table.version()
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
        self.sem.acquire(self.lock_timeout)?;
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

    /// After a commit (lock held): publishes the version in the futex word
    /// and wakes sleepers, with a system call only if someone sleeps.
    fn notify(&self, pin: &Pin<'_>) {
        let r = self.root();
        let v = pin.current().table.version() as u32;
        if r.change_seq.load(Ordering::Relaxed) != v {
            r.change_seq.store(v, Ordering::SeqCst);
            if r.waiters.load(Ordering::SeqCst) > 0 {
                sysv::futex_wake_all(&r.change_seq);
            }
        }
    }

    /// Sleeps until the map's version differs from `since` or `timeout`
    /// passes; returns the new version, or `None` on timeout. Writers wake
    /// sleepers through a futex in the root segment (a system call only
    /// when someone sleeps). A read-only handle cannot register as a
    /// sleeper and polls every millisecond instead.
    pub fn wait_for_change(&self, since: u64, timeout: Duration) -> Result<Option<u64>> {
        let deadline = crate::options::deadline(timeout);
        let r = self.root();
        if !self.read_only {
            r.waiters.fetch_add(1, Ordering::SeqCst);
        }
        struct Leave<'a>(Option<&'a std::sync::atomic::AtomicU32>);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                if let Some(w) = self.0 {
                    w.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        let _leave = Leave((!self.read_only).then_some(&r.waiters));
        loop {
            let seen = r.change_seq.load(Ordering::SeqCst);
            let v = self.version();
            if v != since {
                return Ok(Some(v));
            }
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Ok(None);
            }
            if self.read_only {
                std::thread::sleep(left.min(Duration::from_millis(1)));
            } else {
                sysv::futex_wait(&r.change_seq, seen, left.min(Duration::from_millis(500)));
            }
        }
    }

    /// Makes a new, unpublished data segment for generation `number`,
    /// recorded in the root's `pending` word (or `retiring`, see `migrate`).
    fn new_generation(&self, number: u64, slots: u64, arena: u64) -> Result<Box<Generation>> {
        let (_, _, size) = data_geometry(slots, arena).ok_or_else(|| Error::corrupted("size"))?;
        let id = make_pending_segment(self.root(), size, self.mode, &self.name)?;
        let mut undo = Undo(Some(|| {
            let _ = sysv::shm_remove(id);
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
    /// process to the new one.
    fn publish(&self, old: &Generation, fresh: Box<Generation>) -> Result<()> {
        let r = self.root();
        r.retiring
            .store(old.seg.shmid as u64 + 1, Ordering::Release);
        reached(CrashPoint::MidResize);
        r.current.store(fresh.word, Ordering::Release);
        reached(CrashPoint::AfterPublish);
        sysv::shm_remove(old.seg.shmid)?;
        r.retiring.store(0, Ordering::Release);
        r.pending.store(0, Ordering::Release);
        let _switch = self.gens.switch.lock().unwrap_or_else(|e| e.into_inner());
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
            let s = match g.table.view_begin() {
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
            };
            let r = f(&view);
            if g.table.view_validate(s) {
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
    pub fn verify(&self) -> Result<VerifyReport> {
        let seed = self.seed;
        self.view(|v| Ok(v.gen().table.verify(seed)))
    }

    /// Counters and identity (costs a few system calls).
    pub fn stats(&self) -> Result<Stats> {
        let pin = self.gens.pin();
        let g = self.current(&pin)?;
        let h = g.table.header();
        let info = sysv::shm_stat(g.seg.shmid, &self.name)?;
        let value = self.sem.value();
        Ok(Stats {
            name: self.name.clone(),
            key: self.key,
            generation: g.number,
            capacity: g.table.capacity(),
            live: h.live.load(Ordering::Relaxed),
            tombstones: h.tombstones.load(Ordering::Relaxed),
            arena_size: g.table.arena_size(),
            arena_used: h.arena_used.load(Ordering::Relaxed),
            garbage_bytes: h.garbage.load(Ordering::Relaxed),
            segment_size: g.table.segment_size(),
            version: g.table.version(),
            attached: info.nattch,
            lock_held: value == Some(0),
            lock_pid: self.sem.last_pid(),
            root_shmid: self.root.shmid,
            data_shmid: g.seg.shmid,
            semid: self.sem.semid,
            mapped_generations: self.gens.mapped(),
        })
    }
}

/// Makes a private data segment of `size` bytes, recorded in the root's
/// `pending` word from before the `shmget` on (RECORDED-BEFORE-BUILT), so
/// that a writer killed inside or right after the system call leaves a
/// segment recovery can find.
fn make_pending_segment(r: &RootHeader, size: u64, mode: u32, name: &str) -> Result<i32> {
    r.pending_size.store(size, Ordering::Relaxed);
    r.pending.store(
        PENDING_CREATING | u64::from(std::process::id()),
        Ordering::Release,
    );
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | mode as i32;
    let made = sysv::shm_get(sysv::IPC_PRIVATE, size as usize, flags, name);
    if let Ok(Ok(id)) = made {
        r.pending.store(id as u64 + 1, Ordering::Release);
        return Ok(id);
    }
    r.pending.store(0, Ordering::Release);
    match made {
        Ok(Err(errno)) => Err(Error::Os {
            op: "shmget",
            errno,
        }),
        Err(e) => Err(e),
        Ok(Ok(_)) => unreachable!("handled above"),
    }
}

/// Removes the segments the root's `pending` and `retiring` words record,
/// except `keep`; with `clear`, also resets the words (needs a writable
/// mapping). A `pending` caught inside `shmget` names the dead writer's pid:
/// its unattached private segments of the recorded size that are still
/// blank (or belong to `owner`) are removed.
fn discard_recorded(r: &RootHeader, owner: u64, keep: Option<i32>, clear: bool) {
    let pending = r.pending.load(Ordering::Acquire);
    if pending & PENDING_CREATING != 0 {
        let size = r.pending_size.load(Ordering::Relaxed);
        for (id, sz) in sysv::unattached_private_segments_of(pending as u32) {
            if sz == size && Some(id) != keep && blank_or_owned(id, owner) {
                let _ = sysv::shm_remove(id);
            }
        }
    } else if pending != 0 && Some((pending - 1) as i32) != keep {
        let _ = sysv::shm_remove((pending - 1) as i32);
    }
    let retiring = r.retiring.load(Ordering::Acquire);
    if retiring != 0 && Some((retiring - 1) as i32) != keep {
        let _ = sysv::shm_remove((retiring - 1) as i32);
    }
    if clear {
        r.pending.store(0, Ordering::Release);
        r.retiring.store(0, Ordering::Release);
    }
}

/// Whether segment `id` was never initialised (all-zero header), or is a
/// data segment of `owner`: only such a segment may be removed on the
/// strength of a pid and a size.
fn blank_or_owned(id: i32, owner: u64) -> bool {
    let Ok(seg) = Attached::attach(id, true, "") else {
        return false;
    };
    if seg.len() < std::mem::size_of::<DataHeader>() {
        return false;
    }
    // SAFETY: the mapping holds a full header, is page-aligned and lives
    // until `seg` drops at the end of this function; atomics only.
    let h = unsafe { seg.base().cast::<DataHeader>().as_ref() };
    let magic = h.magic.load(Ordering::Acquire);
    magic == 0 || h.owner.load(Ordering::Relaxed) == owner
}

/// Removes every data segment a root names (current, pending, retiring);
/// with `clear`, also forgets them in the root (needs a writable mapping).
fn discard_data_segments(r: &RootHeader, owner: u64, clear: bool) {
    let (generation, id) = unpack_current(r.current.load(Ordering::Acquire));
    if generation != 0 {
        let _ = sysv::shm_remove(id);
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
                        if grow_geometry(16, 4096, 1, xb, max_total).is_err() {
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
            let _ = sysv::shm_remove(fresh.seg.shmid);
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
            sysv::shm_remove(prev.seg.shmid)?;
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
            let t = &self.fresh.as_deref().unwrap_or(self.base).table;
            match self.stager.commit(t) {
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
            let _ = sysv::shm_remove(fresh.seg.shmid);
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

    /// The value of `key`, zero-copy.
    pub fn get(&self, key: &[u8]) -> Result<Option<Ref<'m, [u8]>>> {
        let h = hash_key(self.map.seed, key);
        let verify = self.map.verify_reads;
        let found = self
            .map
            .read_in(self.gen(), |t| t.find_verified(key, h, verify))?;
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
            let verify = self.map.verify_reads;
            if let Some(f) = self
                .map
                .read_in(self.gen(), |t| t.entry_at_verified(i, verify))?
            {
                out.push((self.found_ref(&f, false), self.found_ref(&f, true)));
            }
        }
        Ok(out)
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
    let table = std::fs::read_to_string("/proc/sysvipc/shm").map_err(|e| Error::Os {
        op: "read /proc/sysvipc/shm",
        errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
        let (Some(key), Some(shmid), Some(size)) = (num(0), num(1), num(3)) else {
            continue;
        };
        if key == 0 || size != ROOT_SIZE as i64 {
            continue;
        }
        let (key, shmid) = (key as i32, shmid as i32);
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
        let Ok(r) = (unsafe { root::root_at(seg.base(), seg.len()) }) else {
            continue;
        };
        if !matches!(root::state(r), Ok(RootState::Complete)) {
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
