//! Real processes sharing one map: the test binary re-executes itself in a
//! role (writer, reader) and reports `RESULT` lines.
#![allow(unreachable_pub)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{arg, assert_removed, results, role, spawn, Cleanup, KillOnDrop};
use shmkv::{Options, ShmMap};

/// A self-checking value: a reader can tell a torn or misplaced value.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct Checked {
    key: u64,
    counter: u64,
    payload: Vec<u8>,
    checksum: u64,
}

fn checksum(key: u64, counter: u64, payload: &[u8]) -> u64 {
    let mut b = Vec::with_capacity(16 + payload.len());
    b.extend_from_slice(&key.to_le_bytes());
    b.extend_from_slice(&counter.to_le_bytes());
    b.extend_from_slice(payload);
    xxhash_rust::xxh3::xxh3_64(&b)
}

fn make(key: u64, counter: u64) -> Checked {
    let len = ((key * 7 + counter * 13) % 200) as usize;
    let payload: Vec<u8> = (0..len).map(|i| (i as u64 ^ counter ^ key) as u8).collect();
    Checked {
        key,
        counter,
        checksum: checksum(key, counter, &payload),
        payload,
    }
}

fn valid(key: u64, v: &ArchivedChecked) -> bool {
    v.key == key && v.checksum == checksum(key, v.counter.to_native(), &v.payload)
}

/// xorshift: a tiny deterministic generator for children.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

type Map = ShmMap<u64, Checked>;

/// A small, hot key set: readers keep hitting the buckets being written.
const KEYS: u64 = 16;

fn reader_role() {
    let name = arg("MAP");
    let secs: f64 = arg("SECS").parse().unwrap();
    let read_only = std::env::var("READ_ONLY").is_ok();
    let map: Map = ShmMap::open(&name, &Options::new().read_only(read_only)).unwrap();
    let mut rng = std::process::id() as u64 | 1;
    let mut last: HashMap<u64, u64> = HashMap::new();
    let (mut reads, mut torn, mut stale, mut missing) = (0u64, 0u64, 0u64, 0u64);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        for _ in 0..256 {
            let k = next(&mut rng) % KEYS;
            match map.get_archived(&k) {
                Ok(Some(v)) => {
                    if !valid(k, &v) {
                        torn += 1;
                    }
                    let c = v.counter.to_native();
                    let prev = last.entry(k).or_insert(0);
                    if c < *prev {
                        stale += 1;
                    }
                    *prev = c;
                }
                Ok(None) => missing += 1,
                // A value that does not validate as an archive is torn too.
                Err(shmkv::Error::Value(_)) => torn += 1,
                Err(e) => panic!("read failed: {e}"),
            }
            reads += 1;
        }
    }
    println!("RESULT reads={reads} torn={torn} stale={stale} missing={missing}");
}

fn writer_role() {
    let name = arg("MAP");
    let secs: f64 = arg("SECS").parse().unwrap();
    let map: Map = ShmMap::open(&name, &Options::new()).unwrap();
    let mut rng = std::process::id() as u64 | 1;
    let mut counters: HashMap<u64, u64> = HashMap::new();
    let mut writes = 0u64;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let k = next(&mut rng) % KEYS;
        let c = counters
            .entry(k)
            .or_insert_with(|| map.get(&k).unwrap().unwrap().counter);
        *c += 1;
        match map.insert(&k, &make(k, *c)) {
            Ok(()) => writes += 1,
            // The arena is finite until compaction exists: stop cleanly.
            Err(shmkv::Error::Full { .. }) => break,
            Err(e) => panic!("write failed: {e}"),
        }
    }
    println!("RESULT writes={writes}");
}

