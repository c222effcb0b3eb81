//! Unit tests of the generation manager: the barrier choice, pins under
//! contention (with membarrier and with the fence fallback), reuse of exited
//! threads' records, [`ForkLock`] exclusion, and a `fork` while locks and
//! pins are held.

use super::barrier::{barrier_mode, choose_barrier, BarrierMode, FORCE_FENCE_ENV};
use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize as StdUsize, Ordering as O};
use std::time::Duration;

/// Test sizes: Miri interprets every step (and checks each access for data
/// races and use after free), so under Miri the loops are short.
const INSTALLS: u64 = if cfg!(miri) { 300 } else { 2000 };
/// Lock rounds per thread in [`fork_lock_excludes`].
const LOCKS: usize = if cfg!(miri) { 200 } else { 2000 };
/// Thread births in [`exited_threads_records_are_reused`].
const BIRTHS: u64 = if cfg!(miri) { 20 } else { 50 };

/// A stand-in generation.
struct D(u64);

impl Numbered for D {
    fn number(&self) -> u64 {
        self.0
    }
}

impl Drop for D {
    fn drop(&mut self) {
        // SAFETY: a valid, exclusively borrowed u64; volatile so that
        // the poison is written although the memory is freed next.
        unsafe { std::ptr::write_volatile(&mut self.0, u64::MAX) };
    }
}

#[test]
fn a_failed_membarrier_registration_selects_the_fence() {
    let offered = libc::c_long::from(crate::sys::membarrier::PRIVATE_EXPEDITED | 1);
    assert_eq!(
        choose_barrier(false, offered, || 0),
        BarrierMode::Membarrier
    );
    assert_eq!(choose_barrier(false, offered, || -1), BarrierMode::Fence);
    assert_eq!(
        choose_barrier(true, offered, || panic!("forced: no registration")),
        BarrierMode::Fence
    );
    assert_eq!(
        choose_barrier(false, -1, || panic!("not offered: no registration")),
        BarrierMode::Fence
    );
    assert_eq!(
        choose_barrier(false, 1, || panic!("not offered: no registration")),
        BarrierMode::Fence
    );
}

/// Pins, installs and reclaims from several threads; every generation a
/// pin returns stays intact until the pin drops.
fn hammer(gens: &Gens<D>) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(O::Relaxed) {
                    let p = gens.pin();
                    let g = p.current();
                    let n = g.0;
                    let q = gens.pin();
                    assert!(q.current().0 >= n);
                    drop(q);
                    let h = p.current();
                    std::thread::yield_now();
                    // Still intact (a reclaimed D is poisoned first).
                    assert_eq!((g.0, h.0 >= n), (n, true));
                }
            });
        }
        for n in 2..INSTALLS {
            let _g = gens.lock_switch();
            gens.install(Box::new(D(n)));
        }
        stop.store(true, O::Relaxed);
    });
    // An unpin racing with the last install's reclaim may have been
    // missed by it (no fence on unpin); the next reclaim frees it.
    gens.reclaim();
    assert_eq!(gens.mapped(), 1);
}

/// Runs `test` in a child process of this test binary with `env`.
fn rerun(test: &str, env: (&str, &str)) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(env.0, env.1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{test} failed in the child: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

/// Under Miri the fence is the only mode (`sys::membarrier` answers as a
/// kernel without it), so the test runs in place: Miri cannot spawn the
/// child process that forcing the mode needs otherwise.
#[test]
fn the_fence_fallback_pins_correctly() {
    if !cfg!(miri) && std::env::var_os(FORCE_FENCE_ENV).is_none() {
        rerun(
            "raw::gens::tests::the_fence_fallback_pins_correctly",
            (FORCE_FENCE_ENV, "1"),
        );
        return;
    }
    assert_eq!(barrier_mode(), BarrierMode::Fence);
    hammer(&Gens::new(Box::new(D(1))));
}

#[test]
fn pins_hold_under_contention() {
    hammer(&Gens::new(Box::new(D(1))));
}

#[test]
fn exited_threads_records_are_reused() {
    let gens = std::sync::Arc::new(Gens::new(Box::new(D(1))));
    for n in 0..BIRTHS {
        // `join` returns after the thread's thread-locals are destroyed.
        let g = gens.clone();
        std::thread::spawn(move || drop(g.pin())).join().unwrap();
        gens.install(Box::new(D(n + 2)));
    }
    assert!(gens.records().count() <= 2, "{}", gens.records().count());
    assert_eq!(gens.mapped(), 1);
}

#[test]
fn fork_lock_excludes() {
    let lock = ForkLock::default();
    let n = StdUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..LOCKS {
                    let _g = lock.lock();
                    let v = n.load(O::Relaxed);
                    std::hint::spin_loop();
                    n.store(v + 1, O::Relaxed);
                }
            });
        }
    });
    assert_eq!(n.load(O::Relaxed), 4 * LOCKS);
}

