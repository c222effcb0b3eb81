//! How a map is found and sized.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::raw::geometry::{max_used, MIN_ARENA, MIN_SLOTS};
use crate::raw::layout::{align_up, data_geometry, ARENA_ALIGN, MAX_NAME_LEN, ROOT_SIZE};
use crate::size::{Size, SizeError};
use crate::sys;

/// Where the map's SysV key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    Name,
    Raw(i32),
    Ftok(PathBuf, u8),
}

/// Where a map's data segments live: normal pages, or huge pages
/// (`SHM_HUGETLB`, the size in `/proc/meminfo` `Hugepagesize`, usually
/// 2 MiB) from the kernel's reserved pool (`vm.nr_hugepages`). On huge
/// pages a lookup's two memory accesses (slot, record) no longer miss the
/// TLB (DESIGN.md "Huge pages"). Chosen when the map is created and
/// recorded in it: every writer that later makes a new generation (growth,
/// compaction), also another process that opened the map without the
/// option, follows the recorded choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugePages {
    /// Normal pages (the default).
    #[default]
    Off,
    /// Huge pages when the kernel gives them, normal pages otherwise (no
    /// reserved pages, not allowed, or rounding to whole huge pages would
    /// exceed `max_size`). [`Stats::huge_pages`](crate::Stats::huge_pages)
    /// says which the current segment got.
    Try,
    /// Huge pages only: creating the map, or a write that needs a new data
    /// segment, fails with [`Error::HugePagesUnavailable`] when the kernel
    /// refuses them; nothing stored is changed then.
    Require,
}

/// Options for creating or opening a map. Builder style:
///
/// ```
/// use shmkv::{Options, Size};
/// use std::time::Duration;
/// let opts = Options::new()
///     .capacity(10_000)
///     .arena_size(Size::parse("4mb").unwrap())
///     .mode(0o644)
///     .lock_timeout(Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) capacity: u64,
    pub(crate) arena_size: Option<Size>,
    pub(crate) max_size: Option<Size>,
    pub(crate) mode: u32,
    /// The argument of [`mode`](Self::mode) when it had bits outside
    /// `0o777` (an error when the options are used).
    bad_mode: Option<u32>,
    pub(crate) read_only: bool,
    pub(crate) lock_timeout: Duration,
    pub(crate) verify_reads: bool,
    key: KeySource,
    /// `schema`: the value type's identity a typed map records.
    pub(crate) schema: Option<String>,
    /// `raw_writes`: raw writes into a typed map are allowed.
    pub(crate) raw_writes: bool,
    /// `wake_every_write`.
    pub(crate) wake_every_write: bool,
    /// `huge_pages`.
    pub(crate) huge_pages: HugePages,
    /// Set by `ShmMap`: the full schema text of the typed handle.
    pub(crate) typed: Option<String>,
}

