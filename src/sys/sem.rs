//! The map's semaphore set: the writer lock (semaphore 0) and the tag that
//! proves the set is shmkv's (semaphore 1).

use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::{deadline_after, os_error, passed, timespec};
use crate::error::{Error, Result};

// `semtimedop` is in glibc but not in the `libc` crate.
extern "C" {
    fn semtimedop(
        semid: libc::c_int,
        sops: *mut libc::sembuf,
        nsops: libc::size_t,
        timeout: *const libc::timespec,
    ) -> libc::c_int;
}

/// Value of the set's second semaphore in every shmkv lock: with a set of
/// exactly [`SEM_COUNT`] semaphores, what makes a set at a map's key
/// recognisably shmkv's (a set made by another program is never adopted,
/// operated or removed).
pub(crate) const SEM_TAG: i32 = 0x4B56;
/// The tag while a creator, holding the lock, is between its `shmget` of
/// the root and the store of the root's `ROOT_CREATING` marker. Set with
/// `SETVAL`, which records the creator's pid (`GETPID`): a creator killed
/// in that window leaves a root with no marker whose `shm_cpid` is that pid.
pub(crate) const SEM_TAG_CREATING_ROOT: i32 = SEM_TAG + 1;
/// Semaphores in a shmkv lock set: 0 = the lock, 1 = the tag.
pub(crate) const SEM_COUNT: i32 = 2;
/// The tag's semaphore.
const TAG_SEM: i32 = 1;
/// How long an opener waits for a set that is being created to get its
/// tag before it calls the set foreign (creators tag it with the system
/// call right after `semget`).
const TAG_WAIT: Duration = Duration::from_secs(1);

/// The writer lock: semaphore 0 of a shmkv set ([`SEM_COUNT`] semaphores,
/// the second holding [`SEM_TAG`]), value 1 = free.
#[derive(Debug)]
pub(crate) struct Semaphore {
    pub(crate) semid: libc::c_int,
}

/// The outcome of `semget` for a map.
pub(crate) enum SemOpen {
    /// This process created the set, initialised it and holds the lock.
    CreatedAndHeld(Semaphore),
    /// The set already existed, is shmkv's and is initialised.
    Existing(Semaphore),
}

/// What `IPC_STAT` and `GETVAL` say about a set.
struct SemInfo {
    nsems: u64,
    otime: libc::time_t,
    tag: i32,
}

fn foreign_set(key: libc::key_t, id: libc::c_int, name: &str) -> Error {
    Error::KeyInUse {
        name: name.to_string(),
        key,
        object: "semaphore set",
        id,
    }
}

