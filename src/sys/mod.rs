//! Every system call of the crate, and nothing else: SysV shared memory
//! (`shm`), the semaphore set that serialises writers (`sem`), the futex of
//! change notification (`futex`), `membarrier` (`membarrier`), and what is
//! read from `/proc` or asked of other processes (`procfs`). Every failure
//! becomes a typed [`Error`]; `EINTR` is retried. Nothing here imports from
//! the rest of the crate but the error type.

use std::ffi::CString;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::error::{Error, Result};

pub(crate) mod futex;
pub(crate) mod membarrier;
pub(crate) mod procfs;
pub(crate) mod sem;
pub(crate) mod shm;

#[cfg(any(test, feature = "__test-hooks"))]
pub(crate) use futex::FUTEX_WAKES;
pub(crate) use futex::{futex_wait, futex_wake_all};
pub(crate) use procfs::{huge_page_size, process_alive, process_start_time, sysvipc_shm};
pub(crate) use sem::{SemOpen, Semaphore};
pub(crate) use shm::{
    shm_get, shm_get_raw, shm_remove, shm_set_owner, shm_stat, shm_try_remove, Attached, Removal,
    ShmInfo,
};

/// `IPC_PRIVATE`: a key that always makes a new, unnamed object.
pub(crate) const IPC_PRIVATE: libc::key_t = libc::IPC_PRIVATE;

/// Maps an errno to the error a user can act on.
pub(crate) fn os_error(op: &'static str, errno: Errno, name: &str) -> Error {
    match errno {
        Errno::EACCES | Errno::EPERM => Error::PermissionDenied {
            name: name.to_string(),
            op,
        },
        Errno::ENOENT | Errno::EIDRM => Error::NotFound {
            name: name.to_string(),
        },
        e => Error::os(op, e as i32),
    }
}

/// `deadline` for a wait of `d` from now; `None` (no deadline: wait
/// forever) when it is not representable, e.g. for `Duration::MAX`.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Whether `deadline` (see [`deadline_after`]) has passed.
pub(crate) fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// A `timespec` for `d`, clamped to the largest representable one (a
/// `Duration` has 64 unsigned bits of seconds, `time_t` 63).
pub(crate) fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    }
}

/// `ftok(path, id)`.
pub(crate) fn ftok(path: &Path, id: u8, name: &str) -> Result<libc::key_t> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::InvalidName(format!("path {path:?} contains NUL")))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let key = unsafe { libc::ftok(c.as_ptr(), libc::c_int::from(id)) };
    if key == -1 {
        // ftok fails only when its stat of the path does: say which path
        // and why, not "map not found".
        return Err(Error::Ftok {
            name: name.to_string(),
            path: path.to_path_buf(),
            id,
            source: std::io::Error::from(Errno::last()),
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::futex::{futex_wait, futex_wake_all};
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A timeout of `Duration::MAX` is a very long sleep, not an invalid
    /// `timespec` (which made the kernel return at once).
    #[test]
    fn futex_wait_with_a_huge_timeout_sleeps_until_woken() {
        let word = AtomicU32::new(0);
        let slept = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                word.store(1, Ordering::SeqCst);
                futex_wake_all(&word);
            });
            let t = Instant::now();
            futex_wait(&word, 0, Duration::MAX);
            t.elapsed()
        });
        assert!(
            slept >= Duration::from_millis(50),
            "returned after {slept:?}"
        );
    }

    #[test]
    fn huge_waits_have_no_deadline() {
        assert!(deadline_after(Duration::MAX).is_none());
        assert!(!passed(None));
        assert_eq!(timespec(Duration::MAX).tv_sec, libc::time_t::MAX);
    }
}
