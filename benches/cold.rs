//! Cold read latency and throughput (issue 12, first part): what a lookup
//! costs when its key is not in cache.
//!
//! - **Dependent latency**: the keys form one random cycle through all `N`
//!   entries (Sattolo's algorithm); each lookup reads the index of the next
//!   key from the value it found, so no two lookups overlap (the way a
//!   request that needs one lookup before the next behaves). Every 64th
//!   step is timed alone (`Instant` pairs; the timer's own cost, measured
//!   the same way, is subtracted); reported: mean over the whole chain,
//!   and p50/p99/p999 of the timed steps.
//! - **Independent throughput**: every key once, in a fresh random order
//!   (no replay), the value's first word summed; ns per lookup.
//!
//! Contenders: shmkv `RawMap::get_ref`, `HashMap<[u8; 16], [u8; 64]>`
//! (inline keys and values), `HashMap<Vec<u8>, Vec<u8>>` (heap-allocated
//! ones), both with std's default hasher, and a pointer chase: a `u64`
//! array over the same footprint as shmkv's data segment following the
//! same cycle (one dependent cache miss per step: the physical floor).
//! Keys 16 bytes, values 64 bytes. Sizes: `SHMKV_COLD_SIZES` (default
//! `100000,1000000`). Run with `cargo bench --bench cold`; one run per size,
//! on a shared machine: compare ratios.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use shmkv::{HugePages, Options, RawMap, Size};

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k
}

/// xorshift64*: a fixed, portable sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `next[i]`: the successor of `i` on one random cycle through `0..n`.
fn sattolo(n: u64, rng: &mut Rng) -> Vec<u64> {
    let mut p: Vec<u64> = (0..n).collect();
    for i in (1..n as usize).rev() {
        let j = rng.below(i as u64) as usize;
        p.swap(i, j);
    }
    // p is a cyclic permutation as a sequence: i -> p[i] is one cycle.
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

/// The value of entry `i`: its successor's index in the first 8 bytes.
fn value(next: u64) -> [u8; 64] {
    let mut v = [0x5au8; 64];
    v[..8].copy_from_slice(&next.to_le_bytes());
    v
}

fn first_word(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap())
}

/// Latencies of a dependent chain of `steps` lookups from index 0:
/// (mean ns over the chain, sorted ns of every 64th step).
fn chain(steps: u64, timer_ns: f64, mut look: impl FnMut(u64) -> u64) -> (f64, Vec<f64>) {
    let mut samples = Vec::with_capacity((steps / 64) as usize + 1);
    let mut i = 0u64;
    let start = Instant::now();
    for s in 0..steps {
        if s % 64 == 0 {
            let t = Instant::now();
            i = look(i);
            samples.push((t.elapsed().as_nanos() as f64 - timer_ns).max(0.0));
        } else {
            i = look(i);
        }
    }
    let mean = start.elapsed().as_nanos() as f64 / steps as f64;
    black_box(i);
    samples.sort_by(f64::total_cmp);
    (mean, samples)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The cost of an `Instant::now` pair with nothing between (median).
fn timer_cost() -> f64 {
    let mut v: Vec<f64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Removes the bench's map also on panic.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = RawMap::destroy_by_name(&self.0, &Options::new());
    }
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
    fn at(&self, i: usize) -> u64 {
        assert!(i < self.bytes / 8);
        // SAFETY: in bounds (asserted), initialised by `new`.
        unsafe { *self.ptr.add(i) }
    }
}

