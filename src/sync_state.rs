//! The sync state: which source a map mirrors and up to which revision
//! (`shmkv sync`, crate `shmkv-sync`), stored in the map itself as one
//! reserved system key ([`SYNC_STATE_KEY`]) so that a revision's data and
//! the revision number commit in the same atomic batch (DESIGN.md, "Sync
//! from etcd", "The sync state key").
//!
//! Keys beginning with [`RESERVED_PREFIX`] are reserved: user writes of
//! them are refused with [`Error::ReservedKey`]; enumerations (`entries`,
//! `keys`, `len`, the CLI's listings) hide [`SYNC_STATE_KEY`]. Reads of it
//! are not special-cased.

use crate::error::{Error, Result};
use crate::raw::batch::RawBatch;
use crate::RawMap;

/// The reserved key namespace: user `insert`/`remove` of a key beginning
/// with these bytes gives [`Error::ReservedKey`].
pub const RESERVED_PREFIX: &[u8] = b"\0shmkv:";

/// The key under which the sync state is stored (hidden from `entries`,
/// `keys` and `len`).
pub const SYNC_STATE_KEY: &[u8] = b"\0shmkv:sync";

/// Whether `key` is in the reserved namespace.
#[inline]
pub fn is_reserved_key(key: &[u8]) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// `Err(ReservedKey)` for a reserved key (user writes).
#[inline]
pub(crate) fn check_user_key(key: &[u8]) -> Result<()> {
    if is_reserved_key(key) {
        return Err(Error::ReservedKey {
            key: String::from_utf8_lossy(key).into_owned(),
        });
    }
    Ok(())
}

/// The kind of store a map is synced from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceKind {
    /// An etcd v3 key prefix.
    Etcd,
}

impl SourceKind {
    /// Its name (`"etcd"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Etcd => "etcd",
        }
    }
}

/// What a synced map mirrors and how far (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// The kind of source.
    pub source: SourceKind,
    /// The source's cluster id (etcd's response header `cluster_id`).
    pub cluster_id: u64,
    /// The mirrored key prefix.
    pub prefix: Vec<u8>,
    /// Whether keys are stored without the prefix.
    pub strip_prefix: bool,
    /// The endpoints the sync connects to (comma-separated, informative).
    pub endpoints: String,
    /// The last source revision applied to the map (all of its events are
    /// in the map, in the same batch as this state).
    pub revision: i64,
    /// The latest source revision the sync knew of when it wrote this
    /// state (a response header's revision); `seen_revision - revision` is
    /// the lag in revisions.
    pub seen_revision: i64,
    /// Wall-clock time (ms since the Unix epoch) of the last applied
    /// revision with events (or of the snapshot).
    pub last_event_unix_ms: u64,
    /// Wall-clock time (ms since the Unix epoch) this state was written.
    pub updated_unix_ms: u64,
    /// The sync process holding the lease, 0 = none.
    pub owner_pid: u32,
    /// That process's start time (`/proc/<pid>/stat` field 22), against
    /// pid reuse; 0 = no owner.
    pub owner_start_time: u64,
}

const MAGIC: &[u8; 4] = b"SKVS";
const VERSION: u16 = 1;
const FIXED: usize = 4 + 2 + 1 + 1 + 8 * 5 + 4 + 8 + 4 + 4;
/// Offsets of `owner_pid` (u32) and `owner_start_time` (u64) in the
/// encoding. Every version keeps them here, so that a sync that cannot
/// decode a state (written by a newer version) still sees who holds the
/// lease ([`SyncState::encoded_owner`]).
const OWNER_PID_AT: usize = 4 + 2 + 1 + 1 + 8 * 5;
const OWNER_START_AT: usize = OWNER_PID_AT + 4;
/// Upper bound of the prefix and endpoints lengths (sanity, not a format
/// limit of etcd: shmkv keys are shorter anyway).
const MAX_FIELD: usize = 1 << 20;

