//! Maps shared by several users (modes 0640/0660/0666): a writer who is not
//! the map's owner grows and compacts it; the write is reported as it
//! happened (committed = Ok), the new generation belongs to the map's owner
//! and group with the map's mode, and the old segment, which that writer may
//! not remove, is recorded in the root and removed by the next process that
//! may. Needs root (the test switches uids in child processes); skipped
//! otherwise.
#![allow(unreachable_pub)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::{arg, assert_removed, role, Cleanup, Segment};
use shmkv::__private::{data_offsets, root_offsets, DATA_MAGIC};
use shmkv::{Error, Options, RawMap};

/// uid/gid/mode of a segment (`IPC_STAT`), `None` if it is gone.
fn perms(shmid: i32) -> Option<(u32, u32, u32)> {
    // SAFETY: shmid_ds is plain data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid, writable shmid_ds.
    if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } != 0 {
        return None;
    }
    Some((
        ds.shm_perm.uid,
        ds.shm_perm.gid,
        u32::from(ds.shm_perm.mode) & 0o777,
    ))
}

/// Whether /proc/sysvipc/shm still lists `shmid`.
fn listed(shmid: i32) -> bool {
    common::sysv_segments().iter().any(|r| r.shmid == shmid)
}

/// Tests of this binary run one at a time: a child forked by one test holds
/// the parent's SysV attachments until its `exec`, which would make another
/// test's "segment removed" check see a segment still attached.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("not root: cannot switch uids; skipped");
    }
    root
}

/// Runs this test binary in `role` as `uid`/`gid` with supplementary
/// `groups`; returns its `RESULT` line.
fn run_as(test: &str, role: &str, name: &str, uid: u32, gid: u32, groups: &[u32]) -> String {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env("SHMKV_TEST_ROLE", role)
        .env("MAP", name)
        .stdout(Stdio::piped());
    // SAFETY: the closure only makes async-signal-safe system calls
    // (setgroups, setgid, setuid, in that order: the first two need root)
    // on a vector allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{role}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RESULT ").map(str::to_string))
        .unwrap_or_else(|| panic!("{role}: no RESULT line"))
}

fn outcome(r: Result<(), Error>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// In a child, as another user: compact only.
fn compactor_role() {
    let m = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
    let v = m.version();
    let r = m.compact();
    println!(
        "RESULT {} version_unchanged={}",
        match r {
            Ok(()) => "ok".to_string(),
            Err(Error::PermissionDenied { .. }) => "denied".to_string(),
            Err(e) => format!("{e:?}"),
        },
        m.version() == v
    );
}

/// In a child, as another user: compact, then grow with one batch.
fn writer_role() {
    let m = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
    let compact = outcome(m.compact());
    let grow = outcome(m.write(|b| {
        for k in 0..200u32 {
            b.insert(&k.to_le_bytes(), &[0x5a; 40])?;
        }
        Ok(())
    }));
    let len = m.len();
    println!("RESULT compact={compact} grow={grow} len={len}");
}

#[test]
fn another_user_grows_and_compacts_a_0666_map() {
    if role().as_deref() == Some("writer") {
        return writer_role();
    }
    let _serial = serial();
    if !is_root() {
        return;
    }
    let c = Cleanup::with(
        "mu0666",
        Options::new().mode(0o666).capacity(16).arena_size(4096u64),
    );
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"owner", b"wrote this").unwrap();
    let s0 = m.stats().unwrap();
    let root_perms = perms(s0.root_shmid).unwrap();
    assert_eq!(root_perms, (0, 0, 0o666));

    let out = run_as(
        "another_user_grows_and_compacts_a_0666_map",
        "writer",
        &c.name,
        65534,
        65534,
        &[],
    );
    // Both writes were committed, and are reported so.
    assert_eq!(out, "compact=ok grow=ok len=201");

    let s1 = m.stats().unwrap();
    assert!(s1.generation >= s0.generation + 2, "{s1:?}");
    assert_eq!(s1.live, 201);
    // The new generation belongs to the map's owner and group, with its mode.
    assert_eq!(perms(s1.data_shmid), Some(root_perms));
    // The old segment (root's) could not be removed by uid 65534: recorded.
    assert_eq!(s1.stale_segments, vec![s0.data_shmid]);
    assert!(perms(s0.data_shmid).is_some());
    // The CLI shows it: cli/tests/cli.rs `stat_and_verify_show_stale_segments`.
    // The owner's next write removes it.
    m.insert(b"owner", b"again").unwrap();
    let s2 = m.stats().unwrap();
    assert!(s2.stale_segments.is_empty(), "{s2:?}");
    assert!(!listed(s0.data_shmid), "stale segment still there");
    assert_eq!(m.get(b"owner").unwrap().unwrap(), b"again");
    assert_eq!(m.get(&7u32.to_le_bytes()).unwrap().unwrap(), [0x5a; 40]);
    m.destroy().unwrap();
    assert_removed(&s2);
}

