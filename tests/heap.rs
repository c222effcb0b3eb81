//! The table algorithm over heap memory (`HeapMap`): no SysV object, no
//! system call, so these tests also run under Miri (`scripts/miri.sh`),
//! which checks every access the table, slot, redo-log and recovery code
//! makes through raw pointers into the segment: bounds, alignment,
//! provenance, use after free, and (with threads) data races.
//!
//! - `ops_match_a_model`: inserts, removes, gets and batches (committed and
//!   aborted) on a 16-slot table against `HashMap`, with `verify` after
//!   every step; `Full` happens.
//! - `compaction_keeps_every_entry`: `Table::load_from` into a fresh table.
//! - `an_image_reattaches_with_the_same_entries`: `Table::attach` on a copy.
//! - `recovery_replays_a_committed_log`: a write that died after its commit
//!   word was stored (or half-way through applying), rebuilt from the images
//!   before and after it; recovery must produce the after-image's entries.
//! - `recovery_ignores_an_uncommitted_log`: the same without the commit word.
//! - `damaged_images_give_errors_not_crashes`: words of a valid image
//!   overwritten with extreme values, then every operation (the
//!   `open_corrupted` fuzz target's `exercise`, over a fixed set of
//!   patches), and truncated images.

use std::collections::HashMap;

use shmkv::__private::{data_offsets as off, HeapMap};
use shmkv::Error;

const SEED: u64 = 0x5eed;
/// Miri interprets every step: fewer of them there.
const STEPS: usize = if cfg!(miri) { 150 } else { 3000 };

/// xorshift64: a deterministic sequence without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 24 distinct keys of varying length (as in the `ops` fuzz target).
fn key(k: u64) -> Vec<u8> {
    vec![b'k'; 1 + (k % 24) as usize]
}

fn value(k: u64, len: u64, step: usize) -> Vec<u8> {
    (0..len as usize)
        .map(|i| (i + step) as u8 ^ k as u8)
        .collect()
}

fn word(img: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(img[at..at + 8].try_into().unwrap())
}

fn put_word(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn sorted(mut e: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    e.sort();
    e
}

fn assert_matches(map: &HeapMap, model: &HashMap<Vec<u8>, Vec<u8>>) {
    assert_eq!(map.len(), model.len());
    let report = map.verify();
    assert!(report.is_ok(), "{report:?}");
    let mut want: Vec<_> = model.clone().into_iter().collect();
    want.sort();
    assert_eq!(sorted(map.entries().unwrap()), want);
}

#[test]
fn ops_match_a_model() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let map = HeapMap::new(16, 4096, SEED).unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut full = 0;
    for step in 0..STEPS {
        match rng.below(8) {
            0..=2 => {
                let (k, len) = (rng.below(24), rng.below(200));
                let v = value(k, len, step);
                match map.write(|b| b.insert(&key(k), &v)) {
                    Ok(()) => {
                        model.insert(key(k), v);
                    }
                    Err(Error::Full { .. }) => full += 1,
                    Err(e) => panic!("insert: {e}"),
                }
            }
            3 | 4 => {
                let k = rng.below(24);
                let removed = map.write(|b| b.remove(&key(k))).unwrap();
                assert_eq!(removed, model.remove(&key(k)).is_some());
            }
            5 => {
                let k = rng.below(24);
                assert_eq!(map.get(&key(k)).unwrap(), model.get(&key(k)).cloned());
            }
            _ => {
                let abort = rng.below(4) == 0;
                let ops: Vec<(bool, u64, u64)> = (0..rng.below(6))
                    .map(|_| (rng.below(3) != 0, rng.below(24), rng.below(120)))
                    .collect();
                let mut next = model.clone();
                let r = map.write(|b| {
                    for &(insert, k, len) in &ops {
                        if insert {
                            let v = value(k, len, step);
                            b.insert(&key(k), &v)?;
                            next.insert(key(k), v);
                        } else {
                            assert_eq!(b.remove(&key(k))?, next.remove(&key(k)).is_some());
                        }
                        assert_eq!(b.get(&key(k))?, next.get(&key(k)).cloned());
                    }
                    if abort {
                        return Err(Error::Value("abort".into()));
                    }
                    Ok(())
                });
                match r {
                    Ok(()) => model = next,
                    Err(Error::Full { .. }) => full += 1,
                    Err(Error::Value(_)) => {}
                    Err(e) => panic!("batch: {e}"),
                }
            }
        }
        assert_matches(&map, &model);
    }
    assert!(
        full > 0,
        "the table never filled up: the test lost its edge"
    );
}