impl SyncState {
    /// The versioned little-endian encoding stored under [`SYNC_STATE_KEY`]:
    /// `"SKVS"`, version u16 (1), kind u8 (1 = etcd), flags u8 (bit 0
    /// strip_prefix), cluster_id u64, revision i64, seen_revision i64,
    /// last_event_unix_ms u64, updated_unix_ms u64, owner_pid u32,
    /// owner_start_time u64, prefix length u32, endpoints length u32, then
    /// the prefix and the endpoints bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED + self.prefix.len() + self.endpoints.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(match self.source {
            SourceKind::Etcd => 1,
        });
        b.push(u8::from(self.strip_prefix));
        b.extend_from_slice(&self.cluster_id.to_le_bytes());
        b.extend_from_slice(&self.revision.to_le_bytes());
        b.extend_from_slice(&self.seen_revision.to_le_bytes());
        b.extend_from_slice(&self.last_event_unix_ms.to_le_bytes());
        b.extend_from_slice(&self.updated_unix_ms.to_le_bytes());
        b.extend_from_slice(&self.owner_pid.to_le_bytes());
        b.extend_from_slice(&self.owner_start_time.to_le_bytes());
        b.extend_from_slice(&(self.prefix.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.endpoints.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.prefix);
        b.extend_from_slice(self.endpoints.as_bytes());
        b
    }

    /// Decodes [`encode`](SyncState::encode)'s bytes; anything else is
    /// [`Error::Corrupted`] (never a panic).
    pub fn decode(b: &[u8]) -> Result<SyncState> {
        let bad = |what: &str| Error::corrupted(format!("sync state: {what}"));
        if b.len() < FIXED {
            return Err(bad("too short"));
        }
        if &b[..4] != MAGIC {
            return Err(bad("bad magic"));
        }
        let mut at = 4;
        let mut take = |n: usize| {
            let s = &b[at..at + n];
            at += n;
            s
        };
        let u16_ = |s: &[u8]| u16::from_le_bytes([s[0], s[1]]);
        let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap_or([0; 4]));
        let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
        let version = u16_(take(2));
        if version != VERSION {
            return Err(bad(&format!("unknown version {version}")));
        }
        let source = match take(1)[0] {
            1 => SourceKind::Etcd,
            k => return Err(bad(&format!("unknown source kind {k}"))),
        };
        let flags = take(1)[0];
        if flags > 1 {
            return Err(bad("unknown flags"));
        }
        let cluster_id = u64_(take(8));
        let revision = u64_(take(8)) as i64;
        let seen_revision = u64_(take(8)) as i64;
        let last_event_unix_ms = u64_(take(8));
        let updated_unix_ms = u64_(take(8));
        let owner_pid = u32_(take(4));
        let owner_start_time = u64_(take(8));
        let plen = u32_(take(4)) as usize;
        let elen = u32_(take(4)) as usize;
        if plen > MAX_FIELD || elen > MAX_FIELD || b.len() != FIXED + plen + elen {
            return Err(bad("bad lengths"));
        }
        let prefix = b[FIXED..FIXED + plen].to_vec();
        let endpoints = std::str::from_utf8(&b[FIXED + plen..])
            .map_err(|_| bad("endpoints not UTF-8"))?
            .to_string();
        Ok(SyncState {
            source,
            cluster_id,
            prefix,
            strip_prefix: flags & 1 != 0,
            endpoints,
            revision,
            seen_revision,
            last_event_unix_ms,
            updated_unix_ms,
            owner_pid,
            owner_start_time,
        })
    }

    /// Whether the recorded owner is a running process: the pid exists,
    /// its start time is the recorded one (a reused pid is not the owner)
    /// and it is not a zombie (`Z`/`X`: exited, not yet reaped by its
    /// parent). `false` when there is no owner.
    pub fn owner_alive(&self) -> bool {
        is_live_owner(self.owner_pid, self.owner_start_time)
    }

    /// The lag in revisions, `seen_revision - revision`, never negative
    /// and without overflow at extreme revisions.
    pub fn lag_revisions(&self) -> i64 {
        self.seen_revision.saturating_sub(self.revision).max(0)
    }

    /// The owner (pid, start time) recorded in a stored state that may not
    /// decode (damaged after the lease fields, or written by a newer
    /// version of the encoding): `None` when the bytes are too short or do
    /// not begin with the state's magic.
    pub fn encoded_owner(b: &[u8]) -> Option<(u32, u64)> {
        if b.len() < OWNER_START_AT + 8 || &b[..4] != MAGIC {
            return None;
        }
        let pid = u32::from_le_bytes(b[OWNER_PID_AT..OWNER_START_AT].try_into().ok()?);
        let start = u64::from_le_bytes(b[OWNER_START_AT..OWNER_START_AT + 8].try_into().ok()?);
        Some((pid, start))
    }
}

/// Whether process `pid` is running, started at `start_time` (a reused pid
/// is not the owner) and is not a zombie: [`SyncState::owner_alive`] for
/// an owner read with [`SyncState::encoded_owner`]. `false` for pid 0 or
/// start time 0 (no owner).
pub fn is_live_owner(pid: u32, start_time: u64) -> bool {
    pid != 0
        && start_time != 0
        && crate::sys::procfs::process_start_time(pid) == Some(start_time)
        && !matches!(
            crate::sys::procfs::process_state(pid),
            Some('Z' | 'X') | None
        )
}

