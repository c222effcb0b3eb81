//! `RawMap::begin`: a write held open across calls (the C API's
//! `shmkv_batch_begin` ... `commit`/`abort`).
#![allow(unreachable_pub)]

mod common;

use common::{arg, results, role, spawn, Cleanup};
use shmkv::{Error, Options, RawMap, Size};

/// The tests of this file run one at a time: one of them counts the
/// segments this process made, which the others make and remove.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_transaction_is_invisible_until_commit_then_whole() {
    let _serial = serial();
    let c = Cleanup::new("txn-commit");
    let map = RawMap::create(&c.name, &c.opts).unwrap();
    let reader = RawMap::open(&c.name, &c.opts).unwrap();
    map.insert(b"a", b"0").unwrap();
    let v0 = map.version();
    let mut t = map.begin().unwrap();
    t.insert(b"a", b"1").unwrap();
    t.insert(b"b", b"2").unwrap();
    assert_eq!(t.get(b"a").unwrap(), Some(&b"1"[..]), "sees its own write");
    assert!(t.remove(b"b").unwrap());
    t.insert(b"c", b"3").unwrap();
    // Other handles (here, another handle of this process) see nothing yet.
    assert_eq!(reader.get(b"a").unwrap().as_deref(), Some(&b"0"[..]));
    assert_eq!(reader.get(b"c").unwrap(), None);
    assert_eq!(reader.version(), v0);
    t.commit().unwrap();
    assert_eq!(reader.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(reader.get(b"b").unwrap(), None);
    assert_eq!(reader.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(reader.version(), v0 + 1, "one write");
    // The lock was released.
    map.insert(b"d", b"4").unwrap();
}

#[test]
fn abort_and_drop_apply_nothing_and_release_the_lock() {
    let _serial = serial();
    let c = Cleanup::new("txn-abort");
    let map = RawMap::create(&c.name, &c.opts).unwrap();
    map.insert(b"a", b"0").unwrap();
    let v0 = map.version();
    let mut t = map.begin().unwrap();
    t.insert(b"a", b"1").unwrap();
    t.abort();
    let mut t = map.begin().unwrap();
    t.insert(b"b", b"1").unwrap();
    drop(t);
    assert_eq!(map.version(), v0);
    assert_eq!(map.get(b"a").unwrap().as_deref(), Some(&b"0"[..]));
    assert_eq!(map.get(b"b").unwrap(), None);
    map.insert(b"c", b"1").unwrap();
    assert!(map.verify().unwrap().problems.is_empty());
}

#[test]
fn a_write_inside_an_open_transaction_is_refused_not_a_deadlock() {
    let _serial = serial();
    let c = Cleanup::new("txn-nested");
    let map = RawMap::create(&c.name, &c.opts).unwrap();
    let t = map.begin().unwrap();
    assert!(matches!(map.insert(b"x", b"y"), Err(Error::NestedWrite)));
    assert!(matches!(map.begin(), Err(Error::NestedWrite)));
    drop(t);
    map.insert(b"x", b"y").unwrap();
}

#[test]
fn a_transaction_that_grows_the_map_commits_or_leaves_no_segment() {
    let _serial = serial();
    let opts = Options::new()
        .capacity(16)
        .arena_size(Size::parse("16kb").unwrap());
    let c = Cleanup::with("txn-grow", opts);
    let map = RawMap::create(&c.name, &c.opts).unwrap();
    let before = map.stats().unwrap();
    // Segments this process made (other tests and programs make theirs).
    let me = std::process::id();
    let segments = || {
        common::sysv_segments()
            .iter()
            .filter(|r| r.cpid == me)
            .count()
    };
    let n0 = segments();
    let mut t = map.begin().unwrap();
    for i in 0..2000u32 {
        t.insert(&i.to_le_bytes(), &[7u8; 40]).unwrap();
    }
    assert!(segments() > n0, "the batch moved to a new generation");
    drop(t);
    assert_eq!(segments(), n0, "the unpublished generation was removed");
    assert_eq!(map.stats().unwrap().generation, before.generation);
    let mut t = map.begin().unwrap();
    for i in 0..2000u32 {
        t.insert(&i.to_le_bytes(), &[7u8; 40]).unwrap();
    }
    t.commit().unwrap();
    assert_eq!(map.len(), 2000);
    assert!(map.stats().unwrap().generation > before.generation);
}

#[test]
fn a_process_killed_with_an_open_transaction_leaves_the_map_as_it_was() {
    let _serial = serial();
    if role().as_deref() == Some("txn-holder") {
        let map = RawMap::open(&arg("SHMKV_TXN_MAP"), &Options::new()).unwrap();
        let mut t = map.begin().unwrap();
        for i in 0..100u32 {
            t.insert(&i.to_le_bytes(), b"dead").unwrap();
        }
        println!("RESULT staged");
        // SAFETY: raise is async-signal-safe; the process dies here.
        unsafe { libc::raise(libc::SIGKILL) };
        unreachable!();
    }
    let c = Cleanup::new("txn-kill");
    let map = RawMap::create(&c.name, &c.opts).unwrap();
    map.insert(b"kept", b"1").unwrap();
    let child = spawn(
        "a_process_killed_with_an_open_transaction_leaves_the_map_as_it_was",
        "txn-holder",
        &[("SHMKV_TXN_MAP", c.name.clone())],
    );
    let (status, lines) = results(child);
    assert_eq!(lines, ["staged"]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(map.len(), 1);
    assert_eq!(map.get(&0u32.to_le_bytes()).unwrap(), None);
    map.insert(b"after", b"1").unwrap();
    assert!(map.verify().unwrap().problems.is_empty());
}
