//! The futex word of change notification (in SysV shared memory: shared
//! futexes, keyed by the physical page).

use std::time::Duration;

use super::timespec;

/// Process-local count of `FUTEX_WAKE` calls (diagnostics and tests).
pub(crate) static FUTEX_WAKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `FUTEX_WAIT` (shared, not private: the word is in SysV shared memory)
/// until `*word != expected`, a wake, or `timeout`.
pub(crate) fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32, timeout: Duration) {
    let ts = timespec(timeout);
    // SAFETY: `word` is a valid, aligned 32-bit word for the whole call; the
    // kernel only reads it. EINTR, EAGAIN and ETIMEDOUT are all fine: the
    // caller re-checks the condition.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// `FUTEX_WAKE` of every waiter on `word`; returns how many were woken.
pub(crate) fn futex_wake_all(word: &std::sync::atomic::AtomicU32) -> u64 {
    FUTEX_WAKES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: `word` is a valid, aligned 32-bit word.
    let n = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
    n.max(0) as u64
}
