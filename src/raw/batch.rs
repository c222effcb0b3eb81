//! [`RawBatch`]: the operations of one atomic write, and moving a write to
//! a new generation when the table or arena is full (migration).

use std::sync::atomic::Ordering;

use super::engine::{Engine, Undo};
use super::gens::Generation;
use super::geometry::{grow_geometry, MIN_ARENA, MIN_SLOTS};
use super::layout::REDO_ENTRY;
use super::table::{record_size, Table};
use super::write::Stager;
use crate::error::{Error, Result};
use crate::hash::hash_key;

/// The operations of one atomic write (see [`RawMap::write`](crate::RawMap::write)).
pub struct RawBatch<'b> {
    pub(super) map: &'b Engine,
    /// The published generation the batch started on.
    pub(super) base: &'b Generation,
    /// A new generation the batch moved to (unpublished until commit).
    pub(super) fresh: Option<Box<Generation>>,
    pub(super) stager: Stager<'b>,
    /// The fork epoch and process the batch began in (`check_process`).
    pub(super) owner: (u32, u32),
}

impl RawBatch<'_> {
    /// The `owner` of a batch begun now, in this process.
    pub(super) fn owner_here() -> (u32, u32) {
        (super::gens::fork_epoch(), std::process::id())
    }

    /// Whether the batch was begun in another process: this is a child
    /// forked while the batch was open (the fork epoch moved on).
    fn inherited(&self) -> bool {
        self.owner.0 != super::gens::fork_epoch()
    }

    /// [`Error::InheritedWrite`] in a child forked while the batch was
    /// open: its staged records are in the shared arena and its lock is
    /// the parent's, so nothing here may touch them.
    fn check_process(&self) -> Result<()> {
        if self.inherited() {
            return Err(Error::InheritedWrite {
                owner_pid: self.owner.1,
            });
        }
        Ok(())
    }

    pub(super) fn table(&self) -> &Table {
        &self.fresh.as_deref().unwrap_or(self.base).table
    }

    /// Stages `key → value`. Refused with
    /// [`Error::TypedMap`](crate::Error::TypedMap) on a raw handle of a
    /// typed map (unless [`Options::raw_writes`](crate::Options::raw_writes)),
    /// and with [`Error::ReservedKey`](crate::Error::ReservedKey) for a key
    /// beginning with [`RESERVED_PREFIX`](crate::RESERVED_PREFIX).
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        crate::sync_state::check_user_key(key)?;
        self.insert_system(key, value)
    }

    /// A typed map's `insert`: an integer key (8 bytes, shorter than any
    /// system key such as the 11-byte [`SYNC_STATE_KEY`](crate::SYNC_STATE_KEY))
    /// is an ordinary key even when its bytes begin with the reserved
    /// prefix (256 u64 and 256 i64 values do); other keys as `insert`.
    pub(crate) fn insert_typed(
        &mut self,
        key: &crate::key::KeyBytes<'_>,
        value: &[u8],
    ) -> Result<()> {
        match key {
            crate::key::KeyBytes::Int(k) => self.insert_system(k, value),
            crate::key::KeyBytes::Borrowed(k) => self.insert(k, value),
        }
    }

    /// A typed map's `remove` (integer keys as in `insert_typed`).
    pub(crate) fn remove_typed(&mut self, key: &crate::key::KeyBytes<'_>) -> Result<bool> {
        match key {
            crate::key::KeyBytes::Int(k) => self.remove_system(k),
            crate::key::KeyBytes::Borrowed(k) => self.remove(k),
        }
    }

    /// `insert` without the reserved-key check: the sync state, and the
    /// integer keys of `insert_typed` (8 bytes, never a system key).
    pub(crate) fn insert_system(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_process()?;
        // The system key is not a value of a typed map's type: no check.
        if !self.map.raw_writes_ok && !crate::sync_state::is_reserved_key(key) {
            if let Some((_, schema)) = super::schema::recorded(self.map.root()) {
                return Err(Error::TypedMap {
                    name: self.map.name.clone(),
                    schema,
                });
            }
        }
        let h = hash_key(self.map.seed, key);
        let t = &self.fresh.as_deref().unwrap_or(self.base).table;
        match self.stager.put(t, key, h, value) {
            Err(Error::Full { .. }) => {
                self.migrate(Some((key.len(), value.len())))?;
                let t = &self.fresh.as_deref().unwrap_or(self.base).table;
                self.stager.put(t, key, h, value)
            }
            r => r,
        }
    }

    /// Stages removal of `key`; returns whether it was present (as this
    /// batch sees the map). [`Error::ReservedKey`](crate::Error::ReservedKey)
    /// for a reserved key.
    pub fn remove(&mut self, key: &[u8]) -> Result<bool> {
        crate::sync_state::check_user_key(key)?;
        self.remove_system(key)
    }

    /// `remove` without the reserved-key check: the sync state, and the
    /// integer keys of `remove_typed`.
    pub(crate) fn remove_system(&mut self, key: &[u8]) -> Result<bool> {
        self.check_process()?;
        let h = hash_key(self.map.seed, key);
        let t = &self.fresh.as_deref().unwrap_or(self.base).table;
        self.stager.remove(t, key, h)
    }

    /// The value of `key` as this batch sees the map (its own writes
    /// included).
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        self.check_process()?;
        let h = hash_key(self.map.seed, key);
        self.stager.get(self.table(), key, h)
    }

    /// Whether `key` is present as this batch sees the map.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Moves the batch to a new generation sized for the live entries, the
    /// batch and `extra` (a record that did not fit), copying the live
    /// entries and re-staging the batch there. Nothing is published yet.
    pub(super) fn migrate(&mut self, extra: Option<(usize, usize)>) -> Result<()> {
        let base = &self.base.table;
        let h = base.header();
        let live = h.live.load(Ordering::Relaxed);
        let live_bytes = h
            .arena_used
            .load(Ordering::Relaxed)
            .saturating_sub(h.garbage.load(Ordering::Relaxed));
        let (dkeys, dbytes) = self.stager.footprint(base)?;
        let (xn, xb) = extra.map_or((0, 0), |(k, v)| (1, record_size(k as u64, v as u64)));
        let keys = (live as i64 + dkeys).max(0) as u64 + xn;
        let bytes =
            (live_bytes as i64 + dbytes).max(0) as u64 + xb + REDO_ENTRY * self.stager.op_count();
        let max_total = (self.map.max_size != 0).then_some(self.map.max_size);
        let (slots, arena) =
            match grow_geometry(base.capacity(), base.arena_size(), keys, bytes, max_total) {
                Ok(g) => g,
                Err(e) => {
                    // A record that does not fit even into an otherwise empty map.
                    if let (Some((_, v)), Some(max)) = (extra, max_total) {
                        if grow_geometry(MIN_SLOTS, MIN_ARENA, 1, xb, max_total).is_err() {
                            return Err(Error::ValueTooLarge {
                                len: v,
                                max: max as usize,
                            });
                        }
                    }
                    return Err(e);
                }
            };
        let r = self.map.root();
        // A second move within one batch: the previous fresh generation is
        // still recorded (as `retiring`) until it is removed below.
        if let Some(prev) = &self.fresh {
            r.retiring.store(prev.seg.id as u64 + 1, Ordering::Release);
        }
        let fresh = self
            .map
            .new_generation(self.base.number + 1, slots, arena)?;
        let mut discard = Undo(Some(|| {
            let _ = self.map.provider.remove(fresh.seg.id);
            r.pending.store(0, Ordering::Release);
        }));
        // Keys the batch writes or removes are not copied: the replay below
        // stages their final state.
        fresh
            .table
            .load_from(self.stager.lock(), base, |k, h| self.stager.touches(k, h))?;
        let mut stager = Stager::new(&fresh.table, self.stager.lock());
        let from = &self.fresh.as_deref().unwrap_or(self.base).table;
        self.stager.replay(from, &mut stager, &fresh.table)?;
        discard.0 = None;
        drop(discard);
        if let Some(prev) = self.fresh.replace(fresh) {
            self.map.provider.remove(prev.seg.id)?;
            r.retiring.store(0, Ordering::Release);
        }
        self.stager = stager;
        Ok(())
    }

    /// Commits the batch: in place, or by moving to a new generation when
    /// the table or arena is full, then publishing it.
    pub(super) fn commit(mut self) -> Result<()> {
        self.check_process()?;
        let mut moves = 0;
        loop {
            let result = match self.fresh.as_deref() {
                Some(fresh) => self.stager.commit(&fresh.table),
                None => self.map.commit_in_place(&self.base.table, &self.stager),
            };
            match result {
                Ok(_) => break,
                Err(Error::Full { .. }) if moves < 2 => {
                    moves += 1;
                    self.migrate(None)?;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(fresh) = self.fresh.take() {
            self.map.publish(self.base, fresh)?;
        }
        Ok(())
    }
}

impl Drop for RawBatch<'_> {
    fn drop(&mut self) {
        if self.inherited() {
            // The parent's batch in a forked child: its unpublished
            // generation and the root's `pending` word are the parent's.
            // Leak this process's copy of the handle instead.
            std::mem::forget(self.fresh.take());
            return;
        }
        // An unpublished generation (the batch failed or panicked): remove it.
        if let Some(fresh) = self.fresh.take() {
            let _ = self.map.provider.remove(fresh.seg.id);
            self.map.root().pending.store(0, Ordering::Release);
        }
    }
}
