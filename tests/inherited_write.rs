#![allow(unreachable_pub)]
//! A batch open across `fork()`: the child inherits the `RawTxn` object
//! (a C, PHP or Python binding hands it out as a handle) but not the lock
//! (the kernel does not copy `SEM_UNDO` adjustments), while the batch's
//! staged records and its unpublished generation live in shared memory.
//! The child may neither stage into it nor commit it, and ending it there
//! must release nothing of the parent's (`Error::InheritedWrite`).

mod common;

use std::os::fd::AsRawFd;
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

/// Retries a write of the child's own until the parent releases the lock
/// (each try waits up to the 300 ms lock timeout).
fn own_write_when_free(m: &RawMap, key: &[u8]) -> shmkv::Result<()> {
    for _ in 0..60 {
        match m.insert(key, b"own") {
            Err(Error::LockTimeout { .. }) => continue,
            r => return r,
        }
    }
    m.insert(key, b"own")
}

/// A `write` closure that forks after its batch moved to a new generation:
/// the parent's batch commits whole; the child (still inside its copy of
/// the closure) writes on its own once the parent released the lock, and
/// its copy of the closure's batch then fails to commit with
/// `InheritedWrite`, leaving the parent's data and its own write alone.
#[test]
fn a_child_forked_inside_a_write_closure_writes_its_own_after_the_parent() {
    const N: u32 = 2000;
    let c = Cleanup::with("inherit-closure", opts());
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let value = [9u8; 200];
    let mut child_pid = None;
    let r = m.write(|b| {
        for i in 0..N {
            b.insert(format!("k{i}").as_bytes(), &value)?;
        }
        // SAFETY: the child only makes map calls and `_exit`s.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Parent { child } => {
                child_pid = Some(child);
                Ok(())
            }
            ForkResult::Child => {
                // SAFETY: plain integer argument; a hung child dies.
                unsafe { libc::alarm(30) };
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if !matches!(
                        b.insert(b"staged-by-child", b"x"),
                        Err(Error::InheritedWrite { .. })
                    ) {
                        return 1;
                    }
                    // Nested in the closure's copy: not `NestedWrite` (the
                    // mark is the parent's), it waits for the parent.
                    if own_write_when_free(&m, b"child-own").is_err() {
                        return 2;
                    }
                    if m.get(b"k1999").unwrap().as_deref() != Some(&value[..]) {
                        return 3;
                    }
                    // A second own write (the guard of the first released
                    // its lock and cleared its mark).
                    if m.insert(b"child-own-2", b"y").is_err() {
                        return 4;
                    }
                    0
                }))
                .unwrap_or(99);
                if code != 0 {
                    // SAFETY: ends the child without the parent's destructors.
                    unsafe { libc::_exit(code) };
                }
                // Leave the closure: the outer write must fail to commit.
                Err(Error::InheritedWrite { owner_pid: 0 })
            }
        }
    });
    if child_pid.is_none() {
        // The child, back from its copy of the closure: `r` is the error
        // we returned; check the write's own commit path too.
        let code = match m.write(|b| b.insert(b"child-own-3", b"z")) {
            Ok(()) if r.is_err() => 0,
            _ => 5,
        };
        // SAFETY: ends the child without the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    r.unwrap();
    let code = match waitpid(child_pid.unwrap(), None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child ended with {other:?}"),
    };
    assert_eq!(
        code, 0,
        "child: 1 staged into the parent's batch, 2 own write failed, 3 parent's \
         write not whole, 4 second own write failed, 5 third write"
    );
    assert_eq!(m.len(), N as usize + 3);
    assert_eq!(m.get(b"staged-by-child").unwrap(), None);
    assert_eq!(m.get(b"child-own-3").unwrap().as_deref(), Some(&b"z"[..]));
    assert!(m.verify().unwrap().is_ok());
    assert!(m.stats().unwrap().stale_segments.is_empty());
    m.destroy().unwrap();
}

/// Forks a child that runs `child` and exits with its result; returns its
/// pid (the caller waits with `wait_code`).
fn spawn_child(child: impl FnOnce() -> i32) -> nix::unistd::Pid {
    // SAFETY: the child runs `child` (map calls only) and `_exit`s.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // SAFETY: plain integer argument; a hung child dies.
            unsafe { libc::alarm(30) };
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(99);
            // SAFETY: ends the child without the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        ForkResult::Parent { child } => child,
    }
}

fn wait_code(pid: nix::unistd::Pid) -> i32 {
    match waitpid(pid, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child ended with {other:?}"),
    }
}

