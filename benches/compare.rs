//! shmkv against the alternatives a user would pick, in one run: a
//! process-local `std::collections::HashMap`, LMDB (`heed`, in /dev/shm), and
//! `mmap-sync` (an archived map snapshot). Keys 16 bytes, values 64 bytes
//! unless the benchmark id says otherwise. Every iteration does 4,096
//! lookups in a fixed pseudo-random order; `scripts/bench-report.py` turns
//! the medians into ns per operation and ratios (BENCHMARKS.md).
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shmkv::{Options, RawMap, ShmMap, Size};

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

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k
}

fn value(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

/// The same pseudo-random lookup order for every contender.
fn order(entries: u64) -> Vec<[u8; 16]> {
    let mut x = 0x1234_5678u64;
    (0..LOOKUPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            key(x % entries)
        })
        .collect()
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
            .map_size(4 << 30)
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

fn gets(c: &mut Criterion) {
    let mut cleanup = Cleanup {
        maps: Vec::new(),
        dirs: Vec::new(),
    };
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    g.sample_size(30);
    for (entries, vlen) in [
        (1_000u64, 64usize),
        (100_000, 16),
        (100_000, 64),
        (100_000, 1024),
        (1_000_000, 64),
    ] {
        let id = format!("{entries}x{vlen}B");
        let keys = order(entries);
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
        if vlen == 64 && entries == 1_000 {
            let typed: ShmMap<[u8], Vec<u8>> =
                ShmMap::create(&format!("{name}-typed"), &Options::new().capacity(entries))
                    .unwrap();
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
        }
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
        drop(s);
        if vlen == 64 {
            let dir = scratch_dir(&format!("lmdb-{id}"));
            cleanup.dirs.push(dir.clone());
            let (env, db) = heed_env(&dir, entries, vlen);
            g.bench_with_input(BenchmarkId::new("lmdb_get", &id), &keys, |b, keys| {
                b.iter(|| {
                    let r = env.read_txn().unwrap();
                    for k in keys {
                        black_box(db.get(&r, k).unwrap().unwrap()[0]);
                    }
                })
            });
        }
        if vlen == 64 && entries <= 100_000 {
            let dir = scratch_dir(&format!("mmapsync-{id}"));
            cleanup.dirs.push(dir.clone());
            let prefix = dir.join("snapshot");
            let mut writer = mmap_sync::synchronizer::Synchronizer::new(prefix.as_os_str());
            let snap = Snapshot {
                map: (0..entries).map(|i| (key(i), value(i, vlen))).collect(),
            };
            writer.write(&snap, Duration::from_secs(1)).unwrap();
            drop(snap);
            let mut reader = mmap_sync::synchronizer::Synchronizer::new(prefix.as_os_str());
            g.bench_with_input(
                BenchmarkId::new("mmap_sync_read_one_key", &id),
                &keys,
                |b, keys| {
                    b.iter(|| {
                        for k in keys {
                            // SAFETY: the snapshot was written as a `Snapshot` by
                            // this process and is not rewritten while read.
                            let r = unsafe { reader.read::<Snapshot>(false) }.unwrap();
                            black_box(r.map.get(k).unwrap()[0]);
                        }
                    })
                },
            );
        }
        m.destroy().unwrap();
    }
    g.finish();
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
    g.measurement_time(Duration::from_secs(3));
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
    let keys = order(entries);
    let plain = shmkv_map(&name, entries, 64);
    let checked = RawMap::open(&name, &Options::new().verify_reads(true)).unwrap();
    let mut g = c.benchmark_group("verify_reads");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    g.sample_size(30);
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
    g.measurement_time(Duration::from_secs(3));
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

criterion_group!(benches, gets, sem_pair, verify_reads, wake_every_write);
criterion_main!(benches);
