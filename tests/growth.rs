//! Online growth and compaction: new generations are built and published
//! while readers keep reading; references stay valid; memory is bounded.
#![allow(unreachable_pub)]

mod common;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{arg, assert_removed, crash_point, results, role, spawn, Cleanup, KillOnDrop};
use shmkv::__private::arm;
use shmkv::{Error, Options, RawMap, Size};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// SysV mappings of this process (lines of /proc/self/maps naming SYSV).
fn sysv_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("SYSV"))
        .count()
}

/// Sizes of the live segments created by `pid` (from /proc/sysvipc/shm).
fn segments_of(pid: u32) -> Vec<u64> {
    common::sysv_segments()
        .iter()
        .filter(|r| r.cpid == pid)
        .map(|r| r.size)
        .collect()
}

/// Size of a segment, if it exists.
fn shm_size(shmid: i32) -> Option<u64> {
    // SAFETY: shmid_ds is plain data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid, writable shmid_ds.
    let rc = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) };
    (rc == 0).then_some(ds.shm_segsz as u64)
}

/// Whether a segment id exists, and whether it is marked for removal.
fn segment_state(shmid: i32) -> Option<bool> {
    // SAFETY: shmid_ds is plain data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid, writable shmid_ds.
    let rc = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) };
    (rc == 0).then_some(u32::from(ds.shm_perm.mode) & 0o1000 != 0)
}

#[test]
fn grows_from_16_slots_to_many_entries() {
    let n = env_or("SHMKV_GROWTH_ENTRIES", 1_000_000);
    let c = Cleanup::with("grow", Options::new().capacity(14).arena_size(4096u64));
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let t = Instant::now();
    let mut generations = vec![m.stats().unwrap().generation];
    for i in 0..n {
        m.insert(&i.to_le_bytes(), &(i * 3).to_le_bytes()).unwrap();
        if i.is_power_of_two() {
            generations.push(m.stats().unwrap().generation);
        }
    }
    let took = t.elapsed();
    let s = m.stats().unwrap();
    eprintln!("{n} inserts from 16 slots / 4 KiB: {took:?}; {s:?}");
    assert_eq!(m.len() as u64, n);
    for i in 0..n {
        assert_eq!(
            m.get(&i.to_le_bytes()).unwrap().unwrap(),
            (i * 3).to_le_bytes()
        );
    }
    generations.dedup();
    assert!(generations.len() >= 5, "generations seen: {generations:?}");
    assert_eq!(s.mapped_generations, 1, "retired generations are detached");
    m.destroy().unwrap();
    assert_removed(&s);
}

#[test]
fn update_heavy_loop_compacts_in_bounded_memory() {
    let rounds = env_or("SHMKV_UPDATE_ROUNDS", 1_000);
    let c = Cleanup::with(
        "updates",
        Options::new()
            .capacity(1000)
            .arena_size(Size::parse("256kb").unwrap()),
    );
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let mut max_segment = [0u64; 2];
    let mut max_ipcs_total = 0;
    let mut generations = 0;
    for r in 0..rounds {
        m.write(|b| {
            (0..1000u64).try_for_each(|k| b.insert(&k.to_le_bytes(), &[(k + r) as u8; 100]))
        })
        .unwrap();
        if r % 10 == 0 {
            let s = m.stats().unwrap();
            let half = usize::from(r >= rounds / 2);
            max_segment[half] = max_segment[half].max(s.segment_size);
            let ours: u64 = [s.root_shmid, s.data_shmid]
                .iter()
                .filter_map(|&id| shm_size(id))
                .sum();
            max_ipcs_total = max_ipcs_total.max(ours);
            generations = s.generation;
        }
    }
    // Also single-key updates, the same 1,000 keys.
    for i in 0..rounds * 100 {
        let k = i % 1000;
        m.insert(&k.to_le_bytes(), &[(k + i) as u8; 100]).unwrap();
    }
    let s = m.stats().unwrap();
    max_segment[1] = max_segment[1].max(s.segment_size);
    eprintln!(
        "{} writes of the same 1,000 keys: {} generations; data segment max {} B (first half) {} B (second half); \
         this map's segments in ipcs at most {} B; {:?}",
        rounds * 1000 + rounds * 100,
        s.generation,
        max_segment[0],
        max_segment[1],
        max_ipcs_total,
        s
    );
    assert!(generations > 3, "compactions happened");
    // Bounded: the footprint stops growing once it fits the live data (about
    // 1,000 records of 128 B, twice over, plus slots), whatever the number
    // of writes.
    assert!(max_segment[1] <= max_segment[0], "{max_segment:?}");
    assert!(max_segment[1] <= 1 << 20, "{max_segment:?}");
    assert!(max_ipcs_total <= (1 << 20) + 512, "{max_ipcs_total}");
    assert_eq!(m.len(), 1000);
    m.destroy().unwrap();
    assert_removed(&s);
}

