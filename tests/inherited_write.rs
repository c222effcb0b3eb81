#![allow(unreachable_pub)]
//! A batch open across `fork()`: the child inherits the `RawTxn` object
//! (a C, PHP or Python binding hands it out as a handle) but not the lock
//! (the kernel does not copy `SEM_UNDO` adjustments), while the batch's
//! staged records and its unpublished generation live in shared memory.
//! The child may neither stage into it nor commit it, and ending it there
//! must release nothing of the parent's (`Error::InheritedWrite`).

mod common;

use std::time::Duration;

use common::Cleanup;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use shmkv::{Error, Options, RawMap};

/// Runs `child` in a forked child, which exits with its result; returns
/// that exit code.
fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `child` (map calls only) and `_exit`s without
    // returning into the test harness.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // SAFETY: plain integer argument; a hung child dies.
            unsafe { libc::alarm(20) };
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(99);
            // SAFETY: ends the child without the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, code) => code,
            other => panic!("child ended with {other:?}"),
        },
    }
}

fn opts() -> Options {
    Options::new()
        .capacity(16)
        .lock_timeout(Duration::from_millis(300))
}

/// Whether the kernel has the segment marked for removal (`SHM_DEST`).
fn marked_for_removal(shmid: i32) -> bool {
    // SAFETY: `shmid_ds` is plain data; `shmctl(IPC_STAT)` fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer for IPC_STAT.
    let rc = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) };
    assert_eq!(
        rc,
        0,
        "IPC_STAT of {shmid}: {}",
        std::io::Error::last_os_error()
    );
    // SHM_DEST (Linux, <linux/shm.h>; not in the libc crate).
    const SHM_DEST: u32 = 0o1000;
    ds.shm_perm.mode as u32 & SHM_DEST != 0
}

#[test]
fn a_child_can_neither_stage_into_nor_commit_the_parents_batch() {
    let c = Cleanup::with("inherit-stage", opts());
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let mut slot = Some(m.begin().unwrap());
    slot.as_mut().unwrap().insert(b"parent", b"1").unwrap();
    let code = in_child(|| {
        let inherited = |r: shmkv::Result<()>| matches!(r, Err(Error::InheritedWrite { owner_pid }) if owner_pid != std::process::id());
        let t = slot.as_mut().unwrap();
        if !inherited(t.insert(b"child", b"x")) {
            return 1;
        }
        if !inherited(t.get(b"parent").map(drop)) {
            return 2;
        }
        if !inherited(slot.take().unwrap().commit()) {
            return 3;
        }
        // The lock is still the parent's: the child's own write waits.
        match m.insert(b"child-own", b"y") {
            Err(Error::LockTimeout { .. }) => 0,
            Ok(()) => 4,
            Err(_) => 5,
        }
    });
    assert_eq!(
        code, 0,
        "child: 1-3 staged, read or committed the parent's batch; \
         4 got the lock the parent holds; 5 another error"
    );
    // The parent's batch is intact and commits, with nothing of the child.
    slot.take().unwrap().commit().unwrap();
    assert_eq!(m.get(b"parent").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(m.get(b"child").unwrap(), None);
    assert_eq!(m.get(b"child-own").unwrap(), None);
    assert!(m.verify().unwrap().is_ok());
    drop(slot);
    m.destroy().unwrap();
}

#[test]
fn a_child_ending_the_parents_batch_releases_nothing_of_it() {
    const N: u32 = 2000;
    let c = Cleanup::with("inherit-end", opts());
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let other = RawMap::open(&c.name, &c.opts).unwrap();
    let mut slot = Some(m.begin().unwrap());
    // Enough for the batch to move to a new, unpublished generation.
    let value = [7u8; 200];
    for i in 0..N {
        let k = format!("k{i}");
        slot.as_mut().unwrap().insert(k.as_bytes(), &value).unwrap();
    }
    // The child drops (aborts) the batch it inherited, then writes through
    // another handle: the lock must still be the parent's (before: the
    // child's drop released the semaphore, and this write went through
    // while the parent was inside its batch).
    let code = in_child(|| {
        drop(slot.take());
        match other.insert(b"intruder", b"x") {
            Err(Error::LockTimeout { .. }) => 0,
            Ok(()) => 1,
            Err(_) => 2,
        }
    });
    assert_eq!(
        code, 0,
        "1: the child's write got the lock the parent holds"
    );
    match other.insert(b"intruder", b"x") {
        Err(Error::LockTimeout { .. }) => {}
        r => panic!("a write got the lock the parent holds: {r:?}"),
    }
    // The parent's batch commits whole, on a generation the child did not
    // remove (before: the child's drop marked it for removal).
    slot.take().unwrap().commit().unwrap();
    let stats = other.stats().unwrap();
    assert_eq!(stats.live, u64::from(N));
    assert!(
        stats.generation > 1,
        "the batch did not move to a new generation"
    );
    assert!(
        !marked_for_removal(stats.data_shmid),
        "the published generation was removed by the child"
    );
    assert_eq!(other.get(b"k1999").unwrap().as_deref(), Some(&value[..]));
    assert!(other.verify().unwrap().is_ok());
    drop(other);
    drop(slot);
    m.destroy().unwrap();
}
