//! Growth and compaction: making an unpublished data segment
//! (RECORDED-BEFORE-BUILT), publishing it (ONE-SWITCH-POINT), and removing
//! the segments a switch or a dead writer left (resize recovery).

use std::sync::atomic::Ordering;

use super::engine::{Engine, Undo};
use super::gens::Generation;
use super::hooks::{reached, CrashPoint};
use nix::errno::Errno;

use super::layout::{
    checked_align_up, data_geometry, pack_current, pack_owner, unpack_current, DataHeader,
    RootHeader, CURRENT_DESTROYED, DATA_MAGIC, PENDING_CREATING, ROOT_FLAG_HUGE_REQUIRE,
    ROOT_FLAG_HUGE_TRY, ROOT_SIZE,
};
use super::provider::{Provider, Removal, ShmInfo};
use super::root;
use super::table::Table;
use crate::error::{Error, Result};
use crate::options::HugePages;
use crate::sys;

/// Makes a private data segment of `size` bytes, recorded in the root's
/// `pending` word from before the `shmget` on (RECORDED-BEFORE-BUILT), so
/// that a writer killed inside or right after the system call leaves a
/// segment recovery can find. The segment gets the root's owner, group and
/// permission bits (`root`: the root's `IPC_STAT`), so that a writer who
/// is another user makes a generation every user of the map can use, and
/// that the map's owner may remove.
/// With `huge`, on huge pages (`SHM_HUGETLB`): the kernel's refusal is
/// then `Ok(Err(errno))`, nothing recorded.
pub(super) fn make_pending_segment(
    p: &dyn Provider,
    r: &RootHeader,
    size: u64,
    root: &ShmInfo,
    name: &str,
    huge: bool,
) -> Result<std::result::Result<i32, Errno>> {
    r.pending_size.store(size, Ordering::Relaxed);
    r.pending.store(
        PENDING_CREATING | u64::from(std::process::id()),
        Ordering::Release,
    );
    let mut flags = libc::IPC_CREAT | libc::IPC_EXCL | root.mode as i32;
    if huge {
        flags |= libc::SHM_HUGETLB;
    }
    let made = p.get(sys::IPC_PRIVATE, size as usize, flags, name);
    let id = match made {
        Ok(Ok(id)) => id,
        Ok(Err(errno)) => {
            r.pending.store(0, Ordering::Release);
            if huge {
                return Ok(Err(errno));
            }
            return Err(Error::os("shmget", errno as i32));
        }
        Err(e) => {
            r.pending.store(0, Ordering::Release);
            return Err(e);
        }
    };
    r.pending.store(id as u64 + 1, Ordering::Release);
    if let Err(e) = p.set_owner(id, root.uid, root.gid, root.mode, name) {
        let _ = p.remove(id);
        r.pending.store(0, Ordering::Release);
        return Err(e);
    }
    Ok(Ok(id))
}

/// The map's huge page policy, from the root's flags (recorded at
/// creation, so every writer follows it).
pub(crate) fn huge_policy(r: &RootHeader) -> HugePages {
    let f = r.flags.load(Ordering::Relaxed);
    if f & ROOT_FLAG_HUGE_REQUIRE != 0 {
        HugePages::Require
    } else if f & ROOT_FLAG_HUGE_TRY != 0 {
        HugePages::Try
    } else {
        HugePages::Off
    }
}

/// The root flag bits of a huge page policy.
pub(crate) fn huge_policy_flags(policy: HugePages) -> u64 {
    match policy {
        HugePages::Off => 0,
        HugePages::Try => ROOT_FLAG_HUGE_TRY,
        HugePages::Require => ROOT_FLAG_HUGE_REQUIRE,
    }
}

/// A data segment just made (recorded in `pending`, not initialised).
#[derive(Debug, Clone, Copy)]
pub(super) struct NewSegment {
    pub(super) id: i32,
    /// Arena bytes: as asked, or more so that the segment fills whole huge
    /// pages.
    pub(super) arena: u64,
    /// The huge page size it is on, 0 for normal pages.
    pub(super) huge_page_size: u64,
}