/// The longest wait this crate ever computes a deadline for: 100 years.
/// Longer timeouts (up to `Duration::MAX`) are clamped to it, which is
/// "forever" for any process, and keeps `Instant + timeout` and the kernel's
/// `timespec` far from overflowing.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl Options {
    /// Defaults: 1,024 entries, 256 arena bytes per entry (at least 64 KiB),
    /// no size bound, mode 0600, read-write, 5 s lock timeout, key from name.
    pub fn new() -> Options {
        Options {
            capacity: 1024,
            arena_size: None,
            max_size: None,
            mode: 0o600,
            bad_mode: None,
            read_only: false,
            lock_timeout: Duration::from_secs(5),
            verify_reads: false,
            schema: None,
            raw_writes: false,
            wake_every_write: false,
            huge_pages: HugePages::Off,
            typed: None,
            key: KeySource::Name,
        }
    }

    /// Number of entries the table holds without growing (at most 7/8 of
    /// the slots are used; the slot count is rounded up to a power of two).
    pub fn capacity(mut self, entries: u64) -> Options {
        self.capacity = entries;
        self
    }

    /// Bytes of the arena that holds keys and values.
    pub fn arena_size(mut self, size: impl Into<Size>) -> Options {
        self.arena_size = Some(size.into());
        self
    }

    /// Upper bound on the map's total shared memory.
    pub fn max_size(mut self, size: impl Into<Size>) -> Options {
        self.max_size = Some(size.into());
        self
    }

    /// Permission bits of the segments and the semaphore (default 0600),
    /// in octal: `0o644`, not `644`. A mode with bits outside `0o777` (a
    /// decimal `644` is `0o1204`) makes every call that uses these options
    /// return [`Error::InvalidOption`].
    pub fn mode(mut self, mode: u32) -> Options {
        self.bad_mode = (mode & !0o777 != 0).then_some(mode);
        self.mode = mode & 0o777;
        self
    }

    /// Attach with `SHM_RDONLY`; every write returns [`Error::ReadOnly`].
    pub fn read_only(mut self, read_only: bool) -> Options {
        self.read_only = read_only;
        self
    }

    /// How long a write waits for the lock before [`Error::LockTimeout`]
    /// (also bounds how long a read waits on a stuck writer). Any duration
    /// is accepted: from 100 years up (`Duration::MAX` included) it means
    /// "wait forever".
    pub fn lock_timeout(mut self, timeout: Duration) -> Options {
        self.lock_timeout = timeout.min(FOREVER);
        self
    }

    /// The identity of a typed map's value type, recorded when a
    /// [`ShmMap`](crate::ShmMap) creates the map and compared when one
    /// opens it (with the key kind, e.g. `str -> backend/v2`): a handle of
    /// another schema gets [`Incompatible::Schema`](crate::Incompatible::Schema)
    /// instead of values it would misread. Without it, the value type's
    /// name (`std::any::type_name`) is used: it tells `u64` from `f64` or
    /// `(u32, u32)`, and one struct from another by path, but not two
    /// versions of one struct with changed fields (give a versioned name,
    /// e.g. `"backend/v2"`, for that), and it may change between Rust
    /// releases (a name also pins that). Raw handles ignore it.
    pub fn schema(mut self, name: impl Into<String>) -> Options {
        self.schema = Some(name.into());
        self
    }

    /// Allows this handle's raw writes ([`RawMap::insert`](crate::RawMap::insert),
    /// `write`, `remove`) into a typed map, which are otherwise refused with
    /// [`Error::TypedMap`]: the caller vouches that the bytes are values of
    /// the map's type. Off by default.
    pub fn raw_writes(mut self, on: bool) -> Options {
        self.raw_writes = on;
        self
    }

    /// Chosen when the map is created (recorded in it; ignored when opening):
    /// writers wake `wait_for_change` sleepers after every write, with one
    /// `FUTEX_WAKE` system call each, instead of only when a sleeper has
    /// registered. Registering needs write access to the map's root, so
    /// read-only processes that may not write it (another user's map, mode
    /// 0644) can only poll (every millisecond) unless the map wakes on every
    /// write; with this, they sleep in the kernel too. Costs every write
    /// one system call, also with nobody waiting (measured: a single
    /// insert about 0.5 to 1 µs slower, DESIGN.md "Change notification").
    /// Off by default.
    pub fn wake_every_write(mut self, on: bool) -> Options {
        self.wake_every_write = on;
        self
    }

    /// Chosen when the map is created (recorded in it; ignored when
    /// opening): put the data segments on huge pages, see [`HugePages`].
    /// Segment sizes are then rounded up to whole huge pages (the extra
    /// bytes go to the arena). Off by default.
    pub fn huge_pages(mut self, policy: HugePages) -> Options {
        self.huge_pages = policy;
        self
    }

    /// The typed handle's schema (set by `ShmMap`).
    pub(crate) fn typed(mut self, schema: String) -> Options {
        self.typed = Some(schema);
        self
    }

    /// Check every record a read returns against the checksum stored with
    /// it (XXH3-64 of its key and value, written with the record), and
    /// return [`Error::Corrupted`] on a mismatch instead of bytes that
    /// something scribbled over. Applies to `get`, `get_ref`,
    /// `get_archived`, `contains_key`, views and `entries` of this handle.
    /// Off by default: a read then costs nothing more than one branch;
    /// on, it hashes the key and value once more (see DESIGN.md "Records (arena)" for
    /// the measured cost). [`RawMap::verify`](crate::RawMap::verify) always
    /// checks every record.
    pub fn verify_reads(mut self, on: bool) -> Options {
        self.verify_reads = on;
        self
    }

    /// Use this raw SysV key instead of one derived from the name.
    pub fn sysv_key(mut self, key: i32) -> Options {
        self.key = KeySource::Raw(key);
        self
    }

    /// Use `ftok(path, id)` as the SysV key.
    pub fn ftok(mut self, path: impl Into<PathBuf>, id: u8) -> Options {
        self.key = KeySource::Ftok(path.into(), id);
        self
    }

    /// Checks the name and returns the SysV key of the map.
    /// Every use of the options (create, open, destroy) starts here, so the
    /// option checks are here too.
    pub(crate) fn key_for(&self, name: &str) -> Result<libc::key_t> {
        check_name(name)?;
        if let Some(m) = self.bad_mode {
            return Err(Error::InvalidOption(format!(
                "mode {m:#o} ({m} in decimal) has bits outside 0o777; \
                 permission bits are octal, e.g. .mode(0o644)"
            )));
        }
        match &self.key {
            KeySource::Name => Ok(key_from_name(name)),
            KeySource::Raw(k) if *k == sys::IPC_PRIVATE => Err(Error::InvalidName(
                "raw key 0 (IPC_PRIVATE) cannot name a map".into(),
            )),
            KeySource::Raw(k) => Ok(*k),
            KeySource::Ftok(path, id) => sys::ftok(path, *id, name),
        }
    }

    /// `(slots, arena bytes, data segment bytes)` for a new map.
    pub(crate) fn geometry(&self) -> Result<(u64, u64, u64)> {
        let bad = |m: String| Error::InvalidSize(SizeError::OutOfRange(m));
        if self.capacity == 0 || self.capacity > 1 << 31 {
            return Err(bad(format!(
                "capacity {} (must be 1..=2^31 entries)",
                self.capacity
            )));
        }
        let mut slots = MIN_SLOTS;
        while max_used(slots) < self.capacity {
            slots *= 2;
        }
        let arena = match self.arena_size {
            Some(s) => s.bytes(),
            None => (self.capacity.saturating_mul(256)).max(64 << 10),
        };
        if arena < MIN_ARENA {
            return Err(bad(format!("arena of {arena} bytes (minimum {MIN_ARENA})")));
        }
        let arena = align_up(arena.min(u64::MAX - MIN_ARENA), ARENA_ALIGN);
        let (_, _, total) =
            data_geometry(slots, arena).ok_or_else(|| bad("size overflows".into()))?;
        let with_root = total
            .checked_add(ROOT_SIZE as u64)
            .ok_or_else(|| bad("size overflows".into()))?;
        if let Some(max) = self.max_size {
            if with_root > max.bytes() {
                return Err(bad(format!(
                    "initial size {} exceeds max_size {}",
                    Size::from(with_root),
                    max
                )));
            }
        }
        Ok((slots, arena, total))
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
        return Err(Error::InvalidName(format!(
            "{name:?}: must be 1..={MAX_NAME_LEN} bytes without NUL"
        )));
    }
    Ok(())
}

