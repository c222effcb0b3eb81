//! [`WriteLock`]: the compiler's check of the lock discipline. Everything
//! that writes a table's shared memory (staging records and the redo log,
//! slot writes, the counters, recovery, the copy into a new generation)
//! takes a `&WriteLock`, which only a holder of the map's write lock has
//! (`WriteGuard`) or a caller that vouches, in an `unsafe` block, that it is
//! the table's only writer (heap tables in tests, fuzzing and loom models).

/// Proof that the holder is the only writer of the tables it writes.
#[derive(Debug)]
pub(crate) struct WriteLock(());

impl WriteLock {
    /// A token for the caller.
    ///
    /// # Safety
    /// While the token (or a reference to it) lives, no other thread or
    /// process writes the tables it is used with: the caller holds the
    /// map's semaphore, or the table is not shared with any other writer.
    pub(crate) const unsafe fn assume_held() -> WriteLock {
        WriteLock(())
    }
}
