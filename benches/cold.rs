//! Cold read latency and throughput (issue 12): what a lookup costs when
//! its key is not in cache, for shmkv and the structures a user would pick
//! instead, each built over the same keys and values.
//!
//! - **Dependent latency** (`cold-latency` rows): the keys form one random
//!   cycle through all `N` entries (Sattolo's algorithm); each lookup
//!   computes the index of the next key from the value it found (the XOR
//!   of all the value's 8-byte words), so no two lookups overlap. A fixed
//!   number of steps along the cycle is timed (`SHMKV_COLD_STEPS`, default
//!   1,000,000: a part of the cycle for large `N`, several laps for small
//!   `N`). Every 64th step is also timed alone (`Instant` pairs; the
//!   timer's own cost, measured the same way, is subtracted). Reported:
//!   mean over all steps, and p50/p99/p999/max of the timed steps.
//! - **Independent throughput** (`cold-throughput` rows): 3 passes, each
//!   over `min(N, SHMKV_COLD_LOOKUPS)` distinct keys in a fresh random
//!   order (no key twice in a pass, no replayed order); the value's words
//!   are summed, so lookups overlap. ns per lookup over all passes.
//!
//! Before it is measured, every structure is read once in key order (page
//! faults and page-table population are not measured, and that order is
//! none of the measured ones).
//!
//! Contenders ([`CONTENDERS`], each a function that builds its structure,
//! emits its rows and drops it): shmkv `RawMap::get_ref`,
//! `HashMap<[u8;16],[u8;64]>` (inline keys and values) with std's hasher
//! and with XXH3 (shmkv's hash: separates the layout from the hash),
//! `HashMap<Vec<u8>,Vec<u8>>`, LMDB (`heed`, in /dev/shm) with one read
//! transaction per lookup and one per [`BATCH`] lookups, `mmap-sync` with
//! one `read()` per lookup and one per [`BATCH`] lookups, and a pointer
//! chase: a `u64` per 64-byte line over the same footprint as shmkv's data
//! segment, following a random cycle over the lines (one dependent cache
//! miss per step: the floor). Keys 16 bytes, values 64 bytes.
//!
//! Sizes: `SHMKV_COLD_SIZES` (default `100000,1000000,4000000`;
//! `SHMKV_BENCH_QUICK=1`: `10000,100000` and shorter chains). Rows go to
//! `$SHMKV_BENCH_DIR/cold.jsonl` (format: benches/README.md), a summary to stdout.
//! Run with `cargo bench --bench cold`; one run per size on a shared
//! machine: compare ratios.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shmkv::{HugePages, Options, RawMap, Size};
use shmkv_benches::{fold, key, out_path, timer_cost, MapGuard, Rng};

/// Lookups per transaction / `read()` in the batched variants.
const BATCH: u64 = 4096;
/// Independent passes per contender.
const PASSES: usize = 3;
/// Every how many chain steps one is timed alone.
const SAMPLE_EVERY: u64 = 64;
/// Chain steps per chunk whose mean is recorded (the median chunk mean is
/// reported next to the overall mean: it ignores the chunks in which the
/// process was descheduled, on a busy machine).
const CHUNK: u64 = 4096;

/// A contender: builds its structure for `s`, measures, emits rows.
type Contender = fn(&Setup, &mut Out);

/// Everything measured, in order. The pointer chase uses the footprint the
/// shmkv contender measured, so it comes after it. A contender on other
/// memory is a function like [`shmkv_get_ref`] (`build_shmkv` with its
/// options, then `measure_shmkv` with `json!({"pages": "2m"})`) or
/// [`pointer_chase`] (`chase_in` over its own buffer, with its page size).
const CONTENDERS: &[Contender] = &[
    shmkv_get_ref,
    shmkv_get_ref_huge,
    inline_std,
    inline_xxh3,
    boxed_std,
    lmdb,
    mmap_sync,
    pointer_chase,
    pointer_chase_huge,
];

