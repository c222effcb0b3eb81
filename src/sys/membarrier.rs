//! `membarrier(2)`: the reclaimer's side of the asymmetric barrier that
//! lets pins use a compiler fence only (see `raw::gens`). Unused under
//! loom, which models the plain fence.
//!
//! Under Miri, which has no `membarrier` (an unsupported syscall stops the
//! interpreter), every call answers as a kernel without it (`-1`, as for
//! `ENOSYS`) without making the call: the query then offers nothing and
//! `raw::gens::barrier` selects the `fence(SeqCst)` path, the one Miri can
//! check (and the one loom models).
#![cfg_attr(loom, allow(dead_code))]

/// `MEMBARRIER_CMD_QUERY`.
#[cfg(not(miri))]
const QUERY: libc::c_int = 0;
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`.
pub(crate) const PRIVATE_EXPEDITED: libc::c_int = 8;
/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`.
#[cfg(not(miri))]
const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 16;

/// The commands the kernel supports (a bit mask), or a negative value.
pub(crate) fn query() -> libc::c_long {
    #[cfg(miri)]
    {
        -1
    }
    // SAFETY: membarrier with integer arguments only.
    #[cfg(not(miri))]
    unsafe {
        libc::syscall(libc::SYS_membarrier, QUERY, 0, 0)
    }
}

/// Registers the process for private expedited barriers; 0 on success.
pub(crate) fn register_private_expedited() -> libc::c_long {
    #[cfg(miri)]
    {
        -1
    }
    // SAFETY: membarrier with integer arguments only.
    #[cfg(not(miri))]
    unsafe {
        libc::syscall(libc::SYS_membarrier, REGISTER_PRIVATE_EXPEDITED, 0, 0)
    }
}

/// Every running thread of the process executes a full barrier before this
/// returns; 0 on success (the process must be registered).
pub(crate) fn private_expedited() -> libc::c_long {
    #[cfg(miri)]
    {
        -1
    }
    // SAFETY: membarrier with integer arguments only.
    #[cfg(not(miri))]
    unsafe {
        libc::syscall(libc::SYS_membarrier, PRIVATE_EXPEDITED, 0, 0)
    }
}
