//! Sequences of operations on the real engine (`RawMap`) over the heap
//! provider (`HeapKernel`), against `std::collections::HashMap`: inserts,
//! removes, batches that commit or abort, compaction, a second handle that
//! reads (and so follows generation switches), a `Ref` held across later
//! writes (pinning a retired generation), and reopening that handle. Maps
//! start at the minimum size (16 slots, 4 KiB arena), so growth happens
//! constantly; half the inputs set a small `max_size`, so `Full` happens
//! too. `Full` is accepted only when a `max_size` is set, and then the map
//! must be unchanged (it is compared with the model after every step).
//! Every 20,000 runs the target prints how often growth and `Full`
//! happened.
#![no_main]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shmkv::__private::HeapKernel;
use shmkv::{Error, Options, RawMap};

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        key: u8,
        len: u8,
    },
    Remove {
        key: u8,
    },
    Get {
        key: u8,
    },
    Batch {
        ops: Vec<(bool, u8, u8)>,
        abort: bool,
    },
    Compact,
    /// The second handle reads a key.
    OtherGet {
        key: u8,
    },
    /// A `Ref` to a key's value is kept (until the next `Hold`) and
    /// checked after every later step: its generation may be retired by
    /// growth or compaction meanwhile, and must stay mapped (a premature
    /// reclaim frees the heap region: ASan reports the use after free).
    Hold {
        key: u8,
    },
    /// The second handle is dropped and opened again.
    Reopen,
}

fn key(k: u8) -> Vec<u8> {
    // 40 distinct keys of varying length.
    vec![b'k'; 1 + (k % 40) as usize]
}

fn value(k: u8, len: u8, step: usize) -> Vec<u8> {
    // Up to 1,020 bytes: a few big values fill the 4 KiB arena.
    (0..len as usize * 4)
        .map(|i| (i + step) as u8 ^ k)
        .collect()
}

static RUNS: AtomicU64 = AtomicU64::new(0);
static GROWN: AtomicU64 = AtomicU64::new(0);
static FULL: AtomicU64 = AtomicU64::new(0);
static FULL_RUNS: AtomicU64 = AtomicU64::new(0);
static STEPS: AtomicU64 = AtomicU64::new(0);

fn full_ok(e: &Error, limited: bool, full: &mut u64) -> bool {
    if matches!(e, Error::Full { .. } | Error::ValueTooLarge { .. }) {
        assert!(limited, "{e} without a max_size");
        *full += 1;
        return true;
    }
    false
}

fuzz_target!(|input: (bool, u8, Vec<Op>)| {
    let (limited, limit, ops) = input;
    let kernel = HeapKernel::with_limit(64 << 20);
    let mut opts = Options::new().capacity(1).arena_size(4096u64);
    if limited {
        // 6 KiB .. 21 KiB: a minimum map holds a few kilobytes of entries.
        opts = opts.max_size((6 + u64::from(limit % 16)) << 10);
    }
    let map = kernel.create("fuzz", &opts).unwrap();
    let mut other: Option<RawMap> = Some(kernel.open("fuzz", &Options::new()).unwrap());
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let first_gen = map.stats().unwrap().generation;
    let mut full = 0u64;
    let mut steps = 0u64;
    let mut held: Option<(shmkv::Ref<'_, [u8]>, Vec<u8>)> = None;
    for (step, op) in ops.into_iter().enumerate() {
        steps += 1;
        match op {
            Op::Insert { key: k, len } => {
                let v = value(k, len, step);
                match map.insert(&key(k), &v) {
                    Ok(()) => {
                        model.insert(key(k), v);
                    }
                    Err(e) if full_ok(&e, limited, &mut full) => {}
                    Err(e) => panic!("insert: {e}"),
                }
            }
            Op::Remove { key: k } => {
                let removed = map.remove(&key(k)).unwrap();
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
                        assert_eq!(
                            b.get(&key(*k))?.map(<[u8]>::to_vec),
                            next.get(&key(*k)).cloned()
                        );
                    }
                    if abort {
                        return Err(Error::Value("abort".into()));
                    }
                    Ok(())
                });
                match r {
                    Ok(()) => model = next,
                    Err(Error::Value(_)) => {}
                    Err(e) if full_ok(&e, limited, &mut full) => {}
                    Err(e) => panic!("batch: {e}"),
                }
            }
            Op::Compact => match map.compact() {
                Ok(()) => {}
                Err(e) if full_ok(&e, limited, &mut full) => {}
                Err(e) => panic!("compact: {e}"),
            },
            Op::OtherGet { key: k } => {
                if let Some(o) = &other {
                    assert_eq!(o.get(&key(k)).unwrap(), model.get(&key(k)).cloned());
                }
            }
            Op::Hold { key: k } => {
                held = map.get_ref(&key(k)).unwrap().map(|r| {
                    let copy = r.to_vec();
                    (r, copy)
                });
            }
            Op::Reopen => {
                drop(other.take());
                other = Some(kernel.open("fuzz", &Options::new()).unwrap());
            }
        }
        assert_eq!(map.len(), model.len());
        let report = map.verify().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        let mut got: Vec<(Vec<u8>, Vec<u8>)> = map
            .entries()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        got.sort();
        let mut want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        want.sort();
        assert_eq!(got, want);
        if let Some(o) = &other {
            assert_eq!(o.len(), model.len());
        }
        if let Some((r, copy)) = &held {
            assert_eq!(&r[..], &copy[..], "a held value changed");
        }
    }
    drop(held);
    let grown = map.stats().unwrap().generation - first_gen;
    drop(other);
    map.destroy().unwrap();
    assert_eq!(kernel.objects(), (0, 0), "objects left after destroy");
    GROWN.fetch_add(grown, Ordering::Relaxed);
    FULL.fetch_add(full, Ordering::Relaxed);
    FULL_RUNS.fetch_add(u64::from(full > 0), Ordering::Relaxed);
    STEPS.fetch_add(steps, Ordering::Relaxed);
    let runs = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
    if runs % 20_000 == 0 {
        eprintln!(
            "ops: {runs} runs, {} steps, {} generation switches, {} Full errors in {} runs",
            STEPS.load(Ordering::Relaxed),
            GROWN.load(Ordering::Relaxed),
            FULL.load(Ordering::Relaxed),
            FULL_RUNS.load(Ordering::Relaxed),
        );
    }
});