/// Makes the data segment of a new generation of `slots` and `arena`
/// bytes under the map's huge page policy (the root's flags): with `Try`
/// or `Require`, on huge pages, its size rounded up to whole huge pages
/// (the extra bytes go to the arena); with `Try`, on normal pages (of the
/// size asked) when the kernel refuses or whole huge pages would exceed
/// `max_size`; with `Require`, those are errors
/// (`HugePagesUnavailable`, `Full`), and nothing is left behind.
pub(super) fn make_data_segment(
    p: &dyn Provider,
    r: &RootHeader,
    (slots, arena): (u64, u64),
    root: &ShmInfo,
    name: &str,
) -> Result<NewSegment> {
    let (_, arena_offset, size) =
        data_geometry(slots, arena).ok_or_else(|| Error::corrupted("size"))?;
    let policy = huge_policy(r);
    if policy != HugePages::Off {
        let page = p.huge_page_size().filter(|s| s.is_power_of_two());
        let rounded = page.and_then(|pg| checked_align_up(size, pg).map(|s| (pg, s)));
        let max = r.max_size.load(Ordering::Relaxed);
        let refused =
            |page_size: u64, bytes: u64, errno: Option<i32>| Error::HugePagesUnavailable {
                name: name.to_string(),
                bytes,
                page_size,
                errno,
            };
        match rounded {
            None if policy == HugePages::Require => {
                return Err(refused(page.unwrap_or(0), size, None));
            }
            None => {}
            Some((_, bytes))
                if max != 0
                    && bytes.saturating_add(ROOT_SIZE as u64) > max
                    && policy == HugePages::Require =>
            {
                return Err(Error::Full {
                    what: "max_size",
                    needed: bytes.saturating_add(ROOT_SIZE as u64),
                    available: max,
                });
            }
            // Try: whole huge pages would exceed max_size: normal pages.
            Some((_, bytes)) if max != 0 && bytes.saturating_add(ROOT_SIZE as u64) > max => {}
            Some((pg, bytes)) => match make_pending_segment(p, r, bytes, root, name, true)? {
                Ok(id) => {
                    return Ok(NewSegment {
                        id,
                        arena: bytes - arena_offset,
                        huge_page_size: pg,
                    })
                }
                Err(e) if policy == HugePages::Require => {
                    return Err(refused(pg, bytes, Some(e as i32)))
                }
                Err(_) => {}
            },
        }
    }
    let id = make_pending_segment(p, r, size, root, name, false)?
        .map_err(|e| Error::os("shmget", e as i32))?;
    Ok(NewSegment {
        id,
        arena,
        huge_page_size: 0,
    })
}

/// Whether a data segment named by a root word is this map's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ownership {
    /// Its header names `owner`, or (with a size given) it is a private,
    /// never-initialised segment of exactly that size.
    Ours,
    /// Gone, or something else: never to be removed.
    NotOurs,
    /// This process may not look (permissions): keep it recorded.
    Unknown,
}

/// Reads segment `id`'s data header: removal of a shmid read from a root
/// needs this proof, because the kernel reuses shmids.
pub(super) fn segment_ownership(
    p: &dyn Provider,
    id: i32,
    owner: u64,
    blank_size: Option<u64>,
) -> Ownership {
    let info = match p.stat(id, "") {
        Ok(i) => i,
        Err(Error::PermissionDenied { .. }) => return Ownership::Unknown,
        Err(_) => return Ownership::NotOurs,
    };
    let seg = match p.attach(id, true, "") {
        Ok(s) => s,
        Err(Error::PermissionDenied { .. }) => return Ownership::Unknown,
        Err(_) => return Ownership::NotOurs,
    };
    if seg.len() < std::mem::size_of::<DataHeader>() {
        return Ownership::NotOurs;
    }
    // SAFETY: the mapping holds a full header, is page-aligned and lives
    // until `seg` drops at the end of this function; atomics only.
    let h = unsafe { seg.base().cast::<DataHeader>().as_ref() };
    let magic = h.magic.load(Ordering::Acquire);
    let named = h.owner.load(Ordering::Relaxed) == owner;
    if magic == DATA_MAGIC && named {
        return Ownership::Ours;
    }
    // A writer killed before the header's magic store (RECORDED-BEFORE-BUILT).
    let blank = magic == 0 && (named || h.owner.load(Ordering::Relaxed) == 0);
    if blank && info.key == sys::IPC_PRIVATE && blank_size == Some(info.size) {
        return Ownership::Ours;
    }
    Ownership::NotOurs
}

