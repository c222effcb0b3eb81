//! Detaching reclaimed generations off the thread that reclaimed them.
//!
//! A reclaim usually runs on a reader, at the unpin after a switch (see
//! `Gens::reclaim`). Detaching a data segment there made that read take
//! milliseconds: the reader's `shmdt` tears down the page tables of every
//! page it touched, and when it is the segment's last attacher (the writer
//! marked it for removal) the kernel frees the whole segment's memory in
//! that call (measured: reads of 4-40 ms during a growth to 10⁶ entries,
//! under 0.1 ms with the detach taken away). So a reclaimed generation is
//! handed to one process-wide thread, `shmkv-reaper`, that drops it (the
//! detach). The generation is already unlinked from its handle's retired
//! list and named by no pin: nothing uses it any more; only its mapping
//! lives a little longer.
//!
//! [`flush`] waits until everything handed over so far is dropped: a
//! handle's drop calls it, so that after `drop` (and `destroy`) no mapping
//! of the handle is left in the process. After a `fork` the child has no
//! reaper thread: the first hand-over in the child starts its own. If the
//! reaper cannot be reached (a thread cannot be started, or the lock was
//! held by a thread lost to a fork), the generation is dropped in place, as
//! before.

use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::Mutex;

/// Work for the reaper, in order.
enum Job {
    /// Drop this (a reclaimed generation: its drop detaches it).
    Drop(Box<dyn Send>),
    /// Reply once every job before this one is done.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The reaper of this process: the pid it was started in and its queue.
static REAPER: Mutex<Option<(u32, Sender<Job>)>> = Mutex::new(None);

/// The queue of this process's reaper, started if needed; `None` if it
/// cannot be had (then the caller does the work itself).
fn queue() -> Option<Sender<Job>> {
    let pid = std::process::id();
    // `try_lock`: in a child of `fork` the lock may be held forever by a
    // thread that was not copied.
    let mut r = REAPER.try_lock().ok()?;
    if let Some((p, tx)) = r.as_ref() {
        if *p == pid {
            return Some(tx.clone());
        }
    }
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name("shmkv-reaper".into())
        .spawn(move || {
            for job in rx {
                match job {
                    Job::Drop(g) => drop(g),
                    Job::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })
        .ok()?;
    *r = Some((pid, tx.clone()));
    Some(tx)
}

/// Drops `g` on the reaper thread (or here, if there is none).
pub(super) fn drop_later<G: Send + 'static>(g: Box<G>) {
    let g: Box<dyn Send> = g;
    match queue() {
        Some(tx) => {
            if let Err(e) = tx.send(Job::Drop(g)) {
                // The reaper is gone: drop it here.
                drop(e);
            }
        }
        None => drop(g),
    }
}

/// Waits until everything handed to the reaper so far is dropped. Returns
/// at once if this process has no reaper.
pub(super) fn flush() {
    let pid = std::process::id();
    let tx = match REAPER.try_lock() {
        Ok(r) => match r.as_ref() {
            Some((p, tx)) if *p == pid => tx.clone(),
            _ => return,
        },
        Err(_) => return,
    };
    let (done_tx, done_rx) = sync_channel(1);
    if tx.send(Job::Flush(done_tx)).is_ok() {
        let _ = done_rx.recv();
    }
}
