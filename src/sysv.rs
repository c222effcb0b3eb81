//! The SysV system calls, and nothing else: shared memory segments and the
//! one-semaphore set that serialises writers. Every failure becomes a typed
//! [`Error`]; `EINTR` is retried.

use std::ffi::CString;
use std::path::Path;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use nix::errno::Errno;

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

/// `IPC_PRIVATE`: a key that always makes a new, unnamed object.
pub(crate) const IPC_PRIVATE: libc::key_t = libc::IPC_PRIVATE;

/// Maps an errno to the error a user can act on.
pub(crate) fn os_error(op: &'static str, errno: Errno, name: &str) -> Error {
    match errno {
        Errno::EACCES | Errno::EPERM => Error::PermissionDenied {
            name: name.to_string(),
            op,
        },
        Errno::ENOENT | Errno::EIDRM => Error::NotFound {
            name: name.to_string(),
        },
        _ => Error::Os { op, errno },
    }
}

/// `ftok(path, id)`.
pub(crate) fn ftok(path: &Path, id: u8, name: &str) -> Result<libc::key_t> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::InvalidName(format!("path {path:?} contains NUL")))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let key = unsafe { libc::ftok(c.as_ptr(), libc::c_int::from(id)) };
    if key == -1 {
        return Err(os_error("ftok", Errno::last(), name));
    }
    Ok(key)
}

/// What `IPC_STAT` says about a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShmInfo {
    pub(crate) size: u64,
    pub(crate) nattch: u64,
    pub(crate) mode: u32,
}

/// `shmget`: `Ok(None)` when `create` is false and nothing is at the key,
/// or when `exclusive` is set and something is.
pub(crate) fn shm_get(
    key: libc::key_t,
    size: usize,
    flags: libc::c_int,
    name: &str,
) -> Result<std::result::Result<libc::c_int, Errno>> {
    // SAFETY: shmget takes plain integers.
    let id = unsafe { libc::shmget(key, size, flags) };
    if id >= 0 {
        return Ok(Ok(id));
    }
    match Errno::last() {
        e @ (Errno::ENOENT | Errno::EEXIST) => Ok(Err(e)),
        Errno::EINVAL if flags & libc::IPC_CREAT != 0 => Err(Error::InvalidSize(
            crate::size::SizeError::OutOfRange(format!(
                "the kernel refused a segment of {size} bytes (see /proc/sys/kernel/shmmax)"
            )),
        )),
        Errno::ENOMEM | Errno::ENOSPC => Err(Error::Full {
            what: "system shared memory",
            needed: size as u64,
            available: 0,
        }),
        e => Err(os_error("shmget", e, name)),
    }
}

/// `IPC_STAT` on a segment.
pub(crate) fn shm_stat(shmid: libc::c_int, name: &str) -> Result<ShmInfo> {
    // SAFETY: shmid_ds is plain old data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } != 0 {
        return Err(os_error("shmctl(IPC_STAT)", Errno::last(), name));
    }
    Ok(ShmInfo {
        size: ds.shm_segsz as u64,
        nattch: ds.shm_nattch,
        mode: u32::from(ds.shm_perm.mode) & 0o777,
    })
}

/// `IPC_RMID` on a segment: it disappears after its last detach.
pub(crate) fn shm_remove(shmid: libc::c_int) -> Result<()> {
    // SAFETY: IPC_RMID ignores the buffer argument.
    if unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) } != 0 {
        let e = Errno::last();
        if e != Errno::EINVAL && e != Errno::EIDRM {
            return Err(os_error("shmctl(IPC_RMID)", e, ""));
        }
    }
    Ok(())
}

/// An attached segment. Detaches on drop. Only raw pointers to it are handed
/// out; callers form shared references to atomics, never `&mut`.
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) shmid: libc::c_int,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is process-wide; the handle owns no thread-bound state,
// and all access to the memory goes through atomics or immutable bytes.
unsafe impl Send for Attached {}
// SAFETY: as above: `&Attached` only gives out the base pointer and length.
unsafe impl Sync for Attached {}

impl Attached {
    /// `shmat`, then `IPC_STAT` to learn the real size.
    pub(crate) fn attach(shmid: libc::c_int, read_only: bool, name: &str) -> Result<Attached> {
        let info = shm_stat(shmid, name)?;
        let flags = if read_only { libc::SHM_RDONLY } else { 0 };
        // SAFETY: a null address lets the kernel choose where to map.
        let p = unsafe { libc::shmat(shmid, std::ptr::null(), flags) };
        if p as isize == -1 {
            return Err(os_error("shmat", Errno::last(), name));
        }
        let base =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| Error::corrupted("shmat gave null"))?;
        Ok(Attached {
            shmid,
            base,
            len: usize::try_from(info.size).map_err(|_| Error::corrupted("segment size"))?,
        })
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: `base` came from shmat and is detached exactly once, here.
        unsafe { libc::shmdt(self.base.as_ptr().cast()) };
    }
}

