//! The heap provider: a process-local registry of heap regions and locks
//! standing in for the kernel's SysV objects, with the same semantics the
//! engine relies on (keys, `IPC_PRIVATE`, `IPC_CREAT|IPC_EXCL`, removal
//! that takes effect at the last detach, attach counts, a lock with a
//! timeout). "Another process" is another handle on the same
//! [`HeapKernel`]. A limit on the bytes of all live segments stands in for
//! `kernel.shmall`, so that "system memory full" can be tested.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;

use super::heap_lock::{HeapLock, LockState};
use super::{Lock, LockOpen, Provider, Removal, Segment, ShmInfo};
use crate::error::{Error, Result};
use crate::sys::procfs::ShmRow;
use crate::sys::IPC_PRIVATE;

/// A zero-filled, 4096-byte aligned heap buffer.
#[derive(Debug)]
pub(crate) struct HeapRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl HeapRegion {
    /// Allocates `len` zero bytes (at least 1); `None` if the allocator
    /// refuses.
    pub(crate) fn new(len: usize) -> Option<HeapRegion> {
        let layout = Layout::from_size_align(len.max(1), 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        Some(HeapRegion {
            ptr: NonNull::new(p)?,
            layout,
        })
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

// SAFETY: plain owned heap memory.
unsafe impl Send for HeapRegion {}
// SAFETY: shared access goes through atomics or immutable bytes (see Table).
unsafe impl Sync for HeapRegion {}

/// One segment of the registry.
#[derive(Debug)]
struct HeapSegment {
    key: libc::key_t,
    region: Arc<HeapRegion>,
    /// The size asked for (the region may be larger: at least one byte).
    size: u64,
    mode: u32,
    cpid: i32,
    nattch: u64,
    /// Huge pages it holds (given back when it is freed).
    huge_pages: u64,
    /// Marked for removal: gone at its last detach, no longer at its key.
    removed: bool,
}

#[derive(Debug, Default)]
pub(super) struct Registry {
    next_id: i32,
    segments: BTreeMap<i32, HeapSegment>,
    pub(super) locks: BTreeMap<libc::key_t, Arc<HeapLock>>,
    /// Bytes of all segments not yet freed.
    used: u64,
    limit: u64,
    /// This kernel's number (distinct for every kernel of the process), the
    /// per-kernel part of its seeds.
    kernel_no: u64,
    /// Seeds handed out so far.
    seeds: u64,
    /// Attaches still to fail (a transient error, for tests).
    failing_attaches: u32,
    /// Huge pages (`SHM_HUGETLB`) still to hand out: the kernel's free
    /// reserved pool (`vm.nr_hugepages`), 0 by default.
    huge_pages_free: u64,
    /// Their size (2 MiB unless a test says otherwise).
    huge_page_size: u64,
}

/// The huge page size of a new heap kernel.
pub(crate) const HEAP_HUGE_PAGE_SIZE: u64 = 2 << 20;

/// Kernels made so far in this process.
static KERNELS: AtomicU64 = AtomicU64::new(0);

/// The start time every "process" of a heap kernel has: all its handles
/// live in this one process, which is alive.
pub(crate) const HEAP_START_TIME: u64 = 1;

/// A process-local stand-in for the kernel's SysV objects: maps made on a
/// `HeapKernel` live in heap memory and are visible to every handle opened
/// on the same kernel (clones share it). For tests and fuzzing.
#[derive(Debug, Clone)]
pub struct HeapKernel {
    pub(super) reg: Arc<Mutex<Registry>>,
}

impl Default for HeapKernel {
    fn default() -> Self {
        HeapKernel::new()
    }
}

pub(super) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the registry leaves it consistent (every
    // update is a single insert, remove or field store).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HeapKernel {
    /// An empty kernel whose segments may total 1 GiB.
    pub fn new() -> HeapKernel {
        HeapKernel::with_limit(1 << 30)
    }

    /// An empty kernel whose segments may total `limit` bytes (beyond it,
    /// making a segment fails as "system shared memory" full).
    pub fn with_limit(limit: u64) -> HeapKernel {
        HeapKernel {
            reg: Arc::new(Mutex::new(Registry {
                next_id: 1,
                limit,
                kernel_no: KERNELS.fetch_add(1, Ordering::Relaxed),
                huge_page_size: HEAP_HUGE_PAGE_SIZE,
                ..Registry::default()
            })),
        }
    }

    /// The ids of all segments (removed ones too, while mapped).
    pub fn segment_ids(&self) -> Vec<i32> {
        locked(&self.reg).segments.keys().copied().collect()
    }

    /// Number of segments and of locks in the registry: what a test checks
    /// is back to zero after `destroy`.
    pub fn objects(&self) -> (usize, usize) {
        let r = locked(&self.reg);
        (r.segments.len(), r.locks.len())
    }

    /// Bytes of the segments not yet freed.
    pub fn used_bytes(&self) -> u64 {
        locked(&self.reg).used
    }

    /// Models the kernel's pool of reserved huge pages (`vm.nr_hugepages`):
    /// from now on, `pages` free huge pages of `page_size` bytes (a power
    /// of two) may be handed out to `SHM_HUGETLB` segments; a segment that
    /// needs more is refused with `ENOMEM`, as the kernel does. Pages held
    /// by segments come back when they are freed. A new kernel has none
    /// (page size 2 MiB).
    pub fn set_huge_pages(&self, pages: u64, page_size: u64) {
        assert!(page_size.is_power_of_two(), "huge page size {page_size}");
        let mut r = locked(&self.reg);
        r.huge_pages_free = pages;
        r.huge_page_size = page_size;
    }

    /// Free huge pages left (see [`set_huge_pages`](HeapKernel::set_huge_pages)).
    pub fn huge_pages_free(&self) -> u64 {
        locked(&self.reg).huge_pages_free
    }

    /// Makes the next `n` attaches fail with an I/O error (`EAGAIN`), as a
    /// transient failure of the kernel would: for tests of error paths.
    pub fn fail_next_attaches(&self, n: u32) {
        locked(&self.reg).failing_attaches = n;
    }

    /// Overwrites bytes of segment `id` at `offset` (clipped to the
    /// segment), as a buggy or hostile process could. Returns how many
    /// bytes were written.
    ///
    /// While some handle maps the segment, with relaxed atomic byte stores
    /// (no data race with its readers). While none does, with a plain copy
    /// under the registry's lock: the engine then cannot touch the bytes,
    /// and Miri (which does not support byte-sized atomics over words the
    /// engine wrote with wider atomics: it stops with an internal error)
    /// runs it. Tests that run under Miri scribble with no handle open.
    pub fn scribble(&self, id: i32, offset: usize, bytes: &[u8]) -> usize {
        let r = locked(&self.reg);
        let Some(s) = r.segments.get(&id) else {
            return 0;
        };
        let region = s.region.clone();
        let n = bytes.len().min(region.len().saturating_sub(offset));
        if s.nattch == 0 {
            // SAFETY: `offset + n <= region.len()`; nobody maps the segment
            // (nattch 0, and attaching takes the registry lock we hold), so
            // no engine access can race with this write, and the last
            // detach (under this lock) happens before it; `bytes` is not
            // in the region (the caller cannot borrow unmapped segment
            // memory).
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.base().as_ptr().add(offset), n)
            };
            return n;
        }
        drop(r);
        for (i, b) in bytes[..n].iter().enumerate() {
            // SAFETY: `offset + i < region.len()`; the region lives while
            // `region` (an Arc) does; every access to segment memory by the
            // engine is atomic or to bytes it re-validates (the threat
            // model of corrupted shared memory).
            let a = unsafe {
                std::sync::atomic::AtomicU8::from_ptr(region.base().as_ptr().add(offset + i))
            };
            a.store(*b, std::sync::atomic::Ordering::Relaxed);
        }
        n
    }
}

pub(super) fn not_found(name: &str) -> Error {
    Error::NotFound {
        name: name.to_string(),
    }
}

/// Keeps a heap segment mapped: dropping it is the detach.
struct HeapMapping {
    reg: Arc<Mutex<Registry>>,
    id: i32,
    _region: Arc<HeapRegion>,
}

impl Drop for HeapMapping {
    fn drop(&mut self) {
        let mut r = locked(&self.reg);
        if let Some(s) = r.segments.get_mut(&self.id) {
            s.nattch = s.nattch.saturating_sub(1);
            if s.removed && s.nattch == 0 {
                free(&mut r, self.id);
            }
        }
    }
}

fn free(r: &mut Registry, id: i32) {
    if let Some(s) = r.segments.remove(&id) {
        r.used = r.used.saturating_sub(s.size);
        r.huge_pages_free += s.huge_pages;
    }
}

impl Provider for HeapKernel {
    fn get(
        &self,
        key: libc::key_t,
        size: usize,
        flags: libc::c_int,
        _name: &str,
    ) -> Result<std::result::Result<i32, Errno>> {
        let mut r = locked(&self.reg);
        if key != IPC_PRIVATE {
            let at_key = r
                .segments
                .iter()
                .find(|(_, s)| s.key == key && !s.removed)
                .map(|(id, s)| (*id, s.size));
            if let Some((id, have)) = at_key {
                if flags & libc::IPC_CREAT != 0 && flags & libc::IPC_EXCL != 0 {
                    return Ok(Err(Errno::EEXIST));
                }
                if size as u64 > have {
                    return Err(Error::os("shmget", Errno::EINVAL as i32));
                }
                return Ok(Ok(id));
            }
            if flags & libc::IPC_CREAT == 0 {
                return Ok(Err(Errno::ENOENT));
            }
        }
        let available = r.limit.saturating_sub(r.used);
        if size == 0 {
            return Err(Error::InvalidSize(crate::size::SizeError::OutOfRange(
                "a segment of 0 bytes".into(),
            )));
        }
        // What the kernel says when `kernel.shmall` is reached.
        let full = || Error::Full {
            what: crate::error::SYSTEM_SHM_ENOSPC,
            needed: size as u64,
            available,
        };
        if size as u64 > available {
            return Err(full());
        }
        // Huge pages: as the kernel, whole pages from the reserved pool,
        // ENOMEM when it has too few.
        let mut huge_pages = 0;
        if flags & libc::SHM_HUGETLB != 0 {
            huge_pages = (size as u64).div_ceil(r.huge_page_size);
            if huge_pages > r.huge_pages_free {
                return Ok(Err(Errno::ENOMEM));
            }
        }
        let region = HeapRegion::new(size).ok_or_else(full)?;
        let id = r.next_id;
        r.next_id = r.next_id.checked_add(1).ok_or_else(full)?;
        r.used += size as u64;
        r.huge_pages_free -= huge_pages;
        r.segments.insert(
            id,
            HeapSegment {
                key,
                region: Arc::new(region),
                size: size as u64,
                mode: flags as u32 & 0o777,
                cpid: std::process::id() as i32,
                nattch: 0,
                huge_pages,
                removed: false,
            },
        );
        Ok(Ok(id))
    }