fn parse(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

#[test]
fn one_writer_two_readers_no_torn_or_stale_values() {
    match role().as_deref() {
        Some("reader") => return reader_role(),
        Some("writer") => return writer_role(),
        _ => {}
    }
    let secs = std::env::var("SHMKV_MP_SECS").unwrap_or_else(|_| "3".into());
    let c = Cleanup::with("mp", Options::new().capacity(KEYS).arena_size(256u64 << 20));
    let map: Map = ShmMap::create(&c.name, &c.opts).unwrap();
    map.write(|b| (0..KEYS).try_for_each(|k| b.insert(&k, &make(k, 0))))
        .unwrap();
    let env = [("MAP", c.name.clone()), ("SECS", secs.clone())];
    let ro_env = [
        ("MAP", c.name.clone()),
        ("SECS", secs),
        ("READ_ONLY", "1".into()),
    ];
    let test = "one_writer_two_readers_no_torn_or_stale_values";
    let mut writer = KillOnDrop(Some(spawn(test, "writer", &env)));
    let mut r1 = KillOnDrop(Some(spawn(test, "reader", &env)));
    let mut r2 = KillOnDrop(Some(spawn(test, "reader", &ro_env)));
    let (ws, wl) = results(writer.0.take().unwrap());
    let (s1, l1) = results(r1.0.take().unwrap());
    let (s2, l2) = results(r2.0.take().unwrap());
    assert!(
        ws.success() && s1.success() && s2.success(),
        "{ws:?} {s1:?} {s2:?}"
    );
    let w = parse(&wl[0]);
    eprintln!("writer: {:?}", w);
    assert!(w["writes"] > 100, "writer made progress");
    for l in [&l1[0], &l2[0]] {
        let r = parse(l);
        eprintln!("reader: {r:?}");
        assert!(r["reads"] > 1000);
        assert_eq!(r["torn"], 0);
        assert_eq!(r["stale"], 0);
        assert_eq!(r["missing"], 0);
    }
    for k in 0..KEYS {
        let v = map.get_archived(&k).unwrap().unwrap();
        assert!(valid(k, &v));
    }
    let stats = map.stats().unwrap();
    assert_eq!(stats.version, w["writes"] + 1);
    map.destroy().unwrap();
    assert_removed(&stats);
}

#[test]
fn a_process_writes_another_reads() {
    match role().as_deref() {
        Some("create_and_fill") => {
            let map: Map = ShmMap::create(&arg("MAP"), &Options::new().capacity(500)).unwrap();
            for k in 0..500 {
                map.insert(&k, &make(k, k + 1)).unwrap();
            }
            println!("RESULT done");
            return;
        }
        Some("read_all") => {
            let map: Map = ShmMap::open(&arg("MAP"), &Options::new().read_only(true)).unwrap();
            let ok = (0..500u64).all(|k| map.get(&k).unwrap() == Some(make(k, k + 1)));
            println!("RESULT ok={} len={}", ok as u64, map.len());
            return;
        }
        _ => {}
    }
    let c = Cleanup::with("xproc", Options::new().capacity(500));
    let env = [("MAP", c.name.clone())];
    let test = "a_process_writes_another_reads";
    let (s, _) = results(spawn(test, "create_and_fill", &env));
    assert!(s.success());
    // The map outlives the process that created it.
    let (s, l) = results(spawn(test, "read_all", &env));
    assert!(s.success());
    assert_eq!(parse(&l[0]), parse("ok=1 len=500"));
    let map: Map = ShmMap::open(&c.name, &c.opts).unwrap();
    let stats = map.stats().unwrap();
    map.destroy().unwrap();
    assert_removed(&stats);
}

const BATCH_KEYS: u64 = 16;

#[test]
fn views_never_see_half_a_batch() {
    match role().as_deref() {
        Some("batcher") => {
            let map: ShmMap<u64, u64> = ShmMap::open(&arg("MAP"), &Options::new()).unwrap();
            let end = Instant::now() + Duration::from_secs_f64(arg("SECS").parse().unwrap());
            let mut id = 0u64;
            while Instant::now() < end {
                id += 1;
                map.write(|b| (0..BATCH_KEYS).try_for_each(|k| b.insert(&k, &id)))
                    .unwrap();
            }
            println!("RESULT batches={id}");
            return;
        }
        Some("viewer") => {
            let map: ShmMap<u64, u64> =
                ShmMap::open(&arg("MAP"), &Options::new().read_only(true)).unwrap();
            let end = Instant::now() + Duration::from_secs_f64(arg("SECS").parse().unwrap());
            let (mut views, mut mixed, mut last) = (0u64, 0u64, 0u64);
            while Instant::now() < end {
                let ids = map
                    .view(|v| {
                        (0..BATCH_KEYS)
                            .map(|k| Ok(v.get_archived(&k)?.unwrap().to_native()))
                            .collect::<shmkv::Result<Vec<u64>>>()
                    })
                    .unwrap();
                if ids.iter().any(|&i| i != ids[0]) {
                    mixed += 1;
                }
                if ids[0] < last {
                    mixed += 1;
                }
                last = ids[0];
                views += 1;
            }
            println!("RESULT views={views} mixed={mixed} last={last}");
            return;
        }
        _ => {}
    }
    let c = Cleanup::new("views");
    let map: ShmMap<u64, u64> =
        ShmMap::create(&c.name, &c.opts.clone().arena_size(256u64 << 20)).unwrap();
    map.write(|b| (0..BATCH_KEYS).try_for_each(|k| b.insert(&k, &0)))
        .unwrap();
    let env = [("MAP", c.name.clone()), ("SECS", "2".to_string())];
    let test = "views_never_see_half_a_batch";
    let mut w = KillOnDrop(Some(spawn(test, "batcher", &env)));
    let mut v1 = KillOnDrop(Some(spawn(test, "viewer", &env)));
    let mut v2 = KillOnDrop(Some(spawn(test, "viewer", &env)));
    let (ws, wl) = results(w.0.take().unwrap());
    assert!(ws.success());
    eprintln!("{}", wl[0]);
    for v in [&mut v1, &mut v2] {
        let (s, l) = results(v.0.take().unwrap());
        assert!(s.success());
        eprintln!("{}", l[0]);
        let r = parse(&l[0]);
        assert!(r["views"] > 100);
        assert!(r["last"] > 0, "viewer saw batches land");
        assert_eq!(r["mixed"], 0);
    }
}

#[test]
fn concurrent_open_or_create_is_race_free() {
    if role().as_deref() == Some("racer") {
        let map: ShmMap<str, u64> = ShmMap::open_or_create(&arg("MAP"), &Options::new()).unwrap();
        let me = std::process::id() as u64;
        map.insert(&me.to_string(), &me).unwrap();
        println!("RESULT ok=1");
        return;
    }
    let c = Cleanup::new("race");
    let test = "concurrent_open_or_create_is_race_free";
    let env = [("MAP", c.name.clone())];
    let children: Vec<_> = (0..6)
        .map(|_| KillOnDrop(Some(spawn(test, "racer", &env))))
        .collect();
    for mut ch in children {
        let (s, l) = results(ch.0.take().unwrap());
        assert!(s.success());
        assert_eq!(l, vec!["ok=1".to_string()]);
    }
    let map: ShmMap<str, u64> = ShmMap::open(&c.name, &c.opts).unwrap();
    assert_eq!(map.len(), 6, "every racer wrote into the same map");
    let stats = map.stats().unwrap();
    map.destroy().unwrap();
    assert_removed(&stats);
}
