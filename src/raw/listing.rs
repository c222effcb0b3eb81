//! `list_maps`: finding the maps on a machine (or on a provider) without
//! touching other programs' segments, with each map's state.
//! `list_orphans`/`remove_orphan`: data segments whose root is gone.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::engine::Engine;
use super::layout::{DataHeader, DATA_HEADER_SIZE, DATA_MAGIC, ROOT_SIZE};
use super::provider::{Provider, Removal, SysV};
use super::root::{self, RootState};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::stats::Stats;
use crate::sys::procfs::ShmRow;
use crate::sys::IPC_PRIVATE;

/// What state a listed map is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapState {
    /// Complete: it opens.
    Ready,
    /// Its creator has not finished (or died before finishing):
    /// `open_or_create` repairs it, `destroy` removes it.
    Creating,
    /// Destroyed while a destroyer held it; its objects are being removed
    /// (or a destroyer died): `destroy` finishes it.
    Destroyed,
    /// A root without its lock (the lock was removed by hand, or a destroy
    /// died between the two): `destroy` removes the rest. Only listed with
    /// `all`.
    Orphaned,
    /// A segment of a root's size this process may not read: it cannot
    /// tell whether it is a map. Only listed with `all`.
    Unreadable,
}

impl MapState {
    /// Lower-case name, as `shmkv ls` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            MapState::Ready => "ready",
            MapState::Creating => "creating",
            MapState::Destroyed => "destroyed",
            MapState::Orphaned => "orphaned",
            MapState::Unreadable => "unreadable",
        }
    }
}

/// One map found by [`list_maps`].
#[derive(Debug, Clone)]
pub struct MapListing {
    /// The SysV key of its root segment.
    pub key: i32,
    /// Its name, from the root header (empty if unreadable).
    pub name: String,
    /// Its state.
    pub state: MapState,
    /// Its counters, if it could be opened (read-only).
    pub stats: Option<Stats>,
    /// Why it could not be opened, otherwise.
    pub error: Option<String>,
}

/// Every shmkv map on this machine that this process can see. A root is
/// looked at (attached read-only) only if a shmkv lock (a semaphore set
/// with shmkv's tag) is at its key, so other programs' segments are not
/// touched. Maps being created or destroyed are listed with their state
/// (see [`MapState`]). With `all`, every segment of a root's size is
/// attached, so that roots whose lock is gone ([`MapState::Orphaned`]) and
/// segments this process may not read ([`MapState::Unreadable`]) are
/// listed too.
pub fn list_maps(all: bool) -> Result<Vec<MapListing>> {
    list_maps_with(Arc::new(SysV), all)
}

/// [`list_maps`] over any provider, without `all`.
#[cfg(any(test, feature = "__test-hooks"))]
pub(crate) fn list_maps_in(p: Arc<dyn Provider>) -> Result<Vec<MapListing>> {
    list_maps_with(p, false)
}

/// [`list_maps`] over any provider.
pub(crate) fn list_maps_with(p: Arc<dyn Provider>, all: bool) -> Result<Vec<MapListing>> {
    let rows = p.segments().map_err(|e| Error::Os {
        op: "read /proc/sysvipc/shm",
        source: e,
    })?;
    let mut out = Vec::new();
    for row in rows {
        if row.key == 0 || row.size != ROOT_SIZE as u64 {
            continue;
        }
        let (key, shmid) = (row.key, row.shmid);
        let has_lock = match p.find_lock(key, "") {
            Ok(l) => l.is_some(),
            // Another program's semaphore set at the key: not a map.
            Err(_) => continue,
        };
        if !has_lock && !all {
            continue;
        }
        let listing = |name: String, state, stats, error| MapListing {
            key,
            name,
            state,
            stats,
            error,
        };
        let seg = match p.attach(shmid, true, "") {
            Ok(seg) => seg,
            Err(Error::PermissionDenied { .. }) => {
                if all {
                    out.push(listing(
                        String::new(),
                        MapState::Unreadable,
                        None,
                        Some(format!(
                            "permission denied: segment {shmid} at key {key:#010x} \
                             (a root's size; may be a map of another user)"
                        )),
                    ));
                }
                continue;
            }
            Err(_) => continue,
        };
        // SAFETY: `seg` outlives `r`.
        let Some(r) = (unsafe { root::root_at(seg.base(), seg.len()) }) else {
            continue;
        };
        let name = root::stored_name(r).unwrap_or_default();
        let state = match root::state(r) {
            RootState::Foreign => continue,
            RootState::Creating => MapState::Creating,
            RootState::Destroyed => MapState::Destroyed,
            RootState::Complete if !has_lock => MapState::Orphaned,
            RootState::Complete => MapState::Ready,
        };
        if state != MapState::Ready {
            let why = match state {
                MapState::Creating => {
                    "being created, or its creator died: open_or_create \
                                       repairs it, destroy removes it"
                }
                MapState::Destroyed => "destroyed, not yet removed: destroy finishes it",
                _ => "its lock is gone: destroy removes the rest",
            };
            out.push(listing(name, state, None, Some(why.to_string())));
            continue;
        }
        let opts = Options::new()
            .sysv_key(key)
            .read_only(true)
            .lock_timeout(Duration::from_millis(200));
        let (stats, error) = match Engine::open(p.clone(), &name, &opts).and_then(|m| m.stats()) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(listing(name, state, stats, error));
    }
    Ok(out)
}

