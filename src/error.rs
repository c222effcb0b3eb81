//! The one error type of the crate.

use std::time::Duration;

use crate::size::SizeError;

/// Result alias used throughout `shmkv`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a segment was refused as incompatible with this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incompatible {
    /// The segment at the key is not a shmkv map (wrong magic).
    NotShmkv,
    /// Written by a different layout version of shmkv.
    LayoutVersion {
        /// Version found in the segment.
        found: u32,
        /// Version this build writes and reads.
        expected: u32,
    },
    /// Hash algorithm id, seed or canary do not reproduce here.
    Hash,
    /// The rkyv format fingerprint differs (endianness, alignment, pointer width).
    Format {
        /// Fingerprint found in the segment.
        found: u64,
        /// Fingerprint of this build.
        expected: u64,
    },
    /// A typed map opened with another key kind or value type than it was
    /// made with (`Options::schema`, or the value type's name).
    Schema {
        /// The schema recorded in the map (its first 48 bytes).
        found: String,
        /// The schema of this handle.
        expected: String,
    },
}

impl std::fmt::Display for Incompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incompatible::NotShmkv => write!(f, "not a shmkv segment (bad magic)"),
            Incompatible::LayoutVersion { found, expected } => {
                write!(f, "layout version {found}, this build reads {expected}")
            }
            Incompatible::Hash => write!(f, "hash algorithm/seed/canary mismatch"),
            Incompatible::Format { found, expected } => write!(
                f,
                "rkyv format fingerprint {found:#018x}, this build has {expected:#018x}"
            ),
            Incompatible::Schema { found, expected } => write!(
                f,
                "the map holds {found}, this handle is typed {expected} \
                 (key kind -> value type, see Options::schema)"
            ),
        }
    }
}

