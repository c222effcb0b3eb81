//! The sync state key (`shmkv sync`): reserved keys refused in every write
//! API, the state committed with its batch, hidden from enumerations.
#![allow(unreachable_pub)]

mod common;

use common::Cleanup;
use shmkv::{Error, Options, RawMap, ShmMap, SourceKind, SyncState, SYNC_STATE_KEY};

fn state(rev: i64) -> SyncState {
    SyncState {
        source: SourceKind::Etcd,
        cluster_id: 7,
        prefix: b"/p/".to_vec(),
        strip_prefix: false,
        endpoints: "http://127.0.0.1:1".into(),
        revision: rev,
        seen_revision: rev + 2,
        last_event_unix_ms: 1,
        updated_unix_ms: 2,
        owner_pid: std::process::id(),
        owner_start_time: shmkv::process_start_time(std::process::id()).unwrap(),
    }
}

#[test]
fn reserved_keys_are_refused_in_every_write_api() {
    let c = Cleanup::new("reserved");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let reserved: &[&[u8]] = &[SYNC_STATE_KEY, b"\0shmkv:", b"\0shmkv:other"];
    for k in reserved {
        assert!(matches!(m.insert(k, b"x"), Err(Error::ReservedKey { .. })));
        assert!(matches!(m.remove(k), Err(Error::ReservedKey { .. })));
        let r = m.write(|b| b.insert(k, b"x"));
        assert!(matches!(r, Err(Error::ReservedKey { .. })));
        let r = m.write(|b| b.remove(k));
        assert!(matches!(r, Err(Error::ReservedKey { .. })));
        let mut t = m.begin().unwrap();
        assert!(matches!(t.insert(k, b"x"), Err(Error::ReservedKey { .. })));
        assert!(matches!(t.remove(k), Err(Error::ReservedKey { .. })));
        t.abort();
    }
    // Near misses are ordinary keys.
    m.insert(b"\0shmkv", b"1").unwrap();
    m.insert(b"shmkv:sync", b"1").unwrap();
    assert_eq!(m.len(), 2);
    drop(m);

    let c2 = Cleanup::new("reserved-typed");
    let t: ShmMap<str, u64> = ShmMap::create(&c2.name, &c2.opts).unwrap();
    let r = t.insert("\0shmkv:sync", &1);
    assert!(matches!(r, Err(Error::ReservedKey { .. })), "{r:?}");
    assert!(matches!(
        t.write(|b| b.insert("\0shmkv:x", &1)),
        Err(Error::ReservedKey { .. })
    ));
}

#[test]
fn the_sync_state_commits_with_its_batch_and_is_hidden() {
    let c = Cleanup::new("syncstate");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    assert_eq!(m.sync_state().unwrap(), None);
    m.write(|b| {
        b.insert(b"a", b"1")?;
        b.set_sync_state(&state(5))?;
        assert_eq!(b.sync_state()?, Some(state(5)));
        Ok(())
    })
    .unwrap();
    assert_eq!(m.sync_state().unwrap(), Some(state(5)));
    // A batch that fails applies neither its data nor its revision.
    let r: shmkv::Result<()> = m.write(|b| {
        b.insert(b"b", b"2")?;
        b.set_sync_state(&state(6))?;
        Err(Error::Value("abort".into()))
    });
    assert!(r.is_err());
    assert_eq!(m.sync_state().unwrap().unwrap().revision, 5);
    assert_eq!(m.get(b"b").unwrap(), None);
    // Hidden from len, entries, stats; readable by key.
    assert_eq!(m.len(), 1);
    assert!(!m.is_empty());
    assert_eq!(m.entries().unwrap().len(), 1);
    assert_eq!(m.stats().unwrap().live, 1);
    assert!(m.get(SYNC_STATE_KEY).unwrap().is_some());
    m.view(|v| {
        assert_eq!(v.entries()?.len(), 1);
        Ok(())
    })
    .unwrap();
    // Through a transaction, and cleared.
    let mut t = m.begin().unwrap();
    t.set_sync_state(&state(9)).unwrap();
    assert_eq!(t.sync_state().unwrap().unwrap().revision, 9);
    t.commit().unwrap();
    assert_eq!(m.sync_state().unwrap().unwrap().revision, 9);
    m.write(|b| b.remove(b"a").map(drop)).unwrap();
    assert_eq!(m.len(), 0);
    assert!(m.is_empty());
    assert!(m.sync_state().unwrap().unwrap().owner_alive());
    m.write(|b| b.clear_sync_state()).unwrap();
    assert_eq!(m.sync_state().unwrap(), None);
    // A corrupted state reads as Corrupted, never a panic (written behind
    // the API's back by a test hook: a user write of the key is refused).
    let mut unknown_version = state(3).encode();
    unknown_version[4] = 2;
    for bad in [&b"garbage"[..], &unknown_version, b""] {
        m.write(|b| shmkv::__private::set_raw_sync_state(b, bad))
            .unwrap();
        assert!(
            matches!(m.sync_state(), Err(Error::Corrupted(_))),
            "{:?}",
            m.sync_state()
        );
        assert!(matches!(
            m.write(|b| b.sync_state()),
            Err(Error::Corrupted(_))
        ));
        // Still hidden from the user's view of the map.
        assert_eq!(m.len(), 0);
        assert!(m.entries().unwrap().is_empty());
    }
    m.write(|b| b.clear_sync_state()).unwrap();
    assert_eq!(m.sync_state().unwrap(), None);
}

