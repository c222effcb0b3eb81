//! Plain gets are atomic with respect to batches while the writer is alive
//! too: a writer process keeps committing batches that set 32 keys to the
//! same increasing number; reader processes (one read-write, one read-only)
//! read the keys one plain `get` at a time. Once a get has returned batch
//! `n`, no later get of the same reader may return an older batch.
#![allow(unreachable_pub)]

mod common;

use std::time::{Duration, Instant};

use common::{arg, results, role, spawn, Cleanup, KillOnDrop};
use shmkv::{Options, RawMap};

const KEYS: u32 = 32;

fn key(i: u32) -> [u8; 4] {
    i.to_le_bytes()
}

fn writer_role() {
    let m = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
    let until = Instant::now() + Duration::from_millis(arg("MILLIS").parse().unwrap());
    let mut n = 1u64;
    while Instant::now() < until {
        m.write(|b| (0..KEYS).try_for_each(|i| b.insert(&key(i), &n.to_le_bytes())))
            .unwrap();
        n += 1;
    }
    println!("RESULT {n}");
}

fn reader_role() {
    let opts = Options::new().read_only(arg("RO") == "1");
    let m = RawMap::open(&arg("MAP"), &opts).unwrap();
    let until = Instant::now() + Duration::from_millis(arg("MILLIS").parse().unwrap());
    let (mut seen, mut reads, mut older) = (0u64, 0u64, 0u64);
    let mut first = None;
    while Instant::now() < until {
        for i in 0..KEYS {
            let v = m.get(&key(i)).unwrap().expect("every key is present");
            let v = u64::from_le_bytes(v.try_into().unwrap());
            reads += 1;
            if v < seen {
                older += 1;
                first.get_or_insert(format!("key {i} read batch {v} after batch {seen}"));
            }
            seen = seen.max(v);
        }
    }
    println!("RESULT {reads} {older} {}", first.unwrap_or_default());
}

#[test]
fn plain_gets_never_see_part_of_a_batch() {
    match role().as_deref() {
        Some("writer") => return writer_role(),
        Some("reader") => return reader_role(),
        _ => {}
    }
    let millis: u64 = std::env::var("SHMKV_ATOMIC_MILLIS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let c = Cleanup::new("atomic");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.write(|b| (0..KEYS).try_for_each(|i| b.insert(&key(i), &0u64.to_le_bytes())))
        .unwrap();
    let test = "plain_gets_never_see_part_of_a_batch";
    let env = |ro: &str| {
        vec![
            ("MAP", c.name.clone()),
            ("MILLIS", millis.to_string()),
            ("RO", ro.to_string()),
        ]
    };
    let readers: Vec<KillOnDrop> = ["0", "1"]
        .iter()
        .map(|ro| KillOnDrop(Some(spawn(test, "reader", &env(ro)))))
        .collect();
    let (status, out) = results(spawn(test, "writer", &env("0")));
    assert!(status.success(), "writer: {status:?}");
    let batches: u64 = out[0].parse().unwrap();
    for (ro, mut r) in ["read-write", "read-only"].into_iter().zip(readers) {
        let (status, out) = results(r.0.take().unwrap());
        assert!(status.success(), "{ro} reader: {status:?}");
        let f: Vec<&str> = out[0].splitn(3, ' ').collect();
        let (reads, older): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        eprintln!("{ro} reader: {reads} gets during {batches} batches, {older} older than one seen before");
        assert!(reads > 10_000, "{ro} reader made only {reads} reads");
        assert_eq!(older, 0, "{ro} reader saw part of a batch: {}", f[2]);
    }
    drop(m);
}
