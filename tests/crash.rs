//! Crash atomicity: a child process is killed (SIGKILL, from a test hook) at
//! chosen points of the write protocol while it holds the lock. The next
//! writer, or a reader that finds the map stuck, recovers it to the state
//! before or after that write, and no reader hangs.
#![allow(unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{arg, assert_removed, crash_point, results, role, spawn, Cleanup};
use shmkv::__private::{arm, CrashPoint};
use shmkv::{Error, Options, RawMap};

fn before() -> BTreeMap<Vec<u8>, Vec<u8>> {
    (0..40u32)
        .map(|k| (k.to_le_bytes().to_vec(), format!("before-{k}").into_bytes()))
        .collect()
}

/// The batch the child dies in: updates, removals and new keys.
fn the_batch(b: &mut shmkv::RawBatch<'_>) -> shmkv::Result<()> {
    for k in 0..15u32 {
        b.insert(&k.to_le_bytes(), format!("after-{k}").as_bytes())?;
    }
    for k in 15..25u32 {
        b.remove(&k.to_le_bytes())?;
    }
    for k in 40..50u32 {
        b.insert(&k.to_le_bytes(), format!("after-{k}").as_bytes())?;
    }
    Ok(())
}

fn after() -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = before();
    for k in 0..15u32 {
        m.insert(k.to_le_bytes().to_vec(), format!("after-{k}").into_bytes());
    }
    for k in 15..25u32 {
        m.remove(k.to_le_bytes().as_slice());
    }
    for k in 40..50u32 {
        m.insert(k.to_le_bytes().to_vec(), format!("after-{k}").into_bytes());
    }
    m
}

fn snapshot(m: &RawMap) -> BTreeMap<Vec<u8>, Vec<u8>> {
    m.entries()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn crash_child(test: &str, name: &str, point: &str) {
    crash_child_after(test, name, point, 0)
}

/// Like `crash_child`, dying the `skip + 1`-th time the point is reached.
fn crash_child_after(test: &str, name: &str, point: &str, skip: u64) {
    let (status, _) = results(spawn(
        test,
        "crasher",
        &[
            ("MAP", name.into()),
            ("POINT", point.into()),
            ("SKIP", skip.to_string()),
        ],
    ));
    assert_eq!(
        status.signal(),
        Some(9),
        "child must die by SIGKILL at {point}: {status:?}"
    );
}

fn crasher_role() {
    let map = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
    arm(crash_point(&arg("POINT")), arg("SKIP").parse().unwrap());
    let _ = map.write(the_batch);
    println!("RESULT survived");
}

#[test]
fn writer_killed_at_each_point_is_recovered() {
    if role().as_deref() == Some("crasher") {
        return crasher_role();
    }
    let test = "writer_killed_at_each_point_is_recovered";
    let cases = [
        ("AfterStage", false),
        ("AfterRedoLog", false),
        ("BeforeCommit", false),
        ("AfterCommit", true),
        ("MidApply", true),
        ("AfterApply", true),
    ];
    for (p, committed) in cases {
        // Small table: the batch's slots are spread over probe chains.
        let c = Cleanup::with(
            "crash",
            Options::new()
                .capacity(60)
                .lock_timeout(Duration::from_secs(10)),
        );
        let map = RawMap::create(&c.name, &c.opts).unwrap();
        map.write(|b| before().iter().try_for_each(|(k, v)| b.insert(k, v)))
            .unwrap();
        let v0 = map.version();
        crash_child(test, &c.name, p);

        // A read-only handle cannot recover, and needs not: it reads the
        // state after a committed write (through its log), before an
        // uncommitted one, at once and without errors.
        let want = if committed { after() } else { before() };
        let ro = RawMap::open(&c.name, &c.opts.clone().read_only(true)).unwrap();
        let t = Instant::now();
        assert_reads(&ro, &want, p);
        // Far below the lock timeout (10 s): no read waited for the lock.
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{p}: read-only reads took {:?}",
            t.elapsed()
        );
        assert_eq!(ro.version(), v0 + committed as u64, "{p}");
        drop(ro);

        // So does a read-write reader; a writer recovers the map.
        let t = Instant::now();
        let snap = snapshot(&map);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{p}: reader took {:?}",
            t.elapsed()
        );
        assert_eq!(
            snap, want,
            "{p}: map must hold the state before or after the batch"
        );
        assert_eq!(map.len(), want.len(), "{p}");
        assert_eq!(map.version(), v0 + committed as u64, "{p}");
        for (k, v) in &want {
            assert_eq!(map.get(k).unwrap().as_deref(), Some(v.as_slice()), "{p}");
        }
        // The map keeps working, and the lock is free.
        map.insert(b"later", b"write").unwrap();
        assert_eq!(map.get(b"later").unwrap().unwrap(), b"write");
        let stats = map.stats().unwrap();
        assert!(!stats.lock_held);
        assert_eq!(stats.live as usize, want.len() + 1);
        map.destroy().unwrap();
        assert_removed(&stats);
    }
}