    fn huge_page_size(&self) -> Option<u64> {
        Some(locked(&self.reg).huge_page_size)
    }

    fn stat(&self, id: i32, name: &str) -> Result<ShmInfo> {
        let r = locked(&self.reg);
        let s = r.segments.get(&id).ok_or_else(|| not_found(name))?;
        // Owned by this process's user (so `removable_by_me` holds). The
        // heap kernel keeps no group (`set_owner` ignores it): gid 0, not
        // `getegid`, which Miri does not support.
        // SAFETY: geteuid has no preconditions.
        let (uid, gid) = (unsafe { libc::geteuid() }, 0);
        Ok(ShmInfo {
            size: s.size,
            nattch: s.nattch,
            mode: s.mode,
            uid,
            gid,
            cuid: uid,
            cpid: s.cpid,
            key: if s.removed { IPC_PRIVATE } else { s.key },
        })
    }

    fn set_owner(&self, id: i32, _uid: u32, _gid: u32, mode: u32, name: &str) -> Result<()> {
        let mut r = locked(&self.reg);
        let s = r.segments.get_mut(&id).ok_or_else(|| not_found(name))?;
        s.mode = mode & 0o777;
        Ok(())
    }

    fn try_remove(&self, id: i32) -> Removal {
        let mut r = locked(&self.reg);
        match r.segments.get_mut(&id) {
            None => Removal::Gone,
            Some(s) => {
                s.removed = true;
                if s.nattch == 0 {
                    free(&mut r, id);
                }
                Removal::Removed
            }
        }
    }