#[test]
fn references_survive_forced_switches_and_mappings_stay_bounded() {
    if role().as_deref() != Some("holder") {
        // Run in a process of its own, so that /proc/self/maps shows only
        // this map's mappings.
        let c = Cleanup::new("refs");
        let test = "references_survive_forced_switches_and_mappings_stay_bounded";
        let (status, lines) = results(spawn(test, "holder", &[("MAP", c.name.clone())]));
        assert!(status.success());
        assert_eq!(lines, vec!["ok".to_string()]);
        return;
    }
    let m = RawMap::create(&arg("MAP"), &Options::new()).unwrap();
    m.insert(b"held", b"the original bytes").unwrap();
    assert_eq!(sysv_mappings(), 2, "root + data segment");
    let mut held = Vec::new();
    let mut old_ids = Vec::new();
    for i in 0..100u32 {
        held.push((i, m.get_ref(b"held").unwrap().unwrap()));
        m.insert(b"held", format!("version {i}").as_bytes())
            .unwrap();
        old_ids.push(m.stats().unwrap().data_shmid);
        m.compact().unwrap();
    }
    assert_eq!(m.stats().unwrap().generation, 101);
    for (i, r) in &held {
        let want = if *i == 0 {
            "the original bytes".to_string()
        } else {
            format!("version {}", i - 1)
        };
        assert_eq!(&**r, want.as_bytes());
    }
    // Every held reference pins its generation: 100 retired + current.
    assert_eq!(m.stats().unwrap().mapped_generations, 101);
    assert_eq!(sysv_mappings(), 102);
    // Retired segments are marked for removal while still mapped here.
    assert!(old_ids.iter().all(|&id| segment_state(id) == Some(true)));
    drop(held);
    // Once nothing refers to them, retired mappings are detached, and the
    // kernel frees them (no other process has them attached).
    assert_eq!(m.stats().unwrap().mapped_generations, 1);
    assert_eq!(
        sysv_mappings(),
        2,
        "only root + current data segment stay mapped"
    );
    assert!(old_ids.iter().all(|&id| segment_state(id).is_none()));
    let s = m.stats().unwrap();
    m.destroy().unwrap();
    assert_removed(&s);
    println!("RESULT ok");
}

