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
