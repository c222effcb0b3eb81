//! The sizing policy of a generation: the smallest table a map may have
//! ([`MIN_SLOTS`], [`MIN_ARENA`]), the load bound (`max_used`, LOAD-BOUND),
//! the arena bytes kept free for a redo log ([`REDO_RESERVE`]), and the
//! geometry of the generation that replaces a full or wasteful one
//! ([`grow_geometry`], DESIGN.md "Growth and compaction").

use super::layout::{
    checked_align_up, data_geometry, ARENA_ALIGN, REDO_ENTRY, REDO_HEADER, ROOT_SIZE,
};
use crate::error::{Error, Result};

/// Fewest slots a table has (a power of two).
pub(crate) const MIN_SLOTS: u64 = 16;

/// Fewest arena bytes a table has.
pub(crate) const MIN_ARENA: u64 = 4096;

/// Arena bytes records never use: room for the redo log of a write that
/// changes up to 32 slots, so that removals (which need no record) still
/// work when the arena is otherwise full.
pub(crate) const REDO_RESERVE: u64 = REDO_HEADER + 32 * REDO_ENTRY;

/// Table load bound: live keys plus tombstones stay at or below 7/8 of the
/// slots, so every probe sequence meets an EMPTY slot.
pub(crate) fn max_used(capacity: u64) -> u64 {
    capacity - capacity / 8
}

/// Geometry `(slots, arena bytes)` of the generation that replaces one of
/// `old_slots` and `old_arena` and must hold `keys` entries of `bytes`
/// record bytes. Roomy first (never smaller than before; twice the need, so
/// that growth is amortised and an update-heavy map compacts in place);
/// then, if `max_total` forbids that, the least that fits.
pub(crate) fn grow_geometry(
    old_slots: u64,
    old_arena: u64,
    keys: u64,
    bytes: u64,
    max_total: Option<u64>,
) -> Result<(u64, u64)> {
    // Bounded: at most 60 doublings, then `None` (a key count no table
    // can hold, e.g. from a scribbled `live`).
    let slots_for = |n: u64| -> Option<u64> {
        let mut s = MIN_SLOTS;
        while max_used(s) < n {
            s = s.checked_mul(2)?;
        }
        Some(s)
    };
    let need_arena = bytes
        .saturating_add(REDO_RESERVE + REDO_HEADER + ARENA_ALIGN)
        .saturating_add(keys.saturating_mul(REDO_ENTRY));
    let roomy = slots_for(keys.saturating_mul(2)).and_then(|s| {
        Some((
            old_slots.max(s),
            checked_align_up(old_arena.max(need_arena.saturating_mul(2)), ARENA_ALIGN)?,
        ))
    });
    let tight = slots_for(keys).zip(checked_align_up(need_arena, ARENA_ALIGN));
    let mut smallest = u64::MAX;
    for (s, a) in [roomy, tight].into_iter().flatten() {
        let Some(total) = data_geometry(s, a).and_then(|(_, _, t)| t.checked_add(ROOT_SIZE as u64))
        else {
            continue;
        };
        smallest = smallest.min(total);
        if max_total.is_none_or(|m| total <= m) {
            return Ok((s, a));
        }
    }
    Err(Error::Full {
        what: if max_total.is_some() {
            "max_size"
        } else {
            "address space"
        },
        needed: smallest,
        available: max_total.unwrap_or(0),
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A key count no table can hold (a scribbled `live`) is an error, in
    /// bounded time: `slots_for` used to double until it wrapped to 0 and
    /// then loop forever, holding the write lock.
    #[test]
    fn grow_geometry_refuses_impossible_key_counts() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = [u64::MAX, 1 << 62, (1 << 60) + 1]
                .map(|keys| grow_geometry(MIN_SLOTS, MIN_ARENA, keys, 0, None).is_err());
            let _ = tx.send(r);
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("grow_geometry hung (or panicked) on a huge key count");
        assert_eq!(r, [true; 3]);
        // Huge byte counts saturate instead of wrapping.
        assert!(grow_geometry(MIN_SLOTS, MIN_ARENA, 1, u64::MAX, None).is_err());
        assert!(grow_geometry(MIN_SLOTS, MIN_ARENA, 1, u64::MAX - 100, Some(1 << 20)).is_err());
        assert!(grow_geometry(MIN_SLOTS, MIN_ARENA, 10, 1000, None).is_ok());
    }
}
