//! Creation, opening and removal of a map: the root segment at the map's
//! key, the semaphore set, and the proofs that objects at the key are ours
//! (PROVABLY-OURS).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::engine::{attach_current, Engine, Undo};
use super::gens::Gens;
use super::hooks::{reached, CrashPoint};
use super::layout::{
    pack_current, pack_owner, unpack_current, RootHeader, CURRENT_DESTROYED, ROOT_MAGIC, ROOT_SIZE,
};
use super::provider::{LockOpen, LockSet, Provider};
use super::resize::{
    discard_data_segments, discard_recorded, huge_policy_flags, make_data_segment,
};
use super::root::{self, RootState};
use super::table::Table;
use super::waiters;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::sys;
use std::sync::Arc;

/// How `connect` treats a map that is or is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Create,
    Open,
    OpenOrCreate,
}

/// The error for an object at the key that is not provably shmkv's.
pub(super) fn foreign_segment(key: libc::key_t, shmid: i32, name: &str) -> Error {
    Error::KeyInUse {
        name: name.to_string(),
        key,
        object: "shared memory segment",
        id: shmid,
    }
}

/// `NameMismatch` unless the root (shmkv's: a marker was seen) stores `name`.
pub(super) fn check_stored_name(r: &RootHeader, name: &str) -> Result<()> {
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
pub(super) fn unmarked_root_of_dead_creator(
    p: &dyn Provider,
    key: libc::key_t,
    id: i32,
    sem: &dyn LockSet,
    name: &str,
) -> Result<bool> {
    let Some(pid) = sem.creating_root_pid() else {
        return Ok(false);
    };
    let info = p.stat(id, name)?;
    if info.cpid != pid || info.size != ROOT_SIZE as u64 || info.key != key {
        return Ok(false);
    }
    let seg = p.attach(id, true, name)?;
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
pub(super) fn mark_destroyed(p: &dyn Provider, r: &RootHeader, owner: u64) {
    let word = r.current.load(Ordering::Acquire);
    if word == CURRENT_DESTROYED {
        return;
    }
    let (generation, id) = unpack_current(word);
    discard_recorded(p, r, owner, Some(id), true);
    if generation != 0 {
        r.retiring.store(id as u64 + 1, Ordering::Release);
    }
    r.current.store(CURRENT_DESTROYED, Ordering::Release);
    waiters::wake_all(r);
}

impl Engine {
    /// Creates a new map; [`Error::AlreadyExists`] if one is there.
    pub(crate) fn create(p: Arc<dyn Provider>, name: &str, opts: &Options) -> Result<Engine> {
        Engine::connect(p, name, opts, Mode::Create)
    }

    /// Opens an existing map; [`Error::NotFound`] if there is none.
    pub(crate) fn open(p: Arc<dyn Provider>, name: &str, opts: &Options) -> Result<Engine> {
        Engine::connect(p, name, opts, Mode::Open)
    }

    /// Opens the map, creating it first if it does not exist. Safe against
    /// other processes doing the same at the same time.
    pub(crate) fn open_or_create(
        p: Arc<dyn Provider>,
        name: &str,
        opts: &Options,
    ) -> Result<Engine> {
        Engine::connect(p, name, opts, Mode::OpenOrCreate)
    }

    pub(super) fn connect(
        p: Arc<dyn Provider>,
        name: &str,
        opts: &Options,
        mode: Mode,
    ) -> Result<Engine> {
        let key = opts.key_for(name)?;
        if mode == Mode::Open {
            return Engine::open_existing(p, name, key, opts);
        }
        if opts.read_only {
            // A read-only handle cannot create: `open_or_create` opens an
            // existing map, and says why it cannot make a missing one.
            if mode == Mode::Create {
                return Err(Error::ReadOnly);
            }
            return match Engine::open_existing(p, name, key, opts) {
                Err(Error::NotFound { .. }) => Err(Error::ReadOnly),
                r => r,
            };
        }
        let geometry = opts.geometry()?;
        // A destroy can remove the lock this call waits on, or the map it
        // just made or found, at any moment: then the map is not there any
        // more, and making it is still this call's job. Bounded, in case
        // another process destroys it again and again.
        for _ in 0..100 {
            // Creation is serialised by the map's lock, which is created first.
            let (sem, created_sem) =
                match p.open_lock(key, true, opts.mode, opts.lock_timeout, name)? {
                    LockOpen::CreatedAndHeld(s) => (s, true),
                    LockOpen::Existing(s) => match s.acquire(opts.lock_timeout) {
                        Ok(()) => (s, false),
                        // Removed while we waited: a destroy ran.
                        Err(Error::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    },
                };
            let result = Engine::create_locked(&*p, name, key, opts, mode, geometry, &*sem);
            if result.is_err() && created_sem {
                // Nothing of ours is at the key: do not leave a lock behind.
                sem.remove();
            } else {
                let _ = sem.release();
            }
            return match result? {
                Some(()) => match Engine::open_existing(p.clone(), name, key, opts) {
                    // Destroyed between our lock's release and the open.
                    Err(Error::NotFound { .. }) => continue,
                    r => r,
                },
                None => Err(Error::AlreadyExists {
                    name: name.to_string(),
                }),
            };
        }
        Err(Error::NotFound {
            name: name.to_string(),
        })
    }

    /// With the lock held: makes sure a complete map is at `key`. Returns
    /// `None` if one already was there and `mode` is `Create`. Only a root
    /// that is provably shmkv's (a root magic, or no marker yet but made by
    /// the creator the lock's tag names) is read, repaired or removed.
    pub(super) fn create_locked(
        p: &dyn Provider,
        name: &str,
        key: libc::key_t,
        opts: &Options,
        mode: Mode,
        geometry @ (slots, arena, _): (u64, u64, u64),
        sem: &dyn LockSet,
    ) -> Result<Option<()>> {
        // A creator killed between its `shmget` of the root and the root's
        // marker left a root in which nothing can be trusted; the lock's
        // tag names that creator (the root's `shm_cpid`): remove the root.
        if sem.creating_root_pid().is_some() {
            if let Ok(id) = p.get(key, 0, 0, name)? {
                if unmarked_root_of_dead_creator(p, key, id, sem, name)? {
                    p.remove(id)?;
                }
            }
        }
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | opts.mode as i32;
        sem.mark_creating_root(name)?;
        let mut unmark = Undo(Some(|| {
            let _ = sem.unmark_creating_root(name);
        }));
        let made = p.get(key, ROOT_SIZE, flags, name);
        let (root_id, fresh) = match made? {
            Ok(id) => (id, true),
            Err(_) => {
                if let Some(f) = unmark.0.take() {
                    f();
                }
                match p.get(key, 0, 0, name)? {
                    Ok(id) => (id, false),
                    Err(_) => return Err(Error::corrupted("root segment vanished during create")),
                }
            }
        };
        let mut undo_root = Undo(fresh.then_some(move || {
            let _ = p.remove(root_id);
        }));
        let root_seg = p.attach(root_id, false, name)?;
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
                    discard_data_segments(p, r, pack_owner(key, root_id), false);
                    p.remove(root_id)?;
                    drop(root_seg);
                    return Engine::create_locked(p, name, key, opts, mode, geometry, sem);
                }
                // A creator died before finishing: we hold the lock, so it
                // does not run (nobody can have opened the map). Remove what
                // it left and start over, in place (only for the same name).
                RootState::Creating => {
                    check_stored_name(r, name)?;
                    if root::creator_alive(p, r) {
                        return Err(Error::corrupted(format!(
                            "map {name:?} is being created by pid {}, which does not hold its lock",
                            r.creator_pid.load(Ordering::Relaxed)
                        )));
                    }
                    discard_data_segments(p, r, pack_owner(key, root_id), true);
                }
            }
        }
        // Stores the ROOT_CREATING marker: from here on the root is ours.
        root::init_identity(
            p,
            r,
            name,
            p.random_seed(),
            opts.max_size.map_or(0, |s| s.bytes()),
        );
        if let Some(t) = &opts.typed {
            super::schema::record(r, t);
        }
        r.flags.store(
            if opts.wake_every_write {
                super::layout::ROOT_FLAG_WAKE_EVERY_WRITE
            } else {
                0
            } | huge_policy_flags(opts.huge_pages),
            Ordering::Relaxed,
        );
        if let Some(f) = unmark.0.take() {
            f();
        }
        let perms = p.stat(root_id, name)?;
        let made = make_data_segment(p, r, (slots, arena), &perms, name)?;
        let data_id = made.id;
        let mut undo_data = Undo(Some(move || {
            let _ = p.remove(data_id);
        }));
        let data_seg = p.attach(data_id, false, name)?;
        // SAFETY: a new segment is zero-filled, mapped by `data_seg` for the
        // rest of this function, and not yet published anywhere.
        unsafe {
            Table::init(
                data_seg.base(),
                data_seg.len(),
                (slots, made.arena),
                1,
                pack_owner(key, root_id),
                made.huge_page_size,
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

    pub(super) fn open_existing(
        p: Arc<dyn Provider>,
        name: &str,
        key: libc::key_t,
        opts: &Options,
    ) -> Result<Engine> {
        let root_id = match p.get(key, 0, 0, name)? {
            Ok(id) => id,
            Err(_) => {
                // No map; but say so if another program's set holds the key.
                if let Err(e @ Error::KeyInUse { .. }) = p.find_lock(key, name) {
                    return Err(e);
                }
                return Err(Error::NotFound {
                    name: name.to_string(),
                });
            }
        };
        let root_seg = p.attach(root_id, opts.read_only, name)?;
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
                    let ours = p
                        .find_lock(key, name)
                        .ok()
                        .flatten()
                        .and_then(|s| s.creating_root_pid())
                        .is_some_and(|pid| p.stat(root_id, name).is_ok_and(|i| i.cpid == pid));
                    if !ours {
                        // The creator stored its marker (and dropped the
                        // tag) between our two looks: look again.
                        if root::state(r) != RootState::Foreign {
                            continue;
                        }
                        // Its creation failed and removed it: no map.
                        if p.stat(root_id, name).map_or(true, |i| i.key != key) {
                            return Err(Error::NotFound {
                                name: name.to_string(),
                            });
                        }
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
        if let Some(t) = &opts.typed {
            super::schema::check(r, t)?;
        }
        let sem = match p.open_lock(key, false, opts.mode, opts.lock_timeout, name) {
            Ok(LockOpen::Existing(s) | LockOpen::CreatedAndHeld(s)) => s,
            // A destroy marks the root before it removes the lock: then the
            // map was destroyed while we opened it.
            Err(Error::NotFound { .. }) if root::state(r) == RootState::Destroyed => {
                return Err(Error::NotFound {
                    name: name.to_string(),
                })
            }
            Err(Error::NotFound { .. }) => {
                return Err(Error::corrupted(format!(
                    "the lock of map {name:?} is missing"
                )))
            }
            Err(e) => return Err(e),
        };
        let first = attach_current(&*p, r, key, root_id, opts.read_only, name)?;
        Ok(Engine {
            name: name.to_string(),
            key,
            read_only: opts.read_only,
            lock_timeout: opts.lock_timeout,
            verify_reads: opts.verify_reads,
            seed,
            max_size: r.max_size.load(Ordering::Relaxed),
            provider: p,
            sem,
            gens: Gens::new(first),
            root: root_seg,
            writer_thread: AtomicUsize::new(0),
            writer_epoch: std::sync::atomic::AtomicU32::new(0),
            overlay_cache: std::sync::RwLock::new(None),
            waiter_root: std::sync::OnceLock::new(),
            raw_writes_ok: opts.typed.is_some() || opts.raw_writes,
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
    pub(crate) fn destroy_by_name(p: &dyn Provider, name: &str, opts: &Options) -> Result<bool> {
        let key = opts.key_for(name)?;
        let sem = p.find_lock(key, name)?;
        if let Some(s) = &sem {
            match s.acquire(opts.lock_timeout) {
                Ok(()) => {}
                // Removed while we waited: another destroy ran; whatever
                // is at the key now is not what this call was asked about.
                Err(Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        // Released on every exit; harmless once the set is removed.
        let _release = Undo(sem.as_ref().map(|s| {
            move || {
                let _ = s.release();
            }
        }));
        let mut removed = false;
        if let Ok(root_id) = p.get(key, 0, 0, name)? {
            let (seg, writable) = match p.attach(root_id, false, name) {
                Ok(seg) => (seg, true),
                Err(Error::PermissionDenied { .. }) => (p.attach(root_id, true, name)?, false),
                Err(e) => return Err(e),
            };
            // SAFETY: `seg` outlives `r`.
            let r = unsafe { root::root_at(seg.base(), seg.len()) }
                .ok_or_else(|| foreign_segment(key, root_id, name))?;
            match root::state(r) {
                RootState::Foreign => match &sem {
                    Some(s) if unmarked_root_of_dead_creator(p, key, root_id, &**s, name)? => {}
                    _ => return Err(foreign_segment(key, root_id, name)),
                },
                state => {
                    check_stored_name(r, name)?;
                    if !p.stat(root_id, name)?.removable_by_me() {
                        return Err(Error::PermissionDenied {
                            name: name.to_string(),
                            op: "shmctl(IPC_RMID)",
                        });
                    }
                    let owner = pack_owner(key, root_id);
                    if writable && state == RootState::Complete {
                        // Open handles get NotFound on their next operation.
                        mark_destroyed(p, r, owner);
                    }
                    discard_data_segments(p, r, owner, false);
                }
            }
            p.remove(root_id)?;
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
    pub(crate) fn destroy(self) -> Result<()> {
        let _guard = self.lock()?;
        let p = &*self.provider;
        if !p.stat(self.root.id, &self.name)?.removable_by_me() {
            return Err(Error::PermissionDenied {
                name: self.name.clone(),
                op: "shmctl(IPC_RMID)",
            });
        }
        let r = self.root();
        let owner = pack_owner(self.key, self.root.id);
        mark_destroyed(p, r, owner);
        discard_data_segments(p, r, owner, false);
        {
            // This handle's own mapping (removing it twice is harmless).
            let pin = self.gens.pin();
            let _ = p.remove(pin.current().seg.id);
        }
        p.remove(self.root.id)?;
        self.sem.remove();
        Ok(())
    }
}
