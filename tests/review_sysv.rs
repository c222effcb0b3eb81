//! Adversarial review, over SysV: the same races as `review_heap.rs` where
//! the heap provider might hide or cause the behaviour. Every test removes
//! what it makes (`Cleanup`).
#![allow(unreachable_pub)]

mod common;

use std::time::Duration;

use common::Cleanup;
use shmkv::{Options, RawMap};

/// As `review_open_or_create_waiting_on_a_destroyed_lock` (heap), over
/// SysV semaphores: `open_or_create` queued on the lock behind a `destroy`
/// gets `NotFound { name: "(destroyed while open)" }` (EIDRM from
/// `semtimedop`) instead of creating the map anew.
#[test]
fn review_sysv_open_or_create_waiting_on_a_destroyed_lock() {
    let c = Cleanup::with(
        "review-ooc",
        Options::new()
            .capacity(16)
            .arena_size(4096u64)
            .lock_timeout(Duration::from_secs(5)),
    );
    let mut seen = Vec::new();
    for _ in 0..5 {
        let a = RawMap::open_or_create(&c.name, &c.opts).unwrap();
        let d = RawMap::open(&c.name, &c.opts).unwrap();
        let r = std::thread::scope(|s| {
            let hold = s.spawn(|| {
                a.write(|_| {
                    std::thread::sleep(Duration::from_millis(150));
                    Ok(())
                })
            });
            std::thread::sleep(Duration::from_millis(20));
            let dd = s.spawn(move || d.destroy());
            std::thread::sleep(Duration::from_millis(20));
            let r = RawMap::open_or_create(&c.name, &c.opts).map(drop);
            hold.join().unwrap().unwrap();
            dd.join().unwrap().unwrap();
            r
        });
        drop(a);
        seen.push(format!("{r:?}"));
        let _ = RawMap::destroy_by_name(&c.name, &c.opts);
    }
    assert!(seen.iter().all(|r| r == "Ok(())"), "{seen:#?}");
}

/// The SysV counterpart of `review_second_writer_is_not_starved` (heap):
/// a writer in a tight loop does not starve a second one.
#[test]
fn review_sysv_second_writer_is_not_starved() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = Cleanup::with(
        "review-starve",
        Options::new()
            .capacity(16)
            .arena_size(4096u64)
            .lock_timeout(Duration::from_millis(500)),
    );
    let a = RawMap::create(&c.name, &c.opts).unwrap();
    let b = RawMap::open(&c.name, &c.opts).unwrap();
    let stop = AtomicBool::new(false);
    let (mut ok, mut timeouts) = (0, 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                a.insert(&[(n % 8) as u8], &n.to_le_bytes()).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        for i in 0..10u64 {
            match b.insert(b"b", &i.to_le_bytes()) {
                Ok(()) => ok += 1,
                Err(shmkv::Error::LockTimeout { .. }) => timeouts += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        timeouts, 0,
        "{ok} writes got the lock, {timeouts} timed out"
    );
}