/// Removes a segment proven to be this map's; if this process may not
/// (another user's) and `record`, records it in the root's `stale` list for
/// a process that may. Returns false if it is still there afterwards.
pub(super) fn retire_segment(p: &dyn Provider, r: &RootHeader, id: i32, record: bool) -> bool {
    match p.try_remove(id) {
        Removal::Removed | Removal::Gone => true,
        Removal::Denied => {
            if record {
                root::push_stale(r, id);
            }
            false
        }
    }
}

/// Removes the segments the root's `pending`, `retiring` and `stale` words
/// record, except `keep`, each only if its header names this map (`owner`);
/// with `clear`, also resets the words (needs a writable mapping and the
/// lock), keeping in `stale` those this process may not remove. A `pending`
/// caught inside `shmget` names the dead writer's pid: its unattached
/// private segments of the recorded size that are still blank (or belong to
/// `owner`) are removed.
pub(super) fn discard_recorded(
    p: &dyn Provider,
    r: &RootHeader,
    owner: u64,
    keep: Option<i32>,
    clear: bool,
) {
    let pending = r.pending.load(Ordering::Acquire);
    let size = r.pending_size.load(Ordering::Relaxed);
    if pending & PENDING_CREATING != 0 {
        for (id, sz) in p.unattached_private_segments_of(pending as u32) {
            if sz == size && Some(id) != keep && blank_or_owned(p, id, owner, size) {
                retire_segment(p, r, id, clear);
            }
        }
    } else if pending != 0 {
        let id = (pending - 1) as i32;
        if Some(id) != keep {
            match segment_ownership(p, id, owner, Some(size)) {
                Ownership::Ours => {
                    retire_segment(p, r, id, clear);
                }
                Ownership::Unknown if clear => {
                    root::push_stale(r, id);
                }
                _ => {}
            }
        }
    }
    let retiring = r.retiring.load(Ordering::Acquire);
    if retiring != 0 && Some((retiring - 1) as i32) != keep {
        let id = (retiring - 1) as i32;
        match segment_ownership(p, id, owner, None) {
            Ownership::Ours => {
                retire_segment(p, r, id, clear);
            }
            Ownership::Unknown if clear => {
                root::push_stale(r, id);
            }
            _ => {}
        }
    }
    if clear {
        r.pending.store(0, Ordering::Release);
        r.retiring.store(0, Ordering::Release);
    }
    prune_stale(p, r, owner, keep, clear);
}

/// Tries to remove each segment of the root's `stale` list; with `clear`,
/// forgets those that are gone, removed or not this map's.
pub(super) fn prune_stale(
    p: &dyn Provider,
    r: &RootHeader,
    owner: u64,
    keep: Option<i32>,
    clear: bool,
) {
    for w in &r.stale {
        let v = w.load(Ordering::Relaxed);
        if v == 0 {
            continue;
        }
        let id = (v - 1) as i32;
        let done = Some(id) == keep
            || match segment_ownership(p, id, owner, None) {
                Ownership::Ours => retire_segment(p, r, id, false),
                Ownership::NotOurs => true,
                Ownership::Unknown => false,
            };
        if done && clear {
            w.store(0, Ordering::Release);
        }
    }
}