/// In a child: read the map (read-only) and report.
fn reader_role() {
    let r = RawMap::open(&arg("MAP"), &Options::new().read_only(true))
        .and_then(|m| m.get(&3u32.to_le_bytes()).map(|v| v.map(|v| v.len())));
    println!("RESULT {r:?}");
}

const MAP_GROUP: u32 = 65534;

/// Sets the group of a segment (or, with `sem`, a semaphore set).
fn set_group(id: i32, sem: bool) {
    if sem {
        // SAFETY: semid_ds is plain data.
        let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: IPC_STAT/IPC_SET read and write a valid semid_ds.
        unsafe {
            assert_eq!(
                libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds),
                0
            );
            ds.sem_perm.gid = MAP_GROUP;
            assert_eq!(
                libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds),
                0
            );
        }
    } else {
        // SAFETY: shmid_ds is plain data.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: IPC_STAT/IPC_SET read and write a valid shmid_ds.
        unsafe {
            assert_eq!(libc::shmctl(id, libc::IPC_STAT, &mut ds), 0);
            ds.shm_perm.gid = MAP_GROUP;
            assert_eq!(libc::shmctl(id, libc::IPC_SET, &mut ds), 0);
        }
    }
}

#[test]
fn group_members_keep_access_after_another_members_growth() {
    match role().as_deref() {
        Some("writer") => return writer_role(),
        Some("reader") => return reader_role(),
        _ => {}
    }
    let _serial = serial();
    if !is_root() {
        return;
    }
    let test = "group_members_keep_access_after_another_members_growth";
    for mode in [0o660, 0o640] {
        let c = Cleanup::with(
            "mugroup",
            Options::new().mode(mode).capacity(16).arena_size(4096u64),
        );
        let m = RawMap::create(&c.name, &c.opts).unwrap();
        m.insert(b"owner", b"x").unwrap();
        let s0 = m.stats().unwrap();
        // The map belongs to group MAP_GROUP.
        set_group(s0.root_shmid, false);
        set_group(s0.data_shmid, false);
        set_group(s0.semid, true);

        // A writer whose primary group is another one, member of MAP_GROUP
        // through a supplementary group (0660 only: 0640 gives the group
        // no write access).
        if mode == 0o660 {
            let out = run_as(test, "writer", &c.name, 65533, 65532, &[MAP_GROUP]);
            assert_eq!(out, "compact=ok grow=ok len=201", "mode {mode:o}");
        } else {
            m.write(|b| {
                for k in 0..200u32 {
                    b.insert(&k.to_le_bytes(), &[0x5a; 40])?;
                }
                Ok(())
            })
            .unwrap();
        }
        let s1 = m.stats().unwrap();
        assert!(s1.generation > s0.generation);
        assert_eq!(perms(s1.data_shmid), Some((0, MAP_GROUP, mode)));

        // A member of the map's group (primary) reads the new generation.
        let out = run_as(test, "reader", &c.name, 65531, MAP_GROUP, &[]);
        assert_eq!(out, "Ok(Some(40))", "mode {mode:o}");

        m.insert(b"owner", b"y").unwrap();
        let s2 = m.stats().unwrap();
        assert!(s2.stale_segments.is_empty());
        m.destroy().unwrap();
        assert_removed(&s2);
    }
}

/// A root-owned segment that looks like a retired data segment of the map
/// (data magic, `owner` word), so that only its owner may remove it.
fn fake_retired_segment(owner: u64) -> i32 {
    let seg = Segment::create(libc::IPC_PRIVATE, 4096, 0o666);
    seg.write_u64(data_offsets::MAGIC, DATA_MAGIC);
    seg.write_u64(data_offsets::OWNER, owner);
    seg.id()
}

/// Writes the root's `stale` list (`STALE_SLOTS` words); no writer runs.
fn set_stale_list(root_shmid: i32, ids: &[i32]) {
    assert!(ids.len() <= root_offsets::STALE_SLOTS);
    let root = Segment::attach(root_shmid);
    for (i, id) in ids.iter().enumerate() {
        root.write_u64(root_offsets::STALE + 8 * i, *id as u64 + 1);
    }
}

