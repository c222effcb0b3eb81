//! Adversarial review of today's changes (two-word pin, heap provider,
//! read-only sleepers, read-only view back-off, replayed removes), over the
//! heap provider: several handles on one `HeapKernel` stand for several
//! processes. No SysV objects are made here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmkv::__private::HeapKernel;
use shmkv::{Error, Options};

fn tiny() -> Options {
    Options::new().capacity(1).arena_size(4096u64)
}

/// The value of key `k` at write `n`: its bytes name both, so a torn or
/// freed value does not pass the check.
fn val(k: u8, n: u64, len: usize) -> Vec<u8> {
    let mut v = vec![k; len.max(9)];
    v[1..9].copy_from_slice(&n.to_le_bytes());
    v
}

fn check(k: u8, v: &[u8]) -> u64 {
    assert!(v.len() >= 9, "value too short: {}", v.len());
    assert_eq!(v[0], k, "value of key {k} has key byte {}", v[0]);
    assert!(v[9..].iter().all(|&b| b == k), "value of key {k} torn");
    u64::from_le_bytes(v[1..9].try_into().unwrap())
}

/// Readers on one handle hold `Ref`s (plain, cloned, from views) across
/// generation switches that another handle makes by growing and compacting;
/// every held value stays intact (a freed heap region is reused by the
/// next generation's allocation, so a premature reclaim shows up as a
/// changed value), and everything is freed at the end.
#[test]
fn review_refs_survive_concurrent_switches() {
    let k = HeapKernel::new();
    let w = k.create("m", &tiny()).unwrap();
    let r = k.open("m", &Options::new()).unwrap();
    for i in 0..8u8 {
        w.insert(&[i], &val(i, 0, 40)).unwrap();
    }
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..2u8 {
            let (r, stop, reads) = (&r, &stop, &reads);
            s.spawn(move || {
                let mut held = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = ((n + u64::from(t)) % 8) as u8;
                    if let Some(v) = r.get_ref(&[key]).unwrap() {
                        check(key, &v);
                        if n % 3 == 0 {
                            held.push((key, v.clone()));
                        }
                        held.push((key, v));
                    }
                    if n % 7 == 0 {
                        let es = r.entries().unwrap();
                        for (kk, vv) in &es {
                            check(kk[0], vv);
                        }
                        if let Some((kk, vv)) = es.into_iter().next() {
                            held.push((kk[0], vv));
                        }
                    }
                    if n % 11 == 0 {
                        r.view(|v| {
                            let a = v.get(&[key])?;
                            if let Some(a) = &a {
                                check(key, a);
                            }
                            Ok(())
                        })
                        .unwrap();
                    }
                    for (kk, vv) in &held {
                        check(*kk, vv);
                    }
                    if held.len() > 40 {
                        // Drop from the front (oldest generations first)
                        // and from the middle.
                        held.drain(..10);
                        held.remove(held.len() / 2);
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                for (kk, vv) in &held {
                    check(*kk, vv);
                }
            });
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(4) {
            n += 1;
            let key = (n % 8) as u8;
            w.insert(&[key], &val(key, n, 40 + (n % 300) as usize))
                .unwrap();
            if n % 50 == 0 {
                w.compact().unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(reads.load(Ordering::Relaxed) > 100);
    // Everything released: one more read reclaims what is left.
    for i in 0..8u8 {
        check(i, &r.get(&[i]).unwrap().unwrap());
    }
    assert_eq!(r.stats().unwrap().mapped_generations, 1);
    drop(r);
    w.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
    assert_eq!(k.used_bytes(), 0);
}

/// A batch removes a key, moves to a new generation, re-inserts it, moves
/// again, removes it again and moves a third time (commit); then again
/// with the last operation an insert. The result must match a model, the
/// counters must verify.
#[test]
fn review_remove_move_reinsert_move_remove() {
    let k = HeapKernel::new();
    let m = k.create("m", &tiny()).unwrap();
    m.insert(b"victim", &val(1, 1, 100)).unwrap();
    m.insert(b"other", &val(2, 1, 100)).unwrap();
    // Fills the arena with garbage: each call forces a move within a batch.
    let churn = |b: &mut shmkv::RawBatch<'_>, tag: u8| -> shmkv::Result<()> {
        for i in 0..12 {
            b.insert(&[b'c', tag], &val(tag, i, 700))?;
        }
        Ok(())
    };
    let gen0 = m.stats().unwrap().generation;
    m.write(|b| {
        assert!(b.remove(b"victim")?);
        churn(b, 10)?;
        assert_eq!(b.get(b"victim")?, None);
        b.insert(b"victim", &val(1, 2, 50))?;
        churn(b, 11)?;
        assert_eq!(b.get(b"victim")?.map(<[u8]>::to_vec), Some(val(1, 2, 50)));
        assert!(b.remove(b"victim")?);
        assert!(!b.remove(b"victim")?, "removed twice");
        churn(b, 12)?;
        assert_eq!(b.get(b"victim")?, None);
        // A key that the batch inserts and removes, never in the base.
        b.insert(b"ghost", &val(3, 1, 60))?;
        assert!(b.remove(b"ghost")?);
        churn(b, 13)?;
        Ok(())
    })
    .unwrap();
    assert!(m.stats().unwrap().generation > gen0, "moved");
    assert_eq!(m.get(b"victim").unwrap(), None);
    assert_eq!(m.get(b"ghost").unwrap(), None);
    assert_eq!(m.get(b"other").unwrap(), Some(val(2, 1, 100)));
    // other + 4 churn keys
    assert_eq!(m.len(), 5);
    let rep = m.verify().unwrap();
    assert!(rep.is_ok(), "{rep:?}");
    // Now in place (no move): the stats must agree with the slots.
    m.write(|b| {
        b.insert(b"victim", &val(1, 3, 10))?;
        Ok(())
    })
    .unwrap();
    assert_eq!(m.len(), 6);
    assert!(m.verify().unwrap().is_ok());
    m.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}

/// A batch whose only effect, after two moves, is the removal of a key the
/// batch itself inserted (the replay stages removes of absent keys only):
/// the map is unchanged apart from its generation; version and counters
/// stay sane.
#[test]
fn review_batch_of_only_absent_removes_after_moves() {
    let k = HeapKernel::new();
    let m = k.create("m", &tiny()).unwrap();
    m.insert(b"keep", &val(1, 1, 20)).unwrap();
    let v0 = m.version();
    m.write(|b| {
        for i in 0..30u64 {
            b.insert(b"tmp", &val(9, i, 900))?;
        }
        assert!(b.remove(b"tmp")?);
        Ok(())
    })
    .unwrap();
    assert_eq!(m.get(b"tmp").unwrap(), None);
    assert_eq!(m.len(), 1);
    assert!(m.version() > v0);
    let st = m.stats().unwrap();
    assert_eq!((st.live, st.tombstones), (1, 0), "{st:?}");
    assert!(m.verify().unwrap().is_ok());
    m.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}

/// `HeapKernel::with_limit`: a move that cannot get memory fails with
/// `Full`, the map is unchanged, and no segment is left behind.
#[test]
fn review_move_failing_for_memory_leaves_nothing() {
    let k = HeapKernel::with_limit(64 * 1024);
    let m = k.create("m", &tiny()).unwrap();
    m.insert(b"a", &val(1, 1, 100)).unwrap();
    let before = (k.objects(), k.used_bytes());
    let e = m
        .write(|b| {
            for i in 0..200u64 {
                b.insert(&i.to_le_bytes(), &val(2, i, 900))?;
            }
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(e, Error::Full { .. }), "{e:?}");
    assert_eq!((k.objects(), k.used_bytes()), before);
    assert_eq!(m.len(), 1);
    assert_eq!(m.get(b"a").unwrap(), Some(val(1, 1, 100)));
    assert!(m.verify().unwrap().is_ok());
    m.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}

/// A read-only handle waits for a change (registering through a second,
/// writable mapping of the root); a destroy wakes it with `NotFound`, and
/// after it is dropped every object is gone (the second mapping does not
/// keep the root alive).
#[test]
fn review_read_only_sleeper_and_destroy() {
    let k = HeapKernel::new();
    let w = k.create("m", &tiny()).unwrap();
    let ro = k.open("m", &Options::new().read_only(true)).unwrap();
    let v = ro.version();
    std::thread::scope(|s| {
        let h = s.spawn(|| ro.wait_for_change(v, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        w.insert(b"x", b"y").unwrap();
        assert!(h.join().unwrap().unwrap().is_some());
    });
    let v = ro.version();
    std::thread::scope(|s| {
        let h = s.spawn(|| ro.wait_for_change(v, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        w.destroy().unwrap();
        let r = h.join().unwrap();
        assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    });
    drop(ro);
    assert_eq!(k.objects(), (0, 0));
    assert_eq!(k.used_bytes(), 0);
}

/// A read-only view under a writer that commits without pause: it returns
/// (a result or `Busy`) within about the lock timeout, never hangs.
#[test]
fn review_read_only_view_under_constant_writes_returns() {
    let k = HeapKernel::new();
    let w = k.create("m", &tiny()).unwrap();
    let ro = k
        .open(
            "m",
            &Options::new()
                .read_only(true)
                .lock_timeout(Duration::from_millis(300)),
        )
        .unwrap();
    for i in 0..20u8 {
        w.insert(&[i], &val(i, 0, 30)).unwrap();
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = (n % 20) as u8;
                w.insert(&[key], &val(key, n, 30)).unwrap();
            }
        });
        for _ in 0..5 {
            let t = Instant::now();
            let r = ro.view(|v| {
                let mut sum = 0;
                for i in 0..20u8 {
                    if let Some(x) = v.get(&[i])? {
                        check(i, &x);
                        sum += 1;
                    }
                    // Slow closure: a write lands in between.
                    std::thread::sleep(Duration::from_micros(50));
                }
                Ok(sum)
            });
            assert!(matches!(r, Ok(20) | Err(Error::Busy { .. })), "{r:?}");
            assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
    });
    drop(ro);
    w.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}

/// Handles ("processes") that open_or_create, write, read and destroy the
/// same map concurrently. Acceptable outcomes are `NotFound` (the map was
/// destroyed under us) and `AlreadyExists`; never `Corrupted` or another
/// error, and nothing is left once every handle is gone.
#[test]
fn review_lifecycle_races_on_one_name() {
    let k = HeapKernel::new();
    let opts = tiny().lock_timeout(Duration::from_secs(2));
    let errors = std::sync::Mutex::new(std::collections::BTreeMap::<String, u64>::new());
    let note = |e: &Error| {
        let name = format!("{e:?}");
        let short = name.split(['{', '(', ' ']).next().unwrap().to_string();
        let key = if matches!(e, Error::NotFound { .. } | Error::AlreadyExists { .. }) {
            short
        } else {
            name
        };
        *errors.lock().unwrap().entry(key).or_default() += 1;
    };
    let start = Instant::now();
    let (opened, ooc_notfound, ooc_lock_gone) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..3u8 {
            let (k, opts, note) = (&k, &opts, &note);
            let (opened, ooc_notfound, ooc_lock_gone) = (&opened, &ooc_notfound, &ooc_lock_gone);
            s.spawn(move || {
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(3) {
                    n += 1;
                    let m = match k.open_or_create("m", opts) {
                        Ok(m) => m,
                        Err(e) => {
                            if let Error::NotFound { name } = &e {
                                ooc_notfound.fetch_add(1, Ordering::Relaxed);
                                if name != "m" {
                                    ooc_lock_gone.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            note(&e);
                            continue;
                        }
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    for i in 0..5u8 {
                        if let Err(e) = m.insert(&[t, i], &val(i, n, 50)) {
                            note(&e);
                        }
                        match m.get(&[t, i]) {
                            Ok(Some(v)) => {
                                check(i, &v);
                            }
                            Ok(None) => {}
                            Err(e) => note(&e),
                        }
                    }
                    if n % 3 == u64::from(t) {
                        if let Err(e) = m.destroy() {
                            note(&e);
                        }
                    }
                }
            });
        }
    });
    let _ = k.destroy_by_name("m", &opts);
    let errors = errors.into_inner().unwrap();
    eprintln!(
        "{errors:?} opened {opened:?}, open_or_create NotFound {ooc_notfound:?} \
         (of which a removed lock: {ooc_lock_gone:?})"
    );
    assert!(
        errors
            .keys()
            .all(|k| k == "NotFound" || k == "AlreadyExists"),
        "{errors:#?}"
    );
    assert_eq!(k.objects(), (0, 0));
    assert_eq!(k.used_bytes(), 0);
}

/// `open_or_create` that waits for the lock while another handle destroys
/// the map: the map no longer exists, so it should be created (or at worst
/// a `NotFound` naming the map); it returns `NotFound { name: "(destroyed
/// while open)" }` instead, the lock provider's placeholder (the error of
/// `LockSet::acquire` is passed on unmapped by `Engine::connect`).
#[test]
fn review_open_or_create_waiting_on_a_destroyed_lock() {
    let k = HeapKernel::new();
    let opts = tiny().lock_timeout(Duration::from_secs(5));
    let mut seen = Vec::new();
    for _ in 0..10 {
        let a = k.open_or_create("m", &opts).unwrap();
        let c = k.open("m", &opts).unwrap();
        let r = std::thread::scope(|s| {
            // `a` holds the lock for a while; `c` queues to destroy, then
            // a third handle queues in open_or_create.
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let a = &a;
            let hold = s.spawn(move || {
                a.write(|_| {
                    held_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                    Ok(())
                })
            });
            // `a` holds the lock before the destroyer queues.
            held_rx.recv().unwrap();
            let d = s.spawn(move || c.destroy());
            std::thread::sleep(Duration::from_millis(20));
            let r = k.open_or_create("m", &opts).map(drop);
            hold.join().unwrap().unwrap();
            d.join().unwrap().unwrap();
            r
        });
        drop(a);
        seen.push(format!("{r:?}"));
        let _ = k.destroy_by_name("m", &opts);
    }
    assert_eq!(k.objects(), (0, 0));
    assert!(seen.iter().all(|r| r == "Ok(())"), "{seen:#?}");
}

/// The read path writes no shared memory (house rule; under SysV a
/// read-only handle's mapping is read-only, but `HeapKernel::attach`
/// ignores `read_only`, so over the heap only a byte comparison can tell):
/// every read operation of a read-only and of a read-write handle leaves
/// every segment's bytes as they were.
#[test]
fn review_reads_write_no_shared_memory() {
    let k = HeapKernel::new();
    let w = k.create("m", &tiny()).unwrap();
    for i in 0..30u8 {
        w.insert(&[i], &val(i, 1, 60)).unwrap();
    }
    w.remove(&[3]).unwrap();
    let ro = k.open("m", &Options::new().read_only(true)).unwrap();
    let snapshot = |k: &HeapKernel| {
        k.segment_ids()
            .into_iter()
            .map(|id| (id, k.read(id)))
            .collect::<Vec<_>>()
    };
    let before = snapshot(&k);
    for m in [&ro, &w] {
        for i in 0..32u8 {
            let _ = m.get(&[i]).unwrap();
            let _ = m.get_ref(&[i]).unwrap();
            let _ = m.contains_key(&[i]).unwrap();
        }
        let _ = m.len();
        let _ = m.version();
        let _ = m.entries().unwrap();
        m.view(|v| {
            let _ = v.get(&[1])?;
            v.entries()
        })
        .map(drop)
        .unwrap();
        let _ = m.stats().unwrap();
        assert!(m.verify().unwrap().is_ok());
        // A wait that times out registers and leaves again.
        let v = m.version();
        assert_eq!(
            m.wait_for_change(v, Duration::from_millis(5)).unwrap(),
            None
        );
    }
    let after = snapshot(&k);
    for ((id, a), (_, b)) in before.iter().zip(&after) {
        let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        assert!(diff.is_empty(), "segment {id}: bytes {diff:?} changed");
    }
    drop(ro);
    w.destroy().unwrap();
}

/// Nested pins of one thread across switches: a `Ref` taken before a
/// switch, one whose read made this handle switch (its pin holds the old
/// and the new generation), clones of both, views; dropped in every
/// order, each generation stays mapped exactly while something holds it.
#[test]
fn review_nested_refs_across_switches_release_in_any_order() {
    let k = HeapKernel::new();
    let a = k.create("m", &tiny()).unwrap();
    let b = k.open("m", &Options::new()).unwrap();
    a.insert(b"x", &val(1, 1, 30)).unwrap();
    let g1 = b.stats().unwrap().data_shmid;
    let r1 = b.get_ref(b"x").unwrap().unwrap();
    a.insert(b"x", &val(1, 2, 30)).unwrap();
    a.compact().unwrap();
    // This read switches `b`: its pin follows `current` (two holds).
    let r2 = b.get_ref(b"x").unwrap().unwrap();
    let g2 = b.stats().unwrap().data_shmid;
    assert_ne!(g1, g2);
    let r2c = r2.clone();
    a.insert(b"x", &val(1, 3, 30)).unwrap();
    a.compact().unwrap();
    let (e3, g3) = b
        .view(|v| Ok((v.get(b"x")?.unwrap(), 0)))
        .map(|(r, _)| (r, b.stats().unwrap().data_shmid))
        .unwrap();
    let e3c = e3.clone();
    assert_eq!(check(1, &r1), 1);
    assert_eq!(check(1, &r2), 2);
    assert_eq!(check(1, &e3), 3);
    let mapped = |k: &HeapKernel| {
        let ids = k.segment_ids();
        [g1, g2, g3].map(|g| ids.contains(&g))
    };
    assert_eq!(mapped(&k), [true, true, true]);
    drop(r2);
    drop(r1);
    // r2c still holds g1 (its pin followed from g1 to g2).
    let _ = b.get(b"x").unwrap();
    assert_eq!(mapped(&k), [true, true, true]);
    drop(r2c);
    let _ = b.get(b"x").unwrap();
    // The view's pin followed from g2 to g3: its `Ref`s hold both.
    assert_eq!(mapped(&k), [false, true, true], "g1 released");
    drop(e3);
    assert_eq!(check(1, &e3c), 3);
    assert_eq!(mapped(&k), [false, true, true]);
    drop(e3c);
    let _ = b.get(b"x").unwrap();
    assert_eq!(mapped(&k), [false, false, true], "g2 released");
    let _ = b.get(b"x").unwrap();
    assert_eq!(b.stats().unwrap().mapped_generations, 1);
    drop(b);
    a.destroy().unwrap();
    assert_eq!(k.objects(), (0, 0));
}

struct Held(
    std::cell::RefCell<Vec<shmkv::Ref<'static, [u8]>>>,
    &'static shmkv::RawMap,
);

impl Drop for Held {
    fn drop(&mut self) {
        // Runs after the library's thread-local (registered later) is gone:
        // pins taken here use records of their own; a read here may switch.
        let m = self.1;
        let extra = m.get_ref(b"x").unwrap().unwrap();
        let c = extra.clone();
        for r in self.0.borrow().iter() {
            check(1, r);
        }
        self.0.borrow_mut().clear();
        check(1, &c);
    }
}

thread_local! {
    static HELD: std::cell::OnceCell<Held> = const { std::cell::OnceCell::new() };
}

/// A thread's `Ref`s (one of them with two holds, taken by a switching
/// read) outlive the library's thread-local; the thread's later
/// destructor reads again. Every generation is released after the thread
/// exits, and the pin records are reused by later threads.
#[test]
fn review_refs_in_thread_local_destructors_are_released() {
    let k = HeapKernel::new();
    let a = k.create("m", &tiny()).unwrap();
    let b: &'static shmkv::RawMap = Box::leak(Box::new(k.open("m", &Options::new()).unwrap()));
    a.insert(b"x", &val(1, 1, 30)).unwrap();
    let a: &'static shmkv::RawMap = Box::leak(Box::new(a));
    for round in 0..20u64 {
        // `join` (not a scope) returns after the thread's thread-local
        // destructors ran.
        std::thread::spawn(move || {
            HELD.with(|h| {
                let h = h.get_or_init(|| Held(Default::default(), b));
                h.0.borrow_mut().push(b.get_ref(b"x").unwrap().unwrap());
                a.insert(b"x", &val(1, round + 2, 30)).unwrap();
                a.compact().unwrap();
                // Switches: two holds.
                h.0.borrow_mut().push(b.get_ref(b"x").unwrap().unwrap());
                a.compact().unwrap();
            });
        })
        .join()
        .unwrap();
        let _ = b.get(b"x").unwrap();
        assert_eq!(b.stats().unwrap().mapped_generations, 1, "round {round}");
    }
    let _ = b.get(b"x").unwrap();
    assert_eq!(b.stats().unwrap().mapped_generations, 1);
    assert_eq!(k.objects().0, 2, "the root and the generation in force");
    assert!(k.destroy_by_name("m", &Options::new()).unwrap());
}

/// Two writers ("processes") on one map, one of them in a tight loop: the
/// other's writes must get the lock within the lock timeout, as they do
/// over SysV, where `semop`'s release hands the semaphore to the queued
/// waiter (see `review_sysv_second_writer_is_not_starved`). The heap lock
/// lets the releasing writer take it straight back (`release` only
/// notifies; a woken waiter finds it held again).
#[test]
fn review_second_writer_is_not_starved() {
    let k = HeapKernel::new();
    let opts = tiny().lock_timeout(Duration::from_millis(500));
    let a = k.create("m", &opts).unwrap();
    let b = k.open("m", &opts).unwrap();
    let stop = AtomicBool::new(false);
    let (mut ok, mut timeouts) = (0, 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                a.insert(&[(n % 8) as u8], &val(1, n, 20)).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        for i in 0..10u64 {
            match b.insert(b"b", &val(2, i, 20)) {
                Ok(()) => ok += 1,
                Err(Error::LockTimeout { .. }) => timeouts += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    drop(b);
    a.destroy().unwrap();
    assert_eq!(
        timeouts, 0,
        "{ok} writes got the lock, {timeouts} timed out"
    );
}

/// `destroy_by_name` queued on the lock behind a `destroy`: the map is
/// gone when it gets its turn, so "nothing removed" (`Ok(false)`) is the
/// documented answer; it returns `NotFound { name: "(destroyed while
/// open)" }` instead (same cause as
/// `review_open_or_create_waiting_on_a_destroyed_lock`).
#[test]
fn review_destroy_by_name_waiting_on_a_destroyed_lock() {
    let k = HeapKernel::new();
    let opts = tiny().lock_timeout(Duration::from_secs(5));
    let mut seen = Vec::new();
    for _ in 0..5 {
        let a = k.create("m", &opts).unwrap();
        let c = k.open("m", &opts).unwrap();
        let r = std::thread::scope(|s| {
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let a = &a;
            let hold = s.spawn(move || {
                a.write(|_| {
                    held_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                    Ok(())
                })
            });
            // `a` holds the lock before the destroyer queues.
            held_rx.recv().unwrap();
            let d = s.spawn(move || c.destroy());
            std::thread::sleep(Duration::from_millis(20));
            let r = k.destroy_by_name("m", &opts);
            hold.join().unwrap().unwrap();
            d.join().unwrap().unwrap();
            r
        });
        drop(a);
        seen.push(format!("{r:?}"));
        let _ = k.destroy_by_name("m", &opts);
        assert_eq!(k.objects(), (0, 0));
    }
    assert!(seen.iter().all(|r| r == "Ok(false)"), "{seen:#?}");
}