/// A fork while one thread of the parent holds the switch and reclaim
/// locks and another is pinned: the child takes both locks, reclaims
/// past the stale pin and exits; a hang is ended by SIGALRM.
#[test]
#[cfg_attr(miri, ignore = "Miri does not support fork")]
fn a_fork_child_does_not_inherit_held_locks_or_pins() {
    let gens = Gens::new(Box::new(D(1)));
    let held = StdUsize::new(0);
    let release = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let _a = gens.lock_switch();
            let _b = gens.reclaiming.lock();
            held.fetch_add(1, O::SeqCst);
            while !release.load(O::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        s.spawn(|| {
            let p = gens.pin();
            held.fetch_add(1, O::SeqCst);
            while !release.load(O::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(p.current().0, 1);
        });
        while held.load(O::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: the child only uses `gens` (and the allocator, which
        // glibc makes fork-safe) and then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain integer argument.
            unsafe { libc::alarm(10) };
            let mut code = 0;
            for n in 2..22 {
                let _g = gens.lock_switch();
                gens.install(Box::new(D(n)));
                if gens.mapped() > 1 {
                    code = 1;
                }
            }
            // SAFETY: ends the child without unwinding into the harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        release.store(true, O::SeqCst);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child: exited {} with {}, signal {}",
            libc::WIFEXITED(status),
            libc::WEXITSTATUS(status),
            libc::WTERMSIG(status)
        );
    });
}

/// A pin is two words (DESIGN.md "Reclamation": a bigger pin is copied through the
/// stack in pieces that stall store-to-load forwarding on every read).
#[test]
fn a_pin_is_two_words() {
    assert_eq!(
        std::mem::size_of::<Pin<'_, D>>(),
        2 * std::mem::size_of::<usize>()
    );
}

/// A pin that followed `current` (further holds, boxed) keeps every
/// generation it returned, so does its clone, and both release them all.
#[test]
fn a_pin_that_followed_current_keeps_and_releases_every_generation() {
    let gens = Gens::new(Box::new(D(1)));
    let install = |n| {
        let _s = gens.lock_switch();
        gens.install(Box::new(D(n)));
    };
    let p = gens.pin();
    assert_eq!(p.current_held().map(|g| g.0), Some(1));
    let g1 = p.current();
    install(2);
    assert!(p.current_held().is_none(), "current moved");
    let g2 = p.current();
    assert_eq!(p.current_held().map(|g| g.0), Some(2));
    assert_eq!((g1.0, g2.0), (1, 2));
    let q = p.clone();
    install(3);
    drop(p);
    // `q` still holds 1 and 2; 3 is current.
    assert_eq!(gens.mapped(), 3);
    assert_eq!(q.current().0, 3);
    let r = q.clone();
    drop(q);
    assert_eq!(gens.mapped(), 3);
    assert_eq!(r.current_held().map(|g| g.0), Some(3));
    drop(r);
    gens.reclaim();
    assert_eq!(gens.mapped(), 1);
}

/// The first `Gens::new` of a process registers the fork handler; another
/// thread's map opened while that registration is under way must not
/// begin a batch that a child then takes for its own (the child's epoch
/// would not move). Runs in a fresh process (the test binary re-executed),
/// whose first registration is held paused by a hook.
#[test]
#[cfg_attr(miri, ignore = "fork and re-exec")]
fn a_map_opened_while_the_first_registration_runs_sees_forks() {
    const ROLE: &str = "SHMKV_UNIT_ROLE_REGISTRATION";
    let name = "raw::gens::tests::a_map_opened_while_the_first_registration_runs_sees_forks";
    if std::env::var_os(ROLE).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(ROLE, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("RESULT ok"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    use crate::raw::provider::HeapKernel;
    use crate::Options;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    fork::PAUSE_REGISTRATION.store(1, O::SeqCst);
    let k = HeapKernel::new();
    std::thread::scope(|s| {
        // The process's first map: its registration pauses.
        s.spawn(|| drop(Gens::<D>::new(Box::new(D(1)))));
        while fork::PAUSE_REGISTRATION.load(O::SeqCst) != 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let m = k.create("reg", &Options::new().capacity(4)).unwrap();
        let mut t = Some(m.begin().unwrap());
        t.as_mut().unwrap().insert(b"parent", b"1").unwrap();
        // SAFETY: the child only stages into the inherited batch and
        // `_exit`s.
        let st = match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = match t.as_mut().unwrap().insert(b"child", b"2") {
                    Err(crate::Error::InheritedWrite { .. }) => 0,
                    _ => 1,
                };
                // SAFETY: ends the child without the parent's destructors.
                unsafe { libc::_exit(code) };
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        };
        fork::PAUSE_REGISTRATION.store(0, O::SeqCst);
        t.take().unwrap().commit().unwrap();
        assert_eq!(
            st,
            WaitStatus::Exited(st.pid().unwrap(), 0),
            "exit 1: the child staged into its parent's batch (its fork \
             epoch did not move: no handler registered yet)"
        );
    });
    println!("RESULT ok");
}
