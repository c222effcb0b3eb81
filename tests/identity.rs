//! shmkv touches only objects it can prove are its own: foreign segments and
//! semaphore sets at a map's key are left alone; `destroy` takes the lock,
//! tells open handles, and leaks nothing; `destroy_by_name` checks the name.
#![allow(unreachable_pub)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{arg, assert_removed, role, unique_name, Cleanup, Segment};
use shmkv::__private::{data_offsets, root_offsets};
use shmkv::{key_from_name, Error, Options, RawMap};

/// Tests of this binary run one at a time: a child forked by one test holds
/// the parent's SysV attachments until its `exec`, which would make another
/// test's "segment removed" check see a segment still attached.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A segment made by "another program" at a key; removed on drop.
struct ForeignShm {
    id: i32,
    size: usize,
}

impl ForeignShm {
    fn new(key: i32, size: usize, fill: impl Fn(usize) -> u8) -> ForeignShm {
        let seg = Segment::create(key, size, 0o600);
        seg.write_bytes(0, &(0..size).map(fill).collect::<Vec<u8>>());
        ForeignShm { id: seg.id(), size }
    }

    fn content(&self) -> Vec<u8> {
        let seg = Segment::try_attach(self.id, false)
            .unwrap_or_else(|e| panic!("foreign segment {} vanished: {e}", self.id));
        seg.read_bytes(0, self.size)
    }

    fn exists_at(&self, key: i32) -> bool {
        // SAFETY: plain integer arguments.
        unsafe { libc::shmget(key, 0, 0) == self.id }
    }
}