#[test]
fn a_full_stale_list_refuses_the_move_before_committing() {
    if role().as_deref() == Some("compactor") {
        return compactor_role();
    }
    let _serial = serial();
    if !is_root() {
        return;
    }
    let c = Cleanup::with("mufull", Options::new().mode(0o666));
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"k", b"v").unwrap();
    let s0 = m.stats().unwrap();
    let owner = (u64::from(s0.key as u32) << 32) | u64::from(s0.root_shmid as u32);
    let fakes: Vec<i32> = (0..10).map(|_| fake_retired_segment(owner)).collect();
    set_stale_list(s0.root_shmid, &fakes);
    assert_eq!(m.stats().unwrap().stale_segments, fakes);

    // uid 65534 can remove none of them, nor the segment in force: the
    // compaction is refused before anything is committed.
    let out = run_as(
        "a_full_stale_list_refuses_the_move_before_committing",
        "compactor",
        &c.name,
        65534,
        65534,
        &[],
    );
    assert_eq!(out, "denied version_unchanged=true");
    let s1 = m.stats().unwrap();
    assert_eq!(s1.data_shmid, s0.data_shmid);
    assert_eq!(s1.stale_segments, fakes);

    // The owner's next write removes them all.
    m.insert(b"k", b"w").unwrap();
    assert!(m.stats().unwrap().stale_segments.is_empty());
    for id in &fakes {
        assert!(!listed(*id), "segment {id} left behind");
    }
    let s2 = m.stats().unwrap();
    m.destroy().unwrap();
    assert_removed(&s2);
}

/// Voluntary context switches of the calling thread so far.
fn voluntary_switches() -> i64 {
    // SAFETY: rusage is plain old data; all-zero is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
    ru.ru_nvcsw
}

/// The file by which the idle waiter of map `name` says its idle wait is
/// over (the parent writes only then, however late the child started).
fn idle_done_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}.idle-done"))
}

/// In a child, as another user who may only read the map: waits 1.5 s
/// with nothing written, then waits for the parent's write.
fn idle_waiter_role() {
    let m = RawMap::open(&arg("MAP"), &Options::new().read_only(true)).unwrap();
    let since = m.version();
    let before = voluntary_switches();
    assert_eq!(
        m.wait_for_change(since, std::time::Duration::from_millis(1500))
            .unwrap(),
        None
    );
    let switches = voluntary_switches() - before;
    std::fs::write(idle_done_file(&arg("MAP")), b"").unwrap();
    let t = std::time::Instant::now();
    let v = m
        .wait_for_change(since, std::time::Duration::from_secs(10))
        .unwrap();
    println!(
        "RESULT switches={switches} woke_ms={} changed={}",
        t.elapsed().as_millis(),
        v.is_some()
    );
}

/// Issue 16 item 6: a read-only waiter that may not write the root cannot
/// register as a sleeper. On a map made with `wake_every_write` it still
/// sleeps in the kernel (writers wake on every write); on a default map it
/// polls (the documented fallback).
#[test]
fn unprivileged_read_only_waiters_sleep_on_maps_that_wake_every_write() {
    const TEST: &str = "unprivileged_read_only_waiters_sleep_on_maps_that_wake_every_write";
    if role().as_deref() == Some("idle-waiter") {
        return idle_waiter_role();
    }
    if !is_root() {
        return;
    }
    let _serial = serial();
    let mut switches = Vec::new();
    for wake in [true, false] {
        let c = Cleanup::with("ro-idle", Options::new().mode(0o644));
        let m = RawMap::create(&c.name, &c.opts.clone().wake_every_write(wake)).unwrap();
        assert_eq!(m.stats().unwrap().wake_every_write, wake);
        let done = idle_done_file(&c.name);
        let _ = std::fs::remove_file(&done);
        let result = std::thread::scope(|s| {
            let child = s.spawn(|| run_as(TEST, "idle-waiter", &c.name, 65534, 65534, &[]));
            // Write once the child's 1.5 s of quiet are over (it may start
            // late on a loaded machine); it panics if the child died first.
            while !done.exists() {
                assert!(!child.is_finished(), "the idle waiter ended early");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            m.insert(b"k", b"v").unwrap();
            child.join().unwrap()
        });
        let _ = std::fs::remove_file(&done);
        eprintln!("wake_every_write={wake}: {result}");
        let field = |k: &str| -> i64 {
            result
                .split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
                .unwrap()
        };
        assert!(result.ends_with("changed=true"), "{result}");
        assert!(field("woke_ms") < 2000, "{result}");
        switches.push(field("switches"));
    }
    assert!(
        switches[0] < 20,
        "waking map: {} wake-ups in 1.5 s",
        switches[0]
    );
    assert!(
        switches[1] > 200,
        "default map: the waiter did not poll ({})",
        switches[1]
    );
}
