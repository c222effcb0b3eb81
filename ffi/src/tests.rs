//! Unit tests of the C ABI called from Rust (review of the batch API).

use super::*;

/// A unique map name; the map is removed when the guard drops (also when
/// the test fails).
struct Named(CString);

impl Named {
    fn new(tag: &str) -> Named {
        let name = format!("ffi-review-{tag}-{}", std::process::id());
        let _ = RawMap::destroy_by_name(&name, &Options::new());
        Named(CString::new(name).unwrap())
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = RawMap::destroy_by_name(self.0.to_str().unwrap(), &Options::new());
    }
}

fn open(n: &Named) -> *mut ShmkvMap {
    let mut m = ptr::null_mut();
    // SAFETY: a NUL-terminated name, NULL options, a valid out-pointer.
    let rc = unsafe { shmkv_open(n.0.as_ptr(), ptr::null(), SHMKV_CREATE, &mut m) };
    assert_eq!(rc, SHMKV_OK);
    m
}

fn contains(m: *mut ShmkvMap, key: &[u8]) -> i32 {
    // SAFETY: an open handle, a valid key.
    unsafe { shmkv_contains(m, key.as_ptr(), key.len()) }
}

/// Stages a key that is too long (refused), then a good key, and asks for
/// a commit anyway.
extern "C" fn failed_stage_then_commit(txn: *mut ShmkvTxn, _ctx: *mut c_void) -> i32 {
    let long = vec![b'k'; 64 * 1024 + 1];
    // SAFETY: the running callback's handle, valid byte ranges.
    let rc = unsafe { shmkv_txn_insert(txn, long.as_ptr(), long.len(), b"v".as_ptr(), 1) };
    assert_eq!(rc, SHMKV_E_KEY_TOO_LARGE);
    // SAFETY: as above.
    let rc = unsafe { shmkv_txn_insert(txn, b"good".as_ptr(), 4, b"v".as_ptr(), 1) };
    assert_eq!(rc, SHMKV_OK);
    0
}

/// `shmkv_write` documents that nothing is applied when a staging call
/// failed, even if the callback then returns 0.
#[test]
fn a_write_whose_staging_call_failed_applies_nothing() {
    let n = Named::new("failed-stage");
    let m = open(&n);
    // SAFETY: an open handle, a valid callback.
    let rc = unsafe { shmkv_write(m, Some(failed_stage_then_commit), ptr::null_mut()) };
    let applied = contains(m, b"good");
    // SAFETY: the handle is not used again.
    unsafe { shmkv_close(m) };
    assert_eq!(applied, SHMKV_MISSING, "part of a failed batch was applied");
    assert!(
        rc < 0,
        "shmkv_write returned {rc} after a failed staging call"
    );
}

/// A map handle may be used from several threads at once (documented):
/// what it holds is `Sync`.
#[test]
fn a_map_handle_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<ShmkvMap>();
}

/// `shmkv_sync_state`: `SHMKV_MISSING` on a map that is not synced; the
/// state (and the prefix, with length-query semantics) once a sync wrote
/// it; a user write of the reserved key is `SHMKV_E_RESERVED_KEY`.
#[test]
fn sync_state_and_reserved_keys() {
    let n = Named::new("sync-state");
    let m = open(&n);
    let mut info = ShmkvSyncInfo::default();
    // SAFETY: an open handle, a valid out-pointer, no buffer.
    let rc = unsafe { shmkv_sync_state(m, &mut info, ptr::null_mut(), 0) };
    assert_eq!(rc, SHMKV_MISSING);
    let key = shmkv::SYNC_STATE_KEY;
    // SAFETY: an open handle, valid byte ranges.
    let rc = unsafe { shmkv_insert(m, key.as_ptr(), key.len(), b"x".as_ptr(), 1) };
    assert_eq!(rc, SHMKV_E_RESERVED_KEY);
    let raw = RawMap::open(n.0.to_str().unwrap(), &Options::new()).unwrap();
    let st = shmkv::SyncState {
        source: shmkv::SourceKind::Etcd,
        cluster_id: 77,
        prefix: b"/config/".to_vec(),
        strip_prefix: true,
        endpoints: "http://127.0.0.1:2379".into(),
        revision: 41,
        seen_revision: 44,
        last_event_unix_ms: 5,
        updated_unix_ms: 6,
        owner_pid: std::process::id(),
        owner_start_time: shmkv::process_start_time(std::process::id()).unwrap(),
    };
    raw.write(|b| b.set_sync_state(&st)).unwrap();
    // Length query: too small a buffer fills the numbers and the length.
    // SAFETY: as above.
    let rc = unsafe { shmkv_sync_state(m, &mut info, ptr::null_mut(), 0) };
    assert_eq!(rc, SHMKV_E_BUFFER_TOO_SMALL);
    assert_eq!((info.prefix_len, info.revision), (8, 41));
    let mut buf = [0u8; 8];
    // SAFETY: as above, `buf` holds 8 bytes.
    let rc = unsafe { shmkv_sync_state(m, &mut info, buf.as_mut_ptr(), buf.len()) };
    assert_eq!(rc, SHMKV_OK);
    assert_eq!(&buf, b"/config/");
    assert_eq!(
        (
            info.revision,
            info.seen_revision,
            info.cluster_id,
            info.owner_pid
        ),
        (41, 44, 77, std::process::id())
    );
    assert_eq!((info.owner_alive, info.strip_prefix), (1, 1));
    assert_eq!(info.last_event_unix_ms, 5);
    let mut len = 0u64;
    // SAFETY: an open handle, a valid out-pointer.
    assert_eq!(unsafe { shmkv_len(m, &mut len) }, SHMKV_OK);
    assert_eq!(len, 0, "the sync state is not an entry");
    // SAFETY: closed once.
    unsafe { shmkv_close(m) };
}

/// A batch open across `fork()`: the child's copy refuses staging and
/// commit (`SHMKV_E_INHERITED_WRITE`) and its abort releases nothing of the
/// parent's; the parent then commits its batch whole.
#[test]
fn a_batch_open_at_fork_stays_the_parents() {
    let n = Named::new("fork-batch");
    let m = open(&n);
    let mut b = ptr::null_mut();
    // SAFETY: an open handle, a valid out-pointer.
    assert_eq!(unsafe { shmkv_batch_begin(m, &mut b) }, SHMKV_OK);
    // SAFETY: an open batch, valid byte ranges.
    let rc = unsafe { shmkv_batch_insert(b, b"p".as_ptr(), 1, b"1".as_ptr(), 1) };
    assert_eq!(rc, SHMKV_OK);
    // SAFETY: the child only calls the C API on its copies and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: as above; the child's copies of the handle and batch.
        let code = unsafe {
            libc::alarm(20);
            if shmkv_batch_insert(b, b"c".as_ptr(), 1, b"x".as_ptr(), 1) != SHMKV_E_INHERITED_WRITE
            {
                1
            } else if shmkv_batch_commit(b) != SHMKV_E_INHERITED_WRITE {
                2
            } else {
                0
            }
        };
        // SAFETY: ends the child without the test harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our child; a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child: 1 staged into, 2 committed the parent's batch (status {status})"
    );
    // SAFETY: the parent's open batch.
    assert_eq!(unsafe { shmkv_batch_commit(b) }, SHMKV_OK);
    assert_eq!(contains(m, b"p"), SHMKV_OK);
    assert_eq!(contains(m, b"c"), SHMKV_MISSING);
    // SAFETY: an open handle, closed once.
    unsafe { shmkv_close(m) };
}