/// Why a data segment is an orphan (see [`list_orphans`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanCause {
    /// No segment with the root's shmid is at the root's key any more: the
    /// root was removed (by hand, or by a destroy that could not remove
    /// this data segment).
    RootGone,
    /// The segment at the root's key with the root's shmid is not a shmkv
    /// root (its magic was overwritten).
    RootNotShmkv,
    /// A shmkv root is there but its identity is corrupted (it does not
    /// open: `Error::Corrupted`).
    RootCorrupted,
}

impl OrphanCause {
    /// Lower-case name, as `shmkv ls --orphans` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanCause::RootGone => "root_gone",
            OrphanCause::RootNotShmkv => "root_not_shmkv",
            OrphanCause::RootCorrupted => "root_corrupted",
        }
    }
}

/// A shmkv data segment whose root is gone or corrupted, found by
/// [`list_orphans`]: nothing will ever use or remove it, but it holds
/// memory until removed ([`remove_orphan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The data segment's shmid.
    pub shmid: i32,
    /// Its size in bytes.
    pub size: u64,
    /// Processes that have it attached (a process with a handle on the
    /// map from before its root went away).
    pub attached: u64,
    /// The table generation it holds (from its header).
    pub generation: u64,
    /// The SysV key of the root it names (its header's `owner`).
    pub key: i32,
    /// The shmid of the root it names.
    pub root_shmid: i32,
    /// Pid of the process that made it.
    pub creator_pid: u32,
    /// Why it is an orphan.
    pub cause: OrphanCause,
}

/// What [`remove_orphan`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanRemoval {
    /// Marked for removal (it disappears at once, as nobody has it
    /// attached, or at its last detach with `force`).
    Removed,
    /// Not (or no longer) an orphan: gone, being removed, not a shmkv data
    /// segment, its root is back, or it cannot be read. Left alone.
    NotAnOrphan,
    /// Still attached by this many processes, and `force` was not given:
    /// left alone.
    Attached(u64),
    /// The kernel refused the removal (another user's segment).
    Denied,
}

/// Every shmkv data segment on this machine whose root is gone or
/// corrupted (see [`OrphanCause`]). A data segment is recognised by its
/// header (the `DATA_MAGIC` word) and names its root in its `owner` word
/// (`key << 32 | root shmid`); it is an orphan when no valid shmkv root
/// with that shmid is at that key. To read the header, every private
/// (`IPC_PRIVATE`) segment this process may read is attached read-only for
/// a moment; nothing is written. Segments this process may not read, and
/// segments already marked for removal, are not listed. A root still being
/// created or being destroyed is valid (its creator or destroyer owns its
/// segments).
pub fn list_orphans() -> Result<Vec<Orphan>> {
    list_orphans_in(&SysV)
}

/// Removes data segment `shmid` if it still is an orphan (checked again,
/// as [`list_orphans`] does, right before the removal) and nobody has it
/// attached; with `force`, also while attached (it then disappears at its
/// last detach: the processes that have it mapped keep their mapping).
/// Only a segment with shmkv's data magic is ever removed.
pub fn remove_orphan(shmid: i32, force: bool) -> Result<OrphanRemoval> {
    remove_orphan_in(&SysV, shmid, force)
}

fn table(p: &dyn Provider) -> Result<Vec<ShmRow>> {
    p.segments().map_err(|e| Error::Os {
        op: "read /proc/sysvipc/shm",
        source: e,
    })
}

/// [`list_orphans`] over any provider.
pub(crate) fn list_orphans_in(p: &dyn Provider) -> Result<Vec<Orphan>> {
    let rows = table(p)?;
    Ok(rows
        .iter()
        .filter(|r| r.key == IPC_PRIVATE && r.size >= DATA_HEADER_SIZE as u64)
        .filter_map(|r| orphan(p, &rows, r.shmid))
        .collect())
}

