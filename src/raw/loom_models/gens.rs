//! loom models of the generation code (`raw::gens`): the switch against a
//! reader on the real `Gens` (model 4, with a stand-in generation; 4c, with
//! the library's `Generation` over the heap provider), a reclaim request
//! that must not be lost (4b), clones of a followed pin (the review's).

use loom::sync::Arc;
use loom::thread;

use super::model;
use crate::raw::gens::{Gens, Numbered};
use crate::raw::table::LoomTable;
use crate::sync::{AtomicU64, Ordering};

/// Set when any access to a generation finds it reclaimed (reset at the
/// start of each execution; loom runs its threads on one OS thread).
static USED_AFTER_RECLAIM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A stand-in generation for the real `Gens` code: a number and a
/// reclaimed flag, checked on every access (`number`, which is also what
/// the planted `PinDerefFirst` reads).
struct TestGen {
    number: u64,
    reclaimed: AtomicU64,
}

impl TestGen {
    /// An access: records a use after reclaim instead of panicking inside
    /// a pinned section (the model asserts at the end).
    fn access(&self) -> u64 {
        if self.reclaimed.load(Ordering::SeqCst) != 0 {
            USED_AFTER_RECLAIM.store(self.number, std::sync::atomic::Ordering::Relaxed);
        }
        self.number
    }
}

impl Numbered for TestGen {
    fn number(&self) -> u64 {
        self.access()
    }
    fn reclaimed(&self) {
        self.reclaimed.store(1, Ordering::SeqCst);
    }
}

fn gen(number: u64) -> Box<TestGen> {
    Box::new(TestGen {
        number,
        reclaimed: AtomicU64::new(0),
    })
}

/// Model 4: the generation switch against a reader, on the real `Gens`
/// code (pin, nested pin, `Pin::current`, unpin, install, reclaim). The
/// reader pins, reads the generation, pins again (nested: same slot, or a
/// second one if the switch happened in between), unpins the inner pin and
/// reads the outer generation again. No access ever finds a generation
/// reclaimed, and once both threads are done, the retired generation is
/// reclaimed (no extra unpin needed).
#[test]
fn loom_generation_switch_against_a_reader() {
    model("loom_generation_switch_against_a_reader", || {
        USED_AFTER_RECLAIM.store(0, std::sync::atomic::Ordering::Relaxed);
        let gens = Arc::new(Gens::new(gen(1)));
        let r = {
            let gens = gens.clone();
            thread::spawn(move || {
                let outer = gens.pin();
                let a = outer.current();
                let n = a.access();
                let inner = gens.pin();
                let m = inner.current().access();
                drop(inner);
                let again = a.access();
                drop(outer);
                (n, m, again)
            })
        };
        gens.install(gen(2));
        let (n, m, again) = r.join().unwrap();
        let used = USED_AFTER_RECLAIM.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(used, 0, "generation {used} used after reclaim");
        assert!(m >= n && again == n, "pins saw {n}, {m}, {again}");
        // The unpin has no fence, so a reclaim racing with it may miss it;
        // the next reclaim (install, or unpin of a retired generation) frees.
        gens.reclaim();
        assert_eq!(gens.mapped(), 1, "the retired generation was not reclaimed");
    });
}

/// A real `Generation` for model 4c: its table over loom atomics (boxed:
/// loom's atomics cannot be laid over segment memory), its `seg` a segment
/// of the heap provider, attached and marked for removal as the engine
/// does, so that dropping the generation (a reclaim) detaches it through
/// the provider. The segment also keeps the table's memory alive.
fn heap_generation(
    k: &crate::raw::provider::HeapKernel,
    number: u64,
) -> Box<crate::raw::gens::Generation> {
    use crate::raw::provider::{Provider, Segment};
    let id = k
        .get(crate::sys::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600, "m")
        .unwrap()
        .unwrap();
    let mapped = k.attach(id, false, "m").unwrap();
    k.remove(id).unwrap();
    let (table, storage) = LoomTable::new(4, 64).into_parts();
    table.header().generation.store(number, Ordering::SeqCst);
    let (base, len) = (mapped.base(), mapped.len());
    // SAFETY: `mapped` (moved into the new segment) keeps the heap region
    // of `len` bytes at `base` mapped until the segment drops.
    let seg = unsafe { Segment::new(id, base, len, Box::new((mapped, storage))) };
    Box::new(crate::raw::gens::Generation {
        word: number,
        number,
        table,
        seg,
    })
}

