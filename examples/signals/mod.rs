//! SIGINT/SIGTERM handling shared by the examples: the signal sets a flag
//! that every loop of an example checks, so that the loops end, the drop
//! guards remove the map and stop the child processes
//! ([`terminate`], [`stop`]), and the example exits with 128 + the signal,
//! as a shell reports it.

// Compiled into every example; each uses the part it needs.
#![allow(dead_code)]

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGINT/SIGTERM; the example's loops check it.
static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that set [`STOP`].
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::Relaxed);
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT (Ctrl-C) and SIGTERM set [`STOP`] instead of ending the process
/// at once, so that the loops end and the drop guards remove the map.
pub(crate) fn stop_on_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to atomics (async-signal-safe).
        unsafe { sigaction(sig, &action) }.expect("sigaction");
    }
}

pub(crate) fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// 0, or 128 + the signal that stopped the example (as a shell reports it).
pub(crate) fn exit_code() -> i32 {
    match SIGNAL.load(Ordering::Relaxed) {
        0 => 0,
        sig => 128 + sig,
    }
}

/// Sends SIGTERM to each child, by its pid.
pub(crate) fn terminate(children: &[Child]) {
    for c in children {
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
}

/// Stops the children: SIGTERM, up to 2 s to exit, then SIGKILL; reaps
/// each (for drop guards, also on error or panic).
pub(crate) fn stop(children: &mut [Child]) {
    terminate(children);
    let end = Instant::now() + Duration::from_secs(2);
    for c in children {
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
