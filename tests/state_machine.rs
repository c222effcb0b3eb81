//! proptest state machines: `RawMap` and `ShmMap` against a `BTreeMap`
//! model, with small key alphabets (collisions, tombstones), batches that
//! commit, fail or panic, reopening through a new handle, forced compaction
//! and growth from a 16-slot, 4 KiB map. After every step: len, contents and
//! a full `verify()`.
//!
//! Case count: `PROPTEST_CASES` (default 48 here).
#![allow(unreachable_pub)]

mod common;

use std::collections::BTreeMap;

use common::Cleanup;
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use shmkv::{Error, Options, RawMap, ShmMap};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug)]
enum Step {
    Insert(u8, u8),
    Remove(u8),
    Get(u8),
    Batch(Vec<(bool, u8, u8)>, Outcome),
    Reopen,
    Compact,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Commit,
    Fail,
    Panic,
}

fn key(k: u8) -> Vec<u8> {
    // 16 keys of lengths 1..=16, some sharing prefixes.
    vec![b'a' + k % 4; 1 + (k % 16) as usize]
}

fn value(k: u8, len: u8) -> Vec<u8> {
    (0..len).map(|i| i ^ k).collect()
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::new()).boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Step> {
        let k = 0u8..16;
        prop_oneof![
            6 => (k.clone(), 0u8..200).prop_map(|(k, l)| Step::Insert(k, l)),
            3 => k.clone().prop_map(Step::Remove),
            2 => k.clone().prop_map(Step::Get),
            3 => (
                prop::collection::vec((any::<bool>(), k.clone(), 0u8..120), 1..20),
                prop_oneof![4 => Just(Outcome::Commit), 1 => Just(Outcome::Fail), 1 => Just(Outcome::Panic)]
            )
                .prop_map(|(ops, o)| Step::Batch(ops, o)),
            1 => Just(Step::Reopen),
            1 => Just(Step::Compact),
        ]
        .boxed()
    }

    fn apply(mut m: Model, step: &Step) -> Model {
        match step {
            Step::Insert(k, l) => {
                m.insert(key(*k), value(*k, *l));
            }
            Step::Remove(k) => {
                m.remove(&key(*k));
            }
            Step::Batch(ops, Outcome::Commit) => {
                for (ins, k, l) in ops {
                    if *ins {
                        m.insert(key(*k), value(*k, *l));
                    } else {
                        m.remove(&key(*k));
                    }
                }
            }
            _ => {}
        }
        m
    }
}

fn opts() -> Options {
    Options::new().capacity(14).arena_size(4096u64)
}

/// The byte-level map.
struct RawSut {
    map: Option<RawMap>,
    c: Cleanup,
}

fn run_batch(map: &RawMap, ops: &[(bool, u8, u8)], outcome: Outcome) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        map.write(|b| {
            let mut seen = Model::new();
            for (ins, k, l) in ops {
                if *ins {
                    b.insert(&key(*k), &value(*k, *l))?;
                    seen.insert(key(*k), value(*k, *l));
                } else {
                    b.remove(&key(*k))?;
                    seen.insert(key(*k), Vec::new());
                }
                // Read-your-writes inside the batch.
                let got = b.get(&key(*k))?.map(<[u8]>::to_vec);
                assert_eq!(got, ins.then(|| value(*k, *l)));
            }
            match outcome {
                Outcome::Commit => Ok(()),
                Outcome::Fail => Err(Error::Value("abort".into())),
                Outcome::Panic => panic!("batch panics"),
            }
        })
    }));
    match (outcome, r) {
        (Outcome::Commit, Ok(Ok(())))
        | (Outcome::Fail, Ok(Err(Error::Value(_))))
        | (Outcome::Panic, Err(_)) => {}
        (o, r) => panic!(
            "batch {o:?} gave {:?}",
            r.map(|x| x.map_err(|e| e.to_string()))
        ),
    }
}

/// Length and a full consistency check of the segment.
fn check_len_and_verify(map: &RawMap, model: &Model) {
    assert_eq!(map.len(), model.len());
    let report = map.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.live as usize, model.len());
}

