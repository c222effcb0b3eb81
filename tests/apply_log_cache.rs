//! the process-local cache of parsed redo logs (`overlay_cache`) can
//! be keyed with another log's checksum. `Table::read_state` parses the log
//! at `commit >> 1` and then loads the checksum word from shared memory
//! again (`self.log_checksum(commit)`), instead of taking the checksum of
//! the words it parsed. If the next write (remove-only, so its log lies at
//! the same offset and its commit word is the same) stages its log and
//! commits in between, the reader accepts the old log's content (its target
//! still covers `view_seq`) under the new log's checksum, and caches it.
//! From then on every read of that handle hits the cache for the new write
//! and reads the old log's after state: a write that committed (and whose
//! writer died) is invisible to that handle, while other handles see it.
//!
//! Setup: writer 1 commits a large batch and dies after applying it (commit
//! word left set). Writer 2 recovers it (parsing the large log), removes one
//! key (a log of one entry at the same offset) and dies right after its
//! commit store. Meanwhile fresh read-only handles each make their first
//! read; one whose parse of the large log straddles writer 2's staging and
//! commit is poisoned.
#![allow(unreachable_pub)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{arg, role, spawn, Cleanup};
use shmkv::__private::{arm, CrashPoint};
use shmkv::{Options, RawMap};

const BIG: u32 = 60_000;

fn key(i: u32) -> [u8; 4] {
    i.to_le_bytes()
}

fn writer1_role() {
    let map = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
    arm(CrashPoint::AfterApply, 0);
    let _ = map.write(|b| (0..BIG).try_for_each(|i| b.insert(&key(i), b"v")));
    println!("RESULT survived");
}

fn writer2_role() {
    let map = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
    arm(CrashPoint::AfterCommit, 0);
    let _ = map.remove(&key(0));
    println!("RESULT survived");
}

#[test]
fn a_handle_never_caches_a_log_under_another_logs_checksum() {
    match role().as_deref() {
        Some("writer1") => return writer1_role(),
        Some("writer2") => return writer2_role(),
        _ => {}
    }
    let test = "a_handle_never_caches_a_log_under_another_logs_checksum";
    let mut poisoned_trials = Vec::new();
    let trials = 6;
    for trial in 0..trials {
        let c = Cleanup::with(
            "poison",
            Options::new()
                .capacity(u64::from(BIG) + 1000)
                .lock_timeout(Duration::from_secs(2)),
        );
        let map = RawMap::create(&c.name, &c.opts).unwrap();
        let mut w1 = spawn(test, "writer1", &[("MAP", c.name.clone())]);
        assert_eq!(w1.wait().unwrap().signal(), Some(9), "writer 1 dies");
        let ro_opts = c.opts.clone().read_only(true);
        let mut w2 = spawn(test, "writer2", &[("MAP", c.name.clone())]);
        // Fresh handles (empty caches), one first read each, until writer 2
        // is dead, and a few more.
        let mut handles = Vec::new();
        let mut after = 0;
        while after < 3 {
            let h = RawMap::open(&c.name, &ro_opts).unwrap();
            let _ = h.get(&key(0)).unwrap();
            handles.push(h);
            if w2.try_wait().unwrap().is_some() {
                after += 1;
            }
        }
        assert_eq!(w2.wait().unwrap().signal(), Some(9), "writer 2 dies");
        // Writer 2 committed the removal of key 0: every handle reads it.
        let fresh = RawMap::open(&c.name, &ro_opts).unwrap();
        assert_eq!(fresh.get(&key(0)).unwrap(), None, "a fresh handle");
        let stale: Vec<usize> = handles
            .iter()
            .enumerate()
            .filter(|(_, h)| h.get(&key(0)).unwrap().is_some())
            .map(|(i, _)| i)
            .collect();
        eprintln!(
            "trial {trial}: {} handles, still reading key 0 after its removal committed: {stale:?}",
            handles.len()
        );
        if !stale.is_empty() {
            poisoned_trials.push(trial);
        }
        drop(handles);
        drop(fresh);
        drop(map);
    }
    assert!(
        poisoned_trials.is_empty(),
        "handles kept reading a committed write's before state in trials {poisoned_trials:?}"
    );
}