/// A self-validating value: key, counter and a checksum over both.
fn value(k: u64, counter: u64) -> Vec<u8> {
    let len = 8 + (k * 13 + counter * 7) % 120;
    let mut v = Vec::with_capacity(len as usize + 24);
    v.extend_from_slice(&k.to_le_bytes());
    v.extend_from_slice(&counter.to_le_bytes());
    v.extend((0..len).map(|i| (i ^ k ^ counter) as u8));
    let sum = xxhash_rust::xxh3::xxh3_64(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

fn check(k: u64, v: &[u8]) -> bool {
    v.len() >= 24
        && v[..8] == k.to_le_bytes()
        && xxhash_rust::xxh3::xxh3_64(&v[..v.len() - 8]).to_le_bytes() == v[v.len() - 8..]
}

const STABLE: u64 = 2_000;

#[test]
fn readers_stay_correct_while_the_writer_grows_and_compacts() {
    if role().as_deref() == Some("reader") {
        let m = RawMap::open(&arg("MAP"), &Options::new().read_only(true)).unwrap();
        let end = Instant::now() + Duration::from_secs_f64(arg("SECS").parse().unwrap());
        let (mut reads, mut invalid, mut missing, mut held_changed) = (0u64, 0u64, 0u64, 0u64);
        let mut rng = std::process::id() as u64 | 1;
        let mut generations = std::collections::BTreeSet::new();
        while Instant::now() < end {
            // Keep one reference across many switches and check it at the end.
            let held = m.get_ref(&0u64.to_le_bytes()).unwrap().unwrap();
            let copy = held.to_vec();
            for _ in 0..2000 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let k = rng % STABLE;
                match m.get_ref(&k.to_le_bytes()).unwrap() {
                    Some(v) => invalid += u64::from(!check(k, &v)),
                    None => missing += 1,
                }
                reads += 1;
            }
            held_changed += u64::from(*held != *copy);
            generations.insert(m.stats().unwrap().generation);
        }
        let mapped = m.stats().unwrap().mapped_generations;
        println!(
            "RESULT reads={reads} invalid={invalid} missing={missing} held_changed={held_changed} generations={} mapped={mapped}",
            generations.len()
        );
        return;
    }
    let secs = std::env::var("SHMKV_GROWTH_SECS").unwrap_or_else(|_| "3".into());
    let c = Cleanup::with("growmp", Options::new().capacity(14).arena_size(4096u64));
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.write(|b| (0..STABLE).try_for_each(|k| b.insert(&k.to_le_bytes(), &value(k, 0))))
        .unwrap();
    let env = [("MAP", c.name.clone()), ("SECS", secs.clone())];
    let test = "readers_stay_correct_while_the_writer_grows_and_compacts";
    let mut r1 = KillOnDrop(Some(spawn(test, "reader", &env)));
    let mut r2 = KillOnDrop(Some(spawn(test, "reader", &env)));
    let end = Instant::now() + Duration::from_secs_f64(secs.parse::<f64>().unwrap() + 0.2);
    let (mut counter, mut extra, mut compactions) = (0u64, STABLE, 0u64);
    while Instant::now() < end {
        counter += 1;
        // Rewrite stable keys (garbage), add and remove churn keys (growth,
        // tombstones), and force a compaction now and then.
        m.write(|b| {
            for k in (counter % 50..STABLE).step_by(50) {
                b.insert(&k.to_le_bytes(), &value(k, counter))?;
            }
            for _ in 0..20 {
                b.insert(&extra.to_le_bytes(), &value(extra, counter))?;
                extra += 1;
            }
            for k in (extra - 40).max(STABLE)..(extra - 25).max(STABLE) {
                b.remove(&k.to_le_bytes())?;
            }
            Ok(())
        })
        .unwrap();
        if counter % 25 == 0 {
            m.compact().unwrap();
            compactions += 1;
        }
    }
    let s = m.stats().unwrap();
    eprintln!("writer: {counter} batches, {compactions} forced compactions, {s:?}");
    assert!(s.generation > 10);
    for r in [&mut r1, &mut r2] {
        let (status, lines) = results(r.0.take().unwrap());
        assert!(status.success());
        eprintln!("{}", lines[0]);
        let f: HashMap<&str, u64> = lines[0]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.parse().unwrap()))
            .collect();
        assert!(f["reads"] > 10_000);
        assert_eq!(f["invalid"], 0);
        assert_eq!(f["missing"], 0);
        assert_eq!(f["held_changed"], 0);
        assert!(f["generations"] > 1, "the reader followed switches");
        assert!(f["mapped"] <= 2, "reader keeps only referenced mappings");
    }
    m.destroy().unwrap();
    assert_removed(&s);
}

