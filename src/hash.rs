//! Stable hashing and format fingerprints stored in the root header.
//!
//! Keys are hashed with XXH3-64 (a published algorithm with a fixed output,
//! available in C, Python, PHP and Go) over their bytes, with a per-map seed.
//! Never `std::hash::Hash` and never `ahash`: their output may differ between
//! binaries.

use std::sync::OnceLock;

/// The fixed test vector whose hash under the map's seed is the canary.
pub(crate) const CANARY_VECTOR: &[u8] =
    b"shmkv hash canary: the quick brown fox jumps over the lazy dog";

/// XXH3-64 of `key` with `seed`.
#[inline]
pub(crate) fn hash_key(seed: u64, key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, seed)
}

/// The canary stored next to the seed.
pub(crate) fn canary(seed: u64) -> u64 {
    hash_key(seed, CANARY_VECTOR)
}

/// A fresh random seed (from the kernel's random source, with a fallback).
pub(crate) fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    hash_key(t, &std::process::id().to_le_bytes())
}

/// Fingerprint of the rkyv archive format this binary was built with: the
/// XXH3 of the archive of a fixed probe value that exercises endianness,
/// primitive alignment and relative-pointer width. Two builds agree on it
/// exactly when they read each other's archives the same way.
pub fn format_fingerprint() -> u64 {
    static FP: OnceLock<u64> = OnceLock::new();
    *FP.get_or_init(|| {
        let probe: (u16, u32, u64, String, Vec<u32>, Option<i64>, char) = (
            0x0102,
            0x0304_0506,
            0x0708_090a_0b0c_0d0e,
            "shmkv format probe string, longer than inline".to_string(),
            vec![1, 2, 3],
            Some(-7),
            'λ',
        );
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&probe).expect("probe serializes");
        hash_key(0, &bytes)
    })
}
