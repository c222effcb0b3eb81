//! Retired generations are detached by the process's reaper thread
//! (`shmkv-reaper`), not by the thread whose unpin or switch reclaimed them:
//! a reader that releases the last reference to a retired generation must
//! not pay for its detach (DESIGN.md "Reclamation", "The reaper").
#![allow(unreachable_pub)]

use shmkv::__private::HeapKernel;
use shmkv::Options;

#[test]
#[cfg_attr(miri, ignore = "under Miri generations are detached in place")]
fn retired_generations_are_freed_by_the_reaper_not_by_the_reader() {
    let k = HeapKernel::new();
    let w = k.create("m", &Options::new()).unwrap();
    w.insert(b"k", b"v1").unwrap();
    let r = k.open("m", &Options::new()).unwrap();
    let reader = std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let held = r.get_ref(b"k").unwrap().unwrap();
            // Two switches: the writer retires generation 1 (and 2).
            w.compact().unwrap();
            w.insert(b"k", b"v2").unwrap();
            w.compact().unwrap();
            // The reader switches too; `held` keeps generation 1 mapped.
            assert_eq!(r.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
            assert_eq!(&*held, b"v1");
            // Its last reference: this unpin reclaims generation 1.
            drop(held);
            assert_eq!(r.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
            (w, r)
        })
        .unwrap();
    let (w, r) = reader.join().unwrap();
    let freed = k.freed_by();
    assert!(
        freed.len() >= 2,
        "the retired generations were freed: {freed:?}"
    );
    assert!(
        freed.iter().all(|t| t == "shmkv-reaper"),
        "freed by: {freed:?} (the reader's own thread detached)"
    );
    drop(r);
    w.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}