    fn remove(&self, id: i32) -> Result<()> {
        self.try_remove(id);
        Ok(())
    }

    fn attach(&self, id: i32, _read_only: bool, name: &str) -> Result<Segment> {
        let mut r = locked(&self.reg);
        if r.failing_attaches > 0 {
            r.failing_attaches -= 1;
            return Err(Error::os("shmat", Errno::EAGAIN as i32));
        }
        let s = r.segments.get_mut(&id).ok_or_else(|| not_found(name))?;
        s.nattch += 1;
        let region = s.region.clone();
        let (base, len) = (region.base(), s.size as usize);
        let mapping = HeapMapping {
            reg: self.reg.clone(),
            id,
            _region: region,
        };
        // SAFETY: the region (kept by `mapping`'s Arc) is 4096-byte
        // aligned, holds at least `len` bytes and is freed only when the
        // last Arc drops.
        Ok(unsafe { Segment::new(id, base, len, Box::new(mapping)) })
    }

    fn segments(&self) -> std::io::Result<Vec<ShmRow>> {
        let r = locked(&self.reg);
        Ok(r.segments
            .iter()
            .map(|(id, s)| ShmRow {
                key: if s.removed { IPC_PRIVATE } else { s.key },
                shmid: *id,
                size: s.size,
                cpid: s.cpid as u32,
                nattch: s.nattch,
            })
            .collect())
    }

