//! `shmkv sync etcd` against a real etcd (started by the tests; they fail,
//! never skip, without `etcd`). Each scenario checks convergence while a
//! sync runs: the whole map against `etcdctl get --prefix` at the map's
//! applied revision; those that end in an exit code then check that the
//! map kept its last whole revision.
#![allow(unreachable_pub)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use etcd_client::{DeleteOptions, TxnOp};
use shmkv::{Options, RawMap, SourceKind, SyncState, SYNC_STATE_KEY};

const SIGTERM: i32 = libc::SIGTERM;
const SIGKILL: i32 = libc::SIGKILL;

/// Exit codes (shmkv_sync::exit), as a `Child`'s status gives them.
const EXIT_ERROR: i32 = shmkv_sync::exit::ERROR as i32;
const EXIT_LEASE: i32 = shmkv_sync::exit::LEASE as i32;
const EXIT_FULL: i32 = shmkv_sync::exit::FULL as i32;

fn kvs(prefix: &str, n: usize, tag: &str) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}k{i:05}"),
                format!("{tag}-{i}").into_bytes(),
            )
        })
        .collect()
}

#[test]
fn snapshot_of_10000_keys_then_puts_and_deletes() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("snap"));
    let mut c = etcd.client();
    c.put_all(&kvs("/app/", 10_000, "v0"));
    // Outside the prefix: never mirrored.
    etcd.ctl_ok(&["put", "/other/x", "1"]);
    // A key in the map that etcd does not have: the snapshot removes it.
    {
        let m = RawMap::create(&map.0, &Options::new()).unwrap();
        m.insert(b"/app/stale", b"old").unwrap();
    }
    let t0 = Instant::now();
    let sync = Sync::start(&etcd, "/app/", &map.0, &["--page-size", "1000"]);
    assert_converges(&etcd, "/app/", &map.0, false, &sync);
    eprintln!("snapshot of 10,000 keys converged in {:?}", t0.elapsed());
    assert!(sync.log().contains("snapshot applied"), "{}", sync.log());
    // Puts, overwrites, single deletes and a prefix delete (one revision).
    etcd.ctl_ok(&["put", "/app/new", "n"]);
    etcd.ctl_ok(&["put", "/app/k00001", "changed"]);
    etcd.ctl_ok(&["del", "/app/k00002"]);
    etcd.ctl_ok(&["del", "--prefix", "/app/k09"]);
    let m = RawMap::open(&map.0, &Options::new()).unwrap();
    assert_converges(&etcd, "/app/", &map.0, false, &sync);
    assert_eq!(m.len(), 10_000 - 1 - 1000 + 1);
    assert_eq!(m.get(b"/app/k09999").unwrap(), None);
}

#[test]
fn strip_prefix_stores_keys_without_it() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("strip"));
    etcd.ctl_ok(&["put", "/cfg/a", "1"]);
    let sync = Sync::start(&etcd, "/cfg/", &map.0, &["--create", "--strip-prefix"]);
    assert_converges(&etcd, "/cfg/", &map.0, true, &sync);
    etcd.ctl_ok(&["put", "/cfg/b", "2"]);
    assert_converges(&etcd, "/cfg/", &map.0, true, &sync);
    let m = RawMap::open(&map.0, &Options::new()).unwrap();
    assert_eq!(m.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
}

