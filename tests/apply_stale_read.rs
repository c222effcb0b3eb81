//! a read that started before a writer's commit store, and that
//! meets a slot the writer left odd when it was killed mid-apply, must not
//! wait for a lock holder (DESIGN.md "Reads during an apply": "after a
//! writer dies anywhere past its commit, read-only readers read its after
//! state at once, without errors and without waiting").
//!
//! `RawView::get` retries a stalled slot read through `read_slow` with the
//! read state (`overlay: None`) the view took before the commit, so it keeps
//! reading the odd slot until the lock timeout, although the committed log
//! is there to read through.
#![allow(unreachable_pub)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{arg, results, role, spawn, Cleanup};
use shmkv::__private::{arm, CrashPoint};
use shmkv::{Options, RawMap};

fn crasher_role() {
    let map = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
    arm(CrashPoint::MidApply, 0);
    // One slot: the writer dies with exactly this key's slot odd.
    let _ = map.insert(b"b", b"b-after");
    println!("RESULT survived");
}

#[test]
fn a_view_that_straddles_a_crash_mid_apply_does_not_wait() {
    if role().as_deref() == Some("crasher") {
        return crasher_role();
    }
    let test = "a_view_that_straddles_a_crash_mid_apply_does_not_wait";
    let timeout = Duration::from_secs(10);
    let c = Cleanup::with("straddle", Options::new().lock_timeout(timeout));
    let map = RawMap::create(&c.name, &c.opts).unwrap();
    map.insert(b"a", b"a-before").unwrap();
    map.insert(b"b", b"b-before").unwrap();
    let ro = RawMap::open(&c.name, &c.opts.clone().read_only(true)).unwrap();

    let mut runs = 0;
    let retries = shmkv::read_retries();
    let t = Instant::now();
    let got = ro
        .view(|v| {
            runs += 1;
            let a = v.get(b"a")?.map(|r| r.to_vec());
            if runs == 1 {
                // The view took its read state; now a writer commits a batch
                // and is killed in the middle of applying it.
                let (status, _) = results(spawn(test, "crasher", &[("MAP", c.name.clone())]));
                assert_eq!(status.signal(), Some(9), "crasher: {status:?}");
            }
            let b = v.get(b"b")?.map(|r| r.to_vec());
            Ok((a, b))
        })
        .unwrap();
    let took = t.elapsed();
    eprintln!("view ran {runs} times, took {took:?}, got {got:?}");
    // The odd slot was read again: the process's retry counter moved.
    assert!(
        shmkv::read_retries() > retries,
        "a read of a slot left odd was not counted as a retry"
    );
    assert_eq!(
        got,
        (Some(b"a-before".to_vec()), Some(b"b-after".to_vec())),
        "the view returns the after state"
    );
    // The view must not have waited for the lock timeout (10 s): a fresh
    // read reads the committed log at once. The bound leaves room for the
    // crasher's own run (a process start) on a loaded machine.
    assert!(
        took < Duration::from_secs(4),
        "a read-only view waited {took:?} (lock timeout {timeout:?}) for a dead writer"
    );
    drop(ro);
    drop(map);
}

/// The same for plain `get`s: a get that loaded the root's `applying`
/// word as 0 just before a writer set it, and then meets the slot the writer
/// left odd when it was killed, retries the slot (never the committed log)
/// until the lock timeout and fails with `LockTimeout` naming the dead
/// writer. The window (between the `applying` load and the slot read) is a
/// few instructions, so the test oversubscribes the cores with reader
/// threads: a thread preempted inside the window while the writer commits
/// and dies hits it. Each trial: 8 read-only reader threads loop on
/// `get(b)` while a writer dies with `b`'s slot odd.
#[test]
fn gets_that_straddle_a_crash_mid_apply_do_not_fail() {
    if role().as_deref() == Some("crasher") {
        return crasher_role();
    }
    let test = "gets_that_straddle_a_crash_mid_apply_do_not_fail";
    let timeout = Duration::from_millis(500);
    let mut failures = Vec::new();
    let trials = 12;
    for trial in 0..trials {
        let c = Cleanup::with("straddleget", Options::new().lock_timeout(timeout));
        let map = RawMap::create(&c.name, &c.opts).unwrap();
        map.insert(b"b", b"b-before").unwrap();
        let ro = RawMap::open(&c.name, &c.opts.clone().read_only(true)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let errors: Vec<String> = std::thread::scope(|s| {
            let readers: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut errs = Vec::new();
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            match ro.get(b"b") {
                                Ok(Some(v)) if v == b"b-before" || v == b"b-after" => {}
                                other => errs.push(format!("{other:?}")),
                            }
                        }
                        errs
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(20));
            let (status, _) = results(spawn(test, "crasher", &[("MAP", c.name.clone())]));
            assert_eq!(status.signal(), Some(9), "crasher: {status:?}");
            // Long enough for a stalled get to reach the lock timeout.
            std::thread::sleep(timeout * 2);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            readers
                .into_iter()
                .flat_map(|r| r.join().unwrap())
                .collect()
        });
        if !errors.is_empty() {
            failures.push(format!("trial {trial}: {errors:?}"));
        }
        drop(ro);
        drop(map);
    }
    assert!(
        failures.is_empty(),
        "read-only gets failed after a writer died past its commit ({} of {trials} trials): {failures:?}",
        failures.len()
    );
}