    fn marked_for_removal(&self, id: i32) -> bool {
        locked(&self.reg)
            .segments
            .get(&id)
            .is_some_and(|s| s.removed)
    }

    fn open_lock(
        &self,
        key: libc::key_t,
        create: bool,
        _mode: u32,
        _timeout: Duration,
        name: &str,
    ) -> Result<LockOpen> {
        let mut r = locked(&self.reg);
        // A lock being removed (flagged, not yet out of the registry) is
        // gone already, as a removed SysV set is for `semget`.
        if r.locks.get(&key).is_some_and(|l| locked(&l.state).removed) {
            r.locks.remove(&key);
        }
        if let Some(l) = r.locks.get(&key) {
            return Ok(LockOpen::Existing(Box::new(self.lock_ref(key, l.clone()))));
        }
        if !create {
            return Err(not_found(name));
        }
        let id = r.next_id;
        r.next_id += 1;
        let l = Arc::new(HeapLock {
            id,
            state: Mutex::new(LockState {
                held: true,
                pid: std::process::id() as i32,
                ..LockState::default()
            }),
            freed: Condvar::new(),
        });
        r.locks.insert(key, l.clone());
        Ok(LockOpen::CreatedAndHeld(Box::new(self.lock_ref(key, l))))
    }

    fn find_lock(&self, key: libc::key_t, _name: &str) -> Result<Option<Lock>> {
        let r = locked(&self.reg);
        Ok(r.locks
            .get(&key)
            .filter(|l| !locked(&l.state).removed)
            .map(|l| Box::new(self.lock_ref(key, l.clone())) as Lock))
    }