impl Drop for ForeignShm {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID ignores the buffer.
        unsafe { libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// A semaphore set made by "another program" at a key; removed on drop.
struct ForeignSem {
    id: i32,
    values: Vec<u16>,
}

impl ForeignSem {
    fn new(key: i32, values: &[u16], operate: bool) -> ForeignSem {
        let n = values.len() as i32;
        // SAFETY: plain integer arguments.
        let id = unsafe { libc::semget(key, n, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        assert!(id >= 0, "semget: {}", std::io::Error::last_os_error());
        let mut v = values.to_vec();
        // SAFETY: SETALL reads n values from the array.
        let rc = unsafe { libc::semctl(id, 0, libc::SETALL, v.as_mut_ptr()) };
        assert_eq!(rc, 0);
        if operate {
            // A semop (+1, then -1) sets sem_otime.
            for d in [1i16, -1] {
                let mut sb = libc::sembuf {
                    sem_num: 0,
                    sem_op: d,
                    sem_flg: 0,
                };
                // SAFETY: one valid sembuf.
                assert_eq!(unsafe { libc::semop(id, &mut sb, 1) }, 0);
            }
        }
        ForeignSem {
            id,
            values: values.to_vec(),
        }
    }

    fn current(&self) -> Vec<u16> {
        let mut v = vec![0u16; self.values.len()];
        // SAFETY: GETALL writes nsems values to the array.
        let rc = unsafe { libc::semctl(self.id, 0, libc::GETALL, v.as_mut_ptr()) };
        assert_eq!(rc, 0, "foreign set {} vanished", self.id);
        v
    }

    fn exists_at(&self, key: i32) -> bool {
        // SAFETY: plain integer arguments.
        unsafe { libc::semget(key, 0, 0) == self.id }
    }
}

impl Drop for ForeignSem {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID needs no further argument.
        unsafe { libc::semctl(self.id, 0, libc::IPC_RMID) };
    }
}

fn no_shm_at(key: i32) -> bool {
    // SAFETY: plain integer arguments.
    unsafe { libc::shmget(key, 0, 0) == -1 }
}

fn no_sem_at(key: i32) -> bool {
    // SAFETY: plain integer arguments.
    unsafe { libc::semget(key, 0, 0) == -1 }
}

/// The four entry points that find objects by key.
const ENTRY_POINTS: [&str; 4] = ["create", "open_or_create", "open", "destroy_by_name"];

fn call(op: &str, name: &str, opts: &Options) -> Result<(), Error> {
    match op {
        "create" => RawMap::create(name, opts).map(drop),
        "open_or_create" => RawMap::open_or_create(name, opts).map(drop),
        "open" => RawMap::open(name, opts).map(drop),
        "destroy_by_name" => RawMap::destroy_by_name(name, opts).map(drop),
        _ => unreachable!(),
    }
}

fn assert_key_in_use(what: &str, op: &str, r: &Result<(), Error>, key: i32) {
    match r {
        Err(e @ Error::KeyInUse { key: k, .. }) => {
            assert_eq!(*k, key, "{what}: {op}");
            let msg = e.to_string();
            assert!(msg.contains("another program"), "{what}: {op}: {msg}");
            assert!(!msg.contains("destroy"), "{what}: {op}: {msg}");
        }
        other => panic!("{what}: {op} must be KeyInUse, got {other:?}"),
    }
}

#[test]
fn foreign_segments_at_the_key_are_left_alone() {
    let _serial = serial();
    type Fill = fn(usize) -> u8;
    let cases: &[(&str, usize, Fill)] = &[
        ("all zero, root size", root_offsets::SIZE, |_| 0),
        (
            "zero first word then junk, root size",
            root_offsets::SIZE,
            |i| {
                if i < 8 {
                    0
                } else {
                    (i * 7 + 3) as u8
                }
            },
        ),
        ("zero first word then junk, 4096", 4096, |i| {
            if i < 8 {
                0
            } else {
                (i * 13 + 1) as u8
            }
        }),
        ("non-zero junk, root size", root_offsets::SIZE, |i| {
            (i * 31 + 17) as u8 | 1
        }),
    ];
    for (what, size, fill) in cases {
        let name = unique_name("foreign-shm");
        let key = key_from_name(&name);
        let opts = Options::new().lock_timeout(Duration::from_millis(300));
        let foreign = ForeignShm::new(key, *size, fill);
        let before = foreign.content();
        for op in ENTRY_POINTS {
            let r = call(op, &name, &opts);
            assert!(foreign.exists_at(key), "{what}: {op} removed the segment");
            assert!(
                foreign.content() == before,
                "{what}: {op} changed the foreign segment's content"
            );
            assert!(no_sem_at(key), "{what}: {op} left a semaphore set");
            assert_key_in_use(what, op, &r, key);
        }
    }
}

#[test]
fn foreign_semaphore_sets_at_the_key_are_left_alone() {
    let _serial = serial();
    // (values, operated: sem_otime set)
    let cases: &[(&str, &[u16], bool)] = &[
        ("one semaphore", &[7], true),
        ("one semaphore, never operated", &[1], false),
        ("two semaphores without the tag", &[1, 5], true),
        (
            "two semaphores without the tag, never operated",
            &[1, 0],
            false,
        ),
        ("three semaphores", &[1, 0x4B56, 0], true),
    ];
    for (what, values, operate) in cases {
        let name = unique_name("foreign-sem");
        let key = key_from_name(&name);
        let opts = Options::new().lock_timeout(Duration::from_millis(300));
        let foreign = ForeignSem::new(key, values, *operate);
        for op in ENTRY_POINTS {
            let r = call(op, &name, &opts);
            assert!(foreign.exists_at(key), "{what}: {op} removed the set");
            assert_eq!(
                foreign.current(),
                foreign.values,
                "{what}: {op} changed the set's values"
            );
            assert!(no_shm_at(key), "{what}: {op} made a segment at the key");
            assert_key_in_use(what, op, &r, key);
        }
    }
}

/// A creator killed after its `shmget` of the root and before it wrote the
/// root's marker: reproduced step by step as the protocol does it (lock set
/// with its tag, acquired with SEM_UNDO, marked, root made), then the
/// "creator" exits. Only the lock's mark and the root's creator pid make the
/// zero root recognisably shmkv's.
#[test]
fn root_left_without_marker_by_a_dead_creator_is_repaired() {
    if role().as_deref() == Some("half-creator") {
        let key: i32 = arg("KEY").parse().unwrap();
        // SAFETY: plain integer arguments and valid buffers throughout.
        unsafe {
            let id = libc::semget(key, 2, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
            assert!(id >= 0);
            let mut init = [1u16, 0x4B56];
            assert_eq!(libc::semctl(id, 0, libc::SETALL, init.as_mut_ptr()), 0);
            let mut sb = libc::sembuf {
                sem_num: 0,
                sem_op: -1,
                sem_flg: libc::SEM_UNDO as i16,
            };
            assert_eq!(libc::semop(id, &mut sb, 1), 0);
            assert_eq!(libc::semctl(id, 1, libc::SETVAL, 0x4B57), 0);
            assert!(
                libc::shmget(
                    key,
                    root_offsets::SIZE,
                    libc::IPC_CREAT | libc::IPC_EXCL | 0o600
                ) >= 0
            );
        }
        println!("RESULT made");
        return;
    }
    let _serial = serial();
    for then_destroy in [false, true] {
        let c = Cleanup::with("halfroot", Options::new());
        let key = key_from_name(&c.name);
        let (status, out) = common::results(common::spawn(
            "root_left_without_marker_by_a_dead_creator_is_repaired",
            "half-creator",
            &[("KEY", key.to_string())],
        ));
        assert!(status.success() && out == ["made"], "{status:?} {out:?}");
        let quick = c.opts.clone().lock_timeout(Duration::from_millis(200));
        match RawMap::open(&c.name, &quick) {
            Err(Error::Corrupted(msg)) => assert!(msg.contains("never completely created")),
            r => panic!("{:?}", r.map(drop)),
        }
        if then_destroy {
            assert!(RawMap::destroy_by_name(&c.name, &c.opts).unwrap());
            assert!(no_shm_at(key) && no_sem_at(key));
        } else {
            let m = RawMap::open_or_create(&c.name, &c.opts).unwrap();
            m.insert(b"k", b"v").unwrap();
            let s = m.stats().unwrap();
            m.destroy().unwrap();
            assert_removed(&s);
        }
    }
}

#[test]
fn destroy_tells_handles_still_open() {
    let _serial = serial();
    let c = Cleanup::new("destroy-open");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"k", b"v").unwrap();
    let other = RawMap::open(&c.name, &c.opts).unwrap();
    let reading = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                match other.get(b"k") {
                    Ok(v) => assert_eq!(v.as_deref(), Some(&b"v"[..])),
                    Err(e) => return Some(e),
                }
                reading.store(true, Ordering::Relaxed);
                if Instant::now() > deadline {
                    return None;
                }
            }
        });
        while !reading.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        m.destroy().unwrap();
        match reader.join().unwrap() {
            Some(Error::NotFound { name }) => assert_eq!(name, c.name),
            Some(e) => panic!("reader got {e:?}, not NotFound"),
            None => panic!("the reader was still served 3 s after destroy"),
        }
    });
    assert!(matches!(
        other.insert(b"x", b"y"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(other.stats(), Err(Error::NotFound { .. })));
}

/// Data segments made by this process whose header names this map (owner
/// word `key << 32 | root shmid`).
fn segments_of_map(key: i32, root_shmid: i32) -> Vec<i32> {
    let owner = (u64::from(key as u32) << 32) | u64::from(root_shmid as u32);
    common::sysv_segments()
        .iter()
        .filter(|r| r.cpid == std::process::id() && r.size >= data_offsets::HEADER_SIZE as u64)
        .map(|r| r.shmid)
        .filter(|&id| {
            Segment::try_attach(id, false)
                .is_ok_and(|seg| seg.read_u64(data_offsets::OWNER) == owner)
        })
        .collect()
}

#[test]
fn destroy_racing_a_growing_writer_leaks_nothing() {
    let _serial = serial();
    for trial in 0..24u64 {
        let c = Cleanup::with(
            "destroy-race",
            Options::new().capacity(16).arena_size(4096u64),
        );
        let m = RawMap::create(&c.name, &c.opts).unwrap();
        let s = m.stats().unwrap();
        let writer = RawMap::open(&c.name, &c.opts).unwrap();
        let grew = AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                // Batches that overflow the arena: each stages records for
                // a while, then moves to a new, larger generation.
                for round in 0u32.. {
                    let r = writer.write(|b| {
                        for k in 0..400u32 {
                            b.insert(&(round * 1000 + k).to_le_bytes(), &[7u8; 48])?;
                        }
                        Ok(())
                    });
                    if r.is_err() {
                        break;
                    }
                    grew.store(true, Ordering::Relaxed);
                }
            });
            while !grew.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_micros(trial * 150));
            m.destroy().unwrap();
        });
        drop(writer);
        let left = segments_of_map(s.key, s.root_shmid);
        assert!(
            left.is_empty(),
            "trial {trial}: data segments of the destroyed map leaked: {left:?}"
        );
        assert_removed(&s);
    }
}

