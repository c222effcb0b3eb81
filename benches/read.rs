//! Read and write costs of shmkv against a process-local `std` HashMap, in
//! one run. Medians and ratios: see BENCHMARKS.md (issue 6 extends this).
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shmkv::{Options, RawMap, Size};

/// Removes the bench's map also when the bench panics.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = RawMap::destroy_by_name(&self.0, &Options::new());
    }
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
    k
}

fn value(i: u64) -> [u8; 64] {
    [i as u8; 64]
}

fn reads(c: &mut Criterion) {
    let mut g = c.benchmark_group("get_16B_key_64B_value");
    for entries in [1_000u64, 100_000] {
        let name = format!("shmkv-bench-read-{}-{entries}", std::process::id());
        let _cleanup = Cleanup(name.clone());
        let opts = Options::new()
            .capacity(entries)
            .arena_size(Size::from(entries * 128 + (1 << 20)));
        let map = RawMap::create(&name, &opts).unwrap();
        let mut std_map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for chunk in (0..entries).collect::<Vec<_>>().chunks(10_000) {
            map.write(|b| chunk.iter().try_for_each(|&i| b.insert(&key(i), &value(i))))
                .unwrap();
        }
        for i in 0..entries {
            std_map.insert(key(i).to_vec(), value(i).to_vec());
        }
        // A fixed pseudo-random order of keys, the same for both maps.
        let order: Vec<[u8; 16]> = (0..4096u64)
            .map(|i| key(i.wrapping_mul(7919) % entries))
            .collect();
        g.throughput(Throughput::Elements(order.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("shmkv_get_ref", entries),
            &order,
            |b, order| {
                b.iter(|| {
                    for k in order {
                        black_box(map.get_ref(k).unwrap().unwrap()[0]);
                    }
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("std_hashmap_get", entries),
            &order,
            |b, order| {
                b.iter(|| {
                    for k in order {
                        black_box(std_map.get(&k[..]).unwrap()[0]);
                    }
                })
            },
        );
        map.destroy().unwrap();
    }
    g.finish();
}

fn writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("write");
    let name = format!("shmkv-bench-write-{}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let map = RawMap::create(
        &name,
        &Options::new()
            .capacity(1000)
            .arena_size(Size::from(64u64 << 20)),
    )
    .unwrap();
    let mut i = 0u64;
    g.bench_function("single_insert_update", |b| {
        b.iter(|| {
            i += 1;
            if i % 1000 == 0 && map.stats().is_ok_and(|s| s.arena_used > s.arena_size / 2) {
                // No compaction yet: start over when the arena fills.
                map.write(|b| (0..1000).try_for_each(|j| b.remove(&key(j)).map(drop)))
                    .unwrap();
            }
            map.insert(&key(i % 1000), &value(i)).unwrap()
        })
    });
    g.finish();
    map.destroy().unwrap();
}

criterion_group!(benches, reads, writes);
criterion_main!(benches);