/// Model 4c: model 4 on the library's own `Generation` type over the heap
/// provider: the reader pins, reads the generation (its number and its
/// table's header), pins again (nested) across the writer's `install`,
/// and reads the outer generation again; every access checks that the
/// generation was not reclaimed (a reclaim poisons its header). After the
/// threads, a reclaim leaves one generation mapped, and dropping the
/// handle detaches every segment through the provider (the kernel is
/// empty).
#[test]
fn loom_generation_switch_over_the_heap_provider() {
    use crate::raw::gens::loom_check::USED_AFTER_RECLAIM as USED;
    model("loom_generation_switch_over_the_heap_provider", || {
        USED.store(0, std::sync::atomic::Ordering::Relaxed);
        let k = crate::raw::provider::HeapKernel::new();
        let gens = Arc::new(Gens::new(heap_generation(&k, 1)));
        // Built before the threads start (as `new_generation` runs before
        // `publish`): only the install races with the reader.
        let second = heap_generation(&k, 2);
        let r = {
            let gens = gens.clone();
            thread::spawn(move || {
                let outer = gens.pin();
                let a = outer.current();
                let n = a.number();
                assert_eq!(a.table.header().generation.load(Ordering::SeqCst), n);
                let inner = gens.pin();
                let m = inner.current().number();
                drop(inner);
                let again = a.number();
                drop(outer);
                (n, m, again)
            })
        };
        gens.install(second);
        let (n, m, again) = r.join().unwrap();
        let used = USED.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(used, 0, "generation {used} used after reclaim");
        assert!(m >= n && again == n, "pins saw {n}, {m}, {again}");
        gens.reclaim();
        assert_eq!(gens.mapped(), 1, "the retired generation was not reclaimed");
        drop(Arc::try_unwrap(gens).expect("the reader's handle is gone"));
        assert_eq!(k.objects(), (0, 0), "a segment was not detached");
    });
}

/// Model 4b: a reclaim that finds the reclaim lock held is not lost. The
/// main thread holds a pin on generation 1, installs generation 2 (1 stays,
/// pinned), then unpins (which reclaims) while another thread reclaims
/// too. Once both are done, generation 1 is gone without a further call.
#[test]
fn loom_a_reclaim_request_is_not_lost() {
    model("loom_a_reclaim_request_is_not_lost", || {
        USED_AFTER_RECLAIM.store(0, std::sync::atomic::Ordering::Relaxed);
        let gens = Arc::new(Gens::new(gen(1)));
        let pin = gens.pin();
        gens.install(gen(2));
        assert_eq!(pin.current().access(), 2);
        let other = {
            let gens = gens.clone();
            thread::spawn(move || gens.reclaim())
        };
        drop(pin);
        other.join().unwrap();
        let used = USED_AFTER_RECLAIM.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(used, 0, "generation {used} used after reclaim");
        assert_eq!(gens.mapped(), 1, "a reclaim request was lost");
    });
}

/// Model 4c (review): clones of a pin that followed `current` (boxed
/// holds, `HOLD_MORE`) against a switch. The reader pins, takes the
/// generation, clones the pin, lets the clone follow `current` (two holds
/// if the switch came in between), clones the clone, then drops the pins
/// in an order that leaves only the last clone: every generation any of
/// them returned stays unreclaimed while that clone lives, and once it
/// drops, the retired generation is reclaimed.
#[test]
fn loom_review_clones_of_a_followed_pin_against_a_switch() {
    model(
        "loom_review_clones_of_a_followed_pin_against_a_switch",
        || {
            USED_AFTER_RECLAIM.store(0, std::sync::atomic::Ordering::Relaxed);
            let gens = Arc::new(Gens::new(gen(1)));
            let r = {
                let gens = gens.clone();
                thread::spawn(move || {
                    let p = gens.pin();
                    let a: *const TestGen = p.current();
                    let q = p.clone();
                    drop(p);
                    let b: *const TestGen = q.current();
                    let c = q.clone();
                    drop(q);
                    // SAFETY: loom keeps reclaimed generations alive (the
                    // graveyard); `access` flags a use after reclaim.
                    let (n, m) = unsafe { ((*a).access(), (*b).access()) };
                    let held = c.current_held().map(|g| g.access());
                    drop(c);
                    (n, m, held)
                })
            };
            gens.install(gen(2));
            let (n, m, held) = r.join().unwrap();
            let used = USED_AFTER_RECLAIM.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(used, 0, "generation {used} used after reclaim");
            assert!(m >= n, "pins saw {n}, {m}");
            assert!(held.is_none_or(|h| h == m), "held {held:?}, followed {m}");
            gens.reclaim();
            assert_eq!(gens.mapped(), 1, "the retired generation was not reclaimed");
        },
    );
}
