//! Multi-process measures with real processes (criterion times one process,
//! so these are measured here, each repeated and reported as medians):
//! reader scaling from 1 to 2 processes (shmkv vs each process reading its
//! own std HashMap), reads while a writer does 10,000 writes/s, and the
//! memory overhead per entry. Rows go to `$SHMKV_BENCH_DIR/scaling.jsonl`
//! (default `target/shmkv-bench`; format: benches/README.md) for
//! `scripts/bench-report.py`.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmkv::{Options, RawMap, Size};
use shmkv_benches::{key, out_path, MapGuard};

const ENTRIES: u64 = 100_000;

fn secs() -> f64 {
    std::env::var("SHMKV_SCALING_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0)
}

/// A reader process: random gets for `secs()`; prints operations per second.
fn reader(kind: &str, name: &str) {
    let mut x = std::process::id() as u64 | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % ENTRIES
    };
    let (mut ops, mut sum) = (0u64, 0u64);
    let start;
    match kind {
        "shmkv" => {
            let m = RawMap::open(name, &Options::new().read_only(true)).unwrap();
            start = Instant::now();
            while start.elapsed().as_secs_f64() < secs() {
                for _ in 0..4096 {
                    sum += u64::from(m.get_ref(&key(next())).unwrap().unwrap()[0]);
                }
                ops += 4096;
            }
        }
        _ => {
            let m: HashMap<Vec<u8>, Vec<u8>> = (0..ENTRIES)
                .map(|i| (key(i).to_vec(), vec![i as u8; 64]))
                .collect();
            start = Instant::now();
            while start.elapsed().as_secs_f64() < secs() {
                for _ in 0..4096 {
                    sum += u64::from(m.get(&key(next())[..]).unwrap()[0]);
                }
                ops += 4096;
            }
        }
    }
    black_box(sum);
    println!("{}", ops as f64 / start.elapsed().as_secs_f64());
}

/// Aggregate reads/s of `procs` reader processes (optionally while this
/// process writes at `write_rate` per second).
fn run(kind: &str, procs: usize, name: &str, write_rate: u64, map: &RawMap) -> f64 {
    let children: Vec<_> = (0..procs)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .env("SHMKV_SCALING_ROLE", kind)
                .env("SHMKV_SCALING_MAP", name)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    if write_rate > 0 {
        // Let the readers build up (the std ones build their maps first).
        let start = Instant::now();
        let period = Duration::from_secs_f64(1.0 / write_rate as f64);
        let mut due = start;
        let mut i = 0u64;
        while start.elapsed().as_secs_f64() < secs() + 0.3 {
            i += 1;
            map.insert(&key(i % ENTRIES), &[i as u8; 64]).unwrap();
            due += period;
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
        }
    }
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse::<f64>()
                .unwrap()
        })
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Bytes per entry beyond key and value bytes for `n` entries of 16-byte
/// keys and 64-byte values in a map created with `capacity(cap)`.
fn overhead(n: u64, cap: u64) -> (f64, u64) {
    let name = format!("shmkv-bench-mem-{}-{n}", std::process::id());
    let _g = MapGuard(name.clone());
    let m = RawMap::create(
        &name,
        &Options::new()
            .capacity(cap)
            .arena_size(Size::from(n * 96 + (4 << 20))),
    )
    .unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        m.write(|b| {
            chunk
                .iter()
                .try_for_each(|&i| b.insert(&key(i), &[0u8; 64]))
        })
        .unwrap();
    }
    let s = m.stats().unwrap();
    // Slots plus the arena actually used (the unused arena tail is not
    // per-entry overhead), plus both headers.
    let used = 512 + 256 + s.capacity * 32 + s.arena_used;
    m.destroy().unwrap();
    ((used as f64 - n as f64 * 80.0) / n as f64, s.capacity)
}

