//! The schema of a typed map, recorded in the root at creation: the key
//! kind and the value type's identity (`Options::schema`, or the value
//! type's name), as one text such as `str -> app::Backend`. `ShmMap`
//! handles compare it on open (`Incompatible::Schema` naming both); raw
//! writes into a map that has one are refused unless the handle allows
//! them (`Options::raw_writes`).

use std::sync::atomic::Ordering;

use super::layout::RootHeader;
use crate::error::{Error, Incompatible, Result};

/// Bytes of the text kept in the root.
const TEXT_BYTES: usize = 48;

fn hash(text: &str) -> u64 {
    // 0 means "none recorded".
    xxhash_rust::xxh3::xxh3_64(text.as_bytes()).max(1)
}

/// Records `text` as the map's schema (the creator, before the root's
/// magic is complete).
pub(crate) fn record(r: &RootHeader, text: &str) {
    let bytes = text.as_bytes();
    let n = bytes.len().min(TEXT_BYTES);
    let mut padded = [0u8; TEXT_BYTES];
    padded[..n].copy_from_slice(&bytes[..n]);
    for (w, chunk) in r.schema_text.iter().zip(padded.chunks_exact(8)) {
        w.store(
            u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
    }
    r.schema_len.store(n as u64, Ordering::Relaxed);
    r.schema_hash.store(hash(text), Ordering::Release);
}

/// The recorded schema: its hash and (the start of) its text.
pub(crate) fn recorded(r: &RootHeader) -> Option<(u64, String)> {
    let h = r.schema_hash.load(Ordering::Acquire);
    if h == 0 {
        return None;
    }
    let n = (r.schema_len.load(Ordering::Relaxed) as usize).min(TEXT_BYTES);
    let bytes: Vec<u8> = r
        .schema_text
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .take(n)
        .collect();
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if n == TEXT_BYTES {
        text.push('…');
    }
    Some((h, text))
}

/// A typed handle's check on open: the recorded schema, if any, must be
/// `expected`. A map without one (made by a raw handle, or before schemas
/// were recorded) opens: its values are still validated on every
/// `get_archived`/`get`.
pub(crate) fn check(r: &RootHeader, expected: &str) -> Result<()> {
    match recorded(r) {
        Some((h, found)) if h != hash(expected) => Err(Error::Incompatible(Incompatible::Schema {
            found,
            expected: expected.to_string(),
        })),
        _ => Ok(()),
    }
}
