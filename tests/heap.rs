//! The whole engine over heap memory (`HeapKernel`): no SysV object, no
//! system call, so these tests also run under Miri (`scripts/miri.sh`),
//! which checks every access the engine makes through raw pointers into
//! the segments: bounds, alignment, provenance, use after free, leaks.
//! What `raw::provider::tests` covers (growth, a second handle, held refs
//! and reclamation, destroy, `Full`, the lock) is not repeated here.
//!
//! - `ops_match_a_model`: inserts, removes, gets and batches (committed and
//!   aborted) against `HashMap`, with `verify` after every step, in a map
//!   whose `max_size` makes `Full` happen.
//! - `recovery_replays_a_committed_log`: a writer that died after its
//!   commit word was stored (or half-way through applying), rebuilt from
//!   the data segment's images before and after one batch and written
//!   into the segment with `scribble`; a new handle must read the after
//!   state and, once it recovers, hold exactly the after-image's entries.
//! - `recovery_ignores_an_uncommitted_log`: the same without the commit
//!   word (also with the root's `applying` word set: a death between the
//!   two stores).
//! - `damaged_images_give_errors_not_crashes`: words of a valid data
//!   segment overwritten with extreme values, then every operation through
//!   a new handle; a segment shorter than its header says is an error.
//!
//! Images are read and written with no handle open (`HeapKernel::read` and
//! `scribble` then copy plainly, which Miri supports).

use std::collections::HashMap;

use shmkv::__private::{data_offsets as off, root_offsets, HeapKernel};
use shmkv::{Error, Options, RawMap};

/// Miri interprets every step: fewer of them there.
const STEPS: usize = if cfg!(miri) { 80 } else { 3000 };

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

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn entries(m: &RawMap) -> shmkv::Result<Entries> {
    let mut v: Entries = m
        .entries()?
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    v.sort();
    Ok(v)
}

fn assert_matches(map: &RawMap, model: &HashMap<Vec<u8>, Vec<u8>>) {
    assert_eq!(map.len(), model.len());
    let report = map.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    let mut want: Entries = model.clone().into_iter().collect();
    want.sort();
    assert_eq!(entries(map).unwrap(), want);
}

