//! [`Stats`]: a map's counters and identity, as `stats()` reports them.

/// Counters and identity of a map, as `stats()` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The map's name.
    pub name: String,
    /// Its SysV key.
    pub key: i32,
    /// Table generation in force (1 for a new map).
    pub generation: u64,
    /// Number of slots.
    pub capacity: u64,
    /// Entries stored (the hidden sync state not counted).
    pub live: u64,
    /// Slots holding tombstones.
    pub tombstones: u64,
    /// Bytes of the arena.
    pub arena_size: u64,
    /// Bytes of the arena published so far.
    pub arena_used: u64,
    /// Published arena bytes no entry refers to any more.
    pub garbage_bytes: u64,
    /// Bytes of the data segment.
    pub segment_size: u64,
    /// Committed writes so far.
    pub version: u64,
    /// Processes attached to the data segment.
    pub attached: u64,
    /// Whether the write lock is held now.
    pub lock_held: bool,
    /// Pid that last operated the lock (the holder while it is held).
    pub lock_pid: Option<i32>,
    /// shmid of the root segment.
    pub root_shmid: i32,
    /// shmid of the data segment.
    pub data_shmid: i32,
    /// semid of the lock.
    pub semid: i32,
    /// Data segments this handle has mapped now (the current one plus
    /// retired ones still referenced in this process).
    pub mapped_generations: usize,
    /// Retired data segments (shmids) that the writer who retired them was
    /// not allowed to remove (another user's); the next process that may
    /// (a writer or recovery of the map's owner) removes them.
    pub stale_segments: Vec<i32>,
    /// The schema of a typed map (`key kind -> value type`), if recorded.
    pub schema: Option<String>,
    /// Whether writers wake sleepers after every write
    /// ([`Options::wake_every_write`](crate::Options::wake_every_write)).
    pub wake_every_write: bool,
    /// Whether the current data segment is on huge pages (`SHM_HUGETLB`).
    pub huge_pages: bool,
    /// The map's huge page policy, recorded at creation
    /// ([`Options::huge_pages`](crate::Options::huge_pages)).
    pub huge_page_policy: crate::HugePages,
}
