//! The data header's counters (`arena_used`, `live`, `tombstones`,
//! `garbage`) as writers use them: read only through [`Table::counters`],
//! which checks them against their check word and the table's geometry
//! (VALIDATED-COUNTERS), and stored with their check word by
//! [`Table::store_counters`].

use crate::sync::Ordering;

use super::layout::{counters_check, ARENA_ALIGN};
use super::lock::WriteLock;
use super::table::Table;

/// The header's counters as a writer may use them: validated against the
/// check word and the table's geometry by [`Table::counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) arena_used: u64,
    pub(crate) live: u64,
    pub(crate) tombstones: u64,
    pub(crate) garbage: u64,
}

impl Table {
    /// The header's counters, if they match their check word and the
    /// geometry: `arena_used` inside the arena and 16-aligned, `garbage` at
    /// most `arena_used`, `live + tombstones` at most the slots, and a
    /// `view_seq` that can still advance. Every writer goes through this
    /// before it uses a counter, so a scribbled header is `Corrupted`,
    /// never an offset to write at or a size to loop on.
    pub(crate) fn counters(&self) -> Result<Counters, &'static str> {
        let h = self.header();
        let c = Counters {
            arena_used: h.arena_used.load(Ordering::Relaxed),
            live: h.live.load(Ordering::Relaxed),
            tombstones: h.tombstones.load(Ordering::Relaxed),
            garbage: h.garbage.load(Ordering::Relaxed),
        };
        if h.counters_check.load(Ordering::Relaxed)
            != counters_check(c.arena_used, c.live, c.tombstones, c.garbage)
        {
            return Err("data header counters do not match their check word");
        }
        if c.arena_used > self.arena_size()
            || c.arena_used % ARENA_ALIGN != 0
            || c.garbage > c.arena_used
            || c.live
                .checked_add(c.tombstones)
                .is_none_or(|n| n > self.capacity())
        {
            return Err("data header counters out of range");
        }
        if h.view_seq.load(Ordering::Relaxed) >= u64::MAX - 2 {
            return Err("view sequence at its limit");
        }
        Ok(c)
    }

    /// Stores the counters and their check word (lock holder only).
    pub(crate) fn store_counters(&self, _lock: &WriteLock, c: Counters) {
        let h = self.header();
        h.arena_used.store(c.arena_used, Ordering::Relaxed);
        h.live.store(c.live, Ordering::Relaxed);
        h.tombstones.store(c.tombstones, Ordering::Relaxed);
        h.garbage.store(c.garbage, Ordering::Relaxed);
        h.counters_check.store(
            counters_check(c.arena_used, c.live, c.tombstones, c.garbage),
            Ordering::Relaxed,
        );
    }
}