    /// Deterministic (no system call, no clock): the kernel's number and
    /// how many seeds it handed out, mixed by XXH3, so that maps differ in
    /// seed and a test run is repeatable.
    fn random_seed(&self) -> u64 {
        let mut r = locked(&self.reg);
        r.seeds += 1;
        let n = r.seeds;
        crate::hash::hash_key(r.kernel_no, &n.to_le_bytes())
    }

    /// Every handle on a heap kernel is in this process: its pid has the
    /// fixed start time [`HEAP_START_TIME`], no other pid exists.
    fn process_start_time(&self, pid: u32) -> Option<u64> {
        (pid == std::process::id()).then_some(HEAP_START_TIME)
    }

    /// Only this process exists (see `process_start_time`).
    fn process_alive(&self, pid: u32) -> bool {
        pid == std::process::id()
    }
}

/// Maps on heap memory: the same engine as over SysV, with this kernel as
/// the provider.
impl HeapKernel {
    /// [`RawMap::create`](crate::RawMap::create) on this kernel.
    pub fn create(&self, name: &str, opts: &crate::Options) -> Result<crate::RawMap> {
        crate::RawMap::create_in(Arc::new(self.clone()), name, opts)
    }

    /// [`RawMap::open`](crate::RawMap::open) on this kernel.
    pub fn open(&self, name: &str, opts: &crate::Options) -> Result<crate::RawMap> {
        crate::RawMap::open_in(Arc::new(self.clone()), name, opts)
    }

    /// [`RawMap::open_or_create`](crate::RawMap::open_or_create) on this kernel.
    pub fn open_or_create(&self, name: &str, opts: &crate::Options) -> Result<crate::RawMap> {
        crate::RawMap::open_or_create_in(Arc::new(self.clone()), name, opts)
    }

    /// [`RawMap::destroy_by_name`](crate::RawMap::destroy_by_name) on this kernel.
    pub fn destroy_by_name(&self, name: &str, opts: &crate::Options) -> Result<bool> {
        crate::RawMap::destroy_by_name_in(self, name, opts)
    }

    /// [`list_maps`](crate::list_maps) on this kernel.
    pub fn list_maps(&self) -> Result<Vec<crate::MapListing>> {
        crate::raw::listing::list_maps_in(Arc::new(self.clone()))
    }

    /// [`list_orphans`](crate::list_orphans) on this kernel.
    pub fn list_orphans(&self) -> Result<Vec<crate::Orphan>> {
        crate::raw::listing::list_orphans_in(self)
    }

    /// [`remove_orphan`](crate::remove_orphan) on this kernel.
    pub fn remove_orphan(&self, shmid: i32, force: bool) -> Result<crate::OrphanRemoval> {
        crate::raw::listing::remove_orphan_in(self, shmid, force)
    }
}

impl HeapKernel {
    /// A copy of segment `id`'s bytes; empty if there is no such segment.
    /// Relaxed atomic byte loads while some handle maps it (no data race
    /// with a writer), a plain copy under the registry's lock while none
    /// does (see [`scribble`](HeapKernel::scribble): what Miri runs).
    pub fn read(&self, id: i32) -> Vec<u8> {
        let r = locked(&self.reg);
        let Some(s) = r.segments.get(&id) else {
            return Vec::new();
        };
        let (region, len) = (s.region.clone(), s.size as usize);
        if s.nattch == 0 {
            // SAFETY: `len <= region.len()`; nobody maps the segment and
            // attaching takes the lock we hold, so no write races with this
            // read (the last detach happened before it).
            return unsafe { std::slice::from_raw_parts(region.base().as_ptr(), len) }.to_vec();
        }
        drop(r);
        (0..len)
            .map(|i| {
                // SAFETY: `i < len <= region.len()`; the region lives while
                // `region` (an Arc) does.
                unsafe { std::sync::atomic::AtomicU8::from_ptr(region.base().as_ptr().add(i)) }
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .collect()
    }
}
