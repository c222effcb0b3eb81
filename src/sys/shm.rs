//! SysV shared memory segments: `shmget`, `IPC_STAT`/`IPC_SET`/`IPC_RMID`,
//! and attached mappings.

use std::ptr::NonNull;

use nix::errno::Errno;

use super::os_error;
use crate::error::{Error, Result};

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
                "the kernel refused a segment of {size} bytes (larger than kernel.shmmax, \
                 see `ipcs -l`; raise it with `sysctl -w kernel.shmmax=<bytes>`)"
            )),
        )),
        e @ (Errno::ENOMEM | Errno::ENOSPC) => Err(Error::Full {
            what: if e == Errno::ENOSPC {
                crate::error::SYSTEM_SHM_ENOSPC
            } else {
                crate::error::SYSTEM_SHM_ENOMEM
            },
            needed: size as u64,
            available: 0,
        }),
        e => Err(os_error("shmget", e, name)),
    }
}

/// `shmget` that reports every failure as its errno (for `SHM_HUGETLB`,
/// where `ENOMEM`, `EPERM`, `EINVAL` mean "no huge pages" and the caller's
/// policy decides what follows).
pub(crate) fn shm_get_raw(
    key: libc::key_t,
    size: usize,
    flags: libc::c_int,
) -> std::result::Result<libc::c_int, Errno> {
    // SAFETY: shmget takes plain integers.
    let id = unsafe { libc::shmget(key, size, flags) };
    if id >= 0 {
        Ok(id)
    } else {
        Err(Errno::last())
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

/// An attached segment. Detaches on drop. Only raw pointers to it are handed
/// out; callers form shared references to atomics, never `&mut`.
#[derive(Debug)]
pub(crate) struct Attached {
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
