//! Unit tests of the engine over the heap provider: several handles on one
//! `HeapKernel` stand for several processes. These run under Miri too.

use super::HeapKernel;
use crate::{Error, Options, RawMap};

fn tiny() -> Options {
    Options::new().capacity(1).arena_size(4096u64)
}

fn val(k: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8 ^ k).collect()
}

fn entries(m: &RawMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<_> = m
        .entries()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    v.sort();
    v
}

/// Found by the `ops` fuzz target: a batch that removes a key and then
/// then moves to a new generation more than once (the removal must not be
/// lost in the second move).
#[test]
fn a_batch_that_removes_then_grows_keeps_the_removal() {
    let k = HeapKernel::new();
    let m = k.create("m", &tiny()).unwrap();
    m.insert(b"kkkkkk", &val(1, 500)).unwrap();
    m.write(|b| {
        assert!(b.remove(b"kkkkkk")?);
        b.insert(&[b'k'; 22], &val(22, 788))?;
        // Overwriting one key again and again fills the arena with garbage:
        // the batch moves to a new generation more than once.
        for _ in 0..14 {
            b.insert(&[b'k'; 38], &val(38, 788))?;
        }
        b.insert(&[b'k'; 22], &val(22, 564))?;
        b.insert(&[b'k'; 9], &val(9, 500))?;
        Ok(())
    })
    .unwrap();
    assert_eq!(m.get(b"kkkkkk").unwrap(), None);
    assert_eq!(
        m.len(),
        3,
        "{:?}",
        entries(&m).iter().map(|e| e.0.len()).collect::<Vec<_>>()
    );
    assert!(m.verify().unwrap().is_ok());
    m.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}
