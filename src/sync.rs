//! The atomics, fences, `Arc` and spin hint the shared-memory algorithm
//! uses: loom's under `cfg(loom)` (model checking), std's otherwise. The
//! table, write protocol and generation code import them only from here.
//! (The root header and the futex word stay std atomics: the root is not
//! part of the models.)

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;

/// A spin-wait hint (a yield point for loom).
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Weakenings the loom models plant to show they catch them. Outside
/// `cfg(loom)` `weakened` is a constant `false`, so production code is
/// unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[cfg_attr(not(loom), allow(dead_code))]
pub(crate) enum Weaken {
    /// The seqlock reader's Acquire fence before the re-check.
    SeqlockReadFence = 1,
    /// The seqlock writer's Release fence after the odd stamp.
    SeqlockWriteFence,
    /// The writer does not make the view sequence odd while applying.
    ViewSeq,
    /// The pin's SeqCst fence between publishing the pin and re-checking.
    PinFence,
    /// Recovery closes stamps and clears the marker but does not redo.
    Recovery,
    /// Removal turns tombstones into EMPTY regardless of the next slot.
    TombstoneTrim,
    /// A plain get ignores the root's `applying` word (reads the slots as
    /// they are while a batch is half applied). Planted by model 6 only.
    #[allow(dead_code)]
    ApplyingWord,
    /// The pin reads the generation before publishing its slot (the order
    /// of the code before the hazard-slot scheme).
    PinDerefFirst,
    /// A nested pin on the generation a slot already holds does not count
    /// itself (its unpin frees the slot under the outer pin).
    PinCount,
    /// A reclaim that finds the lock held leaves no request for the holder.
    ReclaimAgain,
}

#[cfg(loom)]
pub(crate) static WEAKEN: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether `w` is planted (only ever under loom).
#[inline(always)]
pub(crate) fn weakened(w: Weaken) -> bool {
    #[cfg(loom)]
    {
        WEAKEN.load(std::sync::atomic::Ordering::Relaxed) == w as u8
    }
    #[cfg(not(loom))]
    {
        let _ = w;
        false
    }
}