/// The value of entry `i` whose successor on the cycle is `next`: eight
/// words whose XOR is `next` (so the chain reads every byte).
fn value(i: u64, next: u64) -> [u8; 64] {
    let mut v = [0u8; 64];
    let mut x = next;
    for w in 1..8u64 {
        let word = i
            .wrapping_mul(0x2545_F491_4F6C_DD1D)
            .rotate_left(w as u32 * 7)
            ^ w;
        v[w as usize * 8..w as usize * 8 + 8].copy_from_slice(&word.to_le_bytes());
        x ^= word;
    }
    v[..8].copy_from_slice(&x.to_le_bytes());
    v
}

/// `p[i]`: the successor of `i` on one random cycle through `0..n`.
fn sattolo(n: u64, rng: &mut Rng) -> Vec<u64> {
    let mut p: Vec<u64> = (0..n).collect();
    for i in (1..n as usize).rev() {
        let j = rng.below(i as u64) as usize;
        p.swap(i, j);
    }
    p
}

/// A random permutation (Fisher-Yates).
fn shuffled(n: u64, rng: &mut Rng) -> Vec<u64> {
    let mut p: Vec<u64> = (0..n).collect();
    for i in (1..n as usize).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// XXH3-64 over the key's bytes, as shmkv hashes keys. `[u8; N]` hashes as
/// a length prefix (`write_usize`, ignored: all keys have the same length)
/// and one `write` of the bytes.
#[derive(Clone, Copy, Default)]
struct Xxh3Build;
struct Xxh3Hasher(u64);
impl BuildHasher for Xxh3Build {
    type Hasher = Xxh3Hasher;
    fn build_hasher(&self) -> Xxh3Hasher {
        Xxh3Hasher(0)
    }
}
impl Hasher for Xxh3Hasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    #[inline]
    fn write_usize(&mut self, _: usize) {}
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One size's inputs, shared by every contender.
struct Setup {
    n: u64,
    /// `next[i]`: the successor of key `i` on the cycle.
    next: Vec<u64>,
    /// One fresh random order per independent pass (`min(n, lookups)` keys).
    orders: Vec<Vec<u64>>,
    /// Chain steps timed.
    steps: u64,
    /// Where the chain from key 0 ends after `steps` steps (every contender
    /// must get there: its lookups returned the right values).
    chain_end: u64,
    /// Per pass, the wrapping sum of the values' folds (`next` of each key).
    pass_sums: Vec<u64>,
    /// Cost of an `Instant` pair, subtracted from timed steps.
    timer_ns: f64,
}

impl Setup {
    fn key_desc_dependent(&self) -> String {
        format!(
            "dependent: {} steps along one random cycle through all keys (Sattolo){}",
            self.steps,
            if self.steps < self.n {
                ", a part of the cycle"
            } else {
                ""
            }
        )
    }
    fn key_desc_independent(&self) -> String {
        format!(
            "independent: {PASSES} passes of {} distinct uniform random keys, a fresh order each pass",
            self.orders[0].len()
        )
    }
}

/// A dependent chain in progress: counts steps, times every 64th alone.
struct Chain {
    timer_ns: f64,
    done: u64,
    samples: Vec<f64>,
    chunk_start: Instant,
    chunks: Vec<f64>,
}

impl Chain {
    /// One lookup of the chain: `look(i)` returns the next index.
    #[inline(always)]
    fn step(&mut self, i: u64, look: impl FnOnce(u64) -> u64) -> u64 {
        let r = if self.done % SAMPLE_EVERY == 0 {
            let t = Instant::now();
            let r = look(i);
            self.samples
                .push((t.elapsed().as_nanos() as f64 - self.timer_ns).max(0.0));
            r
        } else {
            look(i)
        };
        self.done += 1;
        if self.done % CHUNK == 0 {
            let now = Instant::now();
            self.chunks
                .push((now - self.chunk_start).as_nanos() as f64 / CHUNK as f64);
            self.chunk_start = now;
        }
        r
    }
}

/// Runs `s.steps` chain steps from key 0 in rounds of at most `batch`:
/// `round(chain, i, len)` does `len` steps from `i` and returns where it
/// ended (it may open a transaction per round). Returns the latency stats
/// and extra figures.
fn dependent(
    s: &Setup,
    expect_end: u64,
    batch: u64,
    mut round: impl FnMut(&mut Chain, u64, u64) -> u64,
) -> (Value, Value) {
    let mut c = Chain {
        timer_ns: s.timer_ns,
        done: 0,
        samples: Vec::with_capacity((s.steps / SAMPLE_EVERY) as usize + 1),
        chunk_start: Instant::now(),
        chunks: Vec::with_capacity((s.steps / CHUNK) as usize + 1),
    };
    let mut i = 0u64;
    let start = Instant::now();
    c.chunk_start = start;
    while c.done < s.steps {
        let len = batch.min(s.steps - c.done);
        i = round(&mut c, i, len);
    }
    let mean = start.elapsed().as_nanos() as f64 / s.steps as f64;
    assert_eq!(
        i, expect_end,
        "the chain went astray: a lookup returned a wrong value"
    );
    let mut v = c.samples;
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let mut ch = c.chunks;
    ch.sort_by(f64::total_cmp);
    let chunk_median = ch.get(ch.len() / 2).copied().unwrap_or(mean);
    (
        json!({"mean": mean, "p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999),
               "max": v[v.len() - 1], "n": v.len()}),
        json!({"steps": s.steps, "chunk_median_mean": chunk_median, "chunk_steps": CHUNK}),
    )
}

/// The independent passes: `pass(keys)` looks up every key of the slice
/// (it may split it into transactions) and returns a sum of the values.
fn independent(s: &Setup, mut pass: impl FnMut(&[u64]) -> u64) -> (Value, Value) {
    let mut total = Duration::ZERO;
    let mut per = Vec::new();
    for (order, &want) in s.orders.iter().zip(&s.pass_sums) {
        let t = Instant::now();
        let sum = black_box(pass(order));
        let e = t.elapsed();
        assert_eq!(sum, want, "an independent pass summed wrong values");
        total += e;
        per.push(e.as_nanos() as f64 / order.len() as f64);
    }
    let n = s.orders.iter().map(Vec::len).sum::<usize>();
    per.sort_by(f64::total_cmp);
    (
        json!({"mean": total.as_nanos() as f64 / n as f64, "n": n}),
        json!({"passes": per.len(), "pass_min_ns": per[0], "pass_max_ns": per[per.len() - 1]}),
    )
}

/// Splits `keys` into batches of `BATCH`, calling `f` once per batch.
fn batched(keys: &[u64], mut f: impl FnMut(&[u64]) -> u64) -> u64 {
    keys.chunks(BATCH as usize)
        .fold(0u64, |a, c| a.wrapping_add(f(c)))
}

/// Row sink: `cold.jsonl` and the stdout summary.
struct Out {
    file: std::fs::File,
    n: u64,
    /// shmkv's data segment size at this size (set by [`shmkv_get_ref`]).
    footprint: Option<u64>,
}

impl Out {
    /// Emits one row; `params` are added to entries/key/value bytes.
    fn row(
        &mut self,
        section: &str,
        subject: &str,
        params: Value,
        keys: &str,
        stats: Value,
        extra: Value,
    ) {
        let mut p = json!({"entries": self.n, "key_bytes": 16, "value_bytes": 64, "pages": "4k"});
        if let (Some(p), Value::Object(more)) = (p.as_object_mut(), params) {
            p.extend(more);
        }
        let measure = if section == "cold-latency" {
            "latency"
        } else {
            "throughput"
        };
        let mut row = json!({"section": section, "subject": subject, "params": p,
            "measure": measure, "cache": "cold", "keys": keys, "unit": "ns", "stats": stats});
        if extra.as_object().is_some_and(|o| !o.is_empty()) {
            row["extra"] = extra;
        }
        writeln!(self.file, "{row}").unwrap();
        let st = &row["stats"];
        let f = |k: &str| {
            st[k]
                .as_f64()
                .map_or("-".to_string(), |x| format!("{x:.0}"))
        };
        let chunk = row["extra"]["chunk_median_mean"]
            .as_f64()
            .map_or("-".to_string(), |x| format!("{x:.1}"));
        println!(
            "{:>9} {:<44} {:<10} {:>9.1} {:>9} {:>7} {:>7} {:>7} {:>8}",
            self.n,
            subject,
            measure,
            st["mean"].as_f64().unwrap_or(f64::NAN),
            chunk,
            f("p50"),
            f("p99"),
            f("p999"),
            f("max")
        );
    }

    /// Both rows of a contender measured without transactions.
    fn pair(
        &mut self,
        s: &Setup,
        subject: &str,
        params: Value,
        lat: (Value, Value),
        thr: (Value, Value),
    ) {
        self.row(
            "cold-latency",
            subject,
            params.clone(),
            &s.key_desc_dependent(),
            lat.0,
            lat.1,
        );
        self.row(
            "cold-throughput",
            subject,
            params,
            &s.key_desc_independent(),
            thr.0,
            thr.1,
        );
    }
}

/// Reads every key once in key order (not measured).
fn warm_pages(n: u64, mut look: impl FnMut(u64) -> u64) {
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(look(i));
    }
    black_box(sum);
}