impl Semaphore {
    /// Opens the set at `key`, or (with `create`) creates it race-free:
    /// `IPC_CREAT|IPC_EXCL`, `SETALL [1, SEM_TAG]`, then a first `semop`
    /// (the acquire) that makes `sem_otime` non-zero. Others wait for
    /// `sem_otime != 0`. A set at the key that is not recognisably shmkv's
    /// is [`Error::KeyInUse`] and is left alone.
    pub(crate) fn open(
        key: libc::key_t,
        create: bool,
        mode: u32,
        wait: Duration,
        name: &str,
    ) -> Result<SemOpen> {
        if create {
            // SAFETY: plain integer arguments.
            let id = unsafe {
                libc::semget(
                    key,
                    SEM_COUNT,
                    libc::IPC_CREAT | libc::IPC_EXCL | mode as i32,
                )
            };
            if id >= 0 {
                let sem = Semaphore { semid: id };
                let mut init: [libc::c_ushort; SEM_COUNT as usize] = [1, SEM_TAG as u16];
                // SAFETY: SETALL reads SEM_COUNT values from the array we pass.
                if unsafe { libc::semctl(id, 0, libc::SETALL, init.as_mut_ptr()) } != 0 {
                    let e = Errno::last();
                    sem.remove();
                    return Err(os_error("semctl(SETALL)", e, name));
                }
                if let Err(e) = sem.acquire(wait) {
                    sem.remove();
                    return Err(e);
                }
                return Ok(SemOpen::CreatedAndHeld(sem));
            }
            let e = Errno::last();
            if e != Errno::EEXIST {
                return Err(os_error("semget", e, name));
            }
        }
        // SAFETY: plain integer arguments.
        let id = unsafe { libc::semget(key, 0, 0) };
        if id < 0 {
            return Err(os_error("semget", Errno::last(), name));
        }
        let sem = Semaphore { semid: id };
        let deadline = deadline_after(wait);
        let tag_deadline = deadline_after(wait.min(TAG_WAIT));
        loop {
            let info = sem.info(name)?;
            if info.nsems != SEM_COUNT as u64 {
                return Err(foreign_set(key, id, name));
            }
            let tagged = is_tag(info.tag);
            if tagged && info.otime != 0 {
                return Ok(SemOpen::Existing(sem));
            }
            if !tagged && (info.otime != 0 || passed(tag_deadline)) {
                // Operated by someone without the tag, or never tagged.
                return Err(foreign_set(key, id, name));
            }
            if tagged && passed(deadline) {
                // Tagged (so initialised to 1 by SETALL), but its creator
                // died before its first semop: ours, and usable.
                return Ok(SemOpen::Existing(sem));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The shmkv set at `key`, without waiting: `None` if there is no set,
    /// [`Error::KeyInUse`] if the set there is not shmkv's.
    pub(crate) fn find(key: libc::key_t, name: &str) -> Result<Option<Semaphore>> {
        // SAFETY: plain integer arguments.
        let id = unsafe { libc::semget(key, 0, 0) };
        if id < 0 {
            return match Errno::last() {
                Errno::ENOENT => Ok(None),
                e => Err(os_error("semget", e, name)),
            };
        }
        let sem = Semaphore { semid: id };
        let info = sem.info(name)?;
        if info.nsems != SEM_COUNT as u64 || !is_tag(info.tag) {
            return Err(foreign_set(key, id, name));
        }
        Ok(Some(sem))
    }

    fn info(&self, name: &str) -> Result<SemInfo> {
        // SAFETY: semid_ds is plain old data.
        let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: IPC_STAT writes a semid_ds through the pointer we pass.
        if unsafe {
            libc::semctl(
                self.semid,
                0,
                libc::IPC_STAT,
                &mut ds as *mut libc::semid_ds,
            )
        } != 0
        {
            return Err(os_error("semctl(IPC_STAT)", Errno::last(), name));
        }
        let nsems = ds.sem_nsems as u64;
        let tag = if nsems > TAG_SEM as u64 {
            // SAFETY: GETVAL takes no further argument; TAG_SEM < nsems.
            unsafe { libc::semctl(self.semid, TAG_SEM, libc::GETVAL) }
        } else {
            -1
        };
        Ok(SemInfo {
            nsems,
            otime: ds.sem_otime,
            tag,
        })
    }

    /// With the lock held, before the `shmget` that makes a root: marks the
    /// set so that a root this process leaves without its marker can be
    /// recognised (see [`SEM_TAG_CREATING_ROOT`]).
    pub(crate) fn mark_creating_root(&self, name: &str) -> Result<()> {
        self.set_tag(SEM_TAG_CREATING_ROOT, name)
    }

    /// Clears the mark of [`mark_creating_root`](Self::mark_creating_root).
    pub(crate) fn unmark_creating_root(&self, name: &str) -> Result<()> {
        self.set_tag(SEM_TAG, name)
    }

    fn set_tag(&self, value: i32, name: &str) -> Result<()> {
        // SAFETY: SETVAL takes an int as the variadic argument.
        if unsafe { libc::semctl(self.semid, TAG_SEM, libc::SETVAL, value) } != 0 {
            return Err(os_error("semctl(SETVAL)", Errno::last(), name));
        }
        Ok(())
    }

    /// If a creator marked the set (see [`SEM_TAG_CREATING_ROOT`]) and has
    /// not cleared the mark: its pid.
    pub(crate) fn creating_root_pid(&self) -> Option<i32> {
        // SAFETY: GETVAL and GETPID take no further argument.
        let tag = unsafe { libc::semctl(self.semid, TAG_SEM, libc::GETVAL) };
        if tag != SEM_TAG_CREATING_ROOT {
            return None;
        }
        // SAFETY: as above.
        let pid = unsafe { libc::semctl(self.semid, TAG_SEM, libc::GETPID) };
        (pid > 0).then_some(pid)
    }

    fn op(
        &self,
        delta: i16,
        flags: i16,
        timeout: Option<Duration>,
    ) -> std::result::Result<(), Errno> {
        // No deadline (wait forever) for a timeout too large to represent.
        let deadline = timeout.and_then(deadline_after);
        loop {
            let mut sb = libc::sembuf {
                sem_num: 0,
                sem_op: delta,
                sem_flg: flags | libc::SEM_UNDO as i16,
            };
            let rc = match deadline {
                Some(d) => {
                    let ts = timespec(d.saturating_duration_since(Instant::now()));
                    // SAFETY: one valid sembuf and a valid timespec.
                    unsafe { semtimedop(self.semid, &mut sb, 1, &ts) }
                }
                // SAFETY: one valid sembuf.
                None => unsafe { libc::semop(self.semid, &mut sb, 1) },
            };
            if rc == 0 {
                return Ok(());
            }
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
    }

    /// Takes the lock (`SEM_UNDO`), waiting at most `timeout`. An
    /// uncontended lock is taken with one non-blocking `semop` (no clock
    /// reads); otherwise `semtimedop` waits with the timeout.
    pub(crate) fn acquire(&self, timeout: Duration) -> Result<()> {
        if self.try_acquire()? {
            return Ok(());
        }
        let start = Instant::now();
        self.op(-1, 0, Some(timeout))
            .map_err(|e| self.lock_error(e, start))
    }

    /// Takes the lock only if it is free now.
    pub(crate) fn try_acquire(&self) -> Result<bool> {
        match self.op(-1, libc::IPC_NOWAIT as i16, None) {
            Ok(()) => Ok(true),
            Err(Errno::EAGAIN) => Ok(false),
            Err(e) => Err(self.lock_error(e, Instant::now())),
        }
    }

    /// Releases the lock (`SEM_UNDO`, so the undo count returns to zero).
    pub(crate) fn release(&self) -> Result<()> {
        self.op(1, 0, None)
            .map_err(|e| self.lock_error(e, Instant::now()))
    }

    fn lock_error(&self, e: Errno, start: Instant) -> Error {
        match e {
            Errno::EAGAIN => Error::LockTimeout {
                waited: start.elapsed(),
                holder_pid: self.last_pid(),
            },
            Errno::EIDRM | Errno::EINVAL => Error::NotFound {
                name: "(destroyed while open)".into(),
            },
            e => os_error("semop", e, ""),
        }
    }

    /// The semaphore's value: 1 = free, 0 = held.
    pub(crate) fn value(&self) -> Option<i32> {
        // SAFETY: GETVAL takes no further argument.
        let v = unsafe { libc::semctl(self.semid, 0, libc::GETVAL) };
        (v >= 0).then_some(v)
    }

    /// The pid of the last process that operated the semaphore: the holder
    /// while it is held.
    pub(crate) fn last_pid(&self) -> Option<i32> {
        // SAFETY: GETPID takes no further argument.
        let v = unsafe { libc::semctl(self.semid, 0, libc::GETPID) };
        (v > 0).then_some(v)
    }

    /// `IPC_RMID` on the set. Errors are ignored: the set may already be gone.
    pub(crate) fn remove(&self) {
        // SAFETY: IPC_RMID needs no further argument.
        unsafe { libc::semctl(self.semid, 0, libc::IPC_RMID) };
    }
}

fn is_tag(v: i32) -> bool {
    v == SEM_TAG || v == SEM_TAG_CREATING_ROOT
}