fn main() {
    if let Ok(kind) = std::env::var("SHMKV_SCALING_ROLE") {
        return reader(&kind, &std::env::var("SHMKV_SCALING_MAP").unwrap());
    }
    // `cargo bench` passes --bench; `cargo test --benches` would run this
    // with no arguments: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let name = format!("shmkv-bench-scaling-{}", std::process::id());
    let _g = MapGuard(name.clone());
    let map = RawMap::create(
        &name,
        &Options::new()
            .capacity(ENTRIES)
            .arena_size(Size::from(64u64 << 20)),
    )
    .unwrap();
    map.write(|b| (0..ENTRIES).try_for_each(|i| b.insert(&key(i), &[i as u8; 64])))
        .unwrap();
    let trials = if std::env::var("SHMKV_BENCH_QUICK").as_deref() == Ok("1") {
        1
    } else {
        3
    };
    let mut r: HashMap<&str, Vec<f64>> = HashMap::new();
    for _ in 0..trials {
        r.entry("shmkv_1")
            .or_default()
            .push(run("shmkv", 1, &name, 0, &map));
        r.entry("shmkv_2")
            .or_default()
            .push(run("shmkv", 2, &name, 0, &map));
        r.entry("std_1")
            .or_default()
            .push(run("std", 1, &name, 0, &map));
        r.entry("std_2")
            .or_default()
            .push(run("std", 2, &name, 0, &map));
        r.entry("shmkv_1_writer_10k")
            .or_default()
            .push(run("shmkv", 1, &name, 10_000, &map));
        r.entry("shmkv_2_writer_10k")
            .or_default()
            .push(run("shmkv", 2, &name, 10_000, &map));
    }
    let (design, design_cap) = overhead(917_504, 917_504);
    let (million, million_cap) = overhead(1_000_000, 1_000_000);
    // Rows for scripts/bench-report.py (format: benches/README.md).
    let secs = secs();
    let mut rows = String::new();
    for (k, v) in &r {
        let m = median(v.clone());
        println!("{k:<22} median {m:>14.0} reads/s  (trials {v:.0?})");
        let mut parts = k.split('_');
        let (kind, readers) = (parts.next().unwrap(), parts.next().unwrap());
        let writer = if k.ends_with("writer_10k") { 10_000 } else { 0 };
        let subject = match kind {
            "shmkv" => "shmkv get_ref",
            _ => "HashMap<Vec<u8>,Vec<u8>> (one copy per process)",
        };
        // ns per read of one process: readers * 1e9 / total reads per second.
        let ns = readers.parse::<f64>().unwrap() * 1e9 / m;
        rows += &format!(
            "{{\"section\": \"scaling\", \"subject\": \"{subject}\", \
             \"params\": {{\"readers\": {readers}, \"writer_writes_per_s\": {writer}, \
             \"entries\": {ENTRIES}, \"key_bytes\": 16, \"value_bytes\": 64, \"seconds\": {secs}}}, \
             \"measure\": \"throughput\", \"cache\": \"warm\", \
             \"keys\": \"uniform random over all keys, independent\", \"unit\": \"ns\", \
             \"stats\": {{\"mean\": {ns:.2}, \"n\": {}}}, \
             \"extra\": {{\"reads_per_s_total\": {m:.0}, \"trials\": {}}}}}\n",
            v.len(),
            v.len()
        );
    }
    println!(
        "overhead at the design load (917,504 entries in {design_cap} slots): {design:.1} B/entry"
    );
    println!("overhead for capacity(1,000,000) ({million_cap} slots): {million:.1} B/entry");
    for (what, entries, slots, bytes) in [
        ("at the design load", 917_504u64, design_cap, design),
        ("for capacity(1,000,000)", 1_000_000, million_cap, million),
    ] {
        rows += &format!(
            "{{\"section\": \"memory\", \"subject\": \"shmkv overhead per entry {what}\", \
             \"params\": {{\"entries\": {entries}, \"slots\": {slots}, \"key_bytes\": 16, \"value_bytes\": 64}}, \
             \"measure\": \"size\", \"cache\": \"n/a\", \"keys\": \"-\", \"unit\": \"B/entry\", \
             \"stats\": {{\"mean\": {bytes:.1}}}, \"extra\": {{}}}}\n"
        );
    }
    std::fs::write(out_path("scaling.jsonl"), rows).unwrap();
    map.destroy().unwrap();
}
