//! Process-local memory safety of pins and reclamation (DESIGN.md
//! "Reclamation"): a `Ref` that outlives the library's thread-local, the
//! bound on mapped generations under a long-held `Ref`, and `fork`.
#![allow(unreachable_pub)]

mod common;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{arg, results, role, spawn, Cleanup, KillOnDrop};
use shmkv::{Options, RawMap, Ref};

/// Runs `test` in a child in `role` (so that a crash fails the test rather
/// than the runner) and expects it to print `RESULT ok` within `limit`.
fn run_child(test: &str, role: &str, env: &[(&str, String)], limit: Duration) {
    let mut child = KillOnDrop(Some(spawn(test, role, env)));
    let start = Instant::now();
    loop {
        if child.0.as_mut().unwrap().try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "child {role} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, lines) = results(child.0.take().unwrap());
    assert!(
        status.success(),
        "child {role} failed: {status} (a signal here is a crash)"
    );
    assert_eq!(lines, vec!["ok".to_string()], "child {role}");
}

fn spin_until(flag: &AtomicUsize, at_least: usize) {
    let start = Instant::now();
    while flag.load(Ordering::SeqCst) < at_least {
        assert!(start.elapsed() < Duration::from_secs(20), "stuck waiting");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// --- item 1: a Ref in a thread-local destroyed after the library's -------

static STAGE: AtomicUsize = AtomicUsize::new(0);
static BYTES_OK: AtomicBool = AtomicBool::new(false);
static MAP: std::sync::OnceLock<&'static RawMap> = std::sync::OnceLock::new();

/// Kept in a user thread-local; its destructor runs after the library's
/// thread-local (registered later) was destroyed.
struct Holder {
    r: Ref<'static, [u8]>,
    want: Vec<u8>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        // The library's thread-local is gone now. Let another thread
        // compact while we still hold the Ref.
        STAGE.store(1, Ordering::SeqCst);
        spin_until(&STAGE, 2);
        // Reading the bytes: a detached generation would fault here.
        BYTES_OK.store(*self.r == self.want[..], Ordering::SeqCst);
        // A new read from a thread-local destructor also works (a record of
        // its own, not the destroyed thread-local's).
        let again = MAP.get().unwrap().get(b"k").unwrap();
        assert_eq!(again.as_deref(), Some(&b"new value"[..]));
        // `self.r` drops after this: the last unpin of this thread.
    }
}

thread_local! {
    static HOLD: RefCell<Option<Holder>> = const { RefCell::new(None) };
}

#[test]
fn a_ref_in_a_thread_local_outlives_the_library_thread_local() {
    let test = "a_ref_in_a_thread_local_outlives_the_library_thread_local";
    if role().as_deref() != Some("tls") {
        let c = Cleanup::new("tls");
        run_child(
            test,
            "tls",
            &[("MAP", c.name.clone())],
            Duration::from_secs(60),
        );
        return;
    }
    let m: &'static RawMap = Box::leak(Box::new(
        RawMap::create(&arg("MAP"), &Options::new()).unwrap(),
    ));
    MAP.set(m).unwrap();
    m.insert(b"k", b"the value the Ref holds").unwrap();
    let t = std::thread::spawn(move || {
        // Register the user thread-local first: it is destroyed last.
        HOLD.with(|h| assert!(h.borrow().is_none()));
        let r = m.get_ref(b"k").unwrap().unwrap();
        let want = r.to_vec();
        HOLD.with(|h| *h.borrow_mut() = Some(Holder { r, want }));
    });
    spin_until(&STAGE, 1);
    // Another thread (new to the map, so it registers a record) writes and
    // compacts while the exited thread's Ref lives.
    let mapped = std::thread::spawn(move || {
        m.insert(b"k", b"new value").unwrap();
        let mut mapped = Vec::new();
        for _ in 0..20 {
            m.compact().unwrap();
            mapped.push(m.stats().unwrap().mapped_generations);
        }
        mapped
    })
    .join()
    .unwrap();
    STAGE.store(2, Ordering::SeqCst);
    t.join().unwrap();
    assert!(BYTES_OK.load(Ordering::SeqCst), "the Ref's bytes changed");
    // The held generation stayed mapped (current + held) throughout.
    assert!(
        mapped.iter().all(|&n| n == 2),
        "mapped generations while the Ref lived: {mapped:?}"
    );
    // Its last unpin released it.
    assert_eq!(m.stats().unwrap().mapped_generations, 1);
    println!("RESULT ok");
}

// --- item 3: one long-held Ref does not keep later generations -----------

#[test]
fn one_held_ref_keeps_only_its_own_generation() {
    let c = Cleanup::new("held");
    let m = RawMap::create(&c.name, &Options::new()).unwrap();
    m.insert(b"held", b"the original bytes").unwrap();
    let r = m.get_ref(b"held").unwrap().unwrap();
    for i in 0..50u32 {
        m.insert(b"held", format!("version {i}").as_bytes())
            .unwrap();
        if i % 2 == 0 {
            m.compact().unwrap();
        } else {
            // From another thread of the process, too.
            std::thread::scope(|s| {
                s.spawn(|| m.compact().unwrap());
            });
        }
        let mapped = m.stats().unwrap().mapped_generations;
        assert!(
            mapped <= 2,
            "{mapped} generations mapped after {} compactions",
            i + 1
        );
        assert_eq!(&*r, b"the original bytes");
    }
    assert_eq!(m.stats().unwrap().generation, 51);
    drop(r);
    assert_eq!(m.stats().unwrap().mapped_generations, 1);
    m.destroy().unwrap();
}

