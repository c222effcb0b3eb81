//! Heap memory laid out like a segment, for unit tests and fuzzing: the same
//! table code runs over it as over a SysV segment.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// A zero-filled, 4096-byte aligned heap buffer.
#[derive(Debug)]
pub struct HeapRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl HeapRegion {
    /// Allocates `len` zero bytes (at least 1).
    pub fn new(len: usize) -> HeapRegion {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        HeapRegion {
            ptr: NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout)),
            layout,
        }
    }

    /// A copy of `bytes` in a fresh aligned region.
    pub fn from_bytes(bytes: &[u8]) -> HeapRegion {
        let r = HeapRegion::new(bytes.len());
        // SAFETY: the region has room for bytes.len() bytes; distinct allocations.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), r.ptr.as_ptr(), bytes.len()) };
        r
    }

    /// Base pointer.
    pub fn base(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Always false: regions have at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

// SAFETY: plain owned heap memory.
unsafe impl Send for HeapRegion {}
// SAFETY: shared access goes through atomics or immutable bytes (see Table).
unsafe impl Sync for HeapRegion {}

use crate::error::{Error, Result};
use crate::hash::hash_key;
use crate::raw::layout::data_geometry;
use crate::raw::lock::WriteLock;
use crate::raw::table::{ReadErr, Table};
use crate::raw::write::Stager;

/// The table algorithm over heap memory, without the SysV lock: for fuzzing
/// and model tests. Single-threaded writers only (no lock is taken).
#[derive(Debug)]
pub struct HeapMap {
    // `table` points into `region`; it drops first.
    table: Table,
    region: HeapRegion,
    seed: u64,
    /// The writer's token: a heap table has no lock, its handle is the only
    /// writer.
    lock: WriteLock,
    /// Not `Sync`: `image` reads the bytes plainly while only this thread writes.
    _single_thread: std::marker::PhantomData<std::cell::Cell<()>>,
}

/// The operations of one write on a [`HeapMap`].
pub struct HeapBatch<'a> {
    t: &'a Table,
    stager: Stager<'a>,
    seed: u64,
}

impl HeapBatch<'_> {
    /// Stages `key → value`.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.stager
            .put(self.t, key, hash_key(self.seed, key), value)
    }
    /// Stages removal; returns whether the key was present.
    pub fn remove(&mut self, key: &[u8]) -> Result<bool> {
        self.stager.remove(self.t, key, hash_key(self.seed, key))
    }
    /// The value as this batch sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .stager
            .get(self.t, key, hash_key(self.seed, key))?
            .map(<[u8]>::to_vec))
    }
}

fn read_err(e: ReadErr) -> Error {
    e.into_error()
}

impl HeapMap {
    /// A fresh table of `slots` (a power of two) and `arena` bytes.
    pub fn new(slots: u64, arena: u64, seed: u64) -> Result<HeapMap> {
        let (_, _, total) = data_geometry(slots, arena).ok_or_else(|| Error::corrupted("size"))?;
        let region = HeapRegion::new(total as usize);
        // SAFETY: the region is zero-filled, ours alone, and moves into the
        // returned map together with the table (which drops first).
        let table = unsafe { Table::init(region.base(), region.len(), slots, arena, 1, 0)? };
        Ok(HeapMap {
            table,
            region,
            seed,
            // SAFETY: the region is this map's alone and the map is not
            // `Sync`: only the thread that owns it writes the table.
            lock: unsafe { WriteLock::assume_held() },
            _single_thread: std::marker::PhantomData,
        })
    }

    /// Attaches to an arbitrary segment image (a copy of `bytes`): an error
    /// for anything that does not validate.
    pub fn from_image(bytes: &[u8], seed: u64) -> Result<HeapMap> {
        let region = HeapRegion::from_bytes(bytes);
        // SAFETY: the region holds `len` readable bytes and moves into the
        // returned map with the table; its content may be anything.
        let table = unsafe { Table::attach(region.base(), bytes.len()) }?;
        Ok(HeapMap {
            table,
            region,
            seed,
            // SAFETY: the region is this map's alone and the map is not
            // `Sync`: only the thread that owns it writes the table.
            lock: unsafe { WriteLock::assume_held() },
            _single_thread: std::marker::PhantomData,
        })
    }

    /// A copy of the segment bytes.
    pub fn image(&self) -> Vec<u8> {
        // SAFETY: the region is `len` initialised bytes; no writer runs
        // concurrently: HeapMap is not Sync, so writers run on this thread.
        unsafe { std::slice::from_raw_parts(self.region.base().as_ptr(), self.region.len()) }
            .to_vec()
    }

    /// Runs recovery, then `f`, then commits what it staged.
    pub fn write<R>(&self, f: impl FnOnce(&mut HeapBatch<'_>) -> Result<R>) -> Result<R> {
        self.table.recover(&self.lock)?;
        let mut b = HeapBatch {
            t: &self.table,
            stager: Stager::new(&self.table, &self.lock),
            seed: self.seed,
        };
        let r = f(&mut b)?;
        b.stager.commit(&self.table)?;
        Ok(r)
    }

    /// Compaction as far as the table layer goes: a fresh heap table of the
    /// same geometry, filled by `Table::load_from` (the copy a growing or
    /// compacting `RawMap` write makes), checked with `verify` by callers.
    /// The heap map has no generations, so nothing is published.
    pub fn compact(&self) -> Result<HeapMap> {
        let fresh = HeapMap::new(self.table.capacity(), self.table.arena_size(), self.seed)?;
        fresh
            .table
            .load_from(&fresh.lock, &self.table, |_, _| false)?;
        Ok(fresh)
    }

    /// The consistency check `RawMap::verify` runs.
    pub fn verify(&self) -> crate::raw::verify::VerifyReport {
        self.table.verify(self.seed)
    }

    /// Recovery as the next lock holder would run it.
    pub fn recover(&self) -> Result<bool> {
        self.table.recover(&self.lock)
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let f = self
            .table
            .find(key, hash_key(self.seed, key))
            .map_err(read_err)?;
        Ok(f.map(|f| self.table.value_of(&f).to_vec()))
    }

    /// Number of entries according to the header.
    pub fn len(&self) -> usize {
        self.table
            .header()
            .live
            .load(std::sync::atomic::Ordering::Relaxed) as usize
    }

    /// Whether the header counts no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, read slot by slot.
    pub fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        (0..self.table.capacity())
            .filter_map(|i| match self.table.entry_at(i) {
                Ok(Some(f)) => Some(Ok((
                    self.table.key_of(&f).to_vec(),
                    self.table.value_of(&f).to_vec(),
                ))),
                Ok(None) => None,
                Err(e) => Some(Err(read_err(e))),
            })
            .collect()
    }
}