/// A scratch directory in /dev/shm (tmp elsewhere), removed on drop.
struct Scratch(std::path::PathBuf);
impl Scratch {
    fn new(tag: &str) -> Scratch {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm".into()
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("shmkv-bench-cold-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds shmkv's map of `s`'s entries with `opts` (capacity and arena set
/// here); the caller keeps the returned cleanup guard alive.
fn build_shmkv(s: &Setup, tag: &str, opts: Options) -> Option<(RawMap, MapGuard)> {
    let n = s.n;
    let name = format!("shmkv-bench-cold-{tag}-{}-{n}", std::process::id());
    let _ = RawMap::destroy_by_name(&name, &Options::new());
    let cleanup = MapGuard(name.clone());
    let m = RawMap::create(
        &name,
        &opts.capacity(n).arena_size(Size::from(n * 112 + (1 << 20))),
    )
    .map_err(|e| println!("!! shmkv ({tag}) not measured at {n} entries: {e}"))
    .ok()?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
        m.write(|b| {
            chunk
                .iter()
                .try_for_each(|&i| b.insert(&key(i), &value(i, s.next[i as usize])))
        })
        .unwrap();
    }
    Some((m, cleanup))
}

/// Measures `RawMap::get_ref` on `m` as `subject` with `params`.
fn measure_shmkv(s: &Setup, out: &mut Out, m: &RawMap, subject: &str, params: Value) {
    let look = |i: u64| fold(&m.get_ref(&key(i)).unwrap().unwrap());
    warm_pages(s.n, look);
    let lat = dependent(s, s.chain_end, u64::MAX, |c, mut i, len| {
        for _ in 0..len {
            i = c.step(i, look);
        }
        i
    });
    let thr = independent(s, |keys| {
        keys.iter().fold(0u64, |a, &i| a.wrapping_add(look(i)))
    });
    out.pair(s, subject, params, lat, thr);
}

fn shmkv_get_ref(s: &Setup, out: &mut Out) {
    let (m, _cleanup) = build_shmkv(s, "4k", Options::new()).expect("a map on normal pages");
    out.footprint = Some(m.stats().unwrap().segment_size);
    measure_shmkv(s, out, &m, "shmkv get_ref", json!({"pages": "4k"}));
}

/// The same map with its data segment on huge pages (`HugePages::Require`),
/// when the kernel has them (`scripts/bench.sh` reserves them).
fn shmkv_get_ref_huge(s: &Setup, out: &mut Out) {
    let opts = Options::new().huge_pages(HugePages::Require);
    if let Some((m, _cleanup)) = build_shmkv(s, "2m", opts) {
        assert!(
            m.stats().unwrap().huge_pages,
            "Require gave a map on huge pages"
        );
        measure_shmkv(s, out, &m, "shmkv get_ref", json!({"pages": "2m"}));
    }
}

/// Measures a process-local map with plain lookups.
fn measure_local(s: &Setup, out: &mut Out, subject: &str, look: impl Fn(u64) -> u64 + Copy) {
    warm_pages(s.n, look);
    let lat = dependent(s, s.chain_end, u64::MAX, |c, mut i, len| {
        for _ in 0..len {
            i = c.step(i, look);
        }
        i
    });
    let thr = independent(s, |keys| {
        keys.iter().fold(0u64, |a, &i| a.wrapping_add(look(i)))
    });
    out.pair(s, subject, json!({}), lat, thr);
}

fn inline_std(s: &Setup, out: &mut Out) {
    let m: HashMap<[u8; 16], [u8; 64]> = (0..s.n)
        .map(|i| (key(i), value(i, s.next[i as usize])))
        .collect();
    measure_local(s, out, "HashMap<[u8;16],[u8;64]>", |i| fold(&m[&key(i)]));
}

fn inline_xxh3(s: &Setup, out: &mut Out) {
    let m: HashMap<[u8; 16], [u8; 64], Xxh3Build> = (0..s.n)
        .map(|i| (key(i), value(i, s.next[i as usize])))
        .collect();
    measure_local(s, out, "HashMap<[u8;16],[u8;64]> (xxh3)", |i| {
        fold(&m[&key(i)])
    });
}

fn boxed_std(s: &Setup, out: &mut Out) {
    let m: HashMap<Vec<u8>, Vec<u8>> = (0..s.n)
        .map(|i| (key(i).to_vec(), value(i, s.next[i as usize]).to_vec()))
        .collect();
    measure_local(s, out, "HashMap<Vec<u8>,Vec<u8>>", |i| {
        fold(&m[&key(i)[..]])
    });
}

/// LMDB through heed in /dev/shm: one read transaction per lookup, and one
/// per [`BATCH`] lookups.
fn lmdb(s: &Setup, out: &mut Out) {
    type Db = heed::Database<heed::types::Bytes, heed::types::Bytes>;
    let dir = Scratch::new(&format!("lmdb-{}", s.n));
    // SAFETY: the directory is this bench's own, opened once in this process.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(16 << 30)
            .max_dbs(1)
            .open(&dir.0)
    }
    .unwrap();
    let mut w = env.write_txn().unwrap();
    let db: Db = env.create_database(&mut w, None).unwrap();
    for i in 0..s.n {
        db.put(&mut w, &key(i), &value(i, s.next[i as usize]))
            .unwrap();
    }
    w.commit().unwrap();
    let get = |t: &heed::RoTxn, i: u64| fold(db.get(t, &key(i)).unwrap().unwrap());
    {
        let t = env.read_txn().unwrap();
        warm_pages(s.n, |i| get(&t, i));
    }
    let per_lookup = |i: u64| get(&env.read_txn().unwrap(), i);
    let lat = dependent(s, s.chain_end, u64::MAX, |c, mut i, len| {
        for _ in 0..len {
            i = c.step(i, per_lookup);
        }
        i
    });
    let thr = independent(s, |keys| {
        keys.iter()
            .fold(0u64, |a, &i| a.wrapping_add(per_lookup(i)))
    });
    let p = json!({"txn": "per lookup", "store": "/dev/shm"});
    out.pair(s, "LMDB (heed), read txn per lookup", p, lat, thr);
    let lat = dependent(s, s.chain_end, BATCH, |c, mut i, len| {
        let t = env.read_txn().unwrap();
        for _ in 0..len {
            i = c.step(i, |i| get(&t, i));
        }
        i
    });
    let thr = independent(s, |keys| {
        batched(keys, |b| {
            let t = env.read_txn().unwrap();
            b.iter().fold(0u64, |a, &i| a.wrapping_add(get(&t, i)))
        })
    });
    let p = json!({"txn": "per batch", "batch": BATCH, "store": "/dev/shm"});
    out.pair(
        s,
        &format!("LMDB (heed), read txn per {BATCH} lookups"),
        p,
        lat,
        thr,
    );
    drop(env);
}

/// The snapshot type mmap-sync shares (rkyv 0.7, which mmap-sync uses). The
/// derive's generated code predates `unsafe_op_in_unsafe_fn`.
mod snapshot {
    #![allow(unsafe_op_in_unsafe_fn)]
    use std::collections::HashMap;

