//! `shmkv ls --orphans` and `shmkv destroy --orphans` over SysV: a map's
//! data segment leaked by the removal (or corruption) of its root is
//! listed and removed; a segment that is not shmkv's data segment is never
//! touched, even one whose `owner` word names the same root.
//!
//! Removal is limited to the test map's key (`destroy --orphans NAME`) so
//! that concurrent runs on this machine keep their own segments; listing is
//! machine-wide.
#![allow(unreachable_pub)]

mod common;

use common::{ok, shmkv, Cleanup, Segment};
use shmkv::__private::{data_offsets, root_offsets, DATA_MAGIC};
use shmkv::RawMap;

/// `ls --orphans` attaches every private segment for a moment: the two
/// tests run one at a time, or one's listing shows up in the other's
/// attach counts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `shmkv --json ls --orphans` entries naming data segment `shmid`.
fn listed(shmid: i32) -> Option<serde_json::Value> {
    let all: serde_json::Value = serde_json::from_str(&ok(&["--json", "ls", "--orphans"])).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|o| o["shmid"] == shmid)
        .cloned()
}

fn exists(shmid: i32) -> bool {
    // SAFETY: shmid_ds is plain data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid, writable shmid_ds.
    unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) == 0 }
}

fn rmid(shmid: i32) {
    // SAFETY: IPC_RMID ignores the buffer argument.
    unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
}

/// Removes the segment it names when dropped (a data segment a failing
/// test leaked; only segments this test made are named).
struct RemoveSegment(Option<i32>);

impl Drop for RemoveSegment {
    fn drop(&mut self) {
        if let Some(id) = self.0 {
            rmid(id);
        }
    }
}

#[test]
fn orphaned_data_segments_are_listed_and_removed_and_nothing_else() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cleanup::new("cli-orphan");
    let n = c.name.as_str();
    let m = RawMap::create(n, &c.opts).unwrap();
    m.insert(b"k", b"v").unwrap();
    let s = m.stats().unwrap();
    let _leak = RemoveSegment(Some(s.data_shmid));
    // Another program's private segments: one with garbage, one whose
    // `owner` word names the same root but without shmkv's data magic.
    let garbage = Segment::create(libc::IPC_PRIVATE, 4096, 0o600);
    garbage.write_bytes(0, b"not a shmkv data segment, just bytes");
    let lookalike = Segment::create(libc::IPC_PRIVATE, 4096, 0o600);
    let owner = (u64::from(s.key as u32) << 32) | u64::from(s.root_shmid as u32);
    lookalike.write_u64(data_offsets::OWNER, owner);
    lookalike.write_u64(data_offsets::MAGIC, DATA_MAGIC ^ 1);
    let before = (garbage.read_bytes(0, 64), lookalike.read_bytes(0, 256));
    let _foreign = RemoveSegment(Some(garbage.id()));
    let _lookalike = RemoveSegment(Some(lookalike.id()));

    // A valid map's data segment is no orphan.
    assert_eq!(listed(s.data_shmid), None);
    // Its root goes (as by a hand-made `ipcrm`): the data segment leaks.
    rmid(s.root_shmid);
    drop(m);
    assert!(exists(s.data_shmid));
    let o = listed(s.data_shmid).expect("the leaked data segment is listed");
    assert_eq!(o["cause"], "root_gone");
    assert_eq!(o["key"], s.key);
    assert_eq!(o["root_shmid"], s.root_shmid);
    assert_eq!(o["attached"], 0);
    assert_eq!(o["generation"], s.generation);
    assert!(ok(&["ls", "--orphans"]).contains(&format!("{}", s.data_shmid)));
    assert_eq!(listed(garbage.id()), None);
    assert_eq!(listed(lookalike.id()), None);

    // Without --yes (stdin closed): nothing removed.
    let o = shmkv(&["destroy", "--orphans", n]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(exists(s.data_shmid));

    let out: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "destroy", "--orphans", n, "--yes"])).unwrap();
    assert_eq!(out["removed"], serde_json::json!([s.data_shmid]), "{out}");
    assert_eq!(out["left"], serde_json::json!([]));
    assert!(!exists(s.data_shmid), "the orphan is still there");
    assert_eq!(listed(s.data_shmid), None);
    // The foreign segments are there, byte for byte.
    assert!(exists(garbage.id()) && exists(lookalike.id()));
    assert_eq!(
        (garbage.read_bytes(0, 64), lookalike.read_bytes(0, 256)),
        before
    );
    // Nothing left to do: success, and still nothing foreign touched.
    ok(&["destroy", "--orphans", n, "--yes"]);
    assert!(exists(garbage.id()) && exists(lookalike.id()));
}

/// A root whose magic is overwritten leaves its data segment an orphan; a
/// process that still has it attached keeps it from removal unless
/// `--force`.
#[test]
fn orphans_of_a_corrupted_root_and_attached_orphans() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cleanup::new("cli-orphan-corrupt");
    let n = c.name.as_str();
    let m = RawMap::create(n, &c.opts).unwrap();
    m.insert(b"k", b"v").unwrap();
    let s = m.stats().unwrap();
    let _leak = RemoveSegment(Some(s.data_shmid));
    let root = Segment::root_of(s.key);
    {
        let _put_back = root.restore(root_offsets::MAGIC, 8);
        root.write_u64(root_offsets::MAGIC, 0x0bad_0bad);
        let o = listed(s.data_shmid).expect("listed");
        assert_eq!(o["cause"], "root_not_shmkv");
        // `m` has it attached.
        assert_eq!(o["attached"], 1);
        let r = shmkv(&["--json", "destroy", "--orphans", n, "--yes"]);
        assert_eq!(r.status.code(), Some(1), "{r:?}");
        let out: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(out["removed"], serde_json::json!([]));
        assert_eq!(out["left"][0]["shmid"], s.data_shmid);
        assert!(out["left"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("attached by 1"));
        let err: serde_json::Value = serde_json::from_slice(&r.stderr).unwrap();
        assert_eq!(err["kind"], "orphans_left");
        assert!(exists(s.data_shmid));
    }
    // The root is back: no orphan.
    assert_eq!(listed(s.data_shmid), None);
    assert_eq!(m.get(b"k").unwrap().unwrap(), b"v");
    // The root goes while `m` is open: --force removes the data segment,
    // which `m` keeps mapped until it drops.
    drop(root);
    rmid(s.root_shmid);
    assert!(listed(s.data_shmid).is_some());
    let out: serde_json::Value = serde_json::from_str(&ok(&[
        "--json",
        "destroy",
        "--orphans",
        n,
        "--yes",
        "--force",
    ]))
    .unwrap();
    assert_eq!(out["removed"], serde_json::json!([s.data_shmid]));
    assert_eq!(listed(s.data_shmid), None);
    drop(m);
    assert!(!exists(s.data_shmid));
}
