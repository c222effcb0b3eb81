//! The SysV system calls, and nothing else: shared memory segments and the
//! semaphore set that serialises writers. Every failure becomes a typed
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
        e => Error::os(op, e as i32),
    }
}

/// `deadline` for a wait of `d` from now; `None` (no deadline: wait
/// forever) when it is not representable, e.g. for `Duration::MAX`.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Whether `deadline` (see [`deadline_after`]) has passed.
pub(crate) fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// A `timespec` for `d`, clamped to the largest representable one (a
/// `Duration` has 64 unsigned bits of seconds, `time_t` 63).
pub(crate) fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
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
    /// Owner and group (`shm_perm.uid`, `shm_perm.gid`).
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Creator (`shm_perm.cuid`): may remove it, like the owner.
    pub(crate) cuid: u32,
    /// Pid of the creating process.
    pub(crate) cpid: i32,
    /// The key it was made with (0 = `IPC_PRIVATE`, also after `IPC_RMID`).
    pub(crate) key: i32,
}

impl ShmInfo {
    /// Whether this process may `IPC_RMID` the segment (owner, creator, or
    /// root; the kernel's answer is the final word).
    pub(crate) fn removable_by_me(&self) -> bool {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        me == 0 || me == self.uid || me == self.cuid
    }
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
        uid: ds.shm_perm.uid,
        gid: ds.shm_perm.gid,
        cuid: ds.shm_perm.cuid,
        cpid: ds.shm_cpid,
        key: ds.shm_perm.__key,
    })
}

/// `IPC_SET` on a segment: owner `uid`, group `gid`, permission bits
/// `mode`. The creator of a segment may do this (also to another owner).
pub(crate) fn shm_set_owner(
    shmid: libc::c_int,
    uid: u32,
    gid: u32,
    mode: u32,
    name: &str,
) -> Result<()> {
    // SAFETY: shmid_ds is plain old data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } != 0 {
        return Err(os_error("shmctl(IPC_STAT)", Errno::last(), name));
    }
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as libc::c_ushort;
    // SAFETY: IPC_SET reads the uid, gid and mode from a valid shmid_ds.
    if unsafe { libc::shmctl(shmid, libc::IPC_SET, &mut ds) } != 0 {
        return Err(os_error("shmctl(IPC_SET)", Errno::last(), name));
    }
    Ok(())
}

/// What `IPC_RMID` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Marked for removal (it disappears after its last detach).
    Removed,
    /// No such segment (already gone).
    Gone,
    /// This process may not remove it (another user's).
    Denied,
}

/// `IPC_RMID` on a segment, telling a refusal apart.
pub(crate) fn shm_try_remove(shmid: libc::c_int) -> Removal {
    // SAFETY: IPC_RMID ignores the buffer argument.
    if unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) } == 0 {
        return Removal::Removed;
    }
    match Errno::last() {
        Errno::EINVAL | Errno::EIDRM => Removal::Gone,
        _ => Removal::Denied,
    }
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

/// Start time of process `pid` (clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`), `None` if there is no such process.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
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
    let ts = timespec(timeout);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A timeout of `Duration::MAX` is a very long sleep, not an invalid
    /// `timespec` (which made the kernel return at once).
    #[test]
    fn futex_wait_with_a_huge_timeout_sleeps_until_woken() {
        let word = AtomicU32::new(0);
        let slept = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                word.store(1, Ordering::SeqCst);
                futex_wake_all(&word);
            });
            let t = Instant::now();
            futex_wait(&word, 0, Duration::MAX);
            t.elapsed()
        });
        assert!(
            slept >= Duration::from_millis(50),
            "returned after {slept:?}"
        );
    }

    #[test]
    fn huge_waits_have_no_deadline() {
        assert!(deadline_after(Duration::MAX).is_none());
        assert!(!passed(None));
        assert_eq!(timespec(Duration::MAX).tv_sec, libc::time_t::MAX);
    }
}