    #[derive(rkyv07::Archive, rkyv07::Serialize)]
    #[archive(crate = "rkyv07", check_bytes)]
    pub(crate) struct Snapshot {
        pub(crate) map: HashMap<[u8; 16], [u8; 64]>,
    }
}
use snapshot::Snapshot;

/// mmap-sync: an archived `HashMap<[u8;16],[u8;64]>` snapshot in /dev/shm;
/// one `read()` (a reader-count increment and decrement, both SeqCst) per
/// lookup, and one per [`BATCH`] lookups. Reads unchecked (no bytecheck),
/// mmap-sync's fast path.
fn mmap_sync(s: &Setup, out: &mut Out) {
    use mmap_sync::synchronizer::Synchronizer;
    let dir = Scratch::new(&format!("mmapsync-{}", s.n));
    let prefix = dir.0.join("snapshot");
    {
        let mut writer = Synchronizer::new(prefix.as_os_str());
        let snap = Snapshot {
            map: (0..s.n)
                .map(|i| (key(i), value(i, s.next[i as usize])))
                .collect(),
        };
        writer.write(&snap, Duration::from_secs(1)).unwrap();
    }
    let mut reader = Synchronizer::new(prefix.as_os_str());
    // SAFETY (every `read` below): the snapshot was written as a `Snapshot`
    // by this process and is not rewritten while it is read.
    {
        // SAFETY: see above.
        let r = unsafe { reader.read::<Snapshot>(false) }.unwrap();
        warm_pages(s.n, |i| fold(&r.map.get(&key(i)).unwrap()[..]));
    }
    let mut per_lookup = |i: u64| {
        // SAFETY: see above.
        let r = unsafe { reader.read::<Snapshot>(false) }.unwrap();
        fold(&r.map.get(&key(i)).unwrap()[..])
    };
    let lat = dependent(s, s.chain_end, u64::MAX, |c, mut i, len| {
        for _ in 0..len {
            i = c.step(i, &mut per_lookup);
        }
        i
    });
    let thr = independent(s, |keys| {
        keys.iter()
            .fold(0u64, |a, &i| a.wrapping_add(per_lookup(i)))
    });
    let p = json!({"read": "per lookup", "check_bytes": false, "store": "/dev/shm"});
    out.pair(s, "mmap-sync, read() per lookup", p, lat, thr);
    let lat = dependent(s, s.chain_end, BATCH, |c, mut i, len| {
        // SAFETY: see above.
        let r = unsafe { reader.read::<Snapshot>(false) }.unwrap();
        for _ in 0..len {
            i = c.step(i, |i| fold(&r.map.get(&key(i)).unwrap()[..]));
        }
        i
    });
    let thr = independent(s, |keys| {
        batched(keys, |b| {
            // SAFETY: see above.
            let r = unsafe { reader.read::<Snapshot>(false) }.unwrap();
            b.iter().fold(0u64, |a, &i| {
                a.wrapping_add(fold(&r.map.get(&key(i)).unwrap()[..]))
            })
        })
    });
    let p = json!({"read": "per batch", "batch": BATCH, "check_bytes": false, "store": "/dev/shm"});
    out.pair(
        s,
        &format!("mmap-sync, read() per {BATCH} lookups"),
        p,
        lat,
        thr,
    );
}

/// The pointer chase over `buf` (one `u64` per 64-byte line: the index of
/// the next line on a random cycle over all lines). Dependent latency only.
fn chase_in(s: &Setup, out: &mut Out, buf: &mut [u64], subject: &str, pages: &str) {
    let lines = (buf.len() / 8) as u64;
    let mut rng = Rng(0x0bad_cafe ^ lines);
    let cycle = sattolo(lines, &mut rng);
    for (l, &to) in cycle.iter().enumerate() {
        buf[l * 8] = to;
    }
    let end = (0..s.steps).fold(0u64, |l, _| cycle[l as usize]);
    drop(cycle);
    let look = |l: u64| buf[(l * 8) as usize];
    let lat = dependent(s, end, u64::MAX, |c, mut i, len| {
        for _ in 0..len {
            i = c.step(i, look);
        }
        i
    });
    let bytes = lines * 64;
    let keys = format!(
        "dependent: {} steps along one random cycle through all 64-byte lines",
        s.steps
    );
    let p = json!({"footprint_bytes": bytes, "pages": pages, "lines": lines});
    out.row("cold-latency", subject, p, &keys, lat.0, lat.1);
}

/// The pointer chase over shmkv's footprint, in heap memory.
fn pointer_chase(s: &Setup, out: &mut Out) {
    let footprint = out
        .footprint
        .expect("the pointer chase comes after shmkv in CONTENDERS");
    let lines = (footprint / 64).max(2);
    let mut buf = vec![0u64; (lines * 8) as usize];
    chase_in(s, out, &mut buf, "pointer chase", "4k");
}

/// A copy of the pointer chase's array on huge pages (`MAP_HUGETLB`).
struct HugeChase {
    ptr: *mut u64,
    bytes: usize,
}

impl HugeChase {
    fn new(src: &[u64]) -> Option<HugeChase> {
        let page = std::fs::read_to_string("/proc/meminfo")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("Hugepagesize:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<usize>()
            .ok()?
            * 1024;
        let bytes = (src.len() * 8).div_ceil(page) * page;
        // SAFETY: an anonymous mapping, no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            println!(
                "no huge pages pointer chase: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: the mapping holds `bytes >= src.len() * 8` bytes, is
        // page aligned, and is not `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p.cast::<u64>(), src.len()) };
        Some(HugeChase {
            ptr: p.cast(),
            bytes,
        })
    }
    fn as_mut_slice(&mut self) -> &mut [u64] {
        // SAFETY: the mapping holds `bytes` bytes, 8-aligned, initialised
        // by `new`, and is borrowed mutably with `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes / 8) }
    }
}

impl Drop for HugeChase {
    fn drop(&mut self) {
        // SAFETY: mapped by `new` with this length.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

/// The pointer chase over shmkv's footprint on huge pages (`MAP_HUGETLB`),
/// when the kernel has them.
fn pointer_chase_huge(s: &Setup, out: &mut Out) {
    let footprint = out
        .footprint
        .expect("the pointer chase comes after shmkv in CONTENDERS");
    let lines = (footprint / 64).max(2);
    let src = vec![0u64; (lines * 8) as usize];
    if let Some(mut h) = HugeChase::new(&src) {
        drop(src);
        let buf = h.as_mut_slice();
        let len = buf.len();
        chase_in(s, out, &mut buf[..len - len % 8], "pointer chase", "2m");
    }
}

fn env_u64s(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse::<f64>().ok())
        .map(|x| x as u64)
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
    let quick = std::env::var("SHMKV_BENCH_QUICK").is_ok_and(|v| v == "1");
    let sizes = env_u64s(
        "SHMKV_COLD_SIZES",
        if quick {
            "10000,100000"
        } else {
            "100000,1000000,4000000"
        },
    );
    let steps = env_u64s("SHMKV_COLD_STEPS", if quick { "100000" } else { "1000000" })[0];
    let lookups = env_u64s(
        "SHMKV_COLD_LOOKUPS",
        if quick { "100000" } else { "1000000" },
    )[0];
    let path = out_path("cold.jsonl");
    let file = std::fs::File::create(&path).unwrap();
    let timer_ns = timer_cost();
    println!(
        "timer cost (subtracted from timed steps): {timer_ns:.0} ns; rows: {}",
        path.display()
    );
    println!(
        "{:>9} {:<44} {:<10} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8}",
        "entries", "contender", "measure", "mean ns", "chunk med", "p50", "p99", "p999", "max"
    );
    let mut out = Out {
        file,
        n: 0,
        footprint: None,
    };
    let started = Instant::now();
    for &n in &sizes {
        let mut rng = Rng(0x1234_5678_9abc_def1 ^ n);
        let next = sattolo(n, &mut rng);
        let m = n.min(lookups) as usize;
        let orders: Vec<Vec<u64>> = (0..PASSES)
            .map(|_| {
                let mut o = shuffled(n, &mut rng);
                o.truncate(m);
                o
            })
            .collect();
        let chain_end = (0..steps).fold(0u64, |i, _| next[i as usize]);
        let pass_sums = orders
            .iter()
            .map(|o| {
                o.iter()
                    .fold(0u64, |a, &i| a.wrapping_add(next[i as usize]))
            })
            .collect();
        let s = Setup {
            n,
            next,
            orders,
            steps,
            chain_end,
            pass_sums,
            timer_ns,
        };
        out.n = n;
        out.footprint = None;
        for c in CONTENDERS {
            c(&s, &mut out);
        }
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
}