/// A map with entries, removals (tombstones) and overwritten values
/// (garbage in the arena).
fn populated() -> HeapMap {
    let m = HeapMap::new(16, 4096, SEED).unwrap();
    m.write(|b| {
        for k in 0u8..10 {
            b.insert(&[k; 3], &[k; 20])?;
        }
        b.remove(&[3; 3])?;
        Ok(())
    })
    .unwrap();
    m.write(|b| b.insert(&[4; 3], &[9; 40])).unwrap();
    m.write(|b| b.remove(&[5; 3]).map(drop)).unwrap();
    m
}

#[test]
fn compaction_keeps_every_entry() {
    let m = populated();
    let c = m.compact().unwrap();
    assert!(c.verify().is_ok(), "{:?}", c.verify());
    assert_eq!(sorted(c.entries().unwrap()), sorted(m.entries().unwrap()));
    assert_eq!(c.len(), 8);
    c.write(|b| b.insert(b"after", &[1; 30])).unwrap();
    assert_eq!(c.get(b"after").unwrap(), Some(vec![1; 30]));
}

#[test]
fn an_image_reattaches_with_the_same_entries() {
    let m = populated();
    let again = HeapMap::from_image(&m.image(), SEED).unwrap();
    assert!(!again.recover().unwrap());
    assert_eq!(
        sorted(again.entries().unwrap()),
        sorted(m.entries().unwrap())
    );
    assert_eq!(again.get(&[4; 3]).unwrap(), Some(vec![9; 40]));
    assert_eq!(again.get(&[3; 3]).unwrap(), None);
}

/// The images before and after one batch, and the batch's commit word
/// (`(log << 1) | 1`, the log right after the records it staged).
fn before_and_after() -> (Vec<u8>, Vec<u8>, u64) {
    let m = populated();
    let before = m.image();
    m.write(|b| {
        b.insert(&[1; 3], &[0xaa; 50])?;
        b.remove(&[2; 3])?;
        b.insert(b"fresh", &[0xbb; 10])?;
        Ok(())
    })
    .unwrap();
    let after = m.image();
    let log = word(&after, off::ARENA_USED).next_multiple_of(off::ARENA_ALIGN);
    (before, after, (log << 1) | 1)
}

/// The before-image with the after-image's arena (the staged records and
/// the redo log, above the before-image's `arena_used`): what a writer
/// leaves when it dies after writing its log.
fn died_after_logging(before: &[u8], after: &[u8]) -> Vec<u8> {
    let arena = off::arena(16);
    let mut img = before.to_vec();
    img[arena..].copy_from_slice(&after[arena..]);
    img
}

#[test]
fn recovery_replays_a_committed_log() {
    let (before, after, commit) = before_and_after();
    let want = sorted(
        HeapMap::from_image(&after, SEED)
            .unwrap()
            .entries()
            .unwrap(),
    );
    // Slots 0..applied already carry the write (a crash mid-apply, view
    // sequence odd); 0 is a crash right after the commit word was stored.
    for applied in [0, 5, 11, 16] {
        let mut img = died_after_logging(&before, &after);
        put_word(&mut img, off::COMMIT, commit);
        if applied > 0 {
            let slots = off::SLOTS..off::SLOTS + applied * off::SLOT_SIZE;
            img[slots.clone()].copy_from_slice(&after[slots]);
            put_word(&mut img, off::VIEW_SEQ, word(&after, off::VIEW_SEQ) - 1);
        }
        let m = HeapMap::from_image(&img, SEED).unwrap();
        assert!(
            m.recover().unwrap(),
            "nothing recovered ({applied} applied)"
        );
        assert!(!m.recover().unwrap(), "recovery not idempotent");
        assert!(m.verify().is_ok(), "{:?}", m.verify());
        assert_eq!(sorted(m.entries().unwrap()), want, "{applied} applied");
    }
}