/// The reader process of `an_etcd_txn_is_applied_as_one_batch`: views the
/// keys k000..k049 until the stop file exists; prints how many views saw
/// all equal, how many saw them torn, and how many distinct values.
#[test]
fn reader_role() {
    let Ok(map) = std::env::var("SHMKV_SYNC_READER_MAP") else {
        return;
    };
    let stop = std::env::var("SHMKV_SYNC_READER_STOP").unwrap();
    let keys: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("/tx/k{i:03}").into_bytes())
        .collect();
    let m = loop {
        match RawMap::open(&map, &Options::new().read_only(true)) {
            Ok(m) => break m,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let (mut views, mut torn) = (0u64, 0u64);
    let mut values = std::collections::HashSet::new();
    let mut example = String::new();
    while !std::path::Path::new(&stop).exists() {
        let vals = m
            .view(|v| {
                keys.iter()
                    .map(|k| Ok(v.get(k)?.map(|r| r.to_vec())))
                    .collect::<shmkv::Result<Vec<_>>>()
            })
            .unwrap();
        views += 1;
        if vals.iter().any(|v| *v != vals[0]) {
            torn += 1;
            if example.is_empty() {
                example = format!(
                    "{:?} vs {:?}",
                    vals[0],
                    vals.iter().find(|v| **v != vals[0])
                );
            }
        }
        values.insert(vals[0].clone());
    }
    println!(
        "READER views={views} torn={torn} distinct={} example={example}",
        values.len()
    );
}

#[test]
fn an_etcd_txn_is_applied_as_one_batch() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("txn"));
    let mut c = etcd.client();
    let keys: Vec<String> = (0..50).map(|i| format!("/tx/k{i:03}")).collect();
    let txn_all = |c: &mut Bulk, v: &str| {
        c.txn(
            keys.iter()
                .map(|k| TxnOp::put(k.as_bytes(), v, None))
                .collect(),
        )
    };
    txn_all(&mut c, "v0");
    let sync = Sync::start(&etcd, "/tx/", &map.0, &["--create"]);
    assert_converges(&etcd, "/tx/", &map.0, false, &sync);
    // Another process views the 50 keys while 300 txns each set all of
    // them to one new value.
    let stop = std::env::temp_dir().join(unique("stop"));
    let reader = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reader_role",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SHMKV_SYNC_READER_MAP", &map.0)
        .env("SHMKV_SYNC_READER_STOP", &stop)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = KillOnDrop(Some(reader));
    std::thread::sleep(Duration::from_millis(200));
    for i in 1..=300 {
        txn_all(&mut c, &format!("v{i}"));
    }
    assert_converges(&etcd, "/tx/", &map.0, false, &sync);
    std::fs::write(&stop, b"").unwrap();
    let out = reader.0.take().unwrap().wait_with_output().unwrap();
    let _ = std::fs::remove_file(&stop);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.find("READER").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no reader report: {text}"));
    eprintln!("{line}");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("torn"), 0, "a view saw part of an etcd txn: {line}");
    assert!(field("views") > 100, "{line}");
    assert!(field("distinct") > 2, "the reader saw no change: {line}");
    // The log has a debug line per applied revision.
    assert!(sync.log().contains("applied revision"));
}

#[test]
fn etcd_killed_and_restarted_mid_stream_converges() {
    let mut etcd = Etcd::start();
    let map = MapGuard(unique("restart"));
    let mut c = etcd.client();
    c.put_all(&kvs("/r/", 200, "a"));
    let sync = Sync::start(&etcd, "/r/", &map.0, &["--create"]);
    assert_converges(&etcd, "/r/", &map.0, false, &sync);
    for round in 0..3 {
        // Writes, then etcd dies (SIGKILL) and comes back; more writes
        // while the sync reconnects.
        c.put_all(&kvs("/r/", 150, &format!("round{round}")));
        etcd.restart();
        let mut c2 = etcd.client();
        c2.txn(vec![TxnOp::delete(
            format!("/r/k{:05}", round * 10),
            Some(DeleteOptions::new()),
        )]);
        c2.put_all(&kvs("/r/x", 20, &format!("after{round}")));
        c = c2;
    }
    assert_converges(&etcd, "/r/", &map.0, false, &sync);
    assert!(sync.log().contains("reconnecting"), "{}", sync.log());
}

#[test]
fn restart_resumes_and_compaction_forces_a_resnapshot() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("compact"));
    let mut c = etcd.client();
    c.put_all(&kvs("/c/", 300, "a"));
    let mut sync = Sync::start(&etcd, "/c/", &map.0, &["--create"]);
    assert_converges(&etcd, "/c/", &map.0, false, &sync);
    // A clean stop: exit 0, lease released.
    assert_eq!(sync.signal_and_wait(SIGTERM), Some(0));
    let st = RawMap::open(&map.0, &Options::new())
        .unwrap()
        .sync_state()
        .unwrap()
        .unwrap();
    assert_eq!(st.owner_pid, 0, "the lease was not released");
    // Writes while stopped, then a restart: resumes from the stored revision.
    c.put_all(&kvs("/c/", 50, "b"));
    etcd.ctl_ok(&["del", "/c/k00100"]);
    let mut sync = Sync::start(&etcd, "/c/", &map.0, &[]);
    assert_converges(&etcd, "/c/", &map.0, false, &sync);
    assert!(sync.log().contains("resuming the watch"), "{}", sync.log());
    assert!(!sync.log().contains("snapshot applied"), "{}", sync.log());
    assert_eq!(sync.signal_and_wait(SIGTERM), Some(0));
    // Writes and deletes while stopped, then compaction past them: the
    // watch cannot resume; a fresh snapshot replaces the contents
    // (deleted keys go too).
    c.put_all(&kvs("/c/", 60, "c"));
    etcd.ctl_ok(&["del", "--prefix", "/c/k002"]);
    let rev = etcd.revision();
    etcd.ctl_ok(&["compact", &rev.to_string()]);
    let sync = Sync::start(&etcd, "/c/", &map.0, &[]);
    assert_converges(&etcd, "/c/", &map.0, false, &sync);
    let log = sync.log();
    assert!(log.contains("compacted"), "{log}");
    assert!(log.contains("snapshot applied"), "{log}");
}

