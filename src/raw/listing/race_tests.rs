//! `remove_orphan` racing with the creation of a map: the segment table it
//! reads first may predate the map's root, while the data segment it then
//! inspects already carries the map's header.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;

use super::{remove_orphan_in, OrphanRemoval};
use crate::error::Result;
use crate::raw::provider::{HeapKernel, LockOpen, Provider, Removal, Segment, ShmInfo};
use crate::sys::procfs::ShmRow;
use crate::Options;

/// A heap kernel whose first `segments()` answers with a table read before
/// a map was created (`stale`), as `/proc/sysvipc/shm` read by one process
/// while another creates a map.
#[derive(Debug)]
struct StaleTableOnce {
    k: HeapKernel,
    stale: Vec<ShmRow>,
    used: AtomicBool,
}

impl Provider for StaleTableOnce {
    fn get(
        &self,
        key: libc::key_t,
        size: usize,
        flags: libc::c_int,
        name: &str,
    ) -> Result<std::result::Result<i32, Errno>> {
        self.k.get(key, size, flags, name)
    }
    fn huge_page_size(&self) -> Option<u64> {
        self.k.huge_page_size()
    }
    fn stat(&self, id: i32, name: &str) -> Result<ShmInfo> {
        self.k.stat(id, name)
    }
    fn set_owner(&self, id: i32, uid: u32, gid: u32, mode: u32, name: &str) -> Result<()> {
        self.k.set_owner(id, uid, gid, mode, name)
    }
    fn try_remove(&self, id: i32) -> Removal {
        self.k.try_remove(id)
    }
    fn remove(&self, id: i32) -> Result<()> {
        Provider::remove(&self.k, id)
    }
    fn attach(&self, id: i32, read_only: bool, name: &str) -> Result<Segment> {
        self.k.attach(id, read_only, name)
    }
    fn segments(&self) -> std::io::Result<Vec<ShmRow>> {
        if !self.used.swap(true, Ordering::Relaxed) {
            return Ok(self.stale.clone());
        }
        self.k.segments()
    }
    fn marked_for_removal(&self, id: i32) -> bool {
        self.k.marked_for_removal(id)
    }
    fn open_lock(
        &self,
        key: libc::key_t,
        create: bool,
        mode: u32,
        timeout: Duration,
        name: &str,
    ) -> Result<LockOpen> {
        self.k.open_lock(key, create, mode, timeout, name)
    }
    fn find_lock(
        &self,
        key: libc::key_t,
        name: &str,
    ) -> Result<Option<crate::raw::provider::Lock>> {
        self.k.find_lock(key, name)
    }
    fn random_seed(&self) -> u64 {
        self.k.random_seed()
    }
    fn process_start_time(&self, pid: u32) -> Option<u64> {
        self.k.process_start_time(pid)
    }
    fn process_alive(&self, pid: u32) -> bool {
        self.k.process_alive(pid)
    }
}

/// The table is read, then a map is created (root, then data segment),
/// then `remove_orphan` looks at the new data segment: its root is not in
/// the table read, but it is alive. The data segment must not be removed.
#[test]
fn remove_orphan_spares_a_map_created_after_the_table_was_read() {
    let k = HeapKernel::new();
    let stale = k.segments().unwrap();
    let m = k
        .create("m", &Options::new().capacity(1).arena_size(4096u64))
        .unwrap();
    m.insert(b"k", b"v").unwrap();
    let s = m.stats().unwrap();
    let p = StaleTableOnce {
        k: k.clone(),
        stale,
        used: AtomicBool::new(false),
    };
    assert_eq!(
        remove_orphan_in(&p, s.data_shmid, true).unwrap(),
        OrphanRemoval::NotAnOrphan,
        "the data segment of a live map was taken for an orphan"
    );
    assert!(k.segment_ids().contains(&s.data_shmid));
    assert_eq!(m.get(b"k").unwrap(), Some(b"v".to_vec()));
    m.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}
