//! The huge page policy (`Options::huge_pages`) over the heap kernel, whose
//! pool of huge pages (`HeapKernel::set_huge_pages`) stands in for the
//! kernel's `vm.nr_hugepages`: deterministic, no root needed. The real
//! `SHM_HUGETLB` segments are checked by `tests/huge_pages.rs`.
//!
//! - `off_never_takes_huge_pages`: the default leaves the pool alone.
//! - `try_takes_whole_huge_pages`: sizes round up to whole pages, the
//!   extra bytes go to the arena, stats say so.
//! - `try_falls_back_to_normal_pages`: no pages: a map on normal pages.
//! - `require_without_pages_is_a_typed_error`: nothing left behind, the
//!   message names `vm.nr_hugepages` and the bytes.
//! - `growth_follows_the_recorded_policy`: a second handle opened without
//!   the option grows the map on huge pages (Require, Try); when the pool
//!   is empty, Require fails the write and keeps every entry, Try falls
//!   back.
//! - `require_beyond_max_size_is_full`: whole huge pages that exceed
//!   `max_size` are `Full` under Require, normal pages under Try.

use shmkv::__private::HeapKernel;
use shmkv::{Error, HugePages, Options};

const PAGE: u64 = 64 << 10;

fn key(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

fn small() -> Options {
    Options::new().capacity(14).arena_size(4096u64)
}

#[test]
fn off_never_takes_huge_pages() {
    let k = HeapKernel::new();
    k.set_huge_pages(8, PAGE);
    let m = k.create("off", &small()).unwrap();
    let s = m.stats().unwrap();
    assert!(!s.huge_pages);
    assert_eq!(s.huge_page_policy, HugePages::Off);
    assert_eq!(k.huge_pages_free(), 8);
    m.destroy().unwrap();
}

#[test]
fn try_takes_whole_huge_pages() {
    let k = HeapKernel::new();
    k.set_huge_pages(8, PAGE);
    let m = k
        .create("try", &small().huge_pages(HugePages::Try))
        .unwrap();
    let s = m.stats().unwrap();
    assert!(s.huge_pages, "{s:?}");
    assert_eq!(s.huge_page_policy, HugePages::Try);
    assert_eq!(s.segment_size, PAGE, "rounded up to one whole page");
    assert!(s.arena_size > 4096, "the rounding went to the arena: {s:?}");
    assert_eq!(k.huge_pages_free(), 7);
    m.insert(b"k", b"v").unwrap();
    assert_eq!(m.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    m.destroy().unwrap();
    assert_eq!(k.huge_pages_free(), 8, "pages come back with the segment");
}

#[test]
fn try_falls_back_to_normal_pages() {
    let k = HeapKernel::new();
    let m = k
        .create("tryfb", &small().huge_pages(HugePages::Try))
        .unwrap();
    let s = m.stats().unwrap();
    assert!(!s.huge_pages, "{s:?}");
    assert_eq!(s.huge_page_policy, HugePages::Try);
    assert_eq!(s.arena_size, 4096);
    m.insert(b"k", b"v").unwrap();
    assert_eq!(m.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    m.destroy().unwrap();
}

#[test]
fn require_without_pages_is_a_typed_error() {
    let k = HeapKernel::new();
    k.set_huge_pages(0, PAGE);
    let err = k
        .create("req", &small().huge_pages(HugePages::Require))
        .unwrap_err();
    match &err {
        Error::HugePagesUnavailable {
            bytes, page_size, ..
        } => {
            assert_eq!((*bytes, *page_size), (PAGE, PAGE));
        }
        e => panic!("expected HugePagesUnavailable, got {e:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("vm.nr_hugepages") && text.contains(&PAGE.to_string()),
        "{text}"
    );
    assert_eq!(k.objects().0, 0, "no segment left behind");
    assert!(k.open("req", &Options::new()).is_err());
    // With a page, the same create works.
    k.set_huge_pages(1, PAGE);
    let m = k
        .create("req", &small().huge_pages(HugePages::Require))
        .unwrap();
    assert!(m.stats().unwrap().huge_pages);
    m.destroy().unwrap();
}

#[test]
fn growth_follows_the_recorded_policy() {
    for policy in [HugePages::Require, HugePages::Try] {
        let k = HeapKernel::new();
        k.set_huge_pages(1, PAGE);
        let a = k.create("grow", &small().huge_pages(policy)).unwrap();
        // Another "process", opened without the option.
        let b = k.open("grow", &Options::new()).unwrap();
        assert_eq!(b.stats().unwrap().huge_page_policy, policy);
        let mut n = 0;
        while b.stats().unwrap().capacity == a.stats().unwrap().capacity && n < 14 {
            b.insert(&key(n), &key(n * 3)).unwrap();
            n += 1;
        }
        // The pool is empty (the first segment holds its only page): the
        // write that needs a new generation.
        let before = b.stats().unwrap();
        let r = b.insert(&key(n), &key(n * 3));
        match policy {
            HugePages::Require => {
                let err = r.unwrap_err();
                assert!(matches!(err, Error::HugePagesUnavailable { .. }), "{err:?}");
                let after = b.stats().unwrap();
                assert_eq!(
                    (after.generation, after.live, after.version),
                    (before.generation, before.live, before.version),
                    "the failed write changed the map"
                );
                for i in 0..n {
                    assert_eq!(a.get(&key(i)).unwrap().as_deref(), Some(&key(i * 3)[..]));
                }
                assert_eq!(a.get(&key(n)).unwrap(), None);
                // Pages come: the write works, on huge pages.
                k.set_huge_pages(4, PAGE);
                b.insert(&key(n), &key(n * 3)).unwrap();
                let s = b.stats().unwrap();
                assert!(s.generation > before.generation && s.huge_pages, "{s:?}");
            }
            _ => {
                r.unwrap();
                let s = b.stats().unwrap();
                assert!(s.generation > before.generation, "{s:?}");
                assert!(!s.huge_pages, "Try fell back: {s:?}");
                // With pages again, the next growth is on huge pages.
                k.set_huge_pages(4, PAGE);
                let g = s.generation;
                let mut i = n + 1;
                while b.stats().unwrap().generation == g {
                    b.insert(&key(i), &key(i * 3)).unwrap();
                    i += 1;
                }
                let s = b.stats().unwrap();
                assert!(s.huge_pages, "{s:?}");
                n = i - 1;
            }
        }
        for i in 0..=n {
            assert_eq!(a.get(&key(i)).unwrap().as_deref(), Some(&key(i * 3)[..]));
        }
        assert!(a.stats().unwrap().huge_pages);
        drop(b);
        a.destroy().unwrap();
        assert_eq!(k.objects(), (0, 0));
    }
}

#[test]
fn require_beyond_max_size_is_full() {
    let k = HeapKernel::new();
    k.set_huge_pages(8, 1 << 20);
    let opts = small().max_size(256u64 << 10);
    let err = k
        .create("max", &opts.clone().huge_pages(HugePages::Require))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Full {
                what: "max_size",
                ..
            }
        ),
        "{err:?}"
    );
    let m = k.create("max", &opts.huge_pages(HugePages::Try)).unwrap();
    let s = m.stats().unwrap();
    assert!(!s.huge_pages, "{s:?}");
    assert_eq!(k.huge_pages_free(), 8);
    m.destroy().unwrap();
}