#[test]
fn ops_match_a_model() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let k = HeapKernel::new();
    let opts = Options::new()
        .capacity(4)
        .arena_size(4096u64)
        .max_size(8u64 << 10);
    let map = k.create("model", &opts).unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut full = 0;
    for step in 0..STEPS {
        match rng.below(8) {
            0..=2 => {
                let (k, len) = (rng.below(24), rng.below(700));
                let v = value(k, len, step);
                match map.write(|b| b.insert(&key(k), &v)) {
                    Ok(()) => {
                        model.insert(key(k), v);
                    }
                    Err(Error::Full { .. }) => full += 1,
                    Err(e) => panic!("insert: {e}"),
                }
            }
            3 => {
                let k = rng.below(24);
                let removed = map.write(|b| b.remove(&key(k))).unwrap();
                assert_eq!(removed, model.remove(&key(k)).is_some());
            }
            4 | 5 => {
                let k = rng.below(24);
                assert_eq!(map.get(&key(k)).unwrap(), model.get(&key(k)).cloned());
            }
            _ => {
                let abort = rng.below(4) == 0;
                let ops: Vec<(bool, u64, u64)> = (0..rng.below(6))
                    .map(|_| (rng.below(3) != 0, rng.below(24), rng.below(400)))
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
                        assert_eq!(b.get(&key(k))?, next.get(&key(k)).map(|v| &v[..]));
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
    assert!(full > 0, "the map never filled up: the test lost its edge");
    map.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}

/// The options of the fixture map: one generation holds everything the
/// tests write (no growth between the images).
fn fixture_opts() -> Options {
    Options::new().capacity(12).arena_size(8192u64)
}

/// A kernel with a map "m" that has entries, removals (tombstones) and
/// overwritten values (garbage in the arena), no handle open; and its data
/// segment's id.
fn populated() -> (HeapKernel, i32) {
    let k = HeapKernel::new();
    let m = k.create("m", &fixture_opts()).unwrap();
    m.write(|b| {
        for k in 0u8..10 {
            b.insert(&[k; 3], &[k; 20])?;
        }
        b.remove(&[3; 3])?;
        Ok(())
    })
    .unwrap();
    m.insert(&[4; 3], &[9; 40]).unwrap();
    m.remove(&[5; 3]).unwrap();
    let id = m.stats().unwrap().data_shmid;
    (k, id)
}

/// The root segment of the kernel's only map.
fn root_id(k: &HeapKernel, data: i32) -> i32 {
    let ids: Vec<i32> = k.segment_ids().into_iter().filter(|&i| i != data).collect();
    assert_eq!(ids.len(), 1, "a root and one data segment");
    ids[0]
}

/// One batch on a populated map, seen from its data segment.
struct Fixture {
    k: HeapKernel,
    data: i32,
    root: i32,
    /// The data segment before the batch.
    before: Vec<u8>,
    /// After it (in the same generation).
    after: Vec<u8>,
    /// The batch's commit word (`(log << 1) | 1`, the log right after the
    /// records it staged).
    commit: u64,
    /// The entries before and after the batch.
    want_before: Entries,
    want_after: Entries,
}

fn fixture() -> Fixture {
    let (k, data) = populated();
    let root = root_id(&k, data);
    let before = k.read(data);
    let m = k.open("m", &Options::new()).unwrap();
    let want_before = entries(&m).unwrap();
    m.write(|b| {
        b.insert(&[1; 3], &[0xaa; 50])?;
        b.remove(&[2; 3])?;
        b.insert(b"fresh", &[0xbb; 10])?;
        Ok(())
    })
    .unwrap();
    assert_eq!(m.stats().unwrap().data_shmid, data, "no growth");
    let want_after = entries(&m).unwrap();
    drop(m);
    let after = k.read(data);
    let log = word(&after, off::ARENA_USED).next_multiple_of(off::ARENA_ALIGN);
    Fixture {
        k,
        data,
        root,
        before,
        after,
        commit: (log << 1) | 1,
        want_before,
        want_after,
    }
}

/// The before-image with the after-image's arena (the staged records and
/// the redo log, above the before-image's `arena_used`): what a writer
/// leaves when it dies after writing its log.
fn died_after_logging(f: &Fixture) -> Vec<u8> {
    let arena = off::arena(word(&f.before, off::CAPACITY));
    let mut img = f.before.clone();
    img[arena..].copy_from_slice(&f.after[arena..]);
    img
}

/// Writes a dead writer's state: the data segment's image and the root's
/// `applying` word.
fn plant(f: &Fixture, img: &[u8], applying: u64) {
    assert_eq!(f.k.scribble(f.data, 0, img), img.len());
    f.k.scribble(f.root, root_offsets::APPLYING, &applying.to_le_bytes());
}

#[test]
fn recovery_replays_a_committed_log() {
    let f = fixture();
    assert_ne!(f.want_before, f.want_after);
    let slots = word(&f.before, off::CAPACITY) as usize;
    // Slots 0..applied already carry the write (a crash mid-apply, view
    // sequence odd); 0 is a crash right after the commit word was stored.
    let applied_cases = if cfg!(miri) {
        vec![0, slots / 2]
    } else {
        vec![0, 1, slots / 2, slots - 1, slots]
    };
    for applied in applied_cases {
        let mut img = died_after_logging(&f);
        put_word(&mut img, off::COMMIT, f.commit);
        if applied > 0 {
            let s = off::SLOTS..off::SLOTS + applied * off::SLOT_SIZE;
            img[s.clone()].copy_from_slice(&f.after[s]);
            put_word(&mut img, off::VIEW_SEQ, word(&f.after, off::VIEW_SEQ) - 1);
        }
        plant(&f, &img, f.commit);
        let m = f.k.open("m", &Options::new()).unwrap();
        // Before recovery: reads see the committed write (through the log).
        assert_eq!(entries(&m).unwrap(), f.want_after, "{applied} applied");
        // `verify` on a writable handle finishes the write first.
        let report = m.verify().unwrap();
        assert!(report.is_ok(), "{applied} applied: {report:?}");
        assert_eq!(entries(&m).unwrap(), f.want_after, "{applied} applied");
        drop(m);
        let img = f.k.read(f.data);
        assert_eq!(word(&img, off::COMMIT), 0, "log not closed");
        let root = f.k.read(f.root);
        assert_eq!(word(&root, root_offsets::APPLYING), 0);
        // Recovery is done: a second handle finds nothing to redo and the
        // same entries (the slots, no longer the log).
        let m = f.k.open("m", &Options::new()).unwrap();
        assert_eq!(entries(&m).unwrap(), f.want_after, "{applied} applied");
        m.insert(b"next", &[7; 30]).unwrap();
        assert!(m.verify().unwrap().is_ok());
        drop(m);
    }
    assert!(f.k.destroy_by_name("m", &Options::new()).unwrap());
    assert_eq!(f.k.objects(), (0, 0));
}

#[test]
fn recovery_ignores_an_uncommitted_log() {
    let f = fixture();
    // Died after logging (root's `applying` clear), or after setting the
    // root's `applying` word but before the commit word (BeforeCommit).
    for applying in [0, f.commit] {
        plant(&f, &died_after_logging(&f), applying);
        let m = f.k.open("m", &Options::new()).unwrap();
        assert_eq!(entries(&m).unwrap(), f.want_before, "applying {applying}");
        // The next write stages over the dead one's records.
        m.insert(b"next", &[7; 300]).unwrap();
        assert!(m.verify().unwrap().is_ok());
        assert_eq!(m.get(b"next").unwrap(), Some(vec![7; 300]));
        assert_eq!(m.get(b"fresh").unwrap(), None);
        assert_eq!(m.len(), f.want_before.len() + 1);
        drop(m);
    }
    assert!(f.k.destroy_by_name("m", &Options::new()).unwrap());
    assert_eq!(f.k.objects(), (0, 0));
}

/// Every operation on a (possibly damaged) map; results are ignored, only
/// a crash, a panic or (under Miri) undefined behaviour fails.
fn exercise(m: &RawMap) {
    let _ = m.len();
    let _ = m.entries();
    let _ = m.verify();
    for k in 0u8..12 {
        let _ = m.get(&[k; 3]);
        let _ = m.get_ref(&[k; 3]).map(|r| r.map(|v| v.len()));
    }
    let _ = m.stats();
    let _ = m.insert(b"new", b"value");
    let _ = m.insert(b"big", &[0x22; 2000]);
    let _ = m.write(|b| {
        b.insert(&[2; 3], &[0xee; 100])?;
        b.remove(&[6; 3])?;
        b.remove(b"new")
    });
    let _ = m.entries();
    let _ = m.verify();
    if m.compact().is_ok() {
        let _ = m.entries();
    }
}

/// Writes `img` into a fresh copy of the fixture's data segment (a new
/// kernel each time: the damage of one image must not leak into the
/// next), opens the map and exercises it. Returns whether it opened.
fn open_damaged(img: impl FnOnce(&Fixture) -> Vec<u8>) -> bool {
    let f = fixture();
    let img = img(&f);
    plant(&f, &img, 0);
    let opened = match f.k.open("m", &Options::new()) {
        Ok(m) => {
            exercise(&m);
            true
        }
        Err(_) => false,
    };
    let _ = f.k.destroy_by_name("m", &Options::new());
    opened
}

/// Recomputes the counters' check word, so that damaged counters reach
/// the range checks.
fn reseal(img: &mut [u8]) {
    let sealed = off::counters_check(
        word(img, off::ARENA_USED),
        word(img, off::LIVE),
        word(img, off::TOMBSTONES),
        word(img, off::GARBAGE),
    );
    put_word(img, off::COUNTERS_CHECK, sealed);
}

#[test]
fn damaged_images_give_errors_not_crashes() {
    let probe = fixture();
    let words = probe.before.len() / 8;
    let arena = off::arena(word(&probe.before, off::CAPACITY));
    drop(probe);
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    // Every header word up to `owner`, the first slots' words and the
    // first record's, each with every extreme value; outside Miri also the
    // reserved header words and random words. Under Miri (which spends
    // seconds per damaged map), one extreme value per word, in turn.
    let extremes = [u64::MAX, 0, 1, u64::MAX - 7, 1 << 32, 0x8000_0000_0000_0000];
    let header = if cfg!(miri) {
        off::OWNER + 8
    } else {
        off::HEADER_SIZE
    };
    let mut at: Vec<usize> = (0..header / 8).collect();
    at.extend((off::SLOTS / 8..).take(if cfg!(miri) { 2 } else { 16 }));
    at.extend((arena / 8..).take(if cfg!(miri) { 2 } else { 8 }));
    if !cfg!(miri) {
        at.extend((0..100).map(|_| rng.below(words as u64) as usize));
    }
    let mut patches = Vec::new();
    for (i, &w) in at.iter().enumerate() {
        if cfg!(miri) {
            patches.push((w, extremes[i % 3]));
        } else {
            patches.extend(extremes.iter().map(|&v| (w, v)));
        }
    }
    let mut opened = 0;
    for (w, v) in patches {
        opened += usize::from(open_damaged(|f| {
            let mut img = f.before.clone();
            put_word(&mut img, w * 8, v);
            reseal(&mut img);
            img
        }));
    }
    // A committed log with a damaged word: parse must reject or apply it.
    for i in 0..if cfg!(miri) { 3 } else { 24 } {
        opened += usize::from(open_damaged(|f| {
            let mut img = died_after_logging(f);
            put_word(&mut img, off::COMMIT, f.commit);
            let log_at = arena + (f.commit >> 1) as usize;
            put_word(&mut img, log_at + 8 * i, u64::MAX - i as u64);
            img
        }));
    }
    assert!(opened > 0, "no damaged map opened: the test lost its edge");
    // A segment shorter than its (consistent) header says: a longer arena,
    // or twice the slots, with `segment_size` and the arena's offset to
    // match, so that only the check against the mapping's length stops it.
    // An error, not a read past the segment's end.
    for (cap_factor, more_arena) in [(2, 0), (1, 4096), (1, 16)] {
        let f = fixture();
        let mut img = f.before.clone();
        let cap = word(&img, off::CAPACITY) * cap_factor;
        let arena_size = word(&img, off::ARENA_SIZE) + more_arena;
        let arena_at = off::arena(cap) as u64;
        put_word(&mut img, off::CAPACITY, cap);
        put_word(&mut img, off::ARENA_SIZE, arena_size);
        put_word(&mut img, off::ARENA_OFFSET, arena_at);
        put_word(&mut img, off::SEGMENT_SIZE, arena_at + arena_size);
        plant(&f, &img, 0);
        match f.k.open("m", &Options::new()) {
            // Used before failing: under Miri, the reads past the end.
            Ok(m) => {
                exercise(&m);
                panic!("{cap_factor}x slots, +{more_arena} arena: opened");
            }
            Err(e) => assert!(
                matches!(e, Error::Corrupted(_)),
                "{cap_factor}x slots, +{more_arena} arena: {e}"
            ),
        }
        assert!(f.k.destroy_by_name("m", &Options::new()).unwrap());
    }
}
