//! Read-only views under steady writes end with `Error::Busy`, naming the
//! map and the cause, not with a `LockTimeout` naming a lock they never
//! asked for (issue: `shmkv verify` on a read-only handle under a put every
//! ~2 ms failed with "write lock not obtained … held by pid …").
#![allow(unreachable_pub)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Cleanup;
use shmkv::{Error, Options, RawMap};

#[test]
fn a_read_only_view_under_steady_writes_is_busy_not_a_lock_timeout() {
    let c = Cleanup::new("busy");
    let w = RawMap::create(&c.name, &Options::new()).unwrap();
    w.insert(b"k", b"0").unwrap();
    let ro = RawMap::open(
        &c.name,
        &Options::new()
            .read_only(true)
            .lock_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    let (result, took, writes) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                w.insert(b"k", n.to_string().as_bytes()).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            n
        });
        let t = Instant::now();
        // A slow view (5 ms per run) never sees a quiet moment.
        let r = ro.view(|v| {
            let got = v.get(b"k")?.map(|r| r.to_vec());
            std::thread::sleep(Duration::from_millis(5));
            Ok(got)
        });
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        (r, took, writer.join().unwrap())
    });
    assert!(writes > 10, "the writer wrote {writes} times");
    match result {
        Err(Error::Busy { name, changes, .. }) => {
            assert_eq!(name, c.name);
            assert!(changes >= 2, "{changes}");
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "gave up after {took:?}"
    );
    // Without writers the same view succeeds.
    assert!(ro.view(|v| v.get(b"k").map(|r| r.is_some())).unwrap());
}