/// A grandchild forked while the child holds its own batch (begun after
/// the parent released the lock, on the thread whose stale mark is the
/// parent's) besides the parent's inherited one: both are inherited there
/// (the epoch moved on twice from the parent's, once from the child's),
/// and dropping them releases neither lock; the child's own batch then
/// commits whole.
#[test]
fn a_grandchild_inherits_both_the_parents_and_the_childs_batch() {
    let c = Cleanup::with("inherit-grand", opts());
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let other = RawMap::open(&c.name, &c.opts).unwrap();
    let mut parents = Some(m.begin().unwrap());
    parents.as_mut().unwrap().insert(b"parent", b"1").unwrap();
    let pid = spawn_child(|| {
        // The child's own batch, on the same map handle and thread as the
        // inherited one: it waits out the parent's lock.
        let mut own = loop {
            match m.begin() {
                Err(Error::LockTimeout { .. }) => continue,
                Ok(t) => break t,
                Err(_) => return 10,
            }
        };
        own.insert(b"child", b"2").unwrap();
        let mut own = Some(own);
        let code = in_child(|| {
            if !matches!(
                own.as_mut().unwrap().insert(b"grand", b"3"),
                Err(Error::InheritedWrite { .. })
            ) {
                return 1;
            }
            if !matches!(
                parents.as_mut().unwrap().insert(b"grand", b"3"),
                Err(Error::InheritedWrite { .. })
            ) {
                return 2;
            }
            drop(own.take());
            drop(parents.take());
            match other.insert(b"grand-own", b"4") {
                Err(Error::LockTimeout { .. }) => 0,
                Ok(()) => 3,
                Err(_) => 4,
            }
        });
        if code != 0 {
            return 20 + code;
        }
        // The inherited batch of the parent, dropped in the child: no
        // effect on the child's own lock.
        drop(parents.take());
        if other.insert(b"intruder", b"x").is_ok() {
            return 5;
        }
        match own.take().unwrap().commit() {
            Ok(()) => 0,
            Err(_) => 6,
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    parents.take().unwrap().commit().unwrap();
    let code = wait_code(pid);
    assert_eq!(
        code, 0,
        "10 child's begin failed; 21/22 grandchild staged into an inherited batch; \
         23 grandchild got a lock the child holds; 5 child's lock released by the \
         inherited drop; 6 child's commit failed"
    );
    assert_eq!(m.get(b"parent").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(m.get(b"child").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(m.get(b"grand").unwrap(), None);
    assert_eq!(m.get(b"grand-own").unwrap(), None);
    assert_eq!(m.get(b"intruder").unwrap(), None);
    assert!(m.verify().unwrap().is_ok());
    drop(other);
    drop(parents);
    m.destroy().unwrap();
}

/// The process that began a batch dies with it open (after it moved to a
/// new, unpublished generation) while a child it forked inside the batch
/// lives on: the child's copy of the batch stays inherited, and the
/// child's own write recovers the map (removes the dead writer's
/// unpublished generation) and goes in.
#[test]
fn a_child_recovers_after_the_parent_dies_inside_its_batch() {
    const N: u32 = 2000;
    let c = Cleanup::with("inherit-dead", opts());
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"before", b"0").unwrap();
    let (rd, wr) = nix::unistd::pipe().unwrap();
    let holder = spawn_child(|| {
        let mut t = m.begin().unwrap();
        for i in 0..N {
            t.insert(format!("k{i}").as_bytes(), &[5u8; 200]).unwrap();
        }
        let mut t = Some(t);
        let me = nix::unistd::getpid();
        let gc = spawn_child(|| {
            // Wait for the holder to die (SEM_UNDO then releases its lock):
            // this process is then reparented.
            while nix::unistd::getppid() == me {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !matches!(
                t.as_mut().unwrap().insert(b"x", b"y"),
                Err(Error::InheritedWrite { .. })
            ) {
                return 1;
            }
            drop(t.take());
            let r = match own_write_when_free(&m, b"grand-own") {
                Ok(()) => 0,
                Err(_) => 2,
            };
            let _ = nix::unistd::write(&wr, &[r as u8]);
            r
        });
        let _ = gc;
        // Die holding the lock and the unpublished generation.
        // SAFETY: ends the process without releasing anything.
        unsafe { libc::_exit(0) }
    });
    assert_eq!(wait_code(holder), 0);
    drop(wr);
    let mut b = [0xffu8; 1];
    let n = nix::unistd::read(rd.as_raw_fd(), &mut b).unwrap();
    assert_eq!(
        (n, b[0]),
        (1, 0),
        "grandchild: 1 staged into the dead writer's batch, 2 own write failed"
    );
    assert_eq!(m.get(b"grand-own").unwrap().as_deref(), Some(&b"own"[..]));
    assert_eq!(
        m.get(b"k0").unwrap(),
        None,
        "the dead writer's batch applied"
    );
    assert_eq!(m.len(), 2);
    let s = m.stats().unwrap();
    assert!(s.stale_segments.is_empty());
    assert_eq!(s.generation, 1);
    assert!(m.verify().unwrap().is_ok());
    m.destroy().unwrap();
}