#[test]
fn destroy_by_name_needs_the_stored_name() {
    let _serial = serial();
    let a = unique_name("name-a");
    let typo = unique_name("name-typo");
    let key = key_from_name(&a) ^ 0x2c2c;
    let opts = Options::new().sysv_key(key);
    let _ca = Cleanup {
        name: a.clone(),
        opts: opts.clone(),
    };
    let m = RawMap::create(&a, &opts).unwrap();
    m.insert(b"k", b"v").unwrap();
    let r = RawMap::destroy_by_name(&typo, &opts);
    // The map is intact and still works (root, data, lock).
    let again = RawMap::open(&a, &opts).unwrap();
    assert_eq!(again.get(b"k").unwrap().unwrap(), b"v");
    again.insert(b"k2", b"v2").unwrap();
    match r {
        Err(Error::NameMismatch { expected, found }) => {
            assert_eq!((expected, found), (typo.clone(), a.clone()))
        }
        other => panic!("{other:?}"),
    }

    // The CLI side (no fall back to destroy_by_name on a NameMismatch):
    // cli/tests/cli.rs `cli_destroy_does_not_fall_back_on_a_name_mismatch`.
    let s = m.stats().unwrap();
    drop(again);
    m.destroy().unwrap();
    assert_removed(&s);
}

