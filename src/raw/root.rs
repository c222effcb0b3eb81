//! The root segment: identity of the map (name, hash, format) and the word
//! that names the data segment in force.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::layout::{
    RootHeader, CURRENT_DESTROYED, HASH_XXH3_64, LAYOUT_VERSION, MAX_NAME_LEN, ROOT_CREATING,
    ROOT_MAGIC, ROOT_SIZE,
};
use super::provider::Provider;
use crate::error::{Error, Incompatible, Result};
use crate::hash::{canary, format_fingerprint};

/// Forms the root header over an attached segment, if it has the size of a
/// root (a segment of another size is never a shmkv root). Nothing in it
/// is trusted yet: see [`state`].
///
/// # Safety
/// `base` points to `len` bytes that stay mapped for `'a`.
pub(crate) unsafe fn root_at<'a>(base: NonNull<u8>, len: usize) -> Option<&'a RootHeader> {
    if len != ROOT_SIZE {
        return None;
    }
    // SAFETY: len == ROOT_SIZE, shmat returns page-aligned addresses, and
    // RootHeader is atomics only, so any content is a valid value. Only a
    // shared reference is formed.
    Some(unsafe { base.cast::<RootHeader>().as_ref() })
}

/// Writes every identity field of a fresh root (not `current`), the
/// creator's identity, clears the lifecycle words, and then stores the
/// [`ROOT_CREATING`] marker (Release): from here on the root is
/// recognisably shmkv's and its words may be trusted. The creator's start
/// time comes from the provider `p` (`/proc` for SysV).
pub(crate) fn init_identity(
    p: &dyn Provider,
    r: &RootHeader,
    name: &str,
    seed: u64,
    max_size: u64,
) {
    r.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
    r.root_size.store(ROOT_SIZE as u32, Ordering::Relaxed);
    r.hash_algo.store(HASH_XXH3_64, Ordering::Relaxed);
    r.hash_seed.store(seed, Ordering::Relaxed);
    r.hash_canary.store(canary(seed), Ordering::Relaxed);
    r.format_fingerprint
        .store(format_fingerprint(), Ordering::Relaxed);
    r.max_size.store(max_size, Ordering::Relaxed);
    let pid = std::process::id();
    r.creator_pid.store(u64::from(pid), Ordering::Relaxed);
    r.creator_start
        .store(p.process_start_time(pid).unwrap_or(0), Ordering::Relaxed);
    for w in &r.stale {
        w.store(0, Ordering::Relaxed);
    }
    let mut padded = [0u8; MAX_NAME_LEN];
    padded[..name.len()].copy_from_slice(name.as_bytes());
    for (w, chunk) in r.name.iter().zip(padded.chunks_exact(8)) {
        w.store(
            u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
            Ordering::Relaxed,
        );
    }
    r.name_len.store(name.len() as u32, Ordering::Relaxed);
    r.magic.store(ROOT_CREATING, Ordering::Release);
}

/// Whether the process that marked this root as being created (its
/// `creator_pid` and `creator_start`) is still running, as the provider
/// `p` tells.
pub(crate) fn creator_alive(p: &dyn Provider, r: &RootHeader) -> bool {
    let pid = r.creator_pid.load(Ordering::Relaxed);
    let start = r.creator_start.load(Ordering::Relaxed);
    match u32::try_from(pid) {
        Ok(pid) if pid != 0 => p.process_start_time(pid) == Some(start),
        _ => false,
    }
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

/// State of a root segment, from its magic (loaded with Acquire before any
/// other word is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RootState {
    /// [`ROOT_MAGIC`]: a complete map.
    Complete,
    /// [`ROOT_MAGIC`] and `current` is [`CURRENT_DESTROYED`]: a `destroy`
    /// holds (or held, and died holding) the lock and removes the map.
    Destroyed,
    /// [`ROOT_CREATING`]: shmkv's, creation not finished (or its creator
    /// died).
    Creating,
    /// Anything else, zero included: not provably shmkv's. Nothing in it
    /// may be read, written or removed.
    Foreign,
}

/// Reads the magic.
pub(crate) fn state(r: &RootHeader) -> RootState {
    match r.magic.load(Ordering::Acquire) {
        ROOT_MAGIC if r.current.load(Ordering::Acquire) == CURRENT_DESTROYED => {
            RootState::Destroyed
        }
        ROOT_MAGIC => RootState::Complete,
        ROOT_CREATING => RootState::Creating,
        _ => RootState::Foreign,
    }
}

/// The shmids in the root's `stale` list (retired data segments waiting
/// for a process that may remove them).
pub(crate) fn stale_list(r: &RootHeader) -> Vec<i32> {
    r.stale
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .filter(|&v| v != 0)
        .map(|v| (v - 1) as i32)
        .collect()
}

/// Records `shmid` in the root's `stale` list (lock held, writable root).
/// Returns false if the list is full (the segment is then left behind).
pub(crate) fn push_stale(r: &RootHeader, shmid: i32) -> bool {
    let word = shmid as u64 + 1;
    if r.stale.iter().any(|w| w.load(Ordering::Relaxed) == word) {
        return true;
    }
    match r.stale.iter().find(|w| w.load(Ordering::Relaxed) == 0) {
        Some(w) => {
            w.store(word, Ordering::Release);
            true
        }
        None => false,
    }
}

/// Whether the `stale` list has no free slot.
pub(crate) fn stale_full(r: &RootHeader) -> bool {
    r.stale.iter().all(|w| w.load(Ordering::Relaxed) != 0)
}