#[test]
fn sigkill_during_large_batches_leaves_no_torn_state_and_a_restart_converges() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("sigkill"));
    let mut c = etcd.client();
    let keys: Vec<String> = (0..100).map(|i| format!("/big/k{i:03}")).collect();
    let value = |i: usize| format!("{i:08}").repeat(64).into_bytes(); // 512 bytes
    let mut rev_value = std::collections::HashMap::new();
    let r = c.txn(
        keys.iter()
            .map(|k| TxnOp::put(k.as_bytes(), value(0), None))
            .collect(),
    );
    rev_value.insert(r, 0);
    // A large snapshot too (2,000 keys of 512 bytes).
    c.put_all(
        &(0..2000)
            .map(|i| (format!("/big/s{i:05}"), value(i)))
            .collect::<Vec<_>>(),
    );
    for round in 0..3 {
        let mut sync = Sync::start(&etcd, "/big/", &map.0, &["--create"]);
        // Revisions of 100 large puts stream in; the sync is SIGKILLed at
        // some point while it applies them.
        let t0 = Instant::now();
        let mut i = round * 1000;
        while t0.elapsed() < Duration::from_millis(400 + 300 * round as u64) {
            i += 1;
            let r = c.txn(
                keys.iter()
                    .map(|k| TxnOp::put(k.as_bytes(), value(i), None))
                    .collect(),
            );
            rev_value.insert(r, i);
        }
        assert_eq!(sync.signal_and_wait(SIGKILL), None);
        // No torn state: the 100 keys hold the value of one txn, the one
        // of the revision the map says it applied.
        let m = RawMap::open(&map.0, &Options::new()).unwrap();
        m.verify().unwrap();
        if let Some(st) = m.sync_state().unwrap() {
            let vals = m
                .view(|v| {
                    keys.iter()
                        .map(|k| Ok(v.get(k.as_bytes())?.map(|r| r.to_vec())))
                        .collect::<shmkv::Result<Vec<_>>>()
                })
                .unwrap();
            assert!(
                vals.iter().all(|v| *v == vals[0]),
                "torn state after SIGKILL"
            );
            if st.revision > 0 {
                let latest = rev_value
                    .iter()
                    .filter(|(r, _)| **r <= st.revision)
                    .max_by_key(|(r, _)| **r)
                    .map(|(_, v)| *v)
                    .unwrap();
                assert_eq!(
                    vals[0].as_deref(),
                    Some(&value(latest)[..]),
                    "the map's revision {} and its data disagree",
                    st.revision
                );
            }
            eprintln!("round {round}: killed at revision {}", st.revision);
        }
    }
    // A restart (the dead owner's lease is free) converges.
    let sync = Sync::start(&etcd, "/big/", &map.0, &[]);
    assert_converges(&etcd, "/big/", &map.0, false, &sync);
}