#[test]
fn lock_timeout_of_duration_max_means_no_deadline() {
    let _serial = serial();
    let c = Cleanup::with("forever", Options::new().lock_timeout(Duration::MAX));
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let other = RawMap::open(&c.name, &c.opts).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            m.write(|b| {
                b.insert(b"first", b"1")?;
                tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(150));
                Ok(())
            })
            .unwrap()
        });
        rx.recv().unwrap();
        // Contended: waits for the lock with no deadline.
        other.insert(b"second", b"2").unwrap();
    });
    assert_eq!(m.get(b"second").unwrap().unwrap(), b"2");
    let s = m.stats().unwrap();
    drop(other);
    m.destroy().unwrap();
    assert_removed(&s);
}

/// `Error` exposes `std::io::Error`, not a type of the `nix` crate.
#[test]
fn os_errors_carry_std_io_errors() {
    let _serial = serial();
    fn source(e: Error) -> Option<std::io::Error> {
        match e {
            Error::Os { source, .. } => Some(source),
            _ => None,
        }
    }
    assert!(source(Error::ReadOnly).is_none());
}

/// The root as a `destroy` leaves it when it dies right after marking the
/// map: the data segment in force recorded in `retiring`, `current` = the
/// reserved DESTROYED word (all ones).
fn mark_destroyed_by_hand(root_shmid: i32, data_shmid: i32) {
    // The test's own handles only read these words.
    let root = Segment::attach(root_shmid);
    root.write_u64(root_offsets::RETIRING, data_shmid as u64 + 1);
    root.write_u64(root_offsets::CURRENT, u64::MAX);
}