/// Every failure `shmkv` reports. Variants are meant to be matched on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No map exists under this name or key.
    #[error("map {name:?} not found")]
    NotFound {
        /// The map's name (or the key, printed).
        name: String,
    },
    /// `create` found a map already there.
    #[error("map {name:?} already exists")]
    AlreadyExists {
        /// The map's name.
        name: String,
    },
    /// The kernel refused access (SysV permission bits).
    #[error("permission denied for map {name:?} ({op})")]
    PermissionDenied {
        /// The map's name.
        name: String,
        /// The system call that was refused.
        op: &'static str,
    },
    /// A size string or a size option is not acceptable.
    #[error("invalid size: {0}")]
    InvalidSize(#[from] SizeError),
    /// A map name is empty or too long.
    #[error("invalid map name: {0}")]
    InvalidName(String),
    /// An [`Options`](crate::Options) value is not acceptable (for example
    /// a `mode` with bits outside `0o777`, such as a decimal `644`).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The SysV key of a map could not be derived with `ftok` (the path is
    /// missing or not accessible).
    #[error("SysV key of map {name:?}: ftok({}, {id}) failed: {source}", .path.display())]
    Ftok {
        /// The map's name.
        name: String,
        /// The path given to [`Options::ftok`](crate::Options::ftok).
        path: std::path::PathBuf,
        /// The project id given with it.
        id: u8,
        /// Why `ftok` (its `stat` of the path) failed.
        source: std::io::Error,
    },
    /// The key is longer than the map accepts.
    #[error("key of {len} bytes is too large (max {max})")]
    KeyTooLarge {
        /// Length of the key.
        len: usize,
        /// Largest accepted length.
        max: usize,
    },
    /// The value (serialized) can never fit into this map.
    #[error("value of {len} bytes is too large (max {max})")]
    ValueTooLarge {
        /// Length of the serialized value.
        len: usize,
        /// Largest value this map can hold.
        max: usize,
    },
    /// The table or the arena has no room; nothing stored was changed. Also
    /// when the kernel refuses a new segment for lack of shared memory
    /// (`ENOSPC`/`ENOMEM` from `shmget`): then `what` names the kernel
    /// limits (`kernel.shmall`, `kernel.shmmni`) and the `sysctl` that
    /// raises them, and `needed` is the segment's size in bytes.
    #[error("{}", full_text(what, *needed, *available))]
    Full {
        /// `"slots"`, `"arena"`, or one of the system shared memory texts
        /// ([`SYSTEM_SHM_ENOSPC`], [`SYSTEM_SHM_ENOMEM`]).
        what: &'static str,
        /// Units needed by the write.
        needed: u64,
        /// Units still available.
        available: u64,
    },
    /// The write lock was not obtained in time.
    #[error("write lock not obtained within {waited:?} ({})", holder_text(.holder_pid))]
    LockTimeout {
        /// How long the call waited.
        waited: Duration,
        /// The process that last operated the lock (the holder), if known.
        holder_pid: Option<i32>,
    },
    /// The segment was written by an incompatible build.
    #[error("incompatible segment: {0}")]
    Incompatible(Incompatible),
    /// Shared memory content fails validation.
    #[error("corrupted map: {0}")]
    Corrupted(String),
    /// A different map lives at the key this name maps to.
    #[error("key holds map {found:?}, not {expected:?}")]
    NameMismatch {
        /// The name that was asked for.
        expected: String,
        /// The name stored in the segment.
        found: String,
    },
    /// A write was attempted through a read-only handle.
    #[error("map was opened read-only")]
    ReadOnly,
    /// A read-only view kept racing with writers: every run of its closure
    /// overlapped a committed write, until the lock timeout. A read-write
    /// handle never gets this (after many races it runs the closure under
    /// the write lock); a read-only one cannot take the lock.
    #[error(
        "map {name:?}: a writer changed it {changes} times during a view of {waited:?}; \
         try again, or use a read-write handle (which runs the view under the lock)"
    )]
    Busy {
        /// The map.
        name: String,
        /// Runs of the view closure that a write invalidated.
        changes: u64,
        /// How long the view tried.
        waited: Duration,
    },
    /// A write through a raw handle ([`RawMap`](crate::RawMap), `shmkv put`)
    /// into a typed map: refused, because its bytes would not be a value
    /// of the map's type. Allowed with
    /// [`Options::raw_writes`](crate::Options::raw_writes) (`shmkv put --raw`).
    #[error(
        "map {name:?} is typed ({schema}): a raw write would store bytes that are not \
         a value of its type; use ShmMap, or allow it with Options::raw_writes(true) \
         (shmkv put --raw)"
    )]
    TypedMap {
        /// The map.
        name: String,
        /// Its recorded schema.
        schema: String,
    },
    /// The map's policy is [`HugePages::Require`](crate::HugePages::Require)
    /// and the kernel refused a data segment on huge pages (no free
    /// reserved huge pages, no permission, or no huge page support). Nothing
    /// stored was changed: a write that needed a new segment (growth) did
    /// not happen, a create left nothing behind. Reserve pages with
    /// `sysctl -w vm.nr_hugepages=<pages>` (as root).
    #[error("{}", huge_text(name, *bytes, *page_size, .errno))]
    HugePagesUnavailable {
        /// The map.
        name: String,
        /// Bytes of the segment that was refused (whole huge pages).
        bytes: u64,
        /// The kernel's huge page size (`Hugepagesize`), 0 if it has none.
        page_size: u64,
        /// What `shmget` said, if it was called.
        errno: Option<i32>,
    },
    /// A write was started inside another write on the same map and thread.
    #[error("nested write on the same map (would deadlock)")]
    NestedWrite,
    /// A batch (`RawTxn`, or the batch of a `write` closure) used in a
    /// process forked while it was open: it belongs to the process that
    /// began it (which holds the lock; the child does not), so the child
    /// can neither stage into it nor commit it, and ending it there leaves
    /// the parent's lock and staging alone. Begin a new write in the child.
    #[error(
        "this batch was begun by process {owner_pid} before a fork: it belongs to that \
         process; begin a new write in this one"
    )]
    InheritedWrite {
        /// The process that began the batch.
        owner_pid: u32,
    },
    /// Inside a `view` closure only: a write began after the view started
    /// and a read met it, so this run of the closure cannot be consistent;
    /// the view runs the closure again (it never returns this error).
    #[error("a write raced with this view (it runs again)")]
    ViewRaced,
    /// The value could not be serialized or deserialized.
    #[error("value encoding: {0}")]
    Value(String),
    /// The map's SysV key is taken by an object shmkv did not make (`ftok`
    /// and name keys can collide with other programs'). shmkv neither reads
    /// nor changes nor removes such an object.
    #[error(
        "SysV key {key:#010x} of map {name:?} is used by another program \
         ({object} id {id} is not a shmkv object); shmkv leaves it alone: \
         use another map name or key"
    )]
    KeyInUse {
        /// The map's name.
        name: String,
        /// The SysV key.
        key: i32,
        /// `"shared memory segment"` or `"semaphore set"`.
        object: &'static str,
        /// Its shmid or semid.
        id: i32,
    },
    /// A user write (`insert`/`remove`, in any API) of a key in the
    /// reserved namespace: keys beginning with
    /// [`RESERVED_PREFIX`](crate::RESERVED_PREFIX) (`"\0shmkv:"`) belong
    /// to shmkv itself (the sync state, [`SYNC_STATE_KEY`](crate::SYNC_STATE_KEY)).
    #[error("key {key:?} is reserved (keys beginning with \"\\0shmkv:\" belong to shmkv)")]
    ReservedKey {
        /// The key, lossily as text.
        key: String,
    },
    /// A system call failed for another reason.
    #[error("{op} failed: {source}")]
    Os {
        /// The system call.
        op: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// [`Error::Full::what`] when `shmget` fails with `ENOSPC`.
pub const SYSTEM_SHM_ENOSPC: &str = "the kernel's shared memory limits are reached \
(ENOSPC from shmget: the total of all segments would exceed kernel.shmall pages, or \
kernel.shmmni segments exist); see `ipcs -l` and `ipcs -m`, remove unused segments \
or raise the limit, e.g. `sysctl -w kernel.shmall=<pages>` or `sysctl -w kernel.shmmni=<count>`";

/// [`Error::Full::what`] when `shmget` fails with `ENOMEM`.
pub const SYSTEM_SHM_ENOMEM: &str = "the kernel has no memory for a new segment \
(ENOMEM from shmget: RAM or a memory cgroup limit; the shared memory limits are \
kernel.shmmax, kernel.shmall and kernel.shmmni, see `ipcs -l`, raised with \
`sysctl -w kernel.shmall=<pages>`)";

fn full_text(what: &str, needed: u64, available: u64) -> String {
    if what == SYSTEM_SHM_ENOSPC || what == SYSTEM_SHM_ENOMEM {
        format!("no shared memory for a segment of {needed} bytes: {what}")
    } else {
        format!("map is full: {what} (needed {needed}, available {available})")
    }
}

fn holder_text(pid: &Option<i32>) -> String {
    match pid {
        Some(p) => format!("held by pid {p}"),
        None => "holder unknown".to_string(),
    }
}

fn huge_text(name: &str, bytes: u64, page_size: u64, errno: &Option<i32>) -> String {
    let why = match errno {
        Some(e) => format!(
            "shmget(SHM_HUGETLB): {}",
            std::io::Error::from_raw_os_error(*e)
        ),
        None => "this kernel reports no huge page size".to_string(),
    };
    let pages = if page_size == 0 {
        0
    } else {
        bytes.div_ceil(page_size)
    };
    format!(
        "map {name:?} requires huge pages (HugePages::Require) and the kernel refused a \
         segment of {bytes} bytes ({pages} huge pages of {page_size} bytes; {why}); \
         reserve them with `sysctl -w vm.nr_hugepages=<pages>` (needs {pages} free, \
         see HugePages_Free in /proc/meminfo) or create the map with HugePages::Try"
    )
}

impl Error {
    pub(crate) fn corrupted(what: impl Into<String>) -> Self {
        Error::Corrupted(what.into())
    }

    /// `Os` from a raw errno value.
    pub(crate) fn os(op: &'static str, errno: i32) -> Self {
        Error::Os {
            op,
            source: std::io::Error::from_raw_os_error(errno),
        }
    }
}