/// The SysV key of a named map: XXH3-64 of the name (seed 0), folded to a
/// positive 31-bit value (never 0, which is `IPC_PRIVATE`).
pub fn key_from_name(name: &str) -> i32 {
    let h = crate::hash::hash_key(0, name.as_bytes());
    let k = ((h ^ (h >> 32)) & 0x7fff_ffff) as i32;
    if k == 0 {
        1
    } else {
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_and_bounds() {
        let (slots, arena, _) = Options::new().capacity(100_000).geometry().unwrap();
        assert_eq!(slots, 131_072);
        assert!(max_used(slots) >= 100_000);
        assert_eq!(arena, 100_000 * 256);
        let (slots, _, _) = Options::new().capacity(7).geometry().unwrap();
        assert_eq!(slots, 16);
        let (slots, _, _) = Options::new().capacity(14).geometry().unwrap();
        assert!(max_used(slots) >= 14);
        assert!(Options::new().capacity(0).geometry().is_err());
        assert!(Options::new().arena_size(100u64).geometry().is_err());
        assert!(matches!(
            Options::new().capacity(1000).max_size(4096u64).geometry(),
            Err(Error::InvalidSize(_))
        ));
    }

    /// A data segment within 512 bytes of `u64::MAX` used to overflow when
    /// the root was added (`attempt to add with overflow`).
    #[test]
    fn geometry_near_the_address_limit_is_an_error() {
        // 100 entries: 128 slots, arena at 4352; total = u64::MAX - 15.
        let o = Options::new()
            .capacity(100)
            .arena_size(u64::MAX - 4367)
            .max_size(u64::MAX);
        assert!(matches!(o.geometry(), Err(Error::InvalidSize(_))));
    }

    #[test]
    fn huge_timeouts_mean_forever() {
        let o = Options::new().lock_timeout(Duration::MAX);
        assert_eq!(o.lock_timeout, FOREVER);
        assert!(crate::sys::deadline_after(o.lock_timeout).is_some());
        assert!(crate::sys::deadline_after(Duration::MAX).is_none());
        let short = Duration::from_millis(5);
        assert_eq!(Options::new().lock_timeout(short).lock_timeout, short);
    }

    #[test]
    fn keys() {
        assert!(Options::new().key_for("").is_err());
        assert!(Options::new().key_for(&"x".repeat(129)).is_err());
        assert!(Options::new().sysv_key(0).key_for("a").is_err());
        assert_eq!(Options::new().sysv_key(42).key_for("a").unwrap(), 42);
        let k = Options::new().key_for("config").unwrap();
        assert!(k > 0);
        assert_eq!(k, key_from_name("config"));
        assert_ne!(k, key_from_name("config2"));
    }
}