#[test]
fn full_is_reported_without_a_partial_revision() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("full"));
    etcd.ctl_ok(&["put", "/f/small", "1"]);
    let mut sync = Sync::start(
        &etcd,
        "/f/",
        &map.0,
        &[
            "--create",
            "--capacity",
            "64",
            "--arena",
            "64kb",
            "--max-size",
            "256kb",
        ],
    );
    assert_converges(&etcd, "/f/", &map.0, false, &sync);
    let before = map_revision(&map.0);
    // One revision of 40 puts of 8 KiB: more than the map may hold.
    let mut c = etcd.client();
    let rev = c.txn(
        (0..40)
            .map(|i| TxnOp::put(format!("/f/big{i:02}"), vec![b'x'; 8192], None))
            .collect(),
    );
    assert_eq!(sync.wait_exit(Duration::from_secs(20)), Some(EXIT_FULL));
    let log = sync.log();
    assert!(
        log.contains(&format!("cannot apply revision {rev}")) && log.contains("/f/big"),
        "{log}"
    );
    // Nothing of that revision: the map keeps the previous one.
    let m = RawMap::open(&map.0, &Options::new()).unwrap();
    assert_eq!(map_revision(&map.0), before);
    assert_eq!(
        map_entries(&map.0),
        vec![(b"/f/small".to_vec(), b"1".to_vec())]
    );
    m.verify().unwrap();
    // The state equals etcd's at that revision (convergence at `before`).
    let (_, kvs) = etcd.get_prefix("/f/small");
    assert_eq!(map_entries(&map.0), kvs);
    assert!(log.contains("--resnapshot"), "{log}");
    // Deleting the keys in etcd does not help a plain restart: it resumes
    // at `before` + 1 and meets the same revision again.
    etcd.ctl_ok(&["del", "--prefix", "/f/big"]);
    let mut again = Sync::start(&etcd, "/f/", &map.0, &[]);
    assert_eq!(again.wait_exit(Duration::from_secs(20)), Some(EXIT_FULL));
    assert!(again
        .log()
        .contains(&format!("cannot apply revision {rev}")));
    assert_eq!(map_revision(&map.0), before);
    // --resnapshot reads etcd as it is now, past that revision.
    let fresh = Sync::start(&etcd, "/f/", &map.0, &["--resnapshot"]);
    assert_converges(&etcd, "/f/", &map.0, false, &fresh);
    assert!(map_revision(&map.0) > rev);
    etcd.ctl_ok(&["put", "/f/after", "2"]);
    assert_converges(&etcd, "/f/", &map.0, false, &fresh);
}

#[test]
fn an_unreadable_sync_state_is_refused_unless_resnapshot_replaces_it() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("badstate"));
    etcd.ctl_ok(&["put", "/b/a", "1"]);
    let m = RawMap::create(&map.0, &Options::new()).unwrap();
    m.insert(b"/b/stale", b"x").unwrap();
    m.write(|b| shmkv::__private::set_raw_sync_state(b, b"not a sync state"))
        .unwrap();
    let mut refused = Sync::start(&etcd, "/b/", &map.0, &[]);
    assert_eq!(refused.wait_exit(Duration::from_secs(20)), Some(EXIT_ERROR));
    let log = refused.log();
    assert!(
        log.contains("sync state") && log.contains("--resnapshot"),
        "{log}"
    );
    // Nothing was touched.
    assert_eq!(m.get(b"/b/stale").unwrap().as_deref(), Some(&b"x"[..]));
    assert!(m.sync_state().is_err());
    let sync = Sync::start(&etcd, "/b/", &map.0, &["--resnapshot"]);
    assert_converges(&etcd, "/b/", &map.0, false, &sync);
    assert!(sync
        .log()
        .contains("replacing the map's unreadable sync state"));
    let st = m.sync_state().unwrap().unwrap();
    assert_eq!(st.owner_pid, sync.pid());
    etcd.ctl_ok(&["put", "/b/c", "3"]);
    assert_converges(&etcd, "/b/", &map.0, false, &sync);
}