/// Whether segment `id` (found by the pid and size of a writer that died
/// inside `shmget`) was never initialised, or is a data segment of `owner`.
pub(super) fn blank_or_owned(p: &dyn Provider, id: i32, owner: u64, size: u64) -> bool {
    segment_ownership(p, id, owner, Some(size)) == Ownership::Ours
}

/// Removes every data segment a root names (current, pending, retiring,
/// stale), each only if its header names this map; with `clear`, also
/// forgets them in the root (needs a writable mapping).
pub(super) fn discard_data_segments(p: &dyn Provider, r: &RootHeader, owner: u64, clear: bool) {
    let word = r.current.load(Ordering::Acquire);
    let (generation, id) = unpack_current(word);
    if word != CURRENT_DESTROYED
        && generation != 0
        && segment_ownership(p, id, owner, None) == Ownership::Ours
    {
        retire_segment(p, r, id, false);
    }
    discard_recorded(p, r, owner, None, clear);
    if clear {
        r.current.store(0, Ordering::Release);
    }
}

impl Engine {
    /// Makes a new, unpublished data segment for generation `number`,
    /// recorded in the root's `pending` word (or `retiring`, see `migrate`),
    /// owned like the root. Refused (before anything is committed) if the
    /// segment in force could neither be removed by this process after the
    /// switch nor be recorded in the root's full `stale` list.
    pub(super) fn new_generation(
        &self,
        number: u64,
        slots: u64,
        arena: u64,
    ) -> Result<Box<Generation>> {
        let r = self.root();
        if root::stale_full(r) {
            let owner = pack_owner(self.key, self.root.id);
            let (_, current_id) = unpack_current(r.current.load(Ordering::Acquire));
            prune_stale(&*self.provider, r, owner, Some(current_id), true);
            if root::stale_full(r)
                && !self
                    .provider
                    .stat(current_id, &self.name)?
                    .removable_by_me()
            {
                return Err(Error::PermissionDenied {
                    name: self.name.clone(),
                    op: "retire a generation (the list of segments left for their owners is full)",
                });
            }
        }
        let root_info = self.provider.stat(self.root.id, &self.name)?;
        let made = make_data_segment(&*self.provider, r, (slots, arena), &root_info, &self.name)?;
        let id = made.id;
        let mut undo = Undo(Some(|| {
            let _ = self.provider.remove(id);
            self.root().pending.store(0, Ordering::Release);
        }));
        let seg = self.provider.attach(id, false, &self.name)?;
        let owner = pack_owner(self.key, self.root.id);
        // SAFETY: a new segment is zero-filled and unpublished; `seg` moves
        // into the returned generation with the table, which drops first.
        let table = unsafe {
            Table::init(
                seg.base(),
                seg.len(),
                (slots, made.arena),
                number,
                owner,
                made.huge_page_size,
            )
        }?;
        undo.0 = None;
        Ok(Box::new(Generation {
            word: pack_current(number as u32, id),
            number,
            table,
            seg,
        }))
    }

    /// Publishes a complete new generation with one store of the root's
    /// `current` word, marks the old segment for removal, and switches this
    /// process to the new one. Nothing after the switch can fail: the write
    /// is committed. An old segment this process may not remove (another
    /// user's) is recorded in the root's `stale` list for one that may.
    pub(super) fn publish(&self, old: &Generation, fresh: Box<Generation>) -> Result<()> {
        let r = self.root();
        r.retiring.store(old.seg.id as u64 + 1, Ordering::Release);
        reached(CrashPoint::MidResize);
        r.current.store(fresh.word, Ordering::Release);
        reached(CrashPoint::AfterPublish);
        // `old` is attached here and was validated as ours: its shmid
        // cannot have been reused.
        retire_segment(&*self.provider, r, old.seg.id, true);
        r.retiring.store(0, Ordering::Release);
        r.pending.store(0, Ordering::Release);
        let _switch = self.gens.lock_switch();
        self.gens.install(fresh);
        Ok(())
    }
}
