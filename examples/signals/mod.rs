//! SIGINT/SIGTERM handling shared by the examples: the signal sets a flag
//! that every loop of an example checks, so that the loops end, the drop
//! guards remove the map (and stop child processes), and the example exits
//! with 128 + the signal, as a shell reports it.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

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
