//! The root segment: identity of the map (name, hash, format) and the word
//! that names the data segment in force.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::layout::{
    RootHeader, HASH_XXH3_64, LAYOUT_VERSION, MAX_NAME_LEN, ROOT_MAGIC, ROOT_SIZE,
};
use crate::error::{Error, Incompatible, Result};
use crate::hash::{canary, format_fingerprint};

/// Forms the root header over an attached root segment.
///
/// # Safety
/// `base` points to `len` bytes that stay mapped for `'a`.
pub(crate) unsafe fn root_at<'a>(base: NonNull<u8>, len: usize) -> Result<&'a RootHeader> {
    if len < ROOT_SIZE {
        return Err(Error::Incompatible(Incompatible::NotShmkv));
    }
    // SAFETY: len >= ROOT_SIZE, shmat returns page-aligned addresses, and
    // RootHeader is atomics only, so any content is a valid value. Only a
    // shared reference is formed.
    Ok(unsafe { base.cast::<RootHeader>().as_ref() })
}

/// Writes every identity field of a fresh root (not the magic, not `current`).
pub(crate) fn init_identity(r: &RootHeader, name: &str, seed: u64, max_size: u64) {
    r.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
    r.root_size.store(ROOT_SIZE as u32, Ordering::Relaxed);
    r.hash_algo.store(HASH_XXH3_64, Ordering::Relaxed);
    r.hash_seed.store(seed, Ordering::Relaxed);
    r.hash_canary.store(canary(seed), Ordering::Relaxed);
    r.format_fingerprint
        .store(format_fingerprint(), Ordering::Relaxed);
    r.max_size.store(max_size, Ordering::Relaxed);
    r.creator_pid
        .store(u64::from(std::process::id()), Ordering::Relaxed);
    let mut padded = [0u8; MAX_NAME_LEN];
    padded[..name.len()].copy_from_slice(name.as_bytes());
    for (w, chunk) in r.name.iter().zip(padded.chunks_exact(8)) {
        w.store(
            u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
            Ordering::Relaxed,
        );
    }
    r.name_len.store(name.len() as u32, Ordering::Relaxed);
}

/// The name stored in a root.
pub(crate) fn stored_name(r: &RootHeader) -> Result<String> {
    let len = r.name_len.load(Ordering::Relaxed) as usize;
    if len == 0 || len > MAX_NAME_LEN {
        return Err(Error::corrupted("stored name length out of range"));
    }
    let mut bytes: Vec<u8> = r
        .name
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .collect();
    // Names never contain NUL, and the padding after them is all NUL.
    if bytes[..len].contains(&0) || bytes[len..].iter().any(|&b| b != 0) {
        return Err(Error::corrupted(
            "stored name length disagrees with the name",
        ));
    }
    bytes.truncate(len);
    String::from_utf8(bytes).map_err(|_| Error::corrupted("stored name is not UTF-8"))
}

/// Checks a complete root (magic already seen) against this build and the
/// expected name (`None` accepts any). Returns the hash seed.
pub(crate) fn validate(r: &RootHeader, expected_name: Option<&str>) -> Result<u64> {
    let version = r.layout_version.load(Ordering::Relaxed);
    if version != LAYOUT_VERSION {
        return Err(Error::Incompatible(Incompatible::LayoutVersion {
            found: version,
            expected: LAYOUT_VERSION,
        }));
    }
    if r.root_size.load(Ordering::Relaxed) as usize != ROOT_SIZE {
        return Err(Error::corrupted("root size field"));
    }
    let seed = r.hash_seed.load(Ordering::Relaxed);
    if r.hash_algo.load(Ordering::Relaxed) != HASH_XXH3_64
        || r.hash_canary.load(Ordering::Relaxed) != canary(seed)
    {
        return Err(Error::Incompatible(Incompatible::Hash));
    }
    let fp = r.format_fingerprint.load(Ordering::Relaxed);
    if fp != format_fingerprint() {
        return Err(Error::Incompatible(Incompatible::Format {
            found: fp,
            expected: format_fingerprint(),
        }));
    }
    let found = stored_name(r)?;
    if let Some(expected) = expected_name {
        if found != expected {
            return Err(Error::NameMismatch {
                expected: expected.to_string(),
                found,
            });
        }
    }
    Ok(seed)
}

/// State of a root segment's magic.
pub(crate) enum RootState {
    /// Magic present: a complete map.
    Complete,
    /// All zero magic: creation has not finished (or its creator died).
    Incomplete,
}

/// Reads the magic: complete, incomplete, or foreign.
pub(crate) fn state(r: &RootHeader) -> Result<RootState> {
    match r.magic.load(Ordering::Acquire) {
        ROOT_MAGIC => Ok(RootState::Complete),
        0 => Ok(RootState::Incomplete),
        _ => Err(Error::Incompatible(Incompatible::NotShmkv)),
    }
}
