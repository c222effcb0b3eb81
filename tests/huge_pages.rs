//! Huge pages with the real kernel (`SHM_HUGETLB`). One test in its own
//! binary: it changes the system's pool of huge pages
//! (`/proc/sys/vm/nr_hugepages`), so nothing else of ours runs beside it.
//! It needs root (CI is root) and FAILS, saying why, otherwise; the old
//! pool size (and `nr_overcommit_hugepages`) come back in a drop guard,
//! also when it fails.
//!
//! With a few pages reserved: `HugePages::Require` makes a map whose data
//! segment is hugetlb (this process's smaps show a SysV mapping with
//! `KernelPageSize` of `Hugepagesize`, its size a multiple of it), reads
//! and writes work, growth stays on huge pages. With no free page: `Try`
//! falls back to normal pages (stats say so), `Require` is the typed
//! `HugePagesUnavailable` error and leaves no map behind.

#![allow(unreachable_pub)]

mod common;

use common::Cleanup;
use shmkv::{Error, HugePages, Options, RawMap};

const NR: &str = "/proc/sys/vm/nr_hugepages";
const OVERCOMMIT: &str = "/proc/sys/vm/nr_overcommit_hugepages";

fn read_num(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

fn write_num(path: &str, v: u64) {
    std::fs::write(path, v.to_string()).unwrap_or_else(|e| {
        panic!(
            "this test needs root and a writable {path} (it reserves huge pages for \
             itself and restores the old value): writing {v} failed: {e}"
        )
    })
}

/// A `/proc/meminfo` field (the number, kB for sizes).
fn meminfo(field: &str) -> u64 {
    let t = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = t
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/meminfo: no hugetlb support?"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Puts the pool settings back when dropped.
struct RestorePool {
    nr: u64,
    overcommit: u64,
}

impl Drop for RestorePool {
    fn drop(&mut self) {
        let _ = std::fs::write(OVERCOMMIT, self.overcommit.to_string());
        let _ = std::fs::write(NR, self.nr.to_string());
    }
}

/// Mappings of SysV segments in this process on huge pages: their sizes.
fn hugetlb_sysv_mappings(page_kb: u64) -> Vec<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut found = Vec::new();
    let mut sysv: Option<u64> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header line: "start-end perms offset dev inode name".
            let mut r = first.split('-');
            let lo = u64::from_str_radix(r.next().unwrap(), 16).unwrap();
            let hi = u64::from_str_radix(r.next().unwrap(), 16).unwrap();
            sysv = line.contains("SYSV").then_some(hi - lo);
        } else if let Some(len) = sysv {
            if line.starts_with("KernelPageSize:") && line.contains(&format!(" {page_kb} kB")) {
                found.push(len);
            }
        }
    }
    found
}

#[test]
fn huge_pages_with_the_kernel() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "tests/huge_pages.rs must run as root: it reserves huge pages through {NR} \
         (CI runs as root; run `sudo -E cargo test --test huge_pages`)"
    );
    let page_kb = meminfo("Hugepagesize");
    let page = page_kb * 1024;
    let _restore = RestorePool {
        nr: read_num(NR),
        overcommit: read_num(OVERCOMMIT),
    };
    // No surplus pages: only the reserved pool counts.
    write_num(OVERCOMMIT, 0);

    // A few free pages for this test.
    let want_free = 6;
    let in_use = meminfo("HugePages_Total") - meminfo("HugePages_Free");
    write_num(NR, in_use + want_free);
    let free = meminfo("HugePages_Free");
    assert!(
        free >= want_free,
        "asked the kernel for {want_free} free huge pages, it has {free} (memory too fragmented?)"
    );

    let c = Cleanup::with(
        "huge",
        Options::new()
            .capacity(14)
            .arena_size(4096u64)
            .huge_pages(HugePages::Require),
    );
    assert!(hugetlb_sysv_mappings(page_kb).is_empty());
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let s = m.stats().unwrap();
    assert!(s.huge_pages, "{s:?}");
    assert_eq!(s.huge_page_policy, HugePages::Require);
    assert_eq!(s.segment_size % page, 0, "{s:?}");
    let maps = hugetlb_sysv_mappings(page_kb);
    assert!(
        maps.contains(&s.segment_size),
        "no hugetlb SysV mapping of {} bytes in /proc/self/smaps: {maps:?}",
        s.segment_size
    );
    assert_eq!(meminfo("HugePages_Free"), free - s.segment_size / page);
    // Reads, writes and growth (from a handle opened without the option).
    let other = RawMap::open(&c.name, &Options::new()).unwrap();
    for i in 0u64..40 {
        other
            .insert(&i.to_le_bytes(), &(i * 7).to_le_bytes())
            .unwrap();
    }
    let s2 = m.stats().unwrap();
    assert!(s2.generation > s.generation && s2.huge_pages, "{s2:?}");
    for i in 0u64..40 {
        assert_eq!(
            m.get_ref(&i.to_le_bytes()).unwrap().as_deref(),
            Some(&(i * 7).to_le_bytes()[..])
        );
    }
    drop(other);
    m.destroy().unwrap();
    drop(c);

    // No free huge page (those in use stay with their users).
    let in_use = meminfo("HugePages_Total") - meminfo("HugePages_Free");
    write_num(NR, in_use);
    assert_eq!(meminfo("HugePages_Free"), 0);

    let c = Cleanup::with(
        "hugetry",
        Options::new()
            .capacity(14)
            .arena_size(4096u64)
            .huge_pages(HugePages::Try),
    );
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let s = m.stats().unwrap();
    assert!(!s.huge_pages, "Try should have fallen back: {s:?}");
    assert_eq!(s.huge_page_policy, HugePages::Try);
    m.insert(b"k", b"v").unwrap();
    assert_eq!(m.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    m.destroy().unwrap();
    drop(c);

    let c = Cleanup::with(
        "hugereq",
        Options::new()
            .capacity(14)
            .arena_size(4096u64)
            .huge_pages(HugePages::Require),
    );
    let err = RawMap::create(&c.name, &c.opts).unwrap_err();
    match &err {
        Error::HugePagesUnavailable {
            bytes,
            page_size,
            errno,
            ..
        } => {
            assert_eq!((*bytes, *page_size), (page, page));
            assert!(errno.is_some(), "{err:?}");
        }
        e => panic!("expected HugePagesUnavailable, got {e:?}"),
    }
    assert!(err.to_string().contains("vm.nr_hugepages"), "{err}");
    assert!(matches!(
        RawMap::open(&c.name, &Options::new()),
        Err(Error::NotFound { .. })
    ));
}
