//! Every bad input or hostile environment gives a typed error, never a panic
//! or a crash, and leaves nothing behind.
#![allow(unreachable_pub)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{arg, assert_removed, role, unique_name, Cleanup, Segment};
use shmkv::__private::{data_offsets, root_offsets};
use shmkv::{key_from_name, Error, Incompatible, Options, RawMap, ShmMap, SizeError};

#[test]
fn missing_existing_and_invalid() {
    let c = Cleanup::new("exist");
    assert!(matches!(
        RawMap::open(&c.name, &c.opts),
        Err(Error::NotFound { .. })
    ));
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    assert!(matches!(
        RawMap::create(&c.name, &c.opts),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        RawMap::create("", &c.opts),
        Err(Error::InvalidName(_))
    ));
    assert!(matches!(
        RawMap::create(&"n".repeat(129), &c.opts),
        Err(Error::InvalidName(_))
    ));
    assert!(matches!(
        RawMap::create(&unique_name("zero"), &Options::new().capacity(0)),
        Err(Error::InvalidSize(SizeError::OutOfRange(_)))
    ));
    assert!(matches!(
        RawMap::create(&unique_name("small"), &Options::new().arena_size(10u64)),
        Err(Error::InvalidSize(_))
    ));
    assert!(matches!(
        RawMap::create(
            &unique_name("cap"),
            &Options::new().capacity(100_000).max_size(1u64 << 20)
        ),
        Err(Error::InvalidSize(_))
    ));
    assert!(matches!(
        RawMap::create(&unique_name("huge"), &Options::new().arena_size(1u64 << 60)),
        Err(Error::InvalidSize(_) | Error::Full { .. })
    ));
    assert!(matches!(
        RawMap::open_or_create(&unique_name("ro"), &Options::new().read_only(true)),
        Err(Error::ReadOnly)
    ));
    let stats = m.stats().unwrap();
    m.destroy().unwrap();
    assert_removed(&stats);
    assert!(matches!(
        RawMap::open(&c.name, &c.opts),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn a_different_map_at_the_same_key() {
    let a = unique_name("same-key-a");
    let b = unique_name("same-key-b");
    let key = key_from_name(&a) ^ 0x5a5a;
    let opts = Options::new().sysv_key(key);
    let _ca = Cleanup {
        name: a.clone(),
        opts: opts.clone(),
    };
    let m = RawMap::create(&a, &opts).unwrap();
    for r in [
        RawMap::open(&b, &opts),
        RawMap::create(&b, &opts),
        RawMap::open_or_create(&b, &opts),
    ] {
        match r {
            Err(Error::NameMismatch { expected, found }) => {
                assert_eq!(
                    (expected.as_str(), found.as_str()),
                    (b.as_str(), a.as_str())
                )
            }
            other => panic!("{other:?}"),
        }
    }
    m.insert(b"still", b"here").unwrap();
    let stats = m.stats().unwrap();
    m.destroy().unwrap();
    assert_removed(&stats);
}

#[test]
fn ftok_keys() {
    let dir = std::env::temp_dir().join(unique_name("ftok"));
    std::fs::create_dir(&dir).unwrap();
    let opts = Options::new().ftok(&dir, 7);
    let name = unique_name("ftok");
    let _c = Cleanup {
        name: name.clone(),
        opts: opts.clone(),
    };
    let m = RawMap::create(&name, &opts).unwrap();
    m.insert(b"a", b"b").unwrap();
    let again = RawMap::open(&name, &opts).unwrap();
    assert_eq!(again.get(b"a").unwrap().unwrap(), b"b");
    let stats = m.stats().unwrap();
    drop(again);
    m.destroy().unwrap();
    assert_removed(&stats);
    std::fs::remove_dir(&dir).unwrap();
    assert!(RawMap::create(&name, &Options::new().ftok(&dir, 7)).is_err());
}

#[test]
fn corrupted_or_foreign_headers_are_refused() {
    let c = Cleanup::new("hdr");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"k", b"v").unwrap();
    let root = Segment::root_of(m.stats().unwrap().key);
    type Check = fn(&Error) -> bool;
    let cases: &[(usize, Check)] = &[
        // Without a shmkv magic nothing in the root is trusted.
        (root_offsets::MAGIC, |e| matches!(e, Error::KeyInUse { .. })),
        (root_offsets::LAYOUT_VERSION, |e| {
            matches!(e, Error::Incompatible(Incompatible::LayoutVersion { .. }))
        }),
        (root_offsets::HASH_ALGO, |e| {
            matches!(e, Error::Incompatible(Incompatible::Hash))
        }),
        (root_offsets::HASH_CANARY, |e| {
            matches!(e, Error::Incompatible(Incompatible::Hash))
        }),
        (root_offsets::FORMAT_FINGERPRINT, |e| {
            matches!(e, Error::Incompatible(Incompatible::Format { .. }))
        }),
        (root_offsets::NAME_LEN, |e| matches!(e, Error::Corrupted(_))),
        (root_offsets::CURRENT, |e| matches!(e, Error::Corrupted(_))),
    ];
    for (off, want) in cases {
        // Restored before asserting, so that cleanup finds the data segment.
        let restore = root.restore(*off, 1);
        root.flip(*off, 0x40);
        let r = RawMap::open(
            &c.name,
            &c.opts.clone().lock_timeout(Duration::from_millis(100)),
        );
        drop(restore);
        match r {
            Err(e) => assert!(want(&e), "offset {off}: {e:?}"),
            Ok(_) => panic!("offset {off}: corrupted header accepted"),
        }
    }
    // Restored: opens and reads again; nothing stored was lost.
    let again = RawMap::open(&c.name, &c.opts).unwrap();
    assert_eq!(again.get(b"k").unwrap().unwrap(), b"v");
    drop(root);
    let stats = m.stats().unwrap();
    drop(again);
    m.destroy().unwrap();
    assert_removed(&stats);
}

#[test]
fn foreign_segment_at_the_key() {
    let name = unique_name("foreign");
    let key = key_from_name(&name);
    for size in [16usize, 4096] {
        let seg = Segment::create(key, size, 0o600);
        seg.write_bytes(0, &vec![0xAB; size]);
        let id = seg.id();
        drop(seg);
        for r in [
            RawMap::open(&name, &Options::new()),
            RawMap::create(&name, &Options::new()),
            RawMap::open_or_create(&name, &Options::new()),
        ] {
            assert!(matches!(r, Err(Error::KeyInUse { .. })), "{r:?}");
        }
        // Our failed create left no semaphore behind, and did not touch it.
        // SAFETY: plain integer arguments.
        assert_eq!(unsafe { libc::semget(key, 1, 0) }, -1);
        assert!(matches!(
            RawMap::destroy_by_name(&name, &Options::new()),
            Err(Error::KeyInUse { .. })
        ));
        // SAFETY: IPC_RMID ignores the buffer.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

#[test]
fn lock_timeout_names_the_holder() {
    let c = Cleanup::new("locked");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let other = RawMap::open(
        &c.name,
        &c.opts.clone().lock_timeout(Duration::from_millis(150)),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // The batch stays open until the checks below are done (no sleep that a
    // slow machine could outlast).
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(|| {
            let done_rx = done_rx; // moved in: a Receiver is not Sync
            m.write(|b| {
                b.insert(b"slow", b"batch")?;
                tx.send(()).unwrap();
                let _ = done_rx.recv_timeout(Duration::from_secs(30));
                Ok(())
            })
            .unwrap()
        });
        rx.recv().unwrap();
        let t = Instant::now();
        let stats = other.stats().unwrap();
        assert!(stats.lock_held);
        assert_eq!(stats.lock_pid, Some(std::process::id() as i32));
        match other.insert(b"x", b"y") {
            Err(Error::LockTimeout { waited, holder_pid }) => {
                assert!(waited >= Duration::from_millis(140));
                assert_eq!(holder_pid, Some(std::process::id() as i32));
            }
            r => panic!("{r:?}"),
        }
        // Gave up after its timeout, not after the holder finished.
        assert!(t.elapsed() < Duration::from_secs(5));
        // Reads do not wait for the writer.
        assert_eq!(other.get(b"slow").unwrap(), None);
        done_tx.send(()).unwrap();
    });
    assert_eq!(other.get(b"slow").unwrap().unwrap(), b"batch");
}

#[test]
fn wrong_type_is_an_error_not_ub() {
    let c = Cleanup::new("types");
    let m: ShmMap<str, String> = ShmMap::create(&c.name, &c.opts).unwrap();
    m.insert("k", &"a string value that is long enough".to_string())
        .unwrap();
    let raw = m.raw();
    raw.insert(b"junk", &[0xff; 3]).unwrap();
    assert!(matches!(m.get("junk"), Err(Error::Value(_))));
    assert!(matches!(m.get_archived("junk"), Err(Error::Value(_))));
    // Another value type does not even open (the schema is recorded).
    assert!(matches!(
        ShmMap::<str, Vec<u64>>::open(&c.name, &c.opts),
        Err(Error::Incompatible(shmkv::Incompatible::Schema { .. }))
    ));
}

const UNPRIVILEGED: u32 = 65534;

/// Runs this test binary as an unprivileged user in `role`; returns stdout.
fn run_unprivileged(test: &str, role: &str, name: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env("SHMKV_TEST_ROLE", role)
        .env("MAP", name)
        .uid(UNPRIVILEGED)
        .gid(UNPRIVILEGED)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{role}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn outcome<T, E: std::borrow::Borrow<Error>>(r: Result<T, E>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) if matches!(e.borrow(), Error::PermissionDenied { .. }) => "denied",
        Err(_) => "other",
    }
}

#[test]
fn permissions_are_enforced() {
    if role().as_deref() == Some("outsider") {
        let name = arg("MAP");
        let rw = outcome(RawMap::open(&name, &Options::new()));
        let ro = RawMap::open(&name, &Options::new().read_only(true));
        let read = match &ro {
            Ok(m) => format!(
                "{:?}",
                m.get(b"k")
                    .map(|v| v.map(|v| String::from_utf8(v).unwrap()))
            ),
            Err(e) => format!("{e:?}"),
        };
        let write = match &ro {
            Ok(m) => outcome(m.insert(b"k", b"x")).to_string(),
            Err(_) => "-".into(),
        };
        let ro_write = matches!(
            ro.as_ref().map(|m| m.insert(b"k", b"x")),
            Ok(Err(Error::ReadOnly))
        );
        println!(
            "RESULT rw={rw} ro={} read={read} write={write} ro_write_refused={ro_write}",
            outcome(ro.as_ref().map(|_| ()))
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "permissions_are_enforced: not root, cannot switch to an unprivileged uid; skipped"
        );
        return;
    }
    let test = "permissions_are_enforced";
    let private = Cleanup::new("perm600");
    let m = RawMap::create(&private.name, &private.opts).unwrap();
    m.insert(b"k", b"secret").unwrap();
    let out = run_unprivileged(test, "outsider", &private.name);
    assert!(out.contains("RESULT rw=denied ro=denied"), "{out}");

    let shared = Cleanup::with("perm644", Options::new().mode(0o644));
    let m2 = RawMap::create(&shared.name, &shared.opts).unwrap();
    m2.insert(b"k", b"public").unwrap();
    let out = run_unprivileged(test, "outsider", &shared.name);
    assert!(
        out.contains(
            r#"RESULT rw=denied ro=ok read=Ok(Some("public")) write=other ro_write_refused=true"#
        ),
        "{out}"
    );
    drop((m, m2));
}

/// Scribbles on the live data segment of a map, one byte at a time at
/// seeded random places (header, slots, arena), and reads everything through
/// a fresh handle each time: errors or data, never a crash or a panic. Runs
/// in a child process so that a crash would show as a signal.
#[test]
fn scribbled_segments_give_errors_not_crashes() {
    if role().as_deref() == Some("scribbler") {
        let name = arg("MAP");
        let opts = Options::new().lock_timeout(Duration::from_millis(20));
        let typed: ShmMap<u64, (u64, String, Vec<u32>)> = ShmMap::open(&name, &opts).unwrap();
        let s = typed.stats().unwrap();
        let seg = Segment::data_of(&s);
        let len = s.segment_size as usize;
        let mut rng = 0x1234_5678_9abc_def1u64;
        let (mut errors, mut oks) = (0u64, 0u64);
        for _ in 0..3000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Half the hits in the header and slots, half anywhere.
            let off = if rng & 1 == 0 {
                (rng >> 8) as usize % 2048
            } else {
                (rng >> 8) as usize % len
            };
            // This process is the only writer while it scribbles (no
            // writer runs); the byte is put back when the round ends.
            let _restore = seg.restore(off, 1);
            seg.flip(off, 1 << ((rng >> 40) % 8));
            let outcome = (|| -> shmkv::Result<()> {
                let m: ShmMap<u64, (u64, String, Vec<u32>)> = ShmMap::open(&name, &opts)?;
                for k in 0..50u64 {
                    let _ = m.get(&k)?;
                    let _ = m.get_archived(&k)?.map(|v| v.0);
                }
                let _ = m.raw().entries()?;
                Ok(())
            })();
            match outcome {
                Ok(()) => oks += 1,
                Err(
                    Error::Corrupted(_)
                    | Error::Incompatible(_)
                    | Error::Value(_)
                    | Error::LockTimeout { .. },
                ) => errors += 1,
                Err(e) => panic!("unexpected error kind: {e:?}"),
            }
        }
        drop(seg);
        println!("RESULT oks={oks} errors={errors}");
        return;
    }
    let c = Cleanup::with("scribble", Options::new().capacity(60));
    let m: ShmMap<u64, (u64, String, Vec<u32>)> = ShmMap::create(&c.name, &c.opts).unwrap();
    for k in 0..50u64 {
        m.insert(&k, &(k, format!("value {k}"), (0..k as u32 % 9).collect()))
            .unwrap();
    }
    for k in (0..50u64).step_by(7) {
        m.remove(&k).unwrap();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "scribbled_segments_give_errors_not_crashes",
            "--exact",
            "--nocapture",
            "-q",
        ])
        .env("SHMKV_TEST_ROLE", "scribbler")
        .env("MAP", &c.name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scribbler crashed or panicked: {:?}\n{stdout}",
        out.status
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .find(|l| l.starts_with("RESULT"))
            .unwrap_or("")
    );
    assert!(stdout.contains("RESULT oks="));
    // The map is intact after the bytes were restored.
    for k in 0..50u64 {
        assert_eq!(m.get(&k).unwrap().is_some(), k % 7 != 0);
    }
}

#[test]
fn verify_reports_a_damaged_record() {
    let c = Cleanup::new("verify");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    for k in 0..20u8 {
        m.insert(&[k; 4], &[k; 40]).unwrap();
    }
    assert!(m.verify().unwrap().is_ok());
    let s = m.stats().unwrap();
    let seg = Segment::data_of(&s);
    let arena = data_offsets::arena(s.capacity);
    // The first record's header: key length (low byte of its first,
    // little-endian word) 4 -> 5.
    let restore = seg.restore(arena, 1);
    seg.write_bytes(arena, &[5]);
    let report = m.verify().unwrap();
    drop(restore);
    drop(seg);
    assert!(!report.is_ok());
    assert!(
        report.problems.iter().any(|p| p.contains("record header")),
        "{:?}",
        report.problems
    );
    assert!(m.verify().unwrap().is_ok());
}