#[test]
fn recovery_ignores_an_uncommitted_log() {
    let (before, after, _) = before_and_after();
    let want = sorted(
        HeapMap::from_image(&before, SEED)
            .unwrap()
            .entries()
            .unwrap(),
    );
    let m = HeapMap::from_image(&died_after_logging(&before, &after), SEED).unwrap();
    assert!(!m.recover().unwrap());
    assert_eq!(sorted(m.entries().unwrap()), want);
    // The next write stages over the dead one's records.
    m.write(|b| b.insert(b"next", &[7; 300])).unwrap();
    assert!(m.verify().is_ok(), "{:?}", m.verify());
    assert_eq!(m.get(b"next").unwrap(), Some(vec![7; 300]));
}

/// Every operation on a (possibly damaged) map; results are ignored, only
/// a crash, a panic or (under Miri) undefined behaviour fails.
fn exercise(m: &HeapMap) {
    let _ = m.len();
    let _ = m.entries();
    let _ = m.verify();
    for k in 0u8..12 {
        let _ = m.get(&[k; 3]);
    }
    if let Ok(c) = m.compact() {
        let _ = c.verify();
        let _ = c.entries();
    }
    if m.recover().is_ok() {
        let _ = m.write(|b| b.insert(b"new", b"value"));
        let _ = m.write(|b| b.insert(b"big", &[0x22; 2000]));
        let _ = m.write(|b| {
            b.insert(&[2; 3], &[0xee; 100])?;
            b.remove(&[6; 3])?;
            b.remove(b"new")
        });
        let _ = m.entries();
        let _ = m.verify();
    }
}

#[test]
fn damaged_images_give_errors_not_crashes() {
    let (valid, after, commit) = before_and_after();
    let words = valid.len() / 8;
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    // Every header word up to `owner`, the first slots' words and the
    // first record's, each with every extreme value; outside Miri also the
    // reserved header words and random words. Under Miri (which spends about
    // a second per damaged image), one extreme value per word, in turn.
    let extremes = [u64::MAX, 0, 1, u64::MAX - 7, 1 << 32, 0x8000_0000_0000_0000];
    let header = if cfg!(miri) {
        off::OWNER + 8
    } else {
        off::HEADER_SIZE
    };
    let mut at: Vec<usize> = (0..header / 8).collect();
    at.extend((off::SLOTS / 8..).take(if cfg!(miri) { 4 } else { 16 }));
    at.extend((off::arena(16) / 8..).take(if cfg!(miri) { 2 } else { 8 }));
    if !cfg!(miri) {
        at.extend((0..200).map(|_| rng.below(words as u64) as usize));
    }
    let mut patches = Vec::new();
    for (i, &w) in at.iter().enumerate() {
        if cfg!(miri) {
            patches.push((w, extremes[i % 3]));
        } else {
            patches.extend(extremes.iter().map(|&v| (w, v)));
        }
    }
    let mut attached = 0;
    for (w, v) in patches {
        let mut img = valid.clone();
        put_word(&mut img, w * 8, v);
        // Counters that pass their check word and reach the range checks.
        let sealed = off::counters_check(
            word(&img, off::ARENA_USED),
            word(&img, off::LIVE),
            word(&img, off::TOMBSTONES),
            word(&img, off::GARBAGE),
        );
        put_word(&mut img, off::COUNTERS_CHECK, sealed);
        if let Ok(m) = HeapMap::from_image(&img, SEED) {
            attached += 1;
            exercise(&m);
        }
    }
    // A committed log with a damaged word: parse must reject or apply it.
    let mut log = died_after_logging(&valid, &after);
    put_word(&mut log, off::COMMIT, commit);
    let log_at = off::arena(16) + (commit >> 1) as usize;
    for i in 0..if cfg!(miri) { 6 } else { 24 } {
        let mut img = log.clone();
        put_word(&mut img, log_at + 8 * i, u64::MAX - i as u64);
        if let Ok(m) = HeapMap::from_image(&img, SEED) {
            attached += 1;
            exercise(&m);
        }
    }
    assert!(attached > 0);
    // A short image is an error (its geometry does not fit), also when only
    // the end of the arena is missing.
    for len in [
        off::HEADER_SIZE - 1,
        off::HEADER_SIZE,
        off::arena(16),
        valid.len() - 64,
        valid.len() - 8,
    ] {
        if let Ok(m) = HeapMap::from_image(&valid[..len], SEED) {
            exercise(&m);
            panic!(
                "a {len}-byte prefix of a {}-byte image attached",
                valid.len()
            );
        }
    }
}
