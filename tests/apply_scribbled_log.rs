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

use common::{Cleanup, Segment};
use shmkv::__private::{data_offsets, root_offsets, REDO_MAGIC};
use shmkv::{Options, RawMap};

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
    let data = Segment::data_of(&s);
    let root = Segment::attach(s.root_shmid);
    let arena = data_offsets::arena(s.capacity);
    let view_seq = data.read_u64(data_offsets::VIEW_SEQ);
    let arena_used = data.read_u64(data_offsets::ARENA_USED);
    let log = arena_used.next_multiple_of(data_offsets::ARENA_ALIGN);
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
    // The log's header words, little-endian, one after the other (inside
    // the arena: the log fits, checked by parse's bounds).
    let bytes: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
    data.write_bytes(arena + log as usize, &bytes);
    let commit = (log << 1) | 1;
    // Undone before asserting (the map is then intact), also on a panic.
    let undo_commit = data.restore_words(&[data_offsets::COMMIT]);
    let undo_applying = root.restore_words(&[root_offsets::APPLYING]);
    data.write_u64(data_offsets::COMMIT, commit);
    root.write_u64(root_offsets::APPLYING, commit);

    let ro = RawMap::open(&c.name, &c.opts.clone().read_only(true)).unwrap();
    let t = Instant::now();
    let n = ro.len();
    let len_took = t.elapsed();
    let t = Instant::now();
    let got = ro.get(b"k");
    let get_took = t.elapsed();
    eprintln!("len() = {n} took {len_took:?}; get took {get_took:?}: {got:?}");

    // Undo the scribble before asserting (the map is then intact).
    drop((undo_commit, undo_applying));
    drop((data, root));
    let bound = timeout + Duration::from_secs(1);
    assert!(
        len_took < bound && get_took < bound,
        "reads took {len_took:?} (len) and {get_took:?} (get); lock timeout {timeout:?}"
    );
}