/// A state written by an unknown (newer) version of the encoding: its
/// owner, read at the lease fields' fixed offsets, still holds the lease.
/// `--resnapshot` alone is refused (exit 3), with `--take-over` it
/// replaces the state; and a running sync whose state is replaced by one it
/// cannot decode, naming another owner, stops with exit 3.
#[test]
fn an_unknown_version_state_keeps_its_owners_lease() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("newer"));
    etcd.ctl_ok(&["put", "/n/a", "1"]);
    let m = RawMap::create(&map.0, &Options::new()).unwrap();
    let holder = Holder::start();
    let newer = |owner: (u32, u64)| {
        let mut b = SyncState {
            source: SourceKind::Etcd,
            cluster_id: 1,
            prefix: b"/n/".to_vec(),
            strip_prefix: false,
            endpoints: String::new(),
            revision: 1,
            seen_revision: 1,
            last_event_unix_ms: 0,
            updated_unix_ms: 0,
            owner_pid: owner.0,
            owner_start_time: owner.1,
        }
        .encode();
        b[4] = 2; // the version
        b.extend_from_slice(b"fields of a newer version");
        b
    };
    let planted = newer(holder.owner());
    m.write(|b| shmkv::__private::set_raw_sync_state(b, &planted))
        .unwrap();
    let mut refused = Sync::start(&etcd, "/n/", &map.0, &["--resnapshot"]);
    assert_eq!(refused.wait_exit(Duration::from_secs(20)), Some(EXIT_LEASE));
    let log = refused.log();
    assert!(log.contains(&format!("pid {}", holder.owner().0)), "{log}");
    assert_eq!(m.get(SYNC_STATE_KEY).unwrap().unwrap(), planted);
    let sync = Sync::start(&etcd, "/n/", &map.0, &["--resnapshot", "--take-over"]);
    assert_converges(&etcd, "/n/", &map.0, false, &sync);
    let log = sync.log();
    assert!(
        log.contains("taking the map over") && log.contains("replacing the map's unreadable"),
        "{log}"
    );
    // Taken over while running, by a state it cannot decode.
    let mut sync = sync;
    let planted = newer(holder.owner());
    m.write(|b| shmkv::__private::set_raw_sync_state(b, &planted))
        .unwrap();
    assert_eq!(sync.wait_exit(Duration::from_secs(20)), Some(EXIT_LEASE));
    assert!(sync.log().contains("taken over"), "{}", sync.log());
    assert_eq!(m.get(SYNC_STATE_KEY).unwrap().unwrap(), planted);
}

/// A damaged map (not a damaged state) is an error (exit 1) that
/// `--resnapshot` does not claim to fix, and the sync changes nothing.
#[test]
fn a_damaged_map_is_not_mistaken_for_an_unreadable_state() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("damaged"));
    etcd.ctl_ok(&["put", "/d/a", "1"]);
    let sync = Sync::start(&etcd, "/d/", &map.0, &["--create"]);
    assert_converges(&etcd, "/d/", &map.0, false, &sync);
    let mut sync = sync;
    assert_eq!(sync.signal_and_wait(SIGTERM), Some(0));
    scribble_data_word(&map.0, shmkv::__private::data_offsets::COUNTERS_CHECK, 1);
    for extra in [&[][..], &["--resnapshot"][..]] {
        let mut s = Sync::start(&etcd, "/d/", &map.0, extra);
        assert_eq!(
            s.wait_exit(Duration::from_secs(20)),
            Some(EXIT_ERROR),
            "{extra:?}"
        );
        let log = s.log();
        assert!(log.contains("corrupted"), "{log}");
        assert!(
            !log.contains("--resnapshot replaces") && !log.contains("replacing the map's"),
            "{log}"
        );
    }
    scribble_data_word(&map.0, shmkv::__private::data_offsets::COUNTERS_CHECK, 1);
    RawMap::open(&map.0, &Options::new())
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!(map_entries(&map.0), vec![(b"/d/a".to_vec(), b"1".to_vec())]);
}

#[test]
fn a_second_sync_is_refused_unless_it_takes_over() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("lease"));
    etcd.ctl_ok(&["put", "/l/a", "1"]);
    let mut first = Sync::start(&etcd, "/l/", &map.0, &["--create"]);
    assert_converges(&etcd, "/l/", &map.0, false, &first);
    let mut second = Sync::start(&etcd, "/l/", &map.0, &[]);
    assert_eq!(second.wait_exit(Duration::from_secs(10)), Some(EXIT_LEASE));
    assert!(
        second.log().contains(&format!("pid {}", first.pid())),
        "{}",
        second.log()
    );
    assert!(first.running());
    // --take-over: the third one holds the lease; the first one stops at
    // its next revision with the lease exit code.
    let third = Sync::start(&etcd, "/l/", &map.0, &["--take-over"]);
    let m = RawMap::open(&map.0, &Options::new()).unwrap();
    wait_for(Duration::from_secs(10), "the take-over", || {
        m.sync_state().unwrap().unwrap().owner_pid == third.pid()
    });
    etcd.ctl_ok(&["put", "/l/b", "2"]);
    assert_eq!(first.wait_exit(Duration::from_secs(10)), Some(EXIT_LEASE));
    etcd.ctl_ok(&["put", "/l/c", "3"]);
    assert_converges(&etcd, "/l/", &map.0, false, &third);
    let st = m.sync_state().unwrap().unwrap();
    assert!(st.owner_alive());
}

/// Values of `size` bytes under `prefix`, 100 per txn (a revision of
/// ~100 * size bytes).
fn big_kvs(prefix: &str, n: usize, size: usize, tag: u8) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("{prefix}k{i:05}"), vec![tag; size]))
        .collect()
}

