//! Change notification: `version()` and `wait_for_change` across processes.
#![allow(unreachable_pub)]

mod common;

use std::time::{Duration, Instant};

use common::{arg, await_result, results, role, spawn, Cleanup, KillOnDrop};
use shmkv::__private::futex_wakes;
use shmkv::{Options, RawMap};

/// The tests of this binary run one at a time: `futex_wakes()` counts the
/// wake calls of the whole process, so one test's writes would show up in
/// another's count.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn a_waiter_in_another_process_wakes_within_milliseconds() {
    let _serial = serial();
    if role().as_deref() == Some("waiter") {
        let ro = std::env::var("READ_ONLY").is_ok();
        let m = RawMap::open(&arg("MAP"), &Options::new().read_only(ro)).unwrap();
        let since = m.version();
        println!("RESULT ready");
        let v = m.wait_for_change(since, Duration::from_secs(10)).unwrap();
        let woke = monotonic_ns();
        println!("RESULT woke={woke} version={}", v.unwrap());
        return;
    }
    let c = Cleanup::new("notify");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"a", b"1").unwrap();
    let test = "a_waiter_in_another_process_wakes_within_milliseconds";
    for ro in [false, true] {
        let mut env = vec![("MAP", c.name.clone())];
        if ro {
            env.push(("READ_ONLY", "1".into()));
        }
        let mut w = KillOnDrop(Some(spawn(test, "waiter", &env)));
        // The waiter has read `since` (whatever its start-up took); give
        // it time to go to sleep, then write.
        await_result(w.0.as_mut().unwrap(), "ready");
        std::thread::sleep(Duration::from_millis(200));
        let wrote = monotonic_ns();
        m.insert(b"a", b"2").unwrap();
        let (status, lines) = results(w.0.take().unwrap());
        assert!(status.success());
        let line = lines.iter().find(|l| l.starts_with("woke=")).unwrap();
        let woke: u64 = line.split(['=', ' ']).nth(1).unwrap().parse().unwrap();
        let latency = Duration::from_nanos(woke.saturating_sub(wrote));
        eprintln!("read_only={ro}: woke {latency:?} after the write ({line})");
        assert!(line.ends_with(&format!("version={}", m.version())));
        assert!(latency < Duration::from_millis(50), "{latency:?}");
    }
}

#[test]
fn waiting_times_out_and_writes_without_waiters_make_no_wake_calls() {
    let _serial = serial();
    let c = Cleanup::new("notify-timeout");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let v = m.version();
    let t = Instant::now();
    assert_eq!(
        m.wait_for_change(v, Duration::from_millis(120)).unwrap(),
        None
    );
    assert!(t.elapsed() >= Duration::from_millis(120) && t.elapsed() < Duration::from_secs(2));
    // A version already past `since` returns at once.
    m.insert(b"k", b"v").unwrap();
    assert_eq!(
        m.wait_for_change(v, Duration::from_secs(5)).unwrap(),
        Some(v + 1)
    );

    // Nobody waits: no FUTEX_WAKE at all.
    let before = futex_wakes();
    for i in 0..1000u32 {
        m.insert(&i.to_le_bytes(), b"x").unwrap();
    }
    assert_eq!(
        futex_wakes(),
        before,
        "writes without waiters must not wake"
    );

    // Somebody waits (in a thread of this process): the next write wakes it.
    let other = RawMap::open(&c.name, &c.opts).unwrap();
    let other = &other;
    std::thread::scope(|s| {
        let since = other.version();
        let h = s.spawn(move || {
            other
                .wait_for_change(since, Duration::from_secs(10))
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(100));
        m.insert(b"wake", b"up").unwrap();
        assert_eq!(h.join().unwrap(), Some(since + 1));
    });
    assert!(futex_wakes() > before);
}

/// A sleeper killed by SIGKILL does not leave the root counting it: the
/// first write after its death wakes nobody, reaps its count, and later
/// writes make no wake system call.
#[test]
fn a_sleeper_killed_while_waiting_stops_costing_writers_wake_calls() {
    let _serial = serial();
    if role().as_deref() == Some("sleeper") {
        let ro = std::env::var("READ_ONLY").is_ok();
        let m = RawMap::open(&arg("MAP"), &Options::new().read_only(ro)).unwrap();
        println!("RESULT ready");
        // Sleeps again after each wake-up, until killed.
        loop {
            let _ = m.wait_for_change(m.version(), Duration::from_secs(60));
        }
    }
    let c = Cleanup::new("notify-killed");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let test = "a_sleeper_killed_while_waiting_stops_costing_writers_wake_calls";
    for ro in [false, true] {
        let mut env = vec![("MAP", c.name.clone())];
        if ro {
            env.push(("READ_ONLY", "1".into()));
        }
        let mut child = KillOnDrop(Some(spawn(test, "sleeper", &env)));
        await_result(child.0.as_mut().unwrap(), "ready");
        std::thread::sleep(Duration::from_millis(200));
        // The sleeper is registered: a write wakes it (one wake call).
        let before = futex_wakes();
        m.insert(b"first", b"x").unwrap();
        assert_eq!(futex_wakes() - before, 1, "read_only={ro}: not registered");
        std::thread::sleep(Duration::from_millis(100));
        let mut c = child.0.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        let before = futex_wakes();
        for i in 0..100u32 {
            m.insert(&i.to_le_bytes(), b"x").unwrap();
        }
        let wakes = futex_wakes() - before;
        assert!(
            wakes <= 1,
            "read_only={ro}: 100 writes after the only sleeper died made {wakes} wake calls"
        );
    }
}

/// A writer killed right after its commit (before applying anything) does
/// not leave sleepers asleep: they wake at once and see the new version,
/// whose after state every read returns.
#[test]
fn sleepers_wake_when_a_writer_dies_after_its_commit() {
    let _serial = serial();
    if role().as_deref() == Some("crasher") {
        let m = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
        shmkv::__private::arm(shmkv::__private::CrashPoint::AfterCommit, 0);
        let _ = m.insert(b"k", b"after");
        return;
    }
    let c = Cleanup::new("notify-crash");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"k", b"before").unwrap();
    let since = m.version();
    let test = "sleepers_wake_when_a_writer_dies_after_its_commit";
    let other = RawMap::open(&c.name, &c.opts).unwrap();
    let other = &other;
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let v = other.wait_for_change(since, Duration::from_secs(10));
            (v, monotonic_ns())
        });
        std::thread::sleep(Duration::from_millis(100));
        let (status, _) = results(spawn(test, "crasher", &[("MAP", c.name.clone())]));
        let died = monotonic_ns();
        assert!(!status.success(), "the writer must die");
        let (v, woke) = h.join().unwrap();
        assert_eq!(v.unwrap(), Some(since + 1));
        let late = Duration::from_nanos(woke.saturating_sub(died));
        assert!(
            late < Duration::from_millis(100),
            "woke {late:?} after the crash"
        );
    });
    assert_eq!(m.get(b"k").unwrap().as_deref(), Some(&b"after"[..]));
}

