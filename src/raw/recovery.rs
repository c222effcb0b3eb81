//! Recovery (DESIGN.md "Recovery protocol"): bringing a table to a
//! consistent state after a writer died, by applying its committed redo log
//! again or ignoring an uncommitted one (ONE-COMMIT-POINT), and closing
//! seqlock stamps that a scribbled segment left odd. Run with the writer
//! lock held.

use crate::sync::{weakened, Ordering, Weaken};

use super::lock::WriteLock;
use super::redo::Redo;
use super::table::Table;
use crate::error::{Error, Result};

impl Table {
    /// Brings the table to a consistent state after a writer died: a
    /// committed redo log is applied again (idempotent), an uncommitted one
    /// is ignored (its bytes are above `arena_used`). Returns whether
    /// anything was repaired. The caller holds the writer lock.
    pub(crate) fn recover(&self, lock: &WriteLock) -> Result<bool> {
        let h = self.header();
        let commit = h.commit.load(Ordering::Acquire);
        if commit == 0 {
            let seq = h.view_seq.load(Ordering::Relaxed);
            if seq & 1 == 1 {
                let next = seq
                    .checked_add(1)
                    .ok_or_else(|| Error::corrupted("view sequence at its limit"))?;
                h.view_seq.store(next, Ordering::Release);
                return Ok(true);
            }
            return Ok(false);
        }
        let redo = Redo::parse(self, commit).map_err(Error::corrupted)?;
        if weakened(Weaken::Recovery) {
            // Planted bug: only close what is open, do not redo.
            self.close_odd_slots(lock);
            let seq = h.view_seq.load(Ordering::Relaxed);
            h.view_seq
                .store((seq | 1).wrapping_add(1), Ordering::Release);
            h.commit.store(0, Ordering::Release);
            return Ok(true);
        }
        redo.apply(self, lock, false);
        Ok(true)
    }

    /// Closes slot stamps left odd with no committed write (which no writer
    /// does: the segment was scribbled on). Called under the lock when a
    /// reader stalled and recovery found nothing to redo, so that readers
    /// see (bounds-checked) data instead of stalling forever.
    pub(crate) fn close_odd_slots(&self, _lock: &WriteLock) -> u64 {
        let mut closed = 0;
        for i in 0..self.capacity() {
            let seq = &self.slot(i).seq;
            let s = seq.load(Ordering::Relaxed);
            if s & 1 == 1 {
                seq.store(s.wrapping_add(1), Ordering::Release);
                closed += 1;
            }
        }
        closed
    }

    /// Whether a committed write is waiting to be applied (cheap check).
    pub(crate) fn needs_recovery(&self) -> bool {
        self.header().commit.load(Ordering::Acquire) != 0
            || self.header().view_seq.load(Ordering::Relaxed) & 1 == 1
    }
}
