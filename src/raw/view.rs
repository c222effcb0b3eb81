//! [`RawView`]: consistent multi-key reads of one generation.

use std::ptr::NonNull;
use std::sync::Arc;

use super::engine::Engine;
use super::gens::{Generation, Pin};
use super::overlay::Overlay;
use super::reference::{Entry, Ref};
use super::table::{Found, ReadErr, Table};
use crate::error::{Error, Result};
use crate::hash::hash_key;

/// Consistent multi-key reads (see [`RawMap::view`](crate::RawMap::view)).
pub struct RawView<'m> {
    pub(super) map: &'m Engine,
    /// The generation the view reads (kept mapped by `pin`).
    pub(super) gen: NonNull<Generation>,
    pub(super) pin: Pin<'m>,
    /// The committed write being applied when the view started: the view
    /// reads its after state.
    pub(super) overlay: Option<Arc<Overlay>>,
    /// `view_seq` when the view started.
    pub(super) seq: u64,
}

impl<'m> RawView<'m> {
    pub(super) fn gen(&self) -> &Generation {
        // SAFETY: `pin` keeps this generation mapped while the view lives.
        unsafe { self.gen.as_ref() }
    }

    pub(super) fn found_ref(&self, f: &Found, value: bool) -> Ref<'m, [u8]> {
        let t = &self.gen().table;
        Ref::new(
            if value { t.value_of(f) } else { t.key_of(f) },
            self.pin.clone(),
        )
    }

    /// Runs one read of the view. A read that stalls because a write began
    /// after the view started fails at once with `ViewRaced`: this run of
    /// the closure fails its validation anyway, and the view runs it again
    /// from the new state.
    pub(super) fn read<T>(
        &self,
        mut op: impl FnMut(&Table, Option<&Overlay>) -> Result<T, ReadErr>,
    ) -> Result<T> {
        let o = self.overlay.as_deref();
        let mut raced = false;
        let r = self.map.read_in(self.gen(), |t| match op(t, o) {
            Err(ReadErr::Stalled) if !t.view_validate(self.seq) => {
                raced = true;
                Err(ReadErr::Corrupted("raced"))
            }
            r => r,
        });
        if raced {
            return Err(Error::ViewRaced);
        }
        r
    }

    /// The value of `key`, zero-copy.
    pub fn get(&self, key: &[u8]) -> Result<Option<Ref<'m, [u8]>>> {
        let h = hash_key(self.map.seed, key);
        let found = self.read(|t, o| match o {
            Some(o) => o.find(t, key, h),
            None => t.find(key, h),
        })?;
        if self.map.verify_reads {
            check_record(&self.gen().table, found.as_ref())?;
        }
        Ok(found.map(|f| self.found_ref(&f, true)))
    }

    /// Entries in this snapshot, the hidden sync state not counted (the
    /// live count of the state the view reads, minus one if that state
    /// holds the sync state key).
    pub(crate) fn user_len(&self) -> usize {
        let live = match &self.overlay {
            Some(o) => o.redo.live,
            None => self
                .gen()
                .table
                .header()
                .live
                .load(std::sync::atomic::Ordering::Acquire),
        } as usize;
        // A raced lookup fails the view's validation: this run is dropped.
        let has = matches!(self.get(crate::SYNC_STATE_KEY), Ok(Some(_)));
        live.saturating_sub(usize::from(has))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// The map's version in this snapshot (what
    /// [`RawMap::version`](crate::RawMap::version) returned at the moment the
    /// view reads).
    pub fn version(&self) -> u64 {
        match &self.overlay {
            Some(o) => o.version(),
            None => self.seq >> 1,
        }
    }

    /// The generation (data segment) this snapshot reads.
    pub fn generation(&self) -> u64 {
        self.gen().number
    }

    /// Every entry (but the hidden sync state,
    /// [`SYNC_STATE_KEY`](crate::SYNC_STATE_KEY)) with the arena offset of its record: within one
    /// generation a different offset means the entry was written again
    /// (records are never rewritten in place), also with the same value.
    /// For change reports such as `shmkv watch`.
    pub fn entries_with_records(&self) -> Result<Vec<(Entry<'m>, u64)>> {
        let mut out = Vec::new();
        for i in 0..self.gen().table.capacity() {
            let found = self.read(|t, o| match o {
                Some(o) => o.entry_at(t, i),
                None => t.entry_at(i),
            })?;
            if self.map.verify_reads {
                check_record(&self.gen().table, found.as_ref())?;
            }
            if let Some(f) = found {
                let key = self.found_ref(&f, false);
                // The sync state is not a user entry (DESIGN.md "Sync from etcd").
                if &*key == crate::SYNC_STATE_KEY {
                    continue;
                }
                out.push(((key, self.found_ref(&f, true)), f.record));
            }
        }
        Ok(out)
    }

    /// Every entry.
    pub fn entries(&self) -> Result<Vec<Entry<'m>>> {
        Ok(self
            .entries_with_records()?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }
}

/// With `Options::verify_reads`: the record's checksum must hold. Kept out
/// of line so that the read path without it stays as it was.
#[cold]
#[inline(never)]
pub(super) fn check_record(t: &Table, found: Option<&Found>) -> Result<()> {
    match found {
        Some(f) if !t.record_intact(f) => Err(Error::corrupted("record checksum mismatch")),
        _ => Ok(()),
    }
}
