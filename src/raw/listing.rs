//! `list_maps`: finding the maps on a machine (or on a provider) without
//! touching other programs' segments, with each map's state.

use std::sync::Arc;
use std::time::Duration;

use super::engine::Engine;
use super::layout::ROOT_SIZE;
use super::provider::{Provider, SysV};
use super::root::{self, RootState};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::stats::Stats;

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
