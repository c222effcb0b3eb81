//! The benchmarks of shmkv (see README.md here): `cold`, `compare`, `live`
//! and `scaling` are bench targets of this package; `scripts/bench.sh` runs
//! them all and regenerates BENCHMARKS.md. This library holds what the
//! benches share: the keys, a random sequence, the timer's cost, where rows
//! go, and a guard that removes a map.

use std::path::PathBuf;
use std::time::Instant;

use shmkv::{Options, RawMap};

/// The 16-byte key of entry `i` (the same in every bench).
pub fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k
}

/// The XOR of all 8-byte words of `v` (a value consumed whole; its length
/// is a multiple of 8).
#[inline(always)]
pub fn fold(v: &[u8]) -> u64 {
    v.chunks_exact(8)
        .fold(0, |a, c| a ^ u64::from_le_bytes(c.try_into().unwrap()))
}

/// xorshift64*: a fixed, portable sequence.
pub struct Rng(pub u64);

impl Rng {
    /// A sequence of its own for this process.
    pub fn seeded() -> Rng {
        Rng((u64::from(std::process::id()) << 32) ^ 0x1234_5678_9abc_def1 | 1)
    }

    /// The next number of the sequence.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The median cost of an `Instant::now` pair with nothing between (ns):
/// subtracted from every timed step.
pub fn timer_cost() -> f64 {
    let mut v: Vec<f64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `$SHMKV_BENCH_DIR/<file>` (default: the workspace's
/// `target/shmkv-bench`), the directory created: where a bench writes its
/// rows (format: README.md here).
pub fn out_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("SHMKV_BENCH_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/shmkv-bench"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(file)
}

/// Removes the named map (all its SysV objects) when dropped, also on
/// panic.
pub struct MapGuard(pub String);

impl Drop for MapGuard {
    fn drop(&mut self) {
        let _ = RawMap::destroy_by_name(&self.0, &Options::new());
    }
}