impl StateMachineTest for RawSut {
    type SystemUnderTest = RawSut;
    type Reference = Reference;

    fn init_test(_: &Model) -> RawSut {
        let c = Cleanup::with("prop-raw", opts());
        RawSut {
            map: Some(RawMap::create(&c.name, &c.opts).unwrap()),
            c,
        }
    }

    fn apply(mut sut: RawSut, model: &Model, step: Step) -> RawSut {
        let map = sut.map.as_ref().unwrap();
        match step {
            Step::Insert(k, l) => map.insert(&key(k), &value(k, l)).unwrap(),
            Step::Remove(k) => {
                map.remove(&key(k)).unwrap();
            }
            Step::Get(k) => {
                assert_eq!(map.get(&key(k)).unwrap().as_ref(), model.get(&key(k)));
                assert_eq!(
                    map.contains_key(&key(k)).unwrap(),
                    model.contains_key(&key(k))
                );
            }
            Step::Batch(ops, outcome) => run_batch(map, &ops, outcome),
            Step::Reopen => {
                sut.map = None;
                sut.map = Some(RawMap::open(&sut.c.name, &sut.c.opts).unwrap());
            }
            Step::Compact => map.compact().unwrap(),
        }
        sut
    }

    fn check_invariants(sut: &RawSut, model: &Model) {
        let map = sut.map.as_ref().unwrap();
        let got: Model = map
            .entries()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(&got, model);
        check_len_and_verify(map, model);
    }
}

/// The typed map: keys `[u8]`, values `Vec<u8>` as rkyv archives.
struct TypedSut {
    map: Option<ShmMap<[u8], Vec<u8>>>,
    c: Cleanup,
}

impl StateMachineTest for TypedSut {
    type SystemUnderTest = TypedSut;
    type Reference = Reference;

    fn init_test(_: &Model) -> TypedSut {
        let c = Cleanup::with("prop-typed", opts());
        TypedSut {
            map: Some(ShmMap::create(&c.name, &c.opts).unwrap()),
            c,
        }
    }

    fn apply(mut sut: TypedSut, model: &Model, step: Step) -> TypedSut {
        let map = sut.map.as_ref().unwrap();
        match step {
            Step::Insert(k, l) => map.insert(&key(k), &value(k, l)).unwrap(),
            Step::Remove(k) => {
                map.remove(&key(k)).unwrap();
            }
            Step::Get(k) => {
                assert_eq!(map.get(&key(k)).unwrap().as_ref(), model.get(&key(k)));
                let archived = map.get_archived(&key(k)).unwrap().map(|a| a.to_vec());
                assert_eq!(archived.as_ref(), model.get(&key(k)));
            }
            Step::Batch(ops, outcome) => {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    map.write(|b| {
                        for (ins, k, l) in &ops {
                            if *ins {
                                b.insert(&key(*k), &value(*k, *l))?;
                            } else {
                                b.remove(&key(*k))?;
                            }
                        }
                        match outcome {
                            Outcome::Commit => Ok(()),
                            Outcome::Fail => Err(Error::Value("abort".into())),
                            Outcome::Panic => panic!("batch panics"),
                        }
                    })
                }));
                assert_eq!(matches!(r, Ok(Ok(()))), outcome == Outcome::Commit);
            }
            Step::Reopen => {
                sut.map = None;
                sut.map = Some(ShmMap::open(&sut.c.name, &sut.c.opts).unwrap());
            }
            Step::Compact => map.compact().unwrap(),
        }
        sut
    }

    fn check_invariants(sut: &TypedSut, model: &Model) {
        let map = sut.map.as_ref().unwrap();
        let got: Model = map.entries().unwrap().into_iter().collect();
        assert_eq!(&got, model);
        check_len_and_verify(map.raw(), model);
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn raw_map_matches_a_btreemap(sequential 1..60 => RawSut);

    #[test]
    fn typed_map_matches_a_btreemap(sequential 1..60 => TypedSut);
}
