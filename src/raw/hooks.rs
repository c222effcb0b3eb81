//! Test-only crash points of the write protocol. A test process arms one
//! point; when the writer reaches it, the process kills itself with SIGKILL,
//! which is exactly what a crash at that instruction looks like to others.
//! Unarmed, a point costs one Relaxed load of a process-local static; without
//! the `__test-hooks` feature (the project's tests turn it on) it is nothing.

#[cfg(any(test, feature = "__test-hooks"))]
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Where a writer can be made to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CrashPoint {
    /// Records staged in the arena, nothing committed.
    AfterStage = 1,
    /// Redo log written, commit marker not yet stored.
    AfterRedoLog = 2,
    /// The root's `applying` word is set, the commit marker not yet stored
    /// (the write is not committed).
    BeforeCommit = 9,
    /// Commit marker stored, no slot touched.
    AfterCommit = 3,
    /// The global view sequence and one slot's sequence are odd (reached
    /// once per slot of a write: with a skip count, mid-way through a batch).
    MidApply = 4,
    /// All slots applied, commit marker not yet cleared.
    AfterApply = 5,
    /// During a resize: the new generation is built and recorded as
    /// pending, not yet published.
    MidResize = 7,
    /// During a resize: the new generation is published, the old one not
    /// yet marked for removal.
    AfterPublish = 8,
    /// During `create`: root and data segment made, data segment recorded
    /// as pending, root magic not yet written.
    MidCreate = 6,
}

impl CrashPoint {
    /// Every point, in protocol order.
    pub const ALL: [CrashPoint; 9] = [
        CrashPoint::MidCreate,
        CrashPoint::AfterStage,
        CrashPoint::AfterRedoLog,
        CrashPoint::BeforeCommit,
        CrashPoint::AfterCommit,
        CrashPoint::MidApply,
        CrashPoint::AfterApply,
        CrashPoint::MidResize,
        CrashPoint::AfterPublish,
    ];

    /// The point named like its variant (`"MidApply"`), `None` for any
    /// other name (so that a typo in a test is an error, not another point).
    pub fn from_name(name: &str) -> Option<CrashPoint> {
        CrashPoint::ALL
            .into_iter()
            .find(|p| format!("{p:?}") == name)
    }
}

#[cfg(any(test, feature = "__test-hooks"))]
static ARMED: AtomicU32 = AtomicU32::new(0);
/// Number of times the armed point is passed before the crash.
#[cfg(any(test, feature = "__test-hooks"))]
static SKIP: AtomicU64 = AtomicU64::new(0);

/// Arms `point`: the process SIGKILLs itself the `skip + 1`-th time a writer
/// reaches it.
#[cfg(any(test, feature = "__test-hooks"))]
pub fn arm(point: CrashPoint, skip: u64) {
    SKIP.store(skip, Ordering::Relaxed);
    ARMED.store(point as u32, Ordering::Relaxed);
}

/// Called by the writer at each point.
#[cfg(any(test, feature = "__test-hooks"))]
#[inline]
pub(crate) fn reached(point: CrashPoint) {
    if ARMED.load(Ordering::Relaxed) == point as u32 {
        if SKIP.load(Ordering::Relaxed) > 0 {
            SKIP.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        loop {
            std::hint::spin_loop();
        }
    }
}

/// Without the `__test-hooks` feature (a release build of a library user)
/// the crash points compile to nothing.
#[cfg(not(any(test, feature = "__test-hooks")))]
#[inline(always)]
pub(crate) fn reached(_point: CrashPoint) {}