/// The writer lock: a set of one SysV semaphore, value 1 = free.
#[derive(Debug)]
pub(crate) struct Semaphore {
    pub(crate) semid: libc::c_int,
}

/// The outcome of `semget` for a map.
pub(crate) enum SemOpen {
    /// This process created the set, initialised it to 1 and holds it.
    CreatedAndHeld(Semaphore),
    /// The set already existed and is initialised.
    Existing(Semaphore),
}

impl Semaphore {
    /// Opens the set at `key`, or (with `create`) creates it race-free:
    /// `IPC_CREAT|IPC_EXCL`, `SETVAL 1`, then a first `semop` (the acquire)
    /// that makes `sem_otime` non-zero. Others wait for `sem_otime != 0`.
    pub(crate) fn open(
        key: libc::key_t,
        create: bool,
        mode: u32,
        wait: Duration,
        name: &str,
    ) -> Result<SemOpen> {
        if create {
            // SAFETY: plain integer arguments.
            let id =
                unsafe { libc::semget(key, 1, libc::IPC_CREAT | libc::IPC_EXCL | mode as i32) };
            if id >= 0 {
                let sem = Semaphore { semid: id };
                // SAFETY: SETVAL takes an int as the variadic argument.
                if unsafe { libc::semctl(id, 0, libc::SETVAL, 1 as libc::c_int) } != 0 {
                    let e = Errno::last();
                    sem.remove();
                    return Err(os_error("semctl(SETVAL)", e, name));
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
        let id = unsafe { libc::semget(key, 1, 0) };
        if id < 0 {
            return Err(os_error("semget", Errno::last(), name));
        }
        let sem = Semaphore { semid: id };
        let deadline = Instant::now() + wait;
        while sem.otime(name)? == 0 {
            if Instant::now() > deadline {
                return Err(Error::corrupted(format!(
                    "semaphore of map {name:?} was never initialised (creator died?); destroy the map"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(SemOpen::Existing(sem))
    }

    fn otime(&self, name: &str) -> Result<libc::time_t> {
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
        Ok(ds.sem_otime)
    }

    fn op(
        &self,
        delta: i16,
        flags: i16,
        timeout: Option<Duration>,
    ) -> std::result::Result<(), Errno> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let mut sb = libc::sembuf {
                sem_num: 0,
                sem_op: delta,
                sem_flg: flags | libc::SEM_UNDO as i16,
            };
            let rc = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    let ts = libc::timespec {
                        tv_sec: left.as_secs() as libc::time_t,
                        tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
                    };
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

/// Private (`IPC_PRIVATE`) segments made by `pid` that no process has
/// attached: `(shmid, size)`, from `/proc/sysvipc/shm` (empty if unreadable).
pub(crate) fn unattached_private_segments_of(pid: u32) -> Vec<(libc::c_int, u64)> {
    let Ok(table) = std::fs::read_to_string("/proc/sysvipc/shm") else {
        return Vec::new();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            // key shmid perms size cpid lpid nattch ...
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
            (num(0)? == 0 && num(4)? == i64::from(pid) && num(6)? == 0)
                .then(|| Some((num(1)? as libc::c_int, num(3)? as u64)))
                .flatten()
        })
        .collect()
}

/// Process-local count of `FUTEX_WAKE` calls (diagnostics and tests).
pub(crate) static FUTEX_WAKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `FUTEX_WAIT` (shared, not private: the word is in SysV shared memory)
/// until `*word != expected`, a wake, or `timeout`.
pub(crate) fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` is a valid, aligned 32-bit word for the whole call; the
    // kernel only reads it. EINTR, EAGAIN and ETIMEDOUT are all fine: the
    // caller re-checks the condition.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// `FUTEX_WAKE` of every waiter on `word`; returns how many were woken.
pub(crate) fn futex_wake_all(word: &std::sync::atomic::AtomicU32) -> u64 {
    FUTEX_WAKES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: `word` is a valid, aligned 32-bit word.
    let n = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
    n.max(0) as u64
}

/// Whether process `pid` exists (`kill(pid, 0)`; `EPERM` means it does).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || Errno::last() == Errno::EPERM }
}
