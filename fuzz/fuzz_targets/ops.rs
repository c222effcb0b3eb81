//! Sequences of operations (inserts, removes, batches that commit or abort)
//! on the table algorithm over heap memory, against `std::collections::HashMap`.
//! Small key alphabet and a 16-slot table force collisions, tombstones and
//! `Full` errors. After every step the map must equal the model.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shmkv::__private::HeapMap;
use shmkv::Error;

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { key: u8, len: u8 },
    Remove { key: u8 },
    Get { key: u8 },
    Batch { ops: Vec<(bool, u8, u8)>, abort: bool },
}

fn key(k: u8) -> Vec<u8> {
    // 24 distinct keys of varying length.
    vec![b'k'; 1 + (k % 24) as usize]
}

fn value(k: u8, len: u8, step: usize) -> Vec<u8> {
    (0..len as usize).map(|i| (i + step) as u8 ^ k).collect()
}

fuzz_target!(|input: (u64, Vec<Op>)| {
    let (seed, ops) = input;
    let map = HeapMap::new(16, 4096, seed).unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Insert { key: k, len } => {
                let v = value(k, len, step);
                match map.write(|b| b.insert(&key(k), &v)) {
                    Ok(()) => {
                        model.insert(key(k), v);
                    }
                    Err(Error::Full { .. }) => {}
                    Err(e) => panic!("insert: {e}"),
                }
            }
            Op::Remove { key: k } => {
                let removed = map.write(|b| b.remove(&key(k))).unwrap();
                assert_eq!(removed, model.remove(&key(k)).is_some());
            }
            Op::Get { key: k } => {
                assert_eq!(map.get(&key(k)).unwrap(), model.get(&key(k)).cloned());
            }
            Op::Batch { ops, abort } => {
                let mut next = model.clone();
                let r = map.write(|b| {
                    for (insert, k, len) in &ops {
                        if *insert {
                            let v = value(*k, *len, step);
                            b.insert(&key(*k), &v)?;
                            next.insert(key(*k), v);
                        } else {
                            assert_eq!(b.remove(&key(*k))?, next.remove(&key(*k)).is_some());
                        }
                        assert_eq!(b.get(&key(*k))?, next.get(&key(*k)).cloned());
                    }
                    if abort {
                        return Err(Error::Value("abort".into()));
                    }
                    Ok(())
                });
                match r {
                    Ok(()) => model = next,
                    Err(Error::Full { .. } | Error::Value(_)) => {}
                    Err(e) => panic!("batch: {e}"),
                }
            }
        }
        assert_eq!(map.len(), model.len());
        let report = map.verify();
        assert!(report.is_ok(), "{:?}", report.problems);
        let mut got = map.entries().unwrap();
        got.sort();
        let mut want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        want.sort();
        assert_eq!(got, want);
    }
});
