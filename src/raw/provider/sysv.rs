//! The SysV provider: segments and semaphore sets of the kernel, through
//! `crate::sys` (where the system calls are).

use std::time::Duration;

use nix::errno::Errno;

use super::{Lock, LockOpen, LockSet, Provider, Segment};
use crate::error::Result;
use crate::sys::procfs::ShmRow;
use crate::sys::{self, Attached, Removal, SemOpen, Semaphore, ShmInfo};

/// `SHM_DEST` in `shm_perm.mode`: marked for removal, gone at the last
/// detach (`linux/shm.h`).
const SHM_DEST: u32 = 0o1000;

/// The kernel's SysV IPC objects.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SysV;

impl Provider for SysV {
    fn get(
        &self,
        key: libc::key_t,
        size: usize,
        flags: libc::c_int,
        name: &str,
    ) -> Result<std::result::Result<i32, Errno>> {
        if flags & libc::SHM_HUGETLB != 0 {
            return Ok(sys::shm_get_raw(key, size, flags));
        }
        sys::shm_get(key, size, flags, name)
    }

    fn huge_page_size(&self) -> Option<u64> {
        sys::huge_page_size()
    }

    fn stat(&self, id: i32, name: &str) -> Result<ShmInfo> {
        sys::shm_stat(id, name)
    }

    fn set_owner(&self, id: i32, uid: u32, gid: u32, mode: u32, name: &str) -> Result<()> {
        sys::shm_set_owner(id, uid, gid, mode, name)
    }

    fn try_remove(&self, id: i32) -> Removal {
        sys::shm_try_remove(id)
    }

    fn remove(&self, id: i32) -> Result<()> {
        sys::shm_remove(id)
    }

    fn attach(&self, id: i32, read_only: bool, name: &str) -> Result<Segment> {
        let a = Attached::attach(id, read_only, name)?;
        let (base, len) = (a.base(), a.len());
        // SAFETY: `a` (moved into the segment) keeps the page-aligned
        // mapping of `len` bytes until it drops (shmdt).
        Ok(unsafe { Segment::new(id, base, len, Box::new(a)) })
    }

    fn segments(&self) -> std::io::Result<Vec<ShmRow>> {
        sys::sysvipc_shm()
    }

    fn marked_for_removal(&self, id: i32) -> bool {
        // `sys::shm_stat` keeps only the permission bits of the mode: the
        // `SHM_DEST` bit is read here.
        // SAFETY: shmid_ds is plain old data; all-zero is a valid value.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid, writable shmid_ds; any id is safe to
        // pass (a wrong one fails with EINVAL).
        let rc = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
        rc == 0 && u32::from(ds.shm_perm.mode) & SHM_DEST != 0
    }

    fn open_lock(
        &self,
        key: libc::key_t,
        create: bool,
        mode: u32,
        timeout: Duration,
        name: &str,
    ) -> Result<LockOpen> {
        Ok(match Semaphore::open(key, create, mode, timeout, name)? {
            SemOpen::CreatedAndHeld(s) => LockOpen::CreatedAndHeld(Box::new(s)),
            SemOpen::Existing(s) => LockOpen::Existing(Box::new(s)),
        })
    }

    fn find_lock(&self, key: libc::key_t, name: &str) -> Result<Option<Lock>> {
        Ok(Semaphore::find(key, name)?.map(|s| Box::new(s) as Lock))
    }

    fn random_seed(&self) -> u64 {
        crate::hash::random_seed()
    }

    fn process_start_time(&self, pid: u32) -> Option<u64> {
        sys::process_start_time(pid)
    }

    fn process_alive(&self, pid: u32) -> bool {
        sys::process_alive(pid)
    }
}

impl LockSet for Semaphore {
    fn mark_creating_root(&self, name: &str) -> Result<()> {
        Semaphore::mark_creating_root(self, name)
    }
    fn unmark_creating_root(&self, name: &str) -> Result<()> {
        Semaphore::unmark_creating_root(self, name)
    }
    fn creating_root_pid(&self) -> Option<i32> {
        Semaphore::creating_root_pid(self)
    }
    fn acquire(&self, timeout: Duration) -> Result<()> {
        Semaphore::acquire(self, timeout)
    }
    fn try_acquire(&self) -> Result<bool> {
        Semaphore::try_acquire(self)
    }
    fn release(&self) -> Result<()> {
        Semaphore::release(self)
    }
    fn value(&self) -> Option<i32> {
        Semaphore::value(self)
    }
    fn last_pid(&self) -> Option<i32> {
        Semaphore::last_pid(self)
    }
    fn remove(&self) {
        Semaphore::remove(self)
    }
    fn id(&self) -> i32 {
        self.semid
    }
}