/// `wait_for_change` notices `destroy`: read-write sleepers are woken at
/// once, read-only ones at their next poll, and both get `NotFound`; writes
/// through a handle of the destroyed map name it.
#[test]
fn waiters_of_a_destroyed_map_get_not_found() {
    let _serial = serial();
    let c = Cleanup::new("notify-destroy");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let rw = RawMap::open(&c.name, &c.opts).unwrap();
    let ro = RawMap::open(&c.name, &c.opts.clone().read_only(true)).unwrap();
    let since = m.version();
    std::thread::scope(|s| {
        let waiters: Vec<_> = [&rw, &ro]
            .into_iter()
            .map(|h| {
                s.spawn(move || {
                    let r = h.wait_for_change(since, Duration::from_secs(10));
                    (r, monotonic_ns())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let destroyed = monotonic_ns();
        m.destroy().unwrap();
        for (what, w) in ["read-write", "read-only"].into_iter().zip(waiters) {
            let (r, woke) = w.join().unwrap();
            assert!(
                matches!(&r, Err(shmkv::Error::NotFound { name }) if *name == c.name),
                "{what}: {r:?}"
            );
            let late = Duration::from_nanos(woke.saturating_sub(destroyed));
            assert!(
                late < Duration::from_millis(100),
                "{what} woke {late:?} after destroy"
            );
        }
    });
    let e = rw.insert(b"k", b"v").unwrap_err();
    assert!(
        matches!(&e, shmkv::Error::NotFound { name } if *name == c.name),
        "{e:?}"
    );
}

/// Voluntary context switches of the calling thread so far.
fn voluntary_switches() -> i64 {
    // SAFETY: rusage is plain old data; all-zero is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
    ru.ru_nvcsw
}

/// A read-only handle sleeps in the kernel: it registers through a
/// writable mapping of the root (it may write it: same user), so it makes
/// no periodic wake-ups beyond the 500 ms safety net, and a write wakes it
/// at once through the futex.
#[test]
fn a_read_only_waiter_sleeps_in_the_kernel_and_is_woken() {
    let _serial = serial();
    let c = Cleanup::new("ro-sleep");
    let w = RawMap::create(&c.name, &Options::new()).unwrap();
    let ro = RawMap::open(&c.name, &Options::new().read_only(true)).unwrap();
    let since = ro.version();
    let (switches, r) = std::thread::scope(|s| {
        s.spawn(|| {
            let before = voluntary_switches();
            let r = ro.wait_for_change(since, Duration::from_millis(1500));
            (voluntary_switches() - before, r)
        })
        .join()
        .unwrap()
    });
    assert_eq!(r.unwrap(), None);
    assert!(switches < 20, "{switches} wake-ups in 1.5 s of waiting");
    let wakes = futex_wakes();
    let (took, r) = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let t = Instant::now();
            let r = ro.wait_for_change(since, Duration::from_secs(5));
            (t.elapsed(), r)
        });
        std::thread::sleep(Duration::from_millis(100));
        w.insert(b"k", b"v").unwrap();
        waiter.join().unwrap()
    });
    assert_eq!(r.unwrap(), Some(w.version()));
    assert!(took < Duration::from_millis(400), "woke after {took:?}");
    assert!(futex_wakes() > wakes, "the writer made no wake call");
}
