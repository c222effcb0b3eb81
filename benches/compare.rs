//! shmkv against the alternatives a user would pick, in one run: a
//! process-local `std::collections::HashMap<Vec<u8>, Vec<u8>>`, LMDB
//! (`heed`, in /dev/shm) and `mmap-sync` (an archived map snapshot). Keys
//! 16 bytes; entries and value bytes in the benchmark id
//! (`<entries>x<value>B`). Every iteration does 4,096 lookups of one fixed
//! key sequence, replayed every iteration: these are HOT (group `get`,
//! 1,000 entries) and WARM (groups `warm_get_<distribution>`) throughput
//! figures, not cold ones (benches/cold.rs measures cold reads).
//! `scripts/bench-report.py` turns the medians into ns per lookup and
//! ratios (BENCHMARKS.md). `SHMKV_BENCH_QUICK=1`: short times, small sizes.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use shmkv::{Options, RawMap, ShmMap, Size};
use shmkv_benches::{fold, key};

const LOOKUPS: usize = 4096;

/// Removes the bench's maps and LMDB/mmap-sync files, also on panic.
struct Cleanup {
    maps: Vec<String>,
    dirs: Vec<std::path::PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for m in &self.maps {
            let _ = RawMap::destroy_by_name(m, &Options::new());
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn value(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm".into()
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("shmkv-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn shmkv_map(name: &str, entries: u64, vlen: usize) -> RawMap {
    let opts = Options::new()
        .capacity(entries)
        .arena_size(Size::from(entries * (vlen as u64 + 48) + (1 << 20)));
    let m = RawMap::create(name, &opts).unwrap();
    for chunk in (0..entries).collect::<Vec<_>>().chunks(50_000) {
        m.write(|b| {
            chunk
                .iter()
                .try_for_each(|&i| b.insert(&key(i), &value(i, vlen)))
        })
        .unwrap();
    }
    m
}

fn std_map(entries: u64, vlen: usize) -> HashMap<Vec<u8>, Vec<u8>> {
    (0..entries)
        .map(|i| (key(i).to_vec(), value(i, vlen)))
        .collect()
}

fn heed_env(
    dir: &std::path::Path,
    entries: u64,
    vlen: usize,
) -> (
    heed::Env,
    heed::Database<heed::types::Bytes, heed::types::Bytes>,
) {
    // SAFETY: the directory is this bench's own, opened once in this process.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(8 << 30)
            .max_dbs(1)
            .open(dir)
    }
    .unwrap();
    let mut w = env.write_txn().unwrap();
    let db: heed::Database<heed::types::Bytes, heed::types::Bytes> =
        env.create_database(&mut w, None).unwrap();
    for i in 0..entries {
        db.put(&mut w, &key(i), &value(i, vlen)).unwrap();
    }
    w.commit().unwrap();
    (env, db)
}

/// The snapshot type mmap-sync shares (rkyv 0.7, which mmap-sync uses). The
/// derive's generated code predates `unsafe_op_in_unsafe_fn`.
mod snapshot {
    #![allow(unsafe_op_in_unsafe_fn)]
    use std::collections::HashMap;

    #[derive(rkyv07::Archive, rkyv07::Serialize)]
    #[archive(crate = "rkyv07", check_bytes)]
    pub(crate) struct Snapshot {
        pub(crate) map: HashMap<[u8; 16], Vec<u8>>,
    }
}
use snapshot::Snapshot;

/// Whether `SHMKV_BENCH_QUICK=1` asks for short times and small sizes.
fn quick() -> bool {
    std::env::var("SHMKV_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Short criterion times (the whole bench stays within a few minutes).
fn configure(g: &mut BenchmarkGroup<'_, WallTime>) {
    if quick() {
        g.measurement_time(Duration::from_millis(300));
        g.warm_up_time(Duration::from_millis(100));
        g.sample_size(10);
    } else {
        g.measurement_time(Duration::from_millis(1200));
        g.warm_up_time(Duration::from_millis(400));
        g.sample_size(20);
    }
}

/// A key distribution of the warm benchmarks (group `warm_get_<name>`).
#[derive(Clone, Copy)]
enum Dist {
    /// Uniform random keys of the map.
    Uniform,
    /// Zipf-distributed ranks (theta 0.99), each rank a fixed key.
    Zipf,
    /// Keys that are not in the map.
    Missing,
}

impl Dist {
    fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Zipf => "zipf",
            Dist::Missing => "missing",
        }
    }
}

/// The Zipf exponent of `Dist::Zipf`.
const ZIPF_THETA: f64 = 0.99;

/// xorshift64: a fixed, portable sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf ranks over `0..n` (Gray et al., "Quickly generating billion-record
/// synthetic databases", as YCSB): rank 0 is the most frequent.
struct Zipf {
    n: f64,
    zetan: f64,
    alpha: f64,
    eta: f64,
    half_pow: f64,
}

impl Zipf {
    fn new(n: u64, theta: f64) -> Zipf {
        let zetan: f64 = (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum();
        let zeta2 = 1.0 + 0.5f64.powf(theta);
        Zipf {
            n: n as f64,
            zetan,
            alpha: 1.0 / (1.0 - theta),
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
            half_pow: 0.5f64.powf(theta),
        }
    }
    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        if uz < 1.0 {
            0
        } else if uz < 1.0 + self.half_pow {
            1
        } else {
            ((self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64)
                .min(self.n as u64 - 1)
        }
    }
}

/// The `LOOKUPS` keys one iteration looks up (the same sequence every
/// iteration: warm).
fn sequence(dist: Dist, entries: u64) -> Vec<[u8; 16]> {
    let mut rng = Rng(0x1234_5678);
    match dist {
        Dist::Uniform => (0..LOOKUPS).map(|_| key(rng.next() % entries)).collect(),
        // Absent: key(i) for i >= entries was never inserted.
        Dist::Missing => (0..LOOKUPS)
            .map(|_| key(entries + rng.next() % entries))
            .collect(),
        Dist::Zipf => {
            // Ranks scattered over the keys by a fixed permutation (the
            // multiplier is a prime that divides no size used here).
            const SCATTER: u64 = 1_000_003;
            assert!(entries % SCATTER != 0);
            let z = Zipf::new(entries, ZIPF_THETA);
            (0..LOOKUPS)
                .map(|_| key((z.sample(&mut rng) * SCATTER) % entries))
                .collect()
        }
    }
}

/// Hot lookups: 1,000 entries, 64-byte values, the sequence replayed (all
/// in L1/L2). The validated target compares `shmkv_get_archived` with
/// `std_hashmap_get` here. Values are touched by their first byte.
fn hot_gets(c: &mut Criterion) {
    let mut cleanup = Cleanup {
        maps: Vec::new(),
        dirs: Vec::new(),
    };
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    if quick() {
        configure(&mut g);
    } else {
        g.measurement_time(Duration::from_secs(4));
        g.warm_up_time(Duration::from_secs(1));
        g.sample_size(30);
    }
    let (entries, vlen) = (1_000u64, 64usize);
    let id = format!("{entries}x{vlen}B");
    let keys = sequence(Dist::Uniform, entries);
    let name = format!("shmkv-bench-get-{}-{id}", std::process::id());
    cleanup.maps.push(name.clone());
    let m = shmkv_map(&name, entries, vlen);
    g.bench_with_input(BenchmarkId::new("shmkv_get_ref", &id), &keys, |b, keys| {
        b.iter(|| {
            for k in keys {
                black_box(m.get_ref(k).unwrap().unwrap()[0]);
            }
        })
    });
    let typed: ShmMap<[u8], Vec<u8>> =
        ShmMap::create(&format!("{name}-typed"), &Options::new().capacity(entries)).unwrap();
    cleanup.maps.push(format!("{name}-typed"));
    typed
        .write(|b| (0..entries).try_for_each(|i| b.insert(&key(i), &value(i, vlen))))
        .unwrap();
    g.bench_with_input(
        BenchmarkId::new("shmkv_get_archived", &id),
        &keys,
        |b, keys| {
            b.iter(|| {
                for k in keys {
                    black_box(typed.get_archived(&k[..]).unwrap().unwrap()[0]);
                }
            })
        },
    );
    g.bench_with_input(
        BenchmarkId::new("shmkv_get_archived_unchecked", &id),
        &keys,
        |b, keys| {
            b.iter(|| {
                for k in keys {
                    // SAFETY: every value was written as a Vec<u8> above.
                    black_box(
                        unsafe { typed.get_archived_unchecked(&k[..]) }
                            .unwrap()
                            .unwrap()[0],
                    );
                }
            })
        },
    );
    let s = std_map(entries, vlen);
    g.bench_with_input(
        BenchmarkId::new("std_hashmap_get", &id),
        &keys,
        |b, keys| {
            b.iter(|| {
                for k in keys {
                    black_box(s.get(&k[..]).unwrap()[0]);
                }
            })
        },
    );
    g.finish();
    m.destroy().unwrap();
    typed.destroy().unwrap();
}

/// One data set of the warm benchmarks: entries, value bytes, and the key
/// distributions measured on it.
type DataSet = (u64, usize, &'static [Dist]);

/// Warm throughput: every iteration replays the same `LOOKUPS`-key
/// sequence (so the touched lines stay in cache as far as they fit), the
/// value consumed whole (XOR of its words). Groups `warm_get_uniform`,
/// `warm_get_zipf`, `warm_get_missing`; ids `<peer>/<entries>x<value>B`.
/// Peers with transactions are measured with one per lookup and one per
/// iteration (`LOOKUPS` lookups).
fn warm_gets(c: &mut Criterion) {
    use Dist::*;
    let sets: &[DataSet] = if quick() {
        &[
            (10_000, 16, &[Uniform]),
            (10_000, 64, &[Uniform, Zipf, Missing]),
            (10_000, 1024, &[Uniform]),
            (1_000, 16384, &[Uniform]),
        ]
    } else {
        &[
            (100_000, 16, &[Uniform]),
            (100_000, 64, &[Uniform, Zipf, Missing]),
            (100_000, 1024, &[Uniform]),
            (10_000, 16384, &[Uniform]),
            (1_000_000, 64, &[Uniform, Zipf, Missing]),
        ]
    };
    for &(entries, vlen, dists) in sets {
        let id = format!("{entries}x{vlen}B");
        let name = format!("shmkv-bench-warm-{}-{id}", std::process::id());
        let mut cleanup = Cleanup {
            maps: vec![name.clone()],
            dirs: Vec::new(),
        };
        let m = shmkv_map(&name, entries, vlen);
        let s = std_map(entries, vlen);
        let dir = scratch_dir(&format!("lmdb-{id}"));
        cleanup.dirs.push(dir.clone());
        let (env, db) = heed_env(&dir, entries, vlen);
        let dir = scratch_dir(&format!("mmapsync-{id}"));
        cleanup.dirs.push(dir.clone());
        let prefix = dir.join("snapshot");
        {
            let mut writer = mmap_sync::synchronizer::Synchronizer::new(prefix.as_os_str());
            let snap = Snapshot {
                map: (0..entries).map(|i| (key(i), value(i, vlen))).collect(),
            };
            writer.write(&snap, Duration::from_secs(1)).unwrap();
        }
        let mut reader = mmap_sync::synchronizer::Synchronizer::new(prefix.as_os_str());
        for &dist in dists {
            let keys = sequence(dist, entries);
            let mut g = c.benchmark_group(format!("warm_get_{}", dist.name()));
            g.throughput(Throughput::Elements(LOOKUPS as u64));
            configure(&mut g);
            g.bench_with_input(BenchmarkId::new("shmkv_get_ref", &id), &keys, |b, keys| {
                b.iter(|| {
                    keys.iter().fold(0u64, |a, k| {
                        a ^ m.get_ref(k).unwrap().map_or(0, |v| fold(&v))
                    })
                })
            });
            g.bench_with_input(
                BenchmarkId::new("std_hashmap_get", &id),
                &keys,
                |b, keys| {
                    b.iter(|| {
                        keys.iter()
                            .fold(0u64, |a, k| a ^ s.get(&k[..]).map_or(0, |v| fold(v)))
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new("lmdb_get_txn_per_lookup", &id),
                &keys,
                |b, keys| {
                    b.iter(|| {
                        keys.iter().fold(0u64, |a, k| {
                            let r = env.read_txn().unwrap();
                            a ^ db.get(&r, k).unwrap().map_or(0, fold)
                        })
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new("lmdb_get_txn_per_batch", &id),
                &keys,
                |b, keys| {
                    b.iter(|| {
                        let r = env.read_txn().unwrap();
                        keys.iter()
                            .fold(0u64, |a, k| a ^ db.get(&r, k).unwrap().map_or(0, fold))
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new("mmap_sync_read_per_lookup", &id),
                &keys,
                |b, keys| {
                    b.iter(|| {
                        keys.iter().fold(0u64, |a, k| {
                            // SAFETY: the snapshot was written as a `Snapshot`
                            // by this process and is not rewritten while read.
                            let r = unsafe { reader.read::<Snapshot>(false) }.unwrap();
                            a ^ r.map.get(k).map_or(0, |v| fold(v))
                        })
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new("mmap_sync_read_per_batch", &id),
                &keys,
                |b, keys| {
                    b.iter(|| {
                        // SAFETY: as above.
                        let r = unsafe { reader.read::<Snapshot>(false) }.unwrap();
                        keys.iter()
                            .fold(0u64, |a, k| a ^ r.map.get(k).map_or(0, |v| fold(v)))
                    })
                },
            );
            g.finish();
        }
        drop(reader);
        drop(env);
        drop(s);
        m.destroy().unwrap();
    }
}

/// One SysV semaphore acquire+release pair with SEM_UNDO: the floor of a
/// single write.
fn sem_pair(c: &mut Criterion) {
    // SAFETY: plain integer arguments; a private set only this bench uses.
    let id = unsafe { libc::semget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | 0o600) };
    assert!(id >= 0);
    struct Rm(i32);
    impl Drop for Rm {
        fn drop(&mut self) {
            // SAFETY: IPC_RMID takes no further argument.
            unsafe { libc::semctl(self.0, 0, libc::IPC_RMID) };
        }
    }
    let _rm = Rm(id);
    // SAFETY: SETVAL takes an int.
    unsafe { libc::semctl(id, 0, libc::SETVAL, 1) };
    let mut g = c.benchmark_group("write");
    configure(&mut g);
    g.bench_function("semaphore_acquire_release_pair", |b| {
        b.iter(|| {
            let mut acq = libc::sembuf {
                sem_num: 0,
                sem_op: -1,
                sem_flg: libc::SEM_UNDO as i16,
            };
            let mut rel = libc::sembuf {
                sem_num: 0,
                sem_op: 1,
                sem_flg: libc::SEM_UNDO as i16,
            };
            // SAFETY: one valid sembuf each.
            unsafe {
                libc::semop(id, &mut acq, 1);
                libc::semop(id, &mut rel, 1);
            }
        })
    });
    let name = format!("shmkv-bench-write-{}", std::process::id());
    let _c = Cleanup {
        maps: vec![name.clone()],
        dirs: Vec::new(),
    };
    let m = shmkv_map(&name, 1000, 64);
    let mut i = 0u64;
    g.bench_function("shmkv_single_insert", |b| {
        b.iter(|| {
            i += 1;
            m.insert(&key(i % 1000), &value(i, 64)).unwrap()
        })
    });
    g.throughput(Throughput::Elements(1000));
    g.bench_function("shmkv_batch_1000_inserts", |b| {
        b.iter(|| {
            i += 1;
            m.write(|b| (0..1000).try_for_each(|k| b.insert(&key(k), &value(i + k, 64))))
                .unwrap()
        })
    });
    g.finish();
    m.destroy().unwrap();
}

/// The cost of `Options::verify_reads`: hot `get_ref` over 1,000 entries
/// (16 B keys, 64 B values), the same map read through a handle without and
/// one with the per-record checksum check. Run alone with
/// `cargo bench --bench compare -- verify_reads`.
fn verify_reads(c: &mut Criterion) {
    let name = format!("shmkv-bench-verify-{}", std::process::id());
    let _cleanup = Cleanup {
        maps: vec![name.clone()],
        dirs: Vec::new(),
    };
    let entries = 1_000u64;
    let keys = sequence(Dist::Uniform, entries);
    let plain = shmkv_map(&name, entries, 64);
    let checked = RawMap::open(&name, &Options::new().verify_reads(true)).unwrap();
    let mut g = c.benchmark_group("verify_reads");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    configure(&mut g);
    for (id, m) in [("off", &plain), ("on", &checked)] {
        g.bench_with_input(BenchmarkId::new("get_ref", id), &keys, |b, keys| {
            b.iter(|| {
                for k in keys {
                    black_box(m.get_ref(k).unwrap().unwrap()[0]);
                }
            })
        });
    }
    g.finish();
}

/// The cost of `Options::wake_every_write`: a single 64-byte insert
/// (overwriting one of 1,000 keys) into a map made with and one made
/// without it, nobody waiting. Run alone with
/// `cargo bench --bench compare -- wake_every_write`.
fn wake_every_write(c: &mut Criterion) {
    let names = [
        format!("shmkv-bench-wake-off-{}", std::process::id()),
        format!("shmkv-bench-wake-on-{}", std::process::id()),
    ];
    let _cleanup = Cleanup {
        maps: names.to_vec(),
        dirs: Vec::new(),
    };
    let mut g = c.benchmark_group("wake_every_write");
    configure(&mut g);
    for (id, name, wake) in [("off", &names[0], false), ("on", &names[1], true)] {
        let m = RawMap::create(
            name,
            &Options::new()
                .capacity(1000)
                .arena_size(Size::from(1u64 << 20))
                .wake_every_write(wake),
        )
        .unwrap();
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("single_insert", id), |b| {
            b.iter(|| {
                i += 1;
                m.insert(&key(i % 1000), &value(i, 64)).unwrap()
            })
        });
        m.destroy().unwrap();
    }
    g.finish();
}

criterion_group!(
    benches,
    hot_gets,
    warm_gets,
    sem_pair,
    verify_reads,
    wake_every_write
);
criterion_main!(benches);