impl Drop for HugeChase {
    fn drop(&mut self) {
        // SAFETY: mapped by `new` with this length.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let sizes: Vec<u64> = std::env::var("SHMKV_COLD_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let timer_ns = timer_cost();
    println!("timer cost (subtracted from timed steps): {timer_ns:.0} ns");
    println!(
        "{:>9} {:<28} {:>9} {:>8} {:>8} {:>8} {:>12}",
        "entries", "contender", "mean ns", "p50", "p99", "p999", "indep ns/op"
    );
    for &n in &sizes {
        let mut rng = Rng(0x1234_5678_9abc_def1 ^ n);
        let next = sattolo(n, &mut rng);
        let order = shuffled(n, &mut rng);
        let steps = n.max(1_000_000);

        let name = format!("shmkv-bench-cold-{}-{n}", std::process::id());
        let _cleanup = Cleanup(name.clone());
        let m = RawMap::create(
            &name,
            &Options::new()
                .capacity(n)
                .arena_size(Size::from(n * 112 + (1 << 20))),
        )
        .unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
            m.write(|b| {
                chunk
                    .iter()
                    .try_for_each(|&i| b.insert(&key(i), &value(next[i as usize])))
            })
            .unwrap();
        }
        let footprint = m.stats().unwrap().segment_size;
        // The same map on huge pages, when the kernel has them
        // (`echo N > /proc/sys/vm/nr_hugepages`).
        let hname = format!("{name}-huge");
        let _hcleanup = Cleanup(hname.clone());
        let mh = RawMap::create(
            &hname,
            &Options::new()
                .capacity(n)
                .arena_size(Size::from(n * 112 + (1 << 20)))
                .huge_pages(HugePages::Require),
        )
        .map_err(|e| println!("no huge pages contender: {e}"))
        .ok();
        if let Some(mh) = &mh {
            for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
                mh.write(|b| {
                    chunk
                        .iter()
                        .try_for_each(|&i| b.insert(&key(i), &value(next[i as usize])))
                })
                .unwrap();
            }
        }
        let inline: HashMap<[u8; 16], [u8; 64]> =
            (0..n).map(|i| (key(i), value(next[i as usize]))).collect();
        let boxed: HashMap<Vec<u8>, Vec<u8>> = (0..n)
            .map(|i| (key(i).to_vec(), value(next[i as usize]).to_vec()))
            .collect();
        // The pointer chase: one u64 per 64-byte line over the footprint,
        // following the same kind of cycle over the lines.
        let lines = (footprint / 64).max(2);
        let line_next = sattolo(lines, &mut rng);
        let mut chase = vec![0u64; (lines * 8) as usize];
        for (l, &to) in line_next.iter().enumerate() {
            chase[l * 8] = to;
        }

        let report = |label: &str, (mean, s): (f64, Vec<f64>), indep: f64| {
            println!(
                "{n:>9} {label:<28} {mean:>9.1} {:>8.0} {:>8.0} {:>8.0} {indep:>12.1}",
                pct(&s, 0.5),
                pct(&s, 0.99),
                pct(&s, 0.999)
            );
        };
        let indep = |mut f: Box<dyn FnMut(u64) -> u64 + '_>| {
            let t = Instant::now();
            let mut sum = 0u64;
            for &i in &order {
                sum = sum.wrapping_add(f(i));
            }
            black_box(sum);
            t.elapsed().as_nanos() as f64 / n as f64
        };

        let shm = chain(steps, timer_ns, |i| {
            first_word(&m.get_ref(&key(i)).unwrap().unwrap())
        });
        let shm_i = indep(Box::new(|i| {
            first_word(&m.get_ref(&key(i)).unwrap().unwrap())
        }));
        report("shmkv get_ref", shm, shm_i);
        let inl = chain(steps, timer_ns, |i| first_word(&inline[&key(i)]));
        let inl_i = indep(Box::new(|i| first_word(&inline[&key(i)])));
        report("HashMap<[u8;16],[u8;64]>", inl, inl_i);
        let bx = chain(steps, timer_ns, |i| first_word(&boxed[&key(i)[..]]));
        let bx_i = indep(Box::new(|i| first_word(&boxed[&key(i)[..]])));
        report("HashMap<Vec<u8>,Vec<u8>>", bx, bx_i);
        let ch = chain(steps, timer_ns, |l| chase[(l * 8) as usize]);
        report(
            &format!("pointer chase ({} MiB)", footprint >> 20),
            ch,
            f64::NAN,
        );
        if let Some(mh) = &mh {
            let r = chain(steps, timer_ns, |i| {
                first_word(&mh.get_ref(&key(i)).unwrap().unwrap())
            });
            let ri = indep(Box::new(|i| {
                first_word(&mh.get_ref(&key(i)).unwrap().unwrap())
            }));
            report("shmkv get_ref (huge pages)", r, ri);
        }
        if let Some(h) = HugeChase::new(&chase) {
            let r = chain(steps, timer_ns, |l| h.at((l * 8) as usize));
            report("pointer chase (huge pages)", r, f64::NAN);
        }
        drop(mh);
        drop(m);
    }
}
