//! Review of the huge page policy at growth inside one write (heap kernel):
//! a write batch that moves to a new generation twice, the second move
//! refused under `HugePages::Require`, leaves the map as it was (entries,
//! generation), every segment and huge page of the failed batch returned.

use shmkv::__private::HeapKernel;
use shmkv::{Error, HugePages, Options};

const PAGE: u64 = 64 << 10;

fn key(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

#[test]
fn require_refused_at_a_second_move_in_one_batch_leaves_nothing() {
    let k = HeapKernel::new();
    k.set_huge_pages(1, PAGE);
    let m = k
        .create(
            "twice",
            &Options::new()
                .capacity(14)
                .arena_size(4096u64)
                .huge_pages(HugePages::Require),
        )
        .unwrap();
    m.insert(b"kept", b"value").unwrap();
    let before = m.stats().unwrap();
    assert!(before.huge_pages);
    let objects = k.objects();
    // The batch's generations take 3, then 7 pages (the first is freed
    // only once the second is built): 5 pages allow the first move only.
    k.set_huge_pages(5, PAGE);
    let free = k.huge_pages_free();
    let value = vec![7u8; 20 << 10];
    let mut moves_seen = 0;
    let r = m.write(|b| {
        let mut last = 0;
        for i in 0..64 {
            b.insert(&key(i), &value)?;
            // No API tells the batch's generation: count what the pool lost.
            let used = free - k.huge_pages_free();
            if used != last {
                moves_seen += 1;
                last = used;
            }
        }
        Ok(())
    });
    let err = r.unwrap_err();
    assert!(matches!(err, Error::HugePagesUnavailable { .. }), "{err:?}");
    assert!(
        moves_seen >= 1,
        "the batch never moved: the test does not test"
    );
    let after = m.stats().unwrap();
    assert_eq!(
        (after.generation, after.live, after.version),
        (before.generation, before.live, before.version)
    );
    assert_eq!(m.get(b"kept").unwrap(), Some(b"value".to_vec()));
    assert_eq!(m.get(&key(0)).unwrap(), None);
    assert_eq!(k.objects(), objects, "segments of the failed batch left");
    assert_eq!(
        k.huge_pages_free(),
        free,
        "huge pages of the failed batch kept"
    );
    // The map is usable: with pages, the same write works.
    k.set_huge_pages(64, PAGE);
    m.write(|b| {
        for i in 0..64 {
            b.insert(&key(i), &value)?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(m.get(&key(63)).unwrap(), Some(value.clone()));
    assert!(m.stats().unwrap().huge_pages);
    // A second handle (a fresh open runs the checks of the root) sees it all.
    let o = k.open("twice", &Options::new()).unwrap();
    assert_eq!(o.get(b"kept").unwrap(), Some(b"value".to_vec()));
    drop(o);
    m.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}
