//! loom models of the concurrency protocols, run with
//! `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_ -- --test-threads=1`
//! (see `scripts/loom.sh`). Each model is small (2–4 slots, 2–3 threads).
//! For each model a second test plants a weakening (`crate::sync::Weaken`:
//! a missing fence or ordering, a recovery that does not redo, a wrong
//! tombstone trim) and passes only if loom reports the model failing.
//! The generation models are in `gens.rs`.

use loom::sync::Arc;
use loom::thread;

use super::lock::WriteLock;
use super::redo::Redo;
use super::table::{LoomTable, ReadErr};
use super::write::Stager;
use crate::sync::{AtomicU64, Ordering, Weaken};

mod gens;

/// The writer's token in the models: each model has one writer at a time
/// (the writer thread, or the recoverer after the writer stopped), as the
/// write lock guarantees in the library.
// SAFETY: every model runs at most one writer of its table at a time (see
// each model); the token is only used by that writer.
static WRITER: WriteLock = unsafe { WriteLock::assume_held() };

/// Runs a loom model and prints how many executions it explored.
/// A weakening planted by `loom_weakenings_are_caught` runs the model in a
/// child process with `SHMKV_LOOM_WEAKEN` set.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    if let Some(w) = std::env::var("SHMKV_LOOM_WEAKEN")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        crate::sync::WEAKEN.store(w, std::sync::atomic::Ordering::Relaxed);
    }
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    RUNS.store(0, std::sync::atomic::Ordering::Relaxed);
    let f = std::sync::Arc::new(f);
    loom::model(move || {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!(
        "loom model {name}: {} executions explored",
        RUNS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Writes `key → value` with the full write protocol (single writer).
fn put(t: &super::table::Table, key: &[u8], hash: u64, value: &[u8]) {
    let mut s = Stager::new(t, &WRITER);
    s.put(t, key, hash, value).unwrap();
    s.commit(t).unwrap();
}

/// Steps 3–5 of the write protocol (stage, plan, redo log), done before the
/// threads start: they write only unpublished memory under the writer lock.
/// Returns the commit word.
fn prepare(t: &super::table::Table, puts: &[(&[u8], u64, &[u8])], removes: &[(&[u8], u64)]) -> u64 {
    let mut s = Stager::new(t, &WRITER);
    for (k, h, v) in puts {
        s.put(t, k, *h, v).unwrap();
    }
    for (k, h) in removes {
        assert!(s.remove(t, k, *h).unwrap());
    }
    s.prepare(t).unwrap().unwrap().0
}

/// Steps 6–8, the part that races with readers: commit store, apply, clear.
fn commit_and_apply(t: &super::table::Table, word: u64) {
    t.header().commit.store(word, Ordering::Release);
    Redo::parse(t, word).unwrap().apply(t, &WRITER, false);
}

/// A table holding X → x1 and Y → y1, and the commit word of a staged
/// batch that sets X → x2 and Y → y2 (models 3 and 6).
fn xy_and_a_batch() -> (Arc<LoomTable>, u64) {
    let lt = Arc::new(LoomTable::new(4, 2048));
    let t = &lt.table;
    let mut s = Stager::new(t, &WRITER);
    s.put(t, b"X", 1, b"x1").unwrap();
    s.put(t, b"Y", 2, b"y1").unwrap();
    s.commit(t).unwrap();
    let word = prepare(t, &[(b"X", 1, b"x2"), (b"Y", 2, b"y2")], &[]);
    (lt, word)
}

/// Model 1: a reader against a writer updating the same key. The reader
/// sees the old or the new value, never a mix of slot words (which would
/// make it follow a wrong offset or length).
#[test]
fn loom_reader_against_update() {
    model("loom_reader_against_update", || {
        let lt = Arc::new(LoomTable::new(4, 2048));
        put(&lt.table, b"k", 7, b"old-value");
        let word = prepare(&lt.table, &[(b"k", 7, b"the new, longer value")], &[]);
        let w = {
            let lt = lt.clone();
            thread::spawn(move || commit_and_apply(&lt.table, word))
        };
        match lt.table.find(b"k", 7) {
            Ok(Some(f)) => {
                let v = lt.table.value_of(&f);
                assert!(
                    v == b"old-value" || v == b"the new, longer value",
                    "torn read: {v:?}"
                );
            }
            Ok(None) => panic!("key vanished"),
            // A bucket odd for too long: RawMap would retry or recover.
            Err(ReadErr::Stalled) => {}
            Err(e) => panic!("{e:?}"),
        }
        w.join().unwrap();
    });
}

/// Applies a prepared write in another thread while this one looks up the
/// present key A (value "a"), which it must not miss.
fn apply_while_reading_a(lt: &Arc<LoomTable>, word: u64) {
    let w = {
        let lt = lt.clone();
        thread::spawn(move || commit_and_apply(&lt.table, word))
    };
    match lt.table.find(b"A", 0) {
        Ok(Some(f)) => assert_eq!(lt.table.value_of(&f), b"a"),
        Ok(None) => panic!("present key missed"),
        Err(ReadErr::Stalled) => {}
        Err(e) => panic!("{e:?}"),
    }
    w.join().unwrap();
}

/// Model 2: removal (tombstone) in the probe chain of a key that stays
/// present: a reader never misses it. The keys share the home slot 0: B at
/// 0, A at 1, D at 2. The writer removes B and D in one write (B's slot must
/// stay a tombstone; D's, followed by an EMPTY slot, may become EMPTY).
#[test]
fn loom_tombstones_never_hide_a_present_key() {
    model("loom_tombstones_never_hide_a_present_key", || {
        let lt = Arc::new(LoomTable::new(4, 2048));
        put(&lt.table, b"B", 0, b"b");
        put(&lt.table, b"A", 0, b"a");
        put(&lt.table, b"D", 0, b"d");
        let word = prepare(&lt.table, &[], &[(b"B", 0), (b"D", 0)]);
        apply_while_reading_a(&lt, word);
        assert!(lt.table.find(b"A", 0).unwrap().is_some());
    });
}

/// Model 2b: removal and insertion in one write, in the probe chain of a key
/// that stays present. B at 0, A at 1, D at 2; the write removes B and D and
/// inserts C, which reuses B's tombstone (slot 0) while D's slot, followed by
/// an EMPTY one, is trimmed. A reader looking up A never misses it.
#[test]
fn loom_insert_into_a_tombstone_never_hides_a_present_key() {
    model(
        "loom_insert_into_a_tombstone_never_hides_a_present_key",
        || {
            let lt = Arc::new(LoomTable::new(4, 2048));
            let t = &lt.table;
            put(t, b"B", 0, b"b");
            put(t, b"A", 0, b"a");
            put(t, b"D", 0, b"d");
            let mut s = Stager::new(t, &WRITER);
            assert!(s.remove(t, b"B", 0).unwrap());
            assert!(s.remove(t, b"D", 0).unwrap());
            s.put(t, b"C", 0, b"c").unwrap();
            let word = s.prepare(t).unwrap().unwrap().0;
            apply_while_reading_a(&lt, word);
            let t = &lt.table;
            let c = t.find(b"C", 0).unwrap().expect("C inserted");
            assert_eq!(c.slot, 0, "C reuses B's tombstone");
            assert!(t.find(b"B", 0).unwrap().is_none() && t.find(b"D", 0).unwrap().is_none());
        },
    );
}

/// Reads X and Y in one view; `None` if the view could not start or was
/// invalidated.
/// As `RawMap::view` does: the view reads the after state of a committed
/// write that is being applied (through its log).
fn view_xy(t: &super::table::Table) -> Option<(Vec<u8>, Vec<u8>)> {
    let state = t.read_state(None).ok()?;
    let find = |k: &[u8], h| match state.overlay.as_deref() {
        Some(o) => o.find(t, k, h),
        None => t.find(k, h),
    };
    let x = find(b"X", 1).ok()?.map(|f| t.value_of(&f).to_vec())?;
    let y = find(b"Y", 2).ok()?.map(|f| t.value_of(&f).to_vec())?;
    t.view_validate(state.seq).then_some((x, y))
}

/// A plain get as `RawMap::get_ref` does it: if the root's `applying` word
/// (here a model atomic) is set, read the after state through the log.
fn get_committed(
    t: &super::table::Table,
    applying: &AtomicU64,
    key: &[u8],
    hash: u64,
) -> Option<Vec<u8>> {
    let found =
        if applying.load(Ordering::Acquire) == 0 || crate::sync::weakened(Weaken::ApplyingWord) {
            t.find(key, hash).ok()?
        } else {
            let state = t.read_state(None).ok()?;
            match state.overlay.as_deref() {
                Some(o) => o.find(t, key, hash).ok()?,
                None => t.find(key, hash).ok()?,
            }
        };
    found.map(|f| t.value_of(&f).to_vec())
}

/// Model 6: a batch (two keys) against a reader doing two plain gets: once
/// the first get saw the batch, the second sees it too (no mix), because
/// the writer sets the root's `applying` word before the commit store and
/// clears it after the apply.
#[test]
fn loom_plain_gets_see_a_batch_whole() {
    model("loom_plain_gets_see_a_batch_whole", || {
        let (lt, word) = xy_and_a_batch();
        let applying = Arc::new(AtomicU64::new(0));
        let w = {
            let (lt, applying) = (lt.clone(), applying.clone());
            thread::spawn(move || {
                applying.store(word, Ordering::Release);
                commit_and_apply(&lt.table, word);
                applying.store(0, Ordering::Release);
            })
        };
        let x = get_committed(&lt.table, &applying, b"X", 1);
        let y = get_committed(&lt.table, &applying, b"Y", 2);
        if let (Some(x), Some(y)) = (x, y) {
            assert!(
                !(x == b"x2" && y == b"y1"),
                "get saw half a batch: X new, then Y old"
            );
        }
        w.join().unwrap();
    });
}

/// Model 3: a batch (two keys in one commit) against a `view` reader: all
/// or nothing.
#[test]
fn loom_view_sees_all_or_none_of_a_batch() {
    model("loom_view_sees_all_or_none_of_a_batch", || {
        let (lt, word) = xy_and_a_batch();
        let w = {
            let lt = lt.clone();
            thread::spawn(move || commit_and_apply(&lt.table, word))
        };
        if let Some((x, y)) = view_xy(&lt.table) {
            assert!(
                (x == b"x1" && y == b"y1") || (x == b"x2" && y == b"y2"),
                "view saw half a batch: {x:?} {y:?}"
            );
        }
        w.join().unwrap();
    });
}

/// Model 5: recovery. A writer stops after committing a two-key batch and
/// applying only the first slot (the second left odd); a second writer runs
/// recovery while a reader takes a view. The reader sees the old or the new
/// pair, never a mix; after recovery the map holds the new pair and every
/// stamp is even.
#[test]
fn loom_recovery_after_a_writer_stops() {
    model("loom_recovery_after_a_writer_stops", || {
        let lt = Arc::new(LoomTable::new(4, 4096));
        let t = &lt.table;
        {
            let mut s = Stager::new(t, &WRITER);
            s.put(t, b"X", 1, b"x1").unwrap();
            s.put(t, b"Y", 2, b"y1").unwrap();
            s.commit(t).unwrap();
        }
        // The first writer: commit, apply one slot, start the second, stop.
        let mut s = Stager::new(t, &WRITER);
        s.put(t, b"X", 1, b"x2").unwrap();
        s.put(t, b"Y", 2, b"y2").unwrap();
        let word = s.prepare(t).unwrap().unwrap().0;
        t.header().commit.store(word, Ordering::Release);
        let redo = Redo::parse(t, word).unwrap();
        let h = t.header();
        h.view_seq
            .store(h.view_seq.load(Ordering::Relaxed) | 1, Ordering::Relaxed);
        let (i0, img0) = &redo.entries[0];
        t.slot(*i0)
            .write(&WRITER, img0.hash, img0.rec, img0.lens, || {});
        let (i1, _) = &redo.entries[1];
        let seq = &t.slot(*i1).seq;
        seq.store(seq.load(Ordering::Relaxed) | 1, Ordering::Relaxed);

        let recoverer = {
            let lt = lt.clone();
            thread::spawn(move || {
                lt.table.recover(&WRITER).unwrap();
            })
        };
        if let Some((x, y)) = view_xy(&lt.table) {
            assert!(
                x == b"x2" && y == b"y2",
                "view during recovery saw {x:?} {y:?}"
            );
        }
        // Slot reads race with the recovery's rewrites: the slot the dead
        // writer left odd reads as stalled or, once recovered, as y2.
        let t = &lt.table;
        for (k, h, v) in [(&b"X"[..], 1, &b"x2"[..]), (b"Y", 2, b"y2")] {
            if let Ok(found) = t.find(k, h) {
                let got = found.map(|f| t.value_of(&f).to_vec());
                assert_eq!(got.as_deref(), Some(v), "slot read during recovery");
            }
        }
        recoverer.join().unwrap();
        let t = &lt.table;
        let x = t.find(b"X", 1).unwrap().map(|f| t.value_of(&f).to_vec());
        let y = t.find(b"Y", 2).unwrap().map(|f| t.value_of(&f).to_vec());
        assert_eq!(
            (x.as_deref(), y.as_deref()),
            (Some(&b"x2"[..]), Some(&b"y2"[..]))
        );
        for i in 0..t.capacity() {
            assert_eq!(t.slot(i).seq.load(Ordering::Relaxed) & 1, 0);
        }
        assert_eq!(h.commit.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn loom_weakenings_are_caught() {
    if std::env::var("SHMKV_LOOM_WEAKEN").is_ok() {
        return;
    }
    let cases = [
        (
            Weaken::SeqlockReadFence,
            "loom_reader_against_update",
            "model 1, reader fence",
        ),
        (
            Weaken::SeqlockWriteFence,
            "loom_reader_against_update",
            "model 1, writer fence",
        ),
        (
            Weaken::TombstoneTrim,
            "loom_tombstones_never_hide_a_present_key",
            "model 2, tombstone trim",
        ),
        (
            Weaken::ViewSeq,
            "loom_view_sees_all_or_none_of_a_batch",
            "model 3, view sequence",
        ),
        (
            Weaken::PinFence,
            "gens::loom_generation_switch_against_a_reader",
            "model 4, pin fence",
        ),
        (
            Weaken::PinDerefFirst,
            "gens::loom_generation_switch_against_a_reader",
            "model 4, generation read before the pin is published",
        ),
        (
            Weaken::PinCount,
            "gens::loom_generation_switch_against_a_reader",
            "model 4, nested pin not counted",
        ),
        (
            Weaken::PinDerefFirst,
            "gens::loom_generation_switch_over_the_heap_provider",
            "model 4c (real Generation over the heap provider), generation read before the pin is published",
        ),
        (
            Weaken::PinFence,
            "gens::loom_generation_switch_over_the_heap_provider",
            "model 4c (real Generation over the heap provider), pin fence",
        ),
        (
            Weaken::ReclaimAgain,
            "gens::loom_a_reclaim_request_is_not_lost",
            "model 4b, reclaim request dropped while the lock is held",
        ),
        (
            Weaken::Recovery,
            "loom_recovery_after_a_writer_stops",
            "model 5, recovery",
        ),
        (
            Weaken::ApplyingWord,
            "loom_plain_gets_see_a_batch_whole",
            "model 6, applying word",
        ),
    ];
    let mut missed = Vec::new();
    for (w, test, what) in cases {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("raw::loom_models::{test}"),
                "--exact",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("SHMKV_LOOM_WEAKEN", (w as u8).to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Caught: the model failed on one of its own assertions.
        let assertion = stderr
            .lines()
            .find(|l| l.contains("panicked at src/raw/loom_models/"))
            .map(|l| l.to_string());
        let why = stderr
            .lines()
            .skip_while(|l| !l.contains("panicked at src/raw/loom_models/"))
            .nth(1)
            .unwrap_or("")
            .to_string();
        let caught = !out.status.success() && assertion.is_some();
        eprintln!(
            "weakening {w:?} ({what}): {}",
            if caught {
                format!("caught by loom: {why}")
            } else {
                "NOT caught".to_string()
            }
        );
        if !caught {
            missed.push(what);
        }
    }
    assert!(
        missed.is_empty(),
        "weakenings loom did not catch: {missed:?}"
    );
}