#[test]
fn max_size_is_enforced_and_nothing_is_lost() {
    let c = Cleanup::with(
        "maxsize",
        Options::new()
            .capacity(14)
            .arena_size(4096u64)
            .max_size(Size::parse("64kb").unwrap()),
    );
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let mut n = 0u64;
    let err = loop {
        match m.insert(&n.to_le_bytes(), &[n as u8; 100]) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Full { .. }), "{err:?}");
    assert!(n > 100, "grew until the bound: {n}");
    let s = m.stats().unwrap();
    assert!(s.segment_size + 512 <= 64 << 10, "{s:?}");
    for i in 0..n {
        assert_eq!(
            m.get(&i.to_le_bytes()).unwrap().unwrap(),
            vec![i as u8; 100]
        );
    }
    assert!(matches!(
        m.insert(b"huge", &vec![0; 64 << 10]),
        Err(Error::ValueTooLarge { .. })
    ));
    // Removing and compacting makes room again.
    m.write(|b| (0..n / 2).try_for_each(|i| b.remove(&i.to_le_bytes()).map(drop)))
        .unwrap();
    m.compact().unwrap();
    for i in 0..n / 4 {
        m.insert(&(1_000_000 + i).to_le_bytes(), &[1; 100]).unwrap();
    }
    assert_eq!(m.len() as u64, n - n / 2 + n / 4);
    let s = m.stats().unwrap();
    m.destroy().unwrap();
    assert_removed(&s);
}

#[test]
fn writer_killed_during_resize_leaves_no_orphan() {
    if role().as_deref() == Some("resizer") {
        let m = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
        arm(crash_point(&arg("POINT")), 0);
        // Enough new keys to outgrow 16 slots.
        let _ = m.write(|b| (100..140u64).try_for_each(|k| b.insert(&k.to_le_bytes(), &[9; 50])));
        println!("RESULT survived");
        return;
    }
    let test = "writer_killed_during_resize_leaves_no_orphan";
    for (point, applied) in [("MidResize", false), ("AfterPublish", true)] {
        let c = Cleanup::with(
            "resizekill",
            Options::new().capacity(14).arena_size(4096u64),
        );
        let m = RawMap::create(&c.name, &c.opts).unwrap();
        m.write(|b| (0..10u64).try_for_each(|k| b.insert(&k.to_le_bytes(), &[k as u8; 50])))
            .unwrap();
        let original = m.stats().unwrap().data_shmid;
        let child = spawn(
            test,
            "resizer",
            &[("MAP", c.name.clone()), ("POINT", point.into())],
        );
        let pid = child.id();
        let (status, _) = results(child);
        assert_eq!(status.signal(), Some(9), "{point}");
        // The dead writer's new segment exists until recovery.
        assert_eq!(
            segments_of(pid).len(),
            1,
            "{point}: the dead writer made one segment"
        );
        // Readers see a complete map: before or after the whole batch.
        let len = m.len();
        assert_eq!(len, if applied { 50 } else { 10 }, "{point}");
        for k in 0..10u64 {
            assert_eq!(m.get(&k.to_le_bytes()).unwrap().unwrap(), vec![k as u8; 50]);
        }
        // The next writer recovers: no orphan segment of this map remains.
        m.insert(b"after", b"recovery").unwrap();
        let s = m.stats().unwrap();
        let theirs = segments_of(pid);
        if applied {
            assert_eq!(
                theirs.len(),
                1,
                "{point}: the published generation is in force"
            );
            assert_ne!(s.data_shmid, original);
            // The old segment: removed (only our retired mapping may hold it).
            assert_ne!(
                segment_state(original),
                Some(false),
                "{point}: old segment not removed"
            );
        } else {
            assert!(
                theirs.is_empty(),
                "{point}: the unpublished generation was removed"
            );
            assert_eq!(s.data_shmid, original);
        }
        assert_eq!(m.len(), len + 1);
        m.destroy().unwrap();
        assert_removed(&s);
        assert!(segments_of(pid).is_empty());
    }
}
