//! BOUNDED-READ against a scribbled committed log. A process with
//! write permission (threat model: "cannot … hang [a reader]: every wait is
//! bounded by the lock timeout") stores a `commit` word and the root's
//! `applying` word naming a redo log whose checksum does not hold, with the
//! largest entry count `Redo::parse` accepts (`capacity`). Every read then
//! runs `Table::read_state`, which re-parses (loads, copies and hashes) the
//! whole log up to `SPIN_LIMIT` (4096) times before it reports a stall, with
//! no look at the clock, while holding the process-wide overlay mutex.
//! `len()` and `version()` have no timeout at all.
#![allow(unreachable_pub)]

mod common;

use std::time::{Duration, Instant};

use common::Cleanup;
use shmkv::{Options, RawMap};

const REDO_MAGIC: u64 = u64::from_le_bytes(*b"SHMKVRD\x01");
/// Byte offsets (DESIGN.md "Root segment", "DataHeader").
const ROOT_APPLYING: usize = 200;
const DATA_VIEW_SEQ: usize = 64;
const DATA_ARENA_USED: usize = 72;
const DATA_COMMIT: usize = 104;

#[test]
fn a_scribbled_committed_log_does_not_stall_reads_beyond_the_lock_timeout() {
    let timeout = Duration::from_millis(200);
    let c = Cleanup::with(
        "scribblog",
        Options::new().capacity(1_400).lock_timeout(timeout),
    );
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"k", b"v").unwrap();
    let s = m.stats().unwrap();
    // SAFETY: a null address lets the kernel choose.
    let data = unsafe { libc::shmat(s.data_shmid, std::ptr::null(), 0) }.cast::<u8>();
    assert_ne!(data as isize, -1);
    // SAFETY: as above.
    let root = unsafe { libc::shmat(s.root_shmid, std::ptr::null(), 0) }.cast::<u8>();
    assert_ne!(root as isize, -1);
    let word = |p: *mut u8, off: usize| p.wrapping_add(off).cast::<u64>();
    let arena = (256 + s.capacity as usize * 32).next_multiple_of(64);
    // SAFETY: header words inside the mapping, 8-aligned; no writer runs.
    let (view_seq, arena_used) =
        unsafe { (*word(data, DATA_VIEW_SEQ), *word(data, DATA_ARENA_USED)) };
    let log = arena_used.next_multiple_of(16);
    let header = [
        REDO_MAGIC,
        s.capacity, // the longest log parse accepts
        view_seq + 2,
        arena_used,
        1,
        0,
        0,
        0xdead_beef, // a checksum that does not hold
    ];
    for (i, w) in header.iter().enumerate() {
        // SAFETY: inside the arena (the log fits: checked by parse's bounds).
        unsafe { *word(data, arena + log as usize + 8 * i) = w.to_le() };
    }
    let commit = (log << 1) | 1;
    // SAFETY: header / root words, 8-aligned, inside the mappings.
    unsafe {
        *word(data, DATA_COMMIT) = commit;
        *word(root, ROOT_APPLYING) = commit;
    }

    let ro = RawMap::open(&c.name, &c.opts.clone().read_only(true)).unwrap();
    let t = Instant::now();
    let n = ro.len();
    let len_took = t.elapsed();
    let t = Instant::now();
    let got = ro.get(b"k");
    let get_took = t.elapsed();
    eprintln!("len() = {n} took {len_took:?}; get took {get_took:?}: {got:?}");

    // Undo the scribble before asserting (the map is then intact).
    // SAFETY: as above.
    unsafe {
        *word(data, DATA_COMMIT) = 0;
        *word(root, ROOT_APPLYING) = 0;
        libc::shmdt(data.cast());
        libc::shmdt(root.cast());
    }
    let bound = timeout + Duration::from_secs(1);
    assert!(
        len_took < bound && get_took < bound,
        "reads took {len_took:?} (len) and {get_took:?} (get); lock timeout {timeout:?}"
    );
}