#[test]
fn a_destroy_that_died_after_marking_is_finished() {
    let _serial = serial();
    for repair_by_create in [true, false] {
        let c = Cleanup::new("half-destroyed");
        let m = RawMap::create(&c.name, &c.opts).unwrap();
        m.insert(b"k", b"v").unwrap();
        let s = m.stats().unwrap();
        mark_destroyed_by_hand(s.root_shmid, s.data_shmid);
        assert!(matches!(m.get(b"k"), Err(Error::NotFound { .. })));
        assert!(matches!(
            RawMap::open(&c.name, &c.opts),
            Err(Error::NotFound { .. })
        ));
        if repair_by_create {
            let fresh = RawMap::open_or_create(&c.name, &c.opts).unwrap();
            assert_eq!(fresh.get(b"k").unwrap(), None);
            fresh.insert(b"k", b"new").unwrap();
            // The old handle does not follow the new map.
            assert!(matches!(m.get(b"k"), Err(Error::NotFound { .. })));
            let s2 = fresh.stats().unwrap();
            assert_ne!(s2.root_shmid, s.root_shmid);
            fresh.destroy().unwrap();
            assert_removed(&s2);
        } else {
            assert!(RawMap::destroy_by_name(&c.name, &c.opts).unwrap());
        }
        drop(m);
        assert!(segments_of_map(s.key, s.root_shmid).is_empty());
        assert!(no_shm_at(s.key) && no_sem_at(s.key));
    }
}

/// Writes one word of a map's root (test scribbling: simulates a shmid the
/// kernel reused for another program's segment after shmkv recorded it).
/// No writer runs meanwhile.
fn poke_root(root_shmid: i32, offset: usize, value: u64) {
    Segment::attach(root_shmid).write_u64(offset, value);
}

#[test]
fn recorded_shmids_are_removed_only_if_their_header_names_the_map() {
    let _serial = serial();
    // `pending` and `retiring` are read by every writer's recovery.
    for (what, offset) in [
        ("pending", root_offsets::PENDING),
        ("retiring", root_offsets::RETIRING),
    ] {
        let c = Cleanup::new("reused-shmid");
        let m = RawMap::create(&c.name, &c.opts).unwrap();
        let foreign = ForeignShm::new(libc::IPC_PRIVATE, 4096, |i| (i * 5 + 1) as u8);
        let before = foreign.content();
        poke_root(m.stats().unwrap().root_shmid, offset, foreign.id as u64 + 1);
        m.insert(b"k", b"v").unwrap();
        assert!(
            perms_of(foreign.id).is_some() && foreign.content() == before,
            "{what}: recovery removed another program's segment"
        );
        let s = m.stats().unwrap();
        m.destroy().unwrap();
        assert_removed(&s);
    }
    // `current` is read by destroy_by_name (the map's own data segment is
    // recorded in `retiring`, so that it is still found).
    let c = Cleanup::new("reused-current");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let s = m.stats().unwrap();
    drop(m);
    let foreign = ForeignShm::new(libc::IPC_PRIVATE, 4096, |i| (i * 3 + 2) as u8);
    poke_root(
        s.root_shmid,
        root_offsets::RETIRING,
        s.data_shmid as u64 + 1,
    );
    poke_root(
        s.root_shmid,
        root_offsets::CURRENT,
        (1u64 << 32) | foreign.id as u64,
    );
    assert!(RawMap::destroy_by_name(&c.name, &c.opts).unwrap());
    assert!(
        perms_of(foreign.id).is_some(),
        "destroy_by_name removed another program's segment"
    );
    assert_removed(&s);
}

fn perms_of(shmid: i32) -> Option<()> {
    // SAFETY: shmid_ds is plain data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid, writable shmid_ds.
    (unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } == 0).then_some(())
}