/// A snapshot page (1000 keys by default) of more than 4 MiB: the gRPC
/// client's default decoding limit is 4 MiB, so the range read failed
/// ("decoded message length too large") and the sync reconnected
/// forever without ever applying the snapshot.
#[test]
fn a_snapshot_page_larger_than_4_mib_converges() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("bigpage"));
    let mut c = etcd.client();
    // 600 keys of 10 KB = 6 MB in the first (and only) page.
    c.put_all(&big_kvs("/bp/", 600, 10_000, b'a'));
    let sync = Sync::start(
        &etcd,
        "/bp/",
        &map.0,
        &["--create", "--arena", "64mb", "--max-size", "256mb"],
    );
    assert_converges(&etcd, "/bp/", &map.0, false, &sync);
}

/// A restarted sync resuming behind more than 4 MiB of events: etcd sends
/// the catch-up (up to 1000 revisions) in one watch response, which the
/// client refused at its default 4 MiB limit; the watch broke on every
/// reconnect and the sync never caught up.
#[test]
fn a_resume_catching_up_more_than_4_mib_converges() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("bigwatch"));
    etcd.ctl_ok(&["put", "/bw/first", "1"]);
    let mut sync = Sync::start(
        &etcd,
        "/bw/",
        &map.0,
        &["--create", "--arena", "64mb", "--max-size", "256mb"],
    );
    assert_converges(&etcd, "/bw/", &map.0, false, &sync);
    assert_eq!(sync.signal_and_wait(SIGTERM), Some(0));
    // 6 revisions of 100 keys of 10 KB (1 MB each, under etcd's request
    // limit) while the sync is stopped: a 6 MB catch-up.
    let mut c = etcd.client();
    for round in 0..6 {
        c.put_all(&big_kvs(&format!("/bw/r{round}/"), 100, 10_000, b'b'));
    }
    let sync = Sync::start(&etcd, "/bw/", &map.0, &[]);
    assert_converges(&etcd, "/bw/", &map.0, false, &sync);
    assert!(sync.log().contains("resuming the watch"), "{}", sync.log());
}

/// etcd replaced by an empty (or an older, restored) cluster with the same
/// cluster id: its revision is below the map's. The sync resumed the
/// watch at a future revision, which etcd accepts silently: it kept the
/// old keys and ignored every change until etcd's revision passed the
/// stored one. A revision going backwards must force a fresh snapshot.
#[test]
fn etcd_revision_going_backwards_forces_a_resnapshot() {
    let mut etcd = Etcd::start();
    let map = MapGuard(unique("wiped"));
    let mut c = etcd.client();
    for round in 0..5 {
        c.put_all(&kvs("/w/", 50, &format!("old{round}")));
    }
    let sync = Sync::start(&etcd, "/w/", &map.0, &["--create"]);
    assert_converges(&etcd, "/w/", &map.0, false, &sync);
    let old_rev = map_revision(&map.0);
    etcd.wipe_and_restart();
    etcd.ctl_ok(&["put", "/w/new", "1"]);
    etcd.ctl_ok(&["put", "/w/k00001", "2"]);
    assert!(etcd.revision() < old_rev);
    // Convergence at etcd's state: wait for a state written at etcd's
    // revision (the map's stored revision is ahead until the re-snapshot).
    let t0 = Instant::now();
    loop {
        let (rev, kvs) = etcd.get_prefix("/w/");
        if map_revision(&map.0) == rev && map_entries(&map.0) == kvs {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "map at revision {} with {} entries, etcd at {rev} with {} keys; log:\n{}",
            map_revision(&map.0),
            map_entries(&map.0).len(),
            kvs.len(),
            tail(&sync.log())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Edge keys with --strip-prefix: the etcd key equal to the prefix (the
/// empty map key), put, overwritten and deleted.
#[test]
fn strip_prefix_maps_the_prefix_key_itself_to_the_empty_key() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("stripempty"));
    etcd.ctl_ok(&["put", "/e/", "root"]);
    etcd.ctl_ok(&["put", "/e/a", "1"]);
    let sync = Sync::start(&etcd, "/e/", &map.0, &["--create", "--strip-prefix"]);
    assert_converges(&etcd, "/e/", &map.0, true, &sync);
    let m = RawMap::open(&map.0, &Options::new()).unwrap();
    assert_eq!(m.get(b"").unwrap().as_deref(), Some(&b"root"[..]));
    etcd.ctl_ok(&["put", "/e/", "root2"]);
    assert_converges(&etcd, "/e/", &map.0, true, &sync);
    etcd.ctl_ok(&["del", "/e/"]);
    assert_converges(&etcd, "/e/", &map.0, true, &sync);
    assert_eq!(m.get(b"").unwrap(), None);
    assert_eq!(m.len(), 1);
}

/// A stripped etcd key landing in the reserved namespace
/// (`PREFIX\0shmkv:sync`): the revision is refused whole, exit 4, and the
/// sync state is never overwritten by etcd's value.
#[test]
fn a_stripped_key_in_the_reserved_namespace_is_refused_with_exit_4() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("stripreserved"));
    etcd.ctl_ok(&["put", "/z/a", "1"]);
    let mut sync = Sync::start(&etcd, "/z/", &map.0, &["--create", "--strip-prefix"]);
    assert_converges(&etcd, "/z/", &map.0, true, &sync);
    let before = map_revision(&map.0);
    let mut c = etcd.client();
    c.txn(vec![
        TxnOp::put(&b"/z/b"[..], &b"2"[..], None),
        TxnOp::put(&b"/z/\0shmkv:sync"[..], &b"garbage"[..], None),
    ]);
    assert_eq!(sync.wait_exit(Duration::from_secs(20)), Some(EXIT_FULL));
    let m = RawMap::open(&map.0, &Options::new()).unwrap();
    let st = m.sync_state().unwrap().unwrap();
    assert_eq!(st.revision, before);
    assert_eq!(st.owner_pid, 0, "the lease was not released");
    assert_eq!(map_entries(&map.0), vec![(b"a".to_vec(), b"1".to_vec())]);
}

