#![allow(unreachable_pub)]
//! The read path makes no system call: a forked child puts itself under
//! seccomp's strict mode (only `read`, `write`, `_exit` and `sigreturn`
//! are allowed; any other system call kills it with SIGKILL) and then runs
//! `get_ref`, `contains_key` and `len` thousands of times, hits and misses.

mod common;

use common::Cleanup;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use shmkv::RawMap;

/// Runs `reads` in a forked child under seccomp strict mode; the child's
/// exit status.
fn under_strict_seccomp(m: &RawMap, reads: impl Fn(&RawMap) -> bool) -> WaitStatus {
    // SAFETY: the child runs map reads and ends with the raw exit system
    // call, without returning into the test harness.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // Warm up outside the filter: the child's first pin handles
            // the fork (its process-local state), which may make calls.
            let ok = reads(m);
            // SAFETY: prctl with integer arguments.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_STRICT as libc::c_ulong,
                )
            };
            let code = if rc != 0 {
                3
            } else if !ok {
                2
            } else if reads(m) {
                0
            } else {
                1
            };
            // SAFETY: `exit` (not `exit_group`, which strict mode forbids).
            unsafe { libc::syscall(libc::SYS_exit, code) };
            unreachable!()
        }
        ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
    }
}

#[test]
fn gets_contains_and_len_make_no_system_call() {
    let c = Cleanup::new("read-syscalls");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    for i in 0..1000u32 {
        m.insert(format!("k{i}").as_bytes(), &i.to_le_bytes())
            .unwrap();
    }
    // Keys made before the filter: the loop itself allocates nothing.
    let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| format!("k{i}").into_bytes()).collect();
    let missing: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| format!("missing{i}").into_bytes())
        .collect();
    let reads = |m: &RawMap| {
        let mut ok = true;
        for _ in 0..20 {
            for (i, (k, absent)) in (0u32..).zip(keys.iter().zip(&missing)) {
                ok &= matches!(m.get_ref(k), Ok(Some(v)) if *v == i.to_le_bytes());
                ok &= !m.contains_key(absent).unwrap_or(true);
            }
            ok &= m.len() == 1000;
        }
        ok
    };
    let status = under_strict_seccomp(&m, reads);
    assert_eq!(
        status,
        WaitStatus::Exited(nix::unistd::Pid::from_raw(pid_of(&status)), 0),
        "SIGKILL: a read made a system call; exit 1/2: wrong values; 3: no seccomp"
    );
    // The check itself: one system call in the loop is caught.
    let status = under_strict_seccomp(&m, |m| {
        // SAFETY: a plain system call.
        unsafe { libc::getppid() };
        m.contains_key(b"k1").unwrap_or(false)
    });
    assert!(
        matches!(status, WaitStatus::Signaled(_, Signal::SIGKILL, _)),
        "a system call under strict seccomp was not caught: {status:?}"
    );
    m.destroy().unwrap();
}

fn pid_of(status: &WaitStatus) -> i32 {
    status.pid().map_or(0, |p| p.as_raw())
}
