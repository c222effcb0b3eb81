//! [`RawMap`]: the map over byte keys and byte values, which [`ShmMap`]
//! (typed) is built on.
//!
//! [`ShmMap`]: crate::ShmMap

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::hash::{hash_key, random_seed};
use crate::options::Options;
use crate::raw::hooks::{reached, CrashPoint};
use crate::raw::layout::{
    pack_current, pack_owner, unpack_current, RootHeader, ROOT_MAGIC, ROOT_SIZE,
};
use crate::raw::root::{self, RootState};
use crate::raw::table::{ReadErr, Table};
use crate::raw::write::Stager;
use crate::sysv::{self, Attached, SemOpen, Semaphore};

/// A zero-copy reference into the map's shared memory. It stays valid and
/// unchanged for as long as it is held: published arena bytes are never
/// written again.
#[derive(Debug)]
pub struct Ref<'m, T: ?Sized> {
    value: &'m T,
}

impl<'m, T: ?Sized> Ref<'m, T> {
    pub(crate) fn new(value: &'m T) -> Ref<'m, T> {
        Ref { value }
    }

    /// Turns a reference to the bytes into a reference to something inside.
    pub fn map<U: ?Sized>(r: Ref<'m, T>, f: impl FnOnce(&'m T) -> &'m U) -> Ref<'m, U> {
        Ref { value: f(r.value) }
    }

    /// Like [`Ref::map`] for a fallible projection.
    pub fn try_map<U: ?Sized, E>(
        r: Ref<'m, T>,
        f: impl FnOnce(&'m T) -> Result<&'m U, E>,
    ) -> Result<Ref<'m, U>, E> {
        Ok(Ref { value: f(r.value)? })
    }
}

impl<T: ?Sized> Deref for Ref<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T: ?Sized> Clone for Ref<'_, T> {
    fn clone(&self) -> Self {
        Ref { value: self.value }
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
    seed: u64,
    sem: Semaphore,
    // `table` points into `data`; fields drop in order, so it goes first.
    table: Table,
    data: Attached,
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
        if self.map.table.needs_recovery() {
            // A panic between commit and clear: finish the committed write.
            let _ = self.map.table.recover();
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
                RootState::Incomplete => discard_data_segments(r, true),
            }
        }
        root::init_identity(
            r,
            name,
            random_seed(),
            opts.max_size.map_or(0, |s| s.bytes()),
        );
        let data_id = match sysv::shm_get(sysv::IPC_PRIVATE, data_size as usize, flags, name)? {
            Ok(id) => id,
            Err(e) => {
                return Err(Error::Os {
                    op: "shmget",
                    errno: e,
                })
            }
        };
        r.pending.store(data_id as u64 + 1, Ordering::Release);
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
        let deadline = Instant::now() + opts.lock_timeout;
        loop {
            match root::state(r)? {
                RootState::Complete => break,
                RootState::Incomplete if Instant::now() < deadline => {
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
        let sem = match Semaphore::open(key, false, opts.mode, opts.lock_timeout, name) {
            Ok(SemOpen::Existing(s) | SemOpen::CreatedAndHeld(s)) => s,
            Err(Error::NotFound { .. }) => {
                return Err(Error::corrupted(format!(
                    "the lock of map {name:?} is missing"
                )))
            }
            Err(e) => return Err(e),
        };
        let (generation, data_id) = unpack_current(r.current.load(Ordering::Acquire));
        if generation == 0 {
            return Err(Error::corrupted("root names no data segment"));
        }
        let data = Attached::attach(data_id, opts.read_only, name).map_err(|e| match e {
            e @ Error::PermissionDenied { .. } => e,
            e => Error::corrupted(format!("data segment {data_id} named by the root: {e}")),
        })?;
        // SAFETY: `data` is moved into the returned map together with the
        // table, and the table field drops first.
        let table = unsafe { Table::attach(data.base(), data.len()) }.map_err(|e| {
            Error::corrupted(format!("data segment {data_id} named by the root: {e}"))
        })?;
        if table.owner() != pack_owner(key, root_id) {
            return Err(Error::corrupted(format!(
                "data segment {data_id} belongs to another map"
            )));
        }
        Ok(RawMap {
            name: name.to_string(),
            key,
            read_only: opts.read_only,
            lock_timeout: opts.lock_timeout,
            seed,
            sem,
            table,
            data,
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
            discard_data_segments(r, false);
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
        let root = self.root();
        let (_, data_id) = unpack_current(root.current.load(Ordering::Acquire));
        discard_data_segments(root, false);
        sysv::shm_remove(data_id)?;
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

    /// Runs a lock-free read, handling stalls (a writer slow or dead in the
    /// middle of applying a write) without ever waiting forever.
    #[inline]
    fn read<T>(&self, mut op: impl FnMut(&Table) -> Result<T, ReadErr>) -> Result<T> {
        match op(&self.table) {
            Ok(v) => Ok(v),
            Err(ReadErr::Corrupted(what)) => Err(Error::corrupted(what)),
            Err(ReadErr::Stalled) => self.read_slow(op),
        }
    }

    #[cold]
    fn read_slow<T>(&self, mut op: impl FnMut(&Table) -> Result<T, ReadErr>) -> Result<T> {
        let start = Instant::now();
        loop {
            self.unstick(start)?;
            match op(&self.table) {
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
            let _guard = WriteGuard { map: self };
            self.table.recover()?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
        Ok(())
    }

    /// The value stored under `key`, zero-copy.
    #[inline]
    pub fn get_ref(&self, key: &[u8]) -> Result<Option<Ref<'_, [u8]>>> {
        let h = hash_key(self.seed, key);
        let found = self.read(|t| t.find(key, h))?;
        Ok(found.map(|f| Ref::new(self.table.value_of(&f))))
    }

    /// A copy of the value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_ref(key)?.map(|v| v.to_vec()))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        let h = hash_key(self.seed, key);
        Ok(self.read(|t| t.find(key, h))?.is_some())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.table.header().live.load(Ordering::Relaxed) as usize
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The map's version: the number of writes committed so far. Any write
    /// advances it; a reader can compare versions to detect changes.
    pub fn version(&self) -> u64 {
        self.table.version()
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
        let guard = WriteGuard { map: self };
        self.table.recover()?;
        Ok(guard)
    }

    /// Runs `f` with the write lock held and applies everything it staged
    /// as one atomic write: other processes see all of it or none of it (in
    /// a [`view`](RawMap::view)), and a crash at any point leaves the map
    /// before or after the whole batch. If `f` returns `Err` or panics,
    /// nothing is applied.
    pub fn write<R>(&self, f: impl FnOnce(&mut RawBatch<'_>) -> Result<R>) -> Result<R> {
        let _guard = self.lock()?;
        let mut batch = RawBatch {
            map: self,
            stager: Stager::new(&self.table),
        };
        let r = f(&mut batch)?;
        batch.stager.commit()?;
        Ok(r)
    }

    /// Runs `f` over a consistent snapshot: no write is applied between the
    /// first and the last read `f` makes. `f` may run more than once (when a
    /// write raced with it); only the result of a consistent run is
    /// returned. After many races it runs under the write lock.
    pub fn view<'m, R>(&'m self, mut f: impl FnMut(&RawView<'m>) -> Result<R>) -> Result<R> {
        const OPTIMISTIC_TRIES: u32 = 64;
        let start = Instant::now();
        let view = RawView { map: self };
        let mut tries = 0;
        loop {
            let s = match self.table.view_begin() {
                Ok(s) => s,
                Err(ReadErr::Stalled) => {
                    self.unstick(start)?;
                    continue;
                }
                Err(ReadErr::Corrupted(w)) => return Err(Error::corrupted(w)),
            };
            let r = f(&view);
            if self.table.view_validate(s) {
                return r;
            }
            tries += 1;
            if tries >= OPTIMISTIC_TRIES && !self.read_only {
                let _guard = self.lock()?;
                return f(&view);
            }
            if tries >= OPTIMISTIC_TRIES {
                self.unstick(start)?;
            }
        }
    }

    /// Counters and identity (costs a few system calls).
    pub fn stats(&self) -> Result<Stats> {
        let h = self.table.header();
        let info = sysv::shm_stat(self.data.shmid, &self.name)?;
        let value = self.sem.value();
        Ok(Stats {
            name: self.name.clone(),
            key: self.key,
            generation: self.table.generation(),
            capacity: self.table.capacity(),
            live: h.live.load(Ordering::Relaxed),
            tombstones: h.tombstones.load(Ordering::Relaxed),
            arena_size: self.table.arena_size(),
            arena_used: h.arena_used.load(Ordering::Relaxed),
            garbage_bytes: h.garbage.load(Ordering::Relaxed),
            segment_size: self.table.segment_size(),
            version: self.table.version(),
            attached: info.nattch,
            lock_held: value == Some(0),
            lock_pid: self.sem.last_pid(),
            root_shmid: self.root.shmid,
            data_shmid: self.data.shmid,
            semid: self.sem.semid,
        })
    }
}

/// Removes the data segments a root names (current and pending); with
/// `clear`, also forgets them in the root (needs a writable mapping).
fn discard_data_segments(r: &RootHeader, clear: bool) {
    let (generation, id) = unpack_current(r.current.load(Ordering::Acquire));
    if generation != 0 {
        let _ = sysv::shm_remove(id);
    }
    let pending = r.pending.load(Ordering::Acquire);
    if pending != 0 {
        let _ = sysv::shm_remove((pending - 1) as i32);
    }
    if clear {
        r.current.store(0, Ordering::Release);
        r.pending.store(0, Ordering::Release);
    }
}

/// The operations of one atomic write (see [`RawMap::write`]).
pub struct RawBatch<'m> {
    map: &'m RawMap,
    stager: Stager<'m>,
}

impl RawBatch<'_> {
    /// Stages `key → value`.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let h = hash_key(self.map.seed, key);
        self.stager.put(key, h, value)
    }

    /// Stages removal of `key`; returns whether it was present (as this
    /// batch sees the map).
    pub fn remove(&mut self, key: &[u8]) -> Result<bool> {
        let h = hash_key(self.map.seed, key);
        self.stager.remove(key, h)
    }

    /// The value of `key` as this batch sees the map (its own writes
    /// included).
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        let h = hash_key(self.map.seed, key);
        self.stager.get(key, h)
    }

    /// Whether `key` is present as this batch sees the map.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Largest value (in bytes) that a key of `key_len` bytes can have.
    pub fn max_value_len(&self, key_len: usize) -> usize {
        self.stager.max_value_len(key_len) as usize
    }
}

/// Consistent multi-key reads (see [`RawMap::view`]).
pub struct RawView<'m> {
    map: &'m RawMap,
}

impl<'m> RawView<'m> {
    /// The value of `key`, zero-copy.
    pub fn get(&self, key: &[u8]) -> Result<Option<Ref<'m, [u8]>>> {
        self.map.get_ref(key)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        self.map.contains_key(key)
    }

    /// Every entry.
    pub fn entries(&self) -> Result<Vec<Entry<'m>>> {
        let t = &self.map.table;
        let mut out = Vec::new();
        for i in 0..t.capacity() {
            if let Some(f) = self.map.read(|t| t.entry_at(i))? {
                out.push((Ref::new(t.key_of(&f)), Ref::new(t.value_of(&f))));
            }
        }
        Ok(out)
    }
}