/// Every key of `want` reads its value with plain gets, keys it lacks read
/// as absent, and a view, `len` and `entries` agree.
fn assert_reads(m: &RawMap, want: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    for k in 0..50u32 {
        let k = k.to_le_bytes();
        assert_eq!(
            m.get(&k).unwrap().as_deref(),
            want.get(k.as_slice()).map(Vec::as_slice),
            "{what}: plain get of key {k:?}"
        );
    }
    assert_eq!(snapshot(m), *want, "{what}: view of every entry");
    assert_eq!(m.len(), want.len(), "{what}: len");
}

/// A writer killed in the middle of applying a batch (at several slots of
/// it) leaves a read-only reader, which cannot recover, reading the whole
/// batch through plain gets and views at once, with no error; then the next
/// writer finishes it.
#[test]
fn readers_see_a_batch_whole_after_its_writer_died_mid_apply() {
    if role().as_deref() == Some("crasher") {
        return crasher_role();
    }
    let test = "readers_see_a_batch_whole_after_its_writer_died_mid_apply";
    for skip in [0, 1, 9, 20, 30] {
        let c = Cleanup::with(
            "midapply",
            Options::new()
                .capacity(60)
                .lock_timeout(Duration::from_secs(10)),
        );
        let map = RawMap::create(&c.name, &c.opts).unwrap();
        map.write(|b| before().iter().try_for_each(|(k, v)| b.insert(k, v)))
            .unwrap();
        let v0 = map.version();
        crash_child_after(test, &c.name, "MidApply", skip);
        let what = format!("killed at slot {skip} of the batch");
        let ro = RawMap::open(&c.name, &c.opts.clone().read_only(true)).unwrap();
        let t = Instant::now();
        assert_reads(&ro, &after(), &what);
        assert_eq!(ro.version(), v0 + 1, "{what}");
        // Far below the lock timeout (10 s): no read waited for the lock.
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{what}: reads took {:?}",
            t.elapsed()
        );
        // Nobody recovered: the lock is free and the batch still half applied.
        assert!(!map.stats().unwrap().lock_held);
        map.insert(b"later", b"write").unwrap();
        let mut want = after();
        want.insert(b"later".to_vec(), b"write".to_vec());
        assert_eq!(snapshot(&ro), want, "{what}: after recovery");
        assert!(map.verify().unwrap().is_ok(), "{what}");
    }
}

#[test]
fn next_writer_recovers_a_committed_write() {
    if role().as_deref() == Some("crasher") {
        return crasher_role();
    }
    let test = "next_writer_recovers_a_committed_write";
    let c = Cleanup::with("crashw", Options::new().capacity(60));
    let map = RawMap::create(&c.name, &c.opts).unwrap();
    map.write(|b| before().iter().try_for_each(|(k, v)| b.insert(k, v)))
        .unwrap();
    crash_child(test, &c.name, "AfterCommit");
    // A write is the first operation after the crash: it recovers first,
    // then applies on top.
    map.insert(&0u32.to_le_bytes(), b"newest").unwrap();
    let mut want = after();
    want.insert(0u32.to_le_bytes().to_vec(), b"newest".to_vec());
    assert_eq!(snapshot(&map), want);
}

/// /proc/sysvipc/shm rows created by `pid`.
fn segments_created_by(pid: u32) -> usize {
    common::sysv_segments()
        .iter()
        .filter(|r| r.cpid == pid)
        .count()
}

#[test]
fn creator_killed_mid_create_leaves_nothing_after_repair() {
    if role().as_deref() == Some("creator") {
        arm(CrashPoint::MidCreate, 0);
        let _ = RawMap::create(&arg("MAP"), &Options::new());
        println!("RESULT survived");
        return;
    }
    let c = Cleanup::new("midcreate");
    let child = spawn(
        "creator_killed_mid_create_leaves_nothing_after_repair",
        "creator",
        &[("MAP", c.name.clone())],
    );
    let pid = child.id();
    let (status, _) = results(child);
    assert_eq!(status.signal(), Some(9));
    // Root and a pending data segment exist; the map is incomplete.
    assert_eq!(segments_created_by(pid), 2);
    let quick = c.opts.clone().lock_timeout(Duration::from_millis(200));
    assert!(matches!(
        RawMap::open(&c.name, &quick),
        Err(Error::Corrupted(_))
    ));
    // open_or_create repairs it: the orphan data segment is removed.
    let map = RawMap::open_or_create(&c.name, &c.opts).unwrap();
    assert_eq!(
        segments_created_by(pid),
        1,
        "only the root made by the dead creator remains"
    );
    map.insert(b"k", b"v").unwrap();
    let stats = map.stats().unwrap();
    map.destroy().unwrap();
    assert_removed(&stats);
    assert_eq!(segments_created_by(pid), 0);
}