/// [`remove_orphan`] over any provider.
pub(crate) fn remove_orphan_in(p: &dyn Provider, shmid: i32, force: bool) -> Result<OrphanRemoval> {
    let rows = table(p)?;
    let Some(o) = orphan(p, &rows, shmid) else {
        return Ok(OrphanRemoval::NotAnOrphan);
    };
    if o.attached > 0 && !force {
        return Ok(OrphanRemoval::Attached(o.attached));
    }
    Ok(match p.try_remove(shmid) {
        Removal::Removed => OrphanRemoval::Removed,
        Removal::Gone => OrphanRemoval::NotAnOrphan,
        Removal::Denied => OrphanRemoval::Denied,
    })
}

/// Segment `shmid` as an orphan, if it is one: a private segment, not
/// marked for removal, with shmkv's data magic, whose root (as its `owner`
/// word names it) is not a valid shmkv root in `rows` (a look at the
/// segment table taken before this call).
fn orphan(p: &dyn Provider, rows: &[ShmRow], shmid: i32) -> Option<Orphan> {
    let info = p.stat(shmid, "").ok()?;
    if info.key != IPC_PRIVATE || p.marked_for_removal(shmid) {
        return None;
    }
    let (magic, owner, generation, size) = {
        let seg = p.attach(shmid, true, "").ok()?;
        if seg.len() < std::mem::size_of::<DataHeader>() {
            return None;
        }
        // SAFETY: the mapping holds a full header, is page-aligned and
        // lives until `seg` drops at the end of this block; the header is
        // atomics only, so any content is a valid value.
        let h = unsafe { seg.base().cast::<DataHeader>().as_ref() };
        (
            h.magic.load(Ordering::Acquire),
            h.owner.load(Ordering::Relaxed),
            h.generation.load(Ordering::Relaxed),
            seg.len() as u64,
        )
    };
    if magic != DATA_MAGIC {
        return None;
    }
    let (key, root_shmid) = ((owner >> 32) as u32 as i32, owner as u32 as i32);
    let cause = root_trouble(p, rows, key, root_shmid)?;
    // The attach count without this process's look (dropped above).
    let attached = p.stat(shmid, "").map_or(info.nattch, |i| i.nattch);
    Some(Orphan {
        shmid,
        size,
        attached,
        generation,
        key,
        root_shmid,
        creator_pid: info.cpid as u32,
        cause,
    })
}

/// What is wrong with the root `root_shmid` at `key`, `None` if it is a
/// valid shmkv root (or this process cannot tell: it may not read it).
/// Called after the data segment's header was read: "root gone" is judged
/// by a table read after it, as `rows` (read before) may predate a root
/// created meanwhile.
fn root_trouble(
    p: &dyn Provider,
    rows: &[ShmRow],
    key: i32,
    root_shmid: i32,
) -> Option<OrphanCause> {
    if key == IPC_PRIVATE {
        return Some(OrphanCause::RootGone);
    }
    let at_key = |rows: &[ShmRow]| rows.iter().any(|r| r.key == key && r.shmid == root_shmid);
    if !at_key(rows) {
        // `rows` may predate the root: a map created since (root first,
        // then the data segment whose header was just read). Only a table
        // read after that header tells: unreadable, cannot tell, keep it.
        let now = p.segments().ok()?;
        if !at_key(&now) {
            return Some(OrphanCause::RootGone);
        }
    }
    let seg = match p.attach(root_shmid, true, "") {
        Ok(s) => s,
        // Removed since the table was read: gone.
        Err(Error::NotFound { .. }) => return Some(OrphanCause::RootGone),
        // May not look (or a transient failure): cannot tell, keep it.
        Err(_) => return None,
    };
    // SAFETY: `seg` outlives `r`.
    let Some(r) = (unsafe { root::root_at(seg.base(), seg.len()) }) else {
        return Some(OrphanCause::RootNotShmkv);
    };
    match root::state(r) {
        RootState::Foreign => Some(OrphanCause::RootNotShmkv),
        RootState::Creating | RootState::Destroyed => None,
        RootState::Complete => match root::validate(r, None) {
            Err(Error::Corrupted(_)) => Some(OrphanCause::RootCorrupted),
            // Valid, or another build's (incompatible, not corrupted).
            _ => None,
        },
    }
}

#[cfg(test)]
#[path = "listing/race_tests.rs"]
mod race_tests;
