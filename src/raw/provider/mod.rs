//! Segment providers: where a map's kernel objects come from. The engine
//! (root protocol, generations, pins and reclamation, the write driver,
//! growth, recovery) is written once against [`Provider`]; two providers
//! implement it:
//! - `sysv`: SysV shared memory segments and semaphore sets (what users
//!   get), a thin layer over `crate::sys`;
//! - `heap`: a process-local registry of heap regions and locks standing in
//!   for the kernel ([`HeapKernel`]), so that tests, fuzzing and Miri run the
//!   whole engine without system objects; "another process" is another
//!   handle on the same `HeapKernel`. Compiled for the project's tests
//!   only (`cfg(test)` or the `__test-hooks` feature).
//!
//! Only creation, attachment, removal, identification, the write lock and
//! the facts about processes the engine asks for (a fresh hash seed, a
//! process's start time, whether a process exists) go through the provider
//! (dynamic dispatch, on the write and lifecycle paths only): a read never
//! calls it.

#[cfg(any(test, feature = "__test-hooks"))]
mod heap;
#[cfg(any(test, feature = "__test-hooks"))]
mod heap_lock;
mod sysv;

use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;

use nix::errno::Errno;

use crate::error::Result;
use crate::sys::procfs::ShmRow;
pub(crate) use crate::sys::{Removal, ShmInfo};

#[cfg(any(test, feature = "__test-hooks"))]
pub use self::heap::HeapKernel;
pub(crate) use self::sysv::SysV;

/// The kernel objects of maps: segments (create of a size, attach, mark for
/// removal, identify, list) and the writer lock. Errors and flags follow
/// SysV (`shmget`'s `IPC_CREAT`/`IPC_EXCL`, `ENOENT`/`EEXIST`), which the
/// heap provider imitates.
pub(crate) trait Provider: Send + Sync + fmt::Debug {
    /// `shmget`: `Ok(Err(ENOENT))` when `IPC_CREAT` is not in `flags` and
    /// nothing is at `key`, `Ok(Err(EEXIST))` when `IPC_EXCL` is and
    /// something is. `key` 0 (`IPC_PRIVATE`) always makes a new segment.
    fn get(
        &self,
        key: libc::key_t,
        size: usize,
        flags: libc::c_int,
        name: &str,
    ) -> Result<std::result::Result<i32, Errno>>;
    /// The size of the huge pages `SHM_HUGETLB` segments get, `None` if
    /// there are none (SysV: `Hugepagesize` of `/proc/meminfo`).
    fn huge_page_size(&self) -> Option<u64>;
    /// `IPC_STAT`.
    fn stat(&self, id: i32, name: &str) -> Result<ShmInfo>;
    /// `IPC_SET`: owner, group and permission bits.
    fn set_owner(&self, id: i32, uid: u32, gid: u32, mode: u32, name: &str) -> Result<()>;
    /// `IPC_RMID`, telling a refusal apart.
    fn try_remove(&self, id: i32) -> Removal;
    /// `IPC_RMID`: gone once its last mapping is dropped (already gone is
    /// no error).
    fn remove(&self, id: i32) -> Result<()>;
    /// Maps segment `id`.
    fn attach(&self, id: i32, read_only: bool, name: &str) -> Result<Segment>;
    /// Every segment (the `/proc/sysvipc/shm` table).
    fn segments(&self) -> std::io::Result<Vec<ShmRow>>;
    /// Whether segment `id` is marked for removal (`IPC_RMID` done, still
    /// attached: `SHM_DEST`); false if unknown or gone. For
    /// `list_orphans`, which leaves such segments alone.
    fn marked_for_removal(&self, id: i32) -> bool;
    /// Private segments made by `pid` that nobody has mapped: `(id, size)`
    /// (empty if the table is unreadable).
    fn unattached_private_segments_of(&self, pid: u32) -> Vec<(i32, u64)> {
        self.segments()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.key == 0 && r.cpid == pid && r.nattch == 0)
            .map(|r| (r.shmid, r.size))
            .collect()
    }
    /// Opens the lock at `key`, or (with `create`) creates it held.
    fn open_lock(
        &self,
        key: libc::key_t,
        create: bool,
        mode: u32,
        timeout: Duration,
        name: &str,
    ) -> Result<LockOpen>;
    /// The lock at `key`, if there is one (`KeyInUse` if it is not shmkv's).
    fn find_lock(&self, key: libc::key_t, name: &str) -> Result<Option<Lock>>;
    /// A fresh hash seed for a new map (`/dev/urandom` for SysV).
    fn random_seed(&self) -> u64;
    /// Start time of process `pid` (what tells a reused pid apart: clock
    /// ticks after boot for SysV), `None` if there is no such process.
    fn process_start_time(&self, pid: u32) -> Option<u64>;
    /// Whether process `pid` exists (`kill(pid, 0)` for SysV).
    fn process_alive(&self, pid: u32) -> bool;
}

/// A map's writer lock, with the tag that names a creator between its
/// making of the root and the root's marker (see `sys::sem`).
pub(crate) trait LockSet: Send + Sync + fmt::Debug {
    /// Tags the lock with this process as creator of the root.
    fn mark_creating_root(&self, name: &str) -> Result<()>;
    /// Removes that tag.
    fn unmark_creating_root(&self, name: &str) -> Result<()>;
    /// The pid the tag names, if tagged.
    fn creating_root_pid(&self) -> Option<i32>;
    /// Takes the lock, waiting up to `timeout` (`LockTimeout`, or
    /// `NotFound` if the lock was removed).
    fn acquire(&self, timeout: Duration) -> Result<()>;
    /// Takes the lock if it is free.
    fn try_acquire(&self) -> Result<bool>;
    /// Releases the lock.
    fn release(&self) -> Result<()>;
    /// 1 = free, 0 = held; `None` if unknown.
    fn value(&self) -> Option<i32>;
    /// The process that last operated the lock.
    fn last_pid(&self) -> Option<i32>;
    /// Removes the lock (waiters get `NotFound`).
    fn remove(&self);
    /// Its identifier (the semaphore set's id).
    fn id(&self) -> i32;
}

/// A writer lock of some provider.
pub(crate) type Lock = Box<dyn LockSet>;

/// The outcome of opening a map's lock.
pub(crate) enum LockOpen {
    /// This process created the lock and holds it.
    CreatedAndHeld(Lock),
    /// The lock already existed.
    Existing(Lock),
}

/// A mapped segment: its id, base and length, and what keeps it mapped
/// (dropped with it: the SysV detach, or the heap region's reference).
pub(crate) struct Segment {
    pub(crate) id: i32,
    base: NonNull<u8>,
    len: usize,
    _mapping: Box<dyn Send + Sync>,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

// SAFETY: the mapping is process-wide; a `Segment` owns no thread-bound
// state, and all access to its memory goes through atomics or immutable
// bytes (see `Table`).
unsafe impl Send for Segment {}
// SAFETY: as above: `&Segment` only gives out the base pointer and length.
unsafe impl Sync for Segment {}

impl Segment {
    /// A segment of `len` bytes at `base`, mapped while `mapping` lives.
    ///
    /// # Safety
    /// `base..base + len` stays mapped, readable (and writable unless the
    /// segment was attached read-only) until `mapping` drops, and is
    /// 4096-byte aligned.
    pub(crate) unsafe fn new(
        id: i32,
        base: NonNull<u8>,
        len: usize,
        mapping: Box<dyn Send + Sync>,
    ) -> Segment {
        Segment {
            id,
            base,
            len,
            _mapping: mapping,
        }
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}
#[cfg(test)]
mod tests;