#[test]
fn a_typed_map_hides_the_sync_state_from_keys_and_entries() {
    let c = Cleanup::new("syncstate-typed");
    let t: ShmMap<str, u64> = ShmMap::create(&c.name, &c.opts).unwrap();
    t.insert("k", &3).unwrap();
    let raw = RawMap::open(&c.name, &Options::new()).unwrap();
    raw.write(|b| b.set_sync_state(&state(1))).unwrap();
    assert_eq!(t.keys().unwrap(), vec!["k".to_string()]);
    assert_eq!(t.entries().unwrap(), vec![("k".to_string(), 3)]);
    assert_eq!(t.len(), 1);
    assert_eq!(t.sync_state().unwrap().unwrap().revision, 1);
}

/// `len()` while another thread adds and removes the sync state and never
/// touches a user key: the user entries are always 5. `len` read the
/// live count and then looked the key up, so a state added between the
/// two reads was subtracted from a count that did not include it (4), and
/// one removed between them was not subtracted from a count that did (6):
/// counts the map never had.
#[test]
fn len_is_exact_while_the_sync_state_comes_and_goes() {
    count_is_exact_while_the_sync_state_comes_and_goes("len", |m| m.len());
}

/// The same for `Stats::live` (`shmkv stat`/`ls` entry counts).
#[test]
fn stats_live_is_exact_while_the_sync_state_comes_and_goes() {
    count_is_exact_while_the_sync_state_comes_and_goes("stats", |m| {
        m.stats().unwrap().live as usize
    });
}

fn count_is_exact_while_the_sync_state_comes_and_goes(what: &str, count: fn(&RawMap) -> usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = Cleanup::new(&format!("syncstate-{what}"));
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    for i in 0..5u8 {
        m.insert(&[b'k', i], b"v").unwrap();
    }
    let stop = AtomicBool::new(false);
    let (bad, reads) = std::thread::scope(|s| {
        s.spawn(|| {
            let w = RawMap::open(&c.name, &Options::new()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                w.write(|b| b.set_sync_state(&state(1))).unwrap();
                w.write(|b| b.clear_sync_state().map(drop)).unwrap();
            }
        });
        let t0 = std::time::Instant::now();
        let (mut bad, mut reads) = (Vec::new(), 0u64);
        while t0.elapsed() < std::time::Duration::from_secs(3) && bad.len() < 5 {
            let n = count(&m);
            reads += 1;
            if n != 5 {
                bad.push(n);
            }
        }
        stop.store(true, Ordering::Relaxed);
        (bad, reads)
    });
    assert!(
        bad.is_empty(),
        "{what} gave {bad:?} (user entries: 5) in {reads} reads"
    );
}

/// Integer keys are 8 little-endian bytes: 256 u64 (and i64) values encode
/// to bytes beginning with `"\0shmkv:"` (e.g. `u64::from_le_bytes(*b"\0shmkv:x")`)
/// and were refused with `ReservedKey`, although an 8-byte key can never be
/// a system key (`SYNC_STATE_KEY` is 11 bytes). Legitimate ids must store.
#[test]
fn integer_keys_whose_bytes_begin_with_the_reserved_prefix_are_ordinary() {
    let c = Cleanup::new("syncstate-intkeys");
    let t: ShmMap<u64, u64> = ShmMap::create(&c.name, &c.opts).unwrap();
    let k = u64::from_le_bytes(*b"\0shmkv:x");
    t.insert(&k, &1).unwrap();
    t.write(|b| b.insert(&(k + (1 << 56)), &2)).unwrap();
    assert_eq!(t.get(&k).unwrap(), Some(1));
    assert_eq!(t.len(), 2);
    let mut keys = t.keys().unwrap();
    keys.sort();
    assert_eq!(keys, vec![k, k + (1 << 56)]);
    assert!(t.remove(&k).unwrap());
    assert!(t.write(|b| b.remove(&(k + (1 << 56)))).unwrap());
    assert!(t.is_empty());
    drop(t);
    let c2 = Cleanup::new("syncstate-intkeys-i64");
    let t: ShmMap<i64, u64> = ShmMap::create(&c2.name, &c2.opts).unwrap();
    let k = i64::from_le_bytes(*b"\0shmkv:\xff");
    t.insert(&k, &3).unwrap();
    assert_eq!(t.get(&k).unwrap(), Some(3));
}

/// A sync killed but not yet reaped by its parent (a zombie: a supervisor
/// that does not wait, a container init that does not reap) still has its
/// `/proc/<pid>/stat` with the same start time: `owner_alive` said yes, so
/// every restarted sync was refused the lease (exit 3) for as long as the
/// zombie stayed. A zombie holds nothing.
#[test]
fn a_zombie_owner_is_not_alive() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let start = shmkv::process_start_time(pid).unwrap();
    // Wait until it has exited (a zombie: not reaped yet).
    let t0 = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
        if state == 'Z' {
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut s = state(1);
    s.owner_pid = pid;
    s.owner_start_time = start;
    let alive = s.owner_alive();
    child.wait().unwrap();
    assert!(!alive, "a zombie owner counted as a live sync");
    // A live owner still counts.
    assert!(state(1).owner_alive());
}