/// Start time of process `pid` (clock ticks after boot, `/proc/<pid>/stat`
/// field 22), `None` if there is no such process; the lease's guard
/// against pid reuse.
pub fn process_start_time(pid: u32) -> Option<u64> {
    crate::sys::procfs::process_start_time(pid)
}

fn decode_opt(v: Option<&[u8]>) -> Result<Option<SyncState>> {
    v.map(SyncState::decode).transpose()
}

impl RawMap {
    /// The map's sync state, `None` if it is not synced (see
    /// [`SyncState`]).
    pub fn sync_state(&self) -> Result<Option<SyncState>> {
        decode_opt(self.get_ref(SYNC_STATE_KEY)?.as_deref())
    }
}

impl RawBatch<'_> {
    /// Stages `state` under [`SYNC_STATE_KEY`]: it commits with the rest
    /// of the batch (a revision and its data together, or neither).
    pub fn set_sync_state(&mut self, state: &SyncState) -> Result<()> {
        self.insert_system(SYNC_STATE_KEY, &state.encode())
    }

    /// Stages removal of the sync state (for a write that replaces the
    /// map's contents: the map is then no longer a replica of anything).
    pub fn clear_sync_state(&mut self) -> Result<bool> {
        self.remove_system(SYNC_STATE_KEY)
    }

    /// The sync state as this batch sees the map.
    pub fn sync_state(&self) -> Result<Option<SyncState>> {
        decode_opt(self.get(SYNC_STATE_KEY)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SyncState {
        SyncState {
            source: SourceKind::Etcd,
            cluster_id: 0x1234_5678_9abc_def0,
            prefix: b"/config/".to_vec(),
            strip_prefix: true,
            endpoints: "http://127.0.0.1:2379".into(),
            revision: 42,
            seen_revision: 45,
            last_event_unix_ms: 1_700_000_000_000,
            updated_unix_ms: 1_700_000_000_001,
            owner_pid: 1234,
            owner_start_time: 99,
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(SyncState::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn every_truncation_and_extension_is_corrupted() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(matches!(
                SyncState::decode(&b[..n]),
                Err(Error::Corrupted(_))
            ));
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            SyncState::decode(&longer),
            Err(Error::Corrupted(_))
        ));
    }

    #[test]
    fn the_owner_is_read_from_states_that_do_not_decode() {
        let mut s = sample();
        s.owner_pid = 0x0102_0304;
        s.owner_start_time = 0x1122_3344_5566_7788;
        let mut b = s.encode();
        assert_eq!(
            SyncState::encoded_owner(&b),
            Some((0x0102_0304, 0x1122_3344_5566_7788))
        );
        // A newer version, and garbage after the lease fields.
        b[4] = 2;
        b.truncate(OWNER_START_AT + 8);
        b.extend_from_slice(b"future fields");
        assert!(SyncState::decode(&b).is_err());
        assert_eq!(
            SyncState::encoded_owner(&b),
            Some((0x0102_0304, 0x1122_3344_5566_7788))
        );
        // Not ours, or too short: no owner.
        assert_eq!(SyncState::encoded_owner(b"garbage"), None);
        assert_eq!(SyncState::encoded_owner(&b[..OWNER_START_AT + 7]), None);
        let mut other = s.encode();
        other[0] = b'X';
        assert_eq!(SyncState::encoded_owner(&other), None);
        // A live owner: this process, with its start time.
        let me = std::process::id();
        let start = process_start_time(me).unwrap();
        assert!(is_live_owner(me, start));
        assert!(!is_live_owner(me, start + 1));
        assert!(!is_live_owner(0, start));
    }

    proptest::proptest! {
        /// Arbitrary bytes (and arbitrary mutations of a valid encoding)
        /// decode to a value or `Corrupted`, never a panic.
        #[test]
        fn decode_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            flips in proptest::collection::vec((0usize..200, proptest::num::u8::ANY), 0..8),
        ) {
            if let Err(e) = SyncState::decode(&bytes) {
                proptest::prop_assert!(matches!(e, Error::Corrupted(_)));
            }
            let _ = SyncState::encoded_owner(&bytes);
            let mut b = sample().encode();
            for (i, x) in flips {
                let n = b.len();
                b[i % n] ^= x;
            }
            if let Err(e) = SyncState::decode(&b) {
                proptest::prop_assert!(matches!(e, Error::Corrupted(_)));
            }
        }
    }
}