/// Nested pins of one thread on different generations: Refs into 9
/// generations (more than one pin record's slots) plus reads of the
/// current one; each Ref keeps exactly its generation.
#[test]
fn refs_into_many_generations_of_one_thread() {
    let c = Cleanup::new("nested");
    let m = RawMap::create(&c.name, &Options::new()).unwrap();
    let mut held = Vec::new();
    for i in 0..9u32 {
        m.insert(b"k", format!("v{i}").as_bytes()).unwrap();
        held.push(m.get_ref(b"k").unwrap().unwrap());
        m.compact().unwrap();
        assert_eq!(
            m.stats().unwrap().mapped_generations,
            held.len() + 1,
            "current + one per held Ref"
        );
    }
    // Drop every other one: exactly those generations go.
    let mut i = 0;
    held.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    m.get(b"k").unwrap();
    assert_eq!(m.stats().unwrap().mapped_generations, held.len() + 1);
    for (j, r) in held.iter().enumerate() {
        assert_eq!(&**r, format!("v{}", 2 * j + 1).as_bytes());
    }
    drop(held);
    assert_eq!(m.stats().unwrap().mapped_generations, 1);
    m.destroy().unwrap();
}

// --- item 4: fork ----------------------------------------------------------

#[test]
fn a_forked_child_is_not_blocked_by_the_parent_s_threads() {
    let test = "a_forked_child_is_not_blocked_by_the_parent_s_threads";
    if role().as_deref() != Some("forker") {
        let c = Cleanup::new("fork");
        run_child(
            test,
            "forker",
            &[("MAP", c.name.clone())],
            Duration::from_secs(60),
        );
        return;
    }
    let m = RawMap::create(&arg("MAP"), &Options::new()).unwrap();
    m.insert(b"k", b"v").unwrap();
    let stop = AtomicBool::new(false);
    let pinned = AtomicUsize::new(0);
    std::thread::scope(|s| {
        // A thread of the parent pinned (holding a Ref) at fork time.
        s.spawn(|| {
            let r = m.get_ref(b"k").unwrap().unwrap();
            pinned.store(1, Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(&*r, b"v");
        });
        // A thread of the parent switching generations (taking and
        // releasing the switch lock) at fork time.
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                m.compact().unwrap();
            }
        });
        spin_until(&pinned, 1);
        // Stop the threads also if an assertion below fails.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = Stop(&stop);
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(7));
            // SAFETY: the child only uses the map and then `_exit`s.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    // SAFETY: plain integer argument; kills a hung child.
                    unsafe { libc::alarm(20) };
                    let code = (|| {
                        for _ in 0..20 {
                            if m.compact().is_err() {
                                return 2;
                            }
                            if m.stats().unwrap().mapped_generations > 2 {
                                return 1;
                            }
                        }
                        if m.insert(b"child", b"wrote").is_err() {
                            return 3;
                        }
                        match m.get(b"child") {
                            Ok(Some(v)) if v == b"wrote" => 0,
                            _ => 4,
                        }
                    })();
                    // SAFETY: ends the child without running the parent's
                    // destructors or test harness.
                    unsafe { libc::_exit(code) };
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let status = nix::sys::wait::waitpid(child, None).unwrap();
                    assert_eq!(
                        status,
                        nix::sys::wait::WaitStatus::Exited(child, 0),
                        "forked child failed (exit 1: a stale pin kept generations \
                         mapped; 2-4: compact/insert/get failed; SIGALRM: a lock \
                         held by a parent thread)"
                    );
                }
            }
        }
    });
    m.remove(b"child").unwrap();
    m.destroy().unwrap();
    println!("RESULT ok");
}

// --- the fence fallback ----------------------------------------------------

/// The whole flow with `SHMKV_PIN_FENCE=1` (a pin per `fence(SeqCst)`, as
/// when membarrier registration fails): readers against a compacting writer
/// in one process.
#[test]
fn pins_work_with_the_fence_fallback() {
    let test = "pins_work_with_the_fence_fallback";
    if role().as_deref() != Some("fence") {
        let c = Cleanup::new("fence");
        run_child(
            test,
            "fence",
            &[("MAP", c.name.clone()), ("SHMKV_PIN_FENCE", "1".into())],
            Duration::from_secs(120),
        );
        return;
    }
    let m = RawMap::create(&arg("MAP"), &Options::new()).unwrap();
    m.insert(b"k", b"0").unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let r = m.get_ref(b"k").unwrap().unwrap();
                    let n: u32 = std::str::from_utf8(&r).unwrap().parse().unwrap();
                    std::hint::black_box(n);
                }
            });
        }
        for i in 1..200u32 {
            m.insert(b"k", i.to_string().as_bytes()).unwrap();
            m.compact().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
    });
    // A reader's last unpin that raced with the last reclaim may have been
    // missed by it (the unpin has no fence); the next switch frees it.
    m.compact().unwrap();
    assert_eq!(m.stats().unwrap().mapped_generations, 1);
    m.destroy().unwrap();
    println!("RESULT ok");
}
