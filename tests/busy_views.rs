//! Read-only views under steady writes end with `Error::Busy`, naming the
//! map and the cause, not with a `LockTimeout` naming a lock they never
//! asked for (issue: `shmkv verify` on a read-only handle under a put every
//! ~2 ms failed with "write lock not obtained … held by pid …").
#![allow(unreachable_pub)]

mod common;

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
    // Every run of the view closure is overlapped by a committed write
    // (made through the other handle from inside the closure, as a writer
    // process would between the view's first and last read).
    let mut writes = 0u64;
    let t = Instant::now();
    let result = ro.view(|v| {
        let got = v.get(b"k")?.map(|r| r.to_vec());
        writes += 1;
        w.insert(b"k", writes.to_string().as_bytes())?;
        Ok(got)
    });
    let took = t.elapsed();
    // At least the optimistic tries (64), then backed-off ones until 300 ms.
    assert!(writes >= 64, "the view ran {writes} times");
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
