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
            // The writer holds the lock before the destroyer starts (a
            // fixed sleep was not enough on a loaded machine: the destroy
            // came first and the write found the map gone).
            let (locked, is_locked) = std::sync::mpsc::channel();
            let a = &a;
            let hold = s.spawn(move || {
                a.write(|_| {
                    locked.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                    Ok(())
                })
            });
            is_locked.recv().unwrap();
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

/// The fork reset with boxed holds (`HOLD_MORE`): in a process whose
/// forking thread and another thread each hold a `Ref` whose read made
/// the handle switch (two holds each) plus clones, a forked child can
/// still read the forking thread's `Ref`s, drops them in any order, and
/// ends with one mapped generation (the other thread's holds are void);
/// the parent, after the child, still reads its own.
#[test]
fn review_sysv_fork_with_followed_pins() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let test = "review_sysv_fork_with_followed_pins";
    if std::env::var("SHMKV_TEST_ROLE").as_deref() != Ok("forker") {
        let c = Cleanup::with("review-fork", Options::new().capacity(16));
        let mut child = common::spawn(test, "forker", &[("MAP", c.name.clone())]);
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("forker hung");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, lines) = common::results(child);
        assert!(status.success(), "forker failed: {status}");
        assert_eq!(lines, vec!["ok".to_string()]);
        return;
    }
    let name = common::arg("MAP");
    let a = RawMap::create(&name, &Options::new().capacity(16)).unwrap();
    let b = RawMap::open(&name, &Options::new()).unwrap();
    a.insert(b"k", b"v1").unwrap();
    let other_ready = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Another thread holding a followed pin at fork time.
        s.spawn(|| {
            let r0 = b.get_ref(b"k").unwrap().unwrap();
            while other_ready.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let r = b.get_ref(b"k").unwrap().unwrap();
            let rc = r.clone();
            other_ready.store(2, Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop((r0, r, rc));
        });
        // This (forking) thread: a Ref, then one taken across a switch.
        let r1 = b.get_ref(b"k").unwrap().unwrap();
        a.insert(b"k", b"v2").unwrap();
        a.compact().unwrap();
        other_ready.store(1, Ordering::SeqCst);
        let r2 = b.get_ref(b"k").unwrap().unwrap(); // switches: two holds
        let r2c = r2.clone();
        while other_ready.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        a.insert(b"k", b"v3").unwrap();
        a.compact().unwrap();
        // SAFETY: the child only uses the maps and then `_exit`s.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: plain integer argument; kills a hung child.
                unsafe { libc::alarm(20) };
                let code = (|| {
                    if (&*r1, &*r2, &*r2c) != (&b"v1"[..], &b"v2"[..], &b"v2"[..]) {
                        return 10;
                    }
                    drop(r2);
                    if &*r2c != b"v2" || &*r1 != b"v1" {
                        return 11;
                    }
                    drop(r1);
                    if &*r2c != b"v2" {
                        return 12;
                    }
                    drop(r2c);
                    for i in 0..5 {
                        if b.get(b"k").ok().flatten().as_deref() != Some(&b"v3"[..]) {
                            return 13;
                        }
                        if a.compact().is_err() {
                            return 14;
                        }
                        let _ = b.get(b"k");
                        let n = b.stats().unwrap().mapped_generations;
                        if i > 0 && n != 1 {
                            return 20 + n as i32;
                        }
                    }
                    0
                })();
                // SAFETY: ends the child without running the parent's
                // destructors or test harness.
                unsafe { libc::_exit(code) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                stop.store(true, Ordering::SeqCst);
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
                assert_eq!((&*r1, &*r2, &*r2c), (&b"v1"[..], &b"v2"[..], &b"v2"[..]));
            }
        }
    });
    let _ = b.get(b"k");
    a.compact().unwrap();
    let _ = b.get(b"k");
    assert_eq!(b.stats().unwrap().mapped_generations, 1);
    drop(b);
    a.destroy().unwrap();
    println!("RESULT ok");
}