/// A sync taken over while etcd is quiet: it stopped only at its next
/// revision, so with no writes it kept running (and watching) forever
/// after losing the lease. It must notice at its next lease check
/// (`LEASE_CHECK`, 1 s).
#[test]
fn a_taken_over_sync_exits_without_waiting_for_a_revision() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("quiet-takeover"));
    etcd.ctl_ok(&["put", "/q/a", "1"]);
    let mut first = Sync::start(&etcd, "/q/", &map.0, &["--create"]);
    assert_converges(&etcd, "/q/", &map.0, false, &first);
    let second = Sync::start(&etcd, "/q/", &map.0, &["--take-over"]);
    let m = RawMap::open(&map.0, &Options::new()).unwrap();
    wait_for(Duration::from_secs(10), "the take-over", || {
        m.sync_state().unwrap().unwrap().owner_pid == second.pid()
    });
    // No etcd writes: the first one must still stop (it checks the lease
    // every second).
    assert_eq!(first.wait_exit(Duration::from_secs(10)), Some(EXIT_LEASE));
    assert!(first.log().contains("taken over"), "{}", first.log());
    etcd.ctl_ok(&["put", "/q/b", "2"]);
    assert_converges(&etcd, "/q/", &map.0, false, &second);
    assert_eq!(m.sync_state().unwrap().unwrap().owner_pid, second.pid());
}

/// One etcd txn that writes a key and deletes it (directly, by range, or
/// from a nested txn), in either order: etcd 3.4 refuses all of these
/// ("duplicate key"), so a revision never holds a put and a delete of one
/// key and the sync's deletes-then-puts order within a revision is exact.
/// Should etcd accept one, the map must still converge to etcd's state.
#[test]
fn a_txn_writing_and_deleting_one_key() {
    use etcd_client::Txn;
    let etcd = Etcd::start();
    let map = MapGuard(unique("putdel"));
    etcd.ctl_ok(&["put", "/pd/k", "0"]);
    let sync = Sync::start(&etcd, "/pd/", &map.0, &["--create"]);
    assert_converges(&etcd, "/pd/", &map.0, false, &sync);
    let del = |k: &str| TxnOp::delete(k, Some(DeleteOptions::new()));
    let put = |k: &str| TxnOp::put(k, "1", None);
    let cases: Vec<Vec<TxnOp>> = vec![
        vec![put("/pd/k"), del("/pd/k")],
        vec![del("/pd/k"), put("/pd/k")],
        vec![
            put("/pd/k"),
            TxnOp::delete("/pd/", Some(DeleteOptions::new().with_prefix())),
        ],
        vec![
            del("/pd/k"),
            TxnOp::txn(Txn::new().and_then(vec![put("/pd/k")])),
        ],
        vec![
            TxnOp::txn(Txn::new().and_then(vec![put("/pd/k")])),
            del("/pd/k"),
        ],
    ];
    let mut c = etcd.client();
    let mut accepted = 0;
    for ops in cases {
        if c.try_txn(ops).is_ok() {
            accepted += 1;
        }
        assert_converges(&etcd, "/pd/", &map.0, false, &sync);
    }
    eprintln!("etcd accepted {accepted} of the 5 put+delete txns");
}

