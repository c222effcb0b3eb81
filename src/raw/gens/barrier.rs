//! The barrier policy of a pin: how a pin orders its slot store before it
//! re-reads `current` ([`BarrierMode`]), how the mode is chosen once per
//! process ([`choose_barrier`], [`barrier_mode`]), and the reclaimer's side
//! of the asymmetric barrier ([`heavy_barrier`]). The system calls
//! themselves are in `crate::sys::membarrier`.

use crate::sys::membarrier;

/// How a pin orders its slot store before re-reading `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BarrierMode {
    /// Reclaimers call `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`; a
    /// pin needs only a compiler fence.
    Membarrier,
    /// No usable membarrier: a `fence(SeqCst)` per pin.
    Fence,
}

/// Environment variable that forces [`BarrierMode::Fence`] (tests, and
/// kernels whose membarrier misbehaves).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) const FORCE_FENCE_ENV: &str = "SHMKV_PIN_FENCE";

/// The mode, given whether it is forced, the result of the membarrier
/// query and a registration attempt (called only if the query offers the
/// command). A failed registration falls back to the fence.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn choose_barrier(
    force_fence: bool,
    query: libc::c_long,
    register: impl FnOnce() -> libc::c_long,
) -> BarrierMode {
    let offered = query > 0 && query & libc::c_long::from(membarrier::PRIVATE_EXPEDITED) != 0;
    if !force_fence && offered && register() == 0 {
        BarrierMode::Membarrier
    } else {
        BarrierMode::Fence
    }
}

/// The process's barrier mode, decided on first use (0 = not yet, then
/// `1 + mode`). A plain atomic rather than a `OnceLock`: a `fork` while
/// another thread runs the registration (which can wait for an RCU grace
/// period) must not leave the child blocked on an initialisation that no
/// thread of the child will finish. Racing threads both register, which is
/// idempotent. Never membarrier under loom, which models the plain fence.
#[cfg(not(loom))]
static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// See [`MODE`].
#[inline]
pub(crate) fn barrier_mode() -> BarrierMode {
    #[cfg(loom)]
    {
        BarrierMode::Fence
    }
    #[cfg(not(loom))]
    {
        match MODE.load(std::sync::atomic::Ordering::Relaxed) {
            1 => BarrierMode::Membarrier,
            2 => BarrierMode::Fence,
            _ => init_barrier_mode(),
        }
    }
}

#[cfg(not(loom))]
#[cold]
fn init_barrier_mode() -> BarrierMode {
    let force = std::env::var_os(FORCE_FENCE_ENV).is_some_and(|v| v != "0" && !v.is_empty());
    let mode = choose_barrier(
        force,
        membarrier::query(),
        membarrier::register_private_expedited,
    );
    let code = match mode {
        BarrierMode::Membarrier => 1,
        BarrierMode::Fence => 2,
    };
    MODE.store(code, std::sync::atomic::Ordering::Relaxed);
    mode
}

/// The reclaimer's side of the asymmetric barrier: every running thread of
/// the process executes a full barrier before this returns. `false` if the
/// kernel refused (then nothing may be freed: pins made with only a
/// compiler fence are not ordered).
pub(super) fn heavy_barrier() -> bool {
    #[cfg(not(loom))]
    if barrier_mode() == BarrierMode::Membarrier {
        for _ in 0..2 {
            if membarrier::private_expedited() == 0 {
                return true;
            }
            // Registration is inherited by `fork` and never revoked; if it
            // was lost anyway, register again and retry once.
            membarrier::register_private_expedited();
        }
        return false;
    }
    true
}