/// The map destroyed under a running sync (`shmkv destroy`): the next
/// revision fails loudly (exit 1) instead of being applied to a removed
/// segment nobody can open.
#[test]
fn destroying_the_map_stops_the_sync() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("destroyed"));
    etcd.ctl_ok(&["put", "/d/a", "1"]);
    let mut sync = Sync::start(&etcd, "/d/", &map.0, &["--create"]);
    assert_converges(&etcd, "/d/", &map.0, false, &sync);
    assert!(RawMap::destroy_by_name(&map.0, &Options::new()).unwrap());
    etcd.ctl_ok(&["put", "/d/b", "2"]);
    let code = sync.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(EXIT_ERROR), "{}", sync.log());
}

/// Extreme numeric arguments: a huge --summary-interval (a timer far in
/// the future) and --page-size 1 (one key per range read).
#[test]
fn extreme_intervals_and_page_sizes_do_not_panic() {
    let etcd = Etcd::start();
    let map = MapGuard(unique("extreme-args"));
    let mut c = etcd.client();
    c.put_all(&kvs("/x/", 5, "a"));
    let mut sync = Sync::start(
        &etcd,
        "/x/",
        &map.0,
        &[
            "--create",
            "--page-size",
            "1",
            "--summary-interval",
            "18446744073709551615",
            "--connect-timeout",
            "18446744073709551615",
        ],
    );
    assert_converges(&etcd, "/x/", &map.0, false, &sync);
    etcd.ctl_ok(&["put", "/x/new", "1"]);
    assert_converges(&etcd, "/x/", &map.0, false, &sync);
    assert!(sync.running(), "{}", sync.log());
    assert_eq!(sync.signal_and_wait(SIGTERM), Some(0));
}

/// A quiet prefix in a busy etcd: progress notifications move the stored
/// revision up with etcd's, so after a compaction past the prefix's last
/// event a restarted sync still resumes its watch (no fresh snapshot).
/// Before, the stored revision stayed at the prefix's last event, and every
/// reconnection after such a compaction took a whole snapshot.
#[test]
fn progress_notifications_keep_a_quiet_prefix_resumable_after_compaction() {
    let etcd = Etcd::start_with(&["--experimental-watch-progress-notify-interval", "200ms"]);
    let map = MapGuard(unique("progress"));
    let mut c = etcd.client();
    c.put_all(&kvs("/quiet/", 20, "a"));
    let mut sync = Sync::start(&etcd, "/quiet/", &map.0, &["--create"]);
    assert_converges(&etcd, "/quiet/", &map.0, false, &sync);
    let last_event = RawMap::open(&map.0, &Options::new())
        .unwrap()
        .sync_state()
        .unwrap()
        .unwrap()
        .last_event_unix_ms;
    // Busy elsewhere: revisions that are not the prefix's.
    c.put_all(&kvs("/busy/", 200, "b"));
    let busy = etcd.revision();
    wait_for(
        Duration::from_secs(15),
        "the stored revision to follow etcd's through progress notifications",
        || map_revision(&map.0) >= busy,
    );
    let st = RawMap::open(&map.0, &Options::new())
        .unwrap()
        .sync_state()
        .unwrap()
        .unwrap();
    assert_eq!(
        st.last_event_unix_ms, last_event,
        "a progress notification is not an event"
    );
    assert_eq!(sync.signal_and_wait(SIGTERM), Some(0));
    etcd.ctl_ok(&["compact", &busy.to_string()]);
    let sync = Sync::start(&etcd, "/quiet/", &map.0, &[]);
    c.put_all(&kvs("/quiet/", 5, "c"));
    assert_converges(&etcd, "/quiet/", &map.0, false, &sync);
    let log = sync.log();
    assert!(log.contains("resuming the watch"), "{log}");
    assert!(!log.contains("snapshot applied"), "{log}");
}
