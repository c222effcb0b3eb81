//! Shared test support: unique map names, cleanup guards that remove every
//! SysV object also when a test fails, leak assertions, and child processes
//! (the test binary re-executed in a "role").
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use shmkv::{Options, RawMap, Stats};

/// A name no other test or run uses.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "shmkv-test-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the map's kernel objects when dropped (also on panic).
pub struct Cleanup {
    pub name: String,
    pub opts: Options,
}

impl Cleanup {
    pub fn new(tag: &str) -> Cleanup {
        Cleanup {
            name: unique_name(tag),
            opts: Options::new(),
        }
    }
    pub fn with(tag: &str, opts: Options) -> Cleanup {
        Cleanup {
            name: unique_name(tag),
            opts,
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = RawMap::destroy_by_name(&self.name, &self.opts);
    }
}

/// Asserts that the objects a map had are gone from the kernel.
pub fn assert_removed(stats: &Stats) {
    for id in [stats.root_shmid, stats.data_shmid] {
        // SAFETY: shmid_ds is plain data; all-zero is a valid value.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: ds is a valid, writable shmid_ds.
        let rc = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
        assert_eq!(rc, -1, "segment {id} of {} still exists", stats.name);
    }
    // SAFETY: GETVAL takes no further argument.
    let rc = unsafe { libc::semctl(stats.semid, 0, libc::GETVAL) };
    assert_eq!(
        rc, -1,
        "semaphore {} of {} still exists",
        stats.semid, stats.name
    );
    let key = stats.key;
    // SAFETY: plain integer arguments.
    let (shm, sem) = unsafe { (libc::shmget(key, 0, 0), libc::semget(key, 1, 0)) };
    assert_eq!(shm, -1, "a segment still has key {key:#x}");
    assert_eq!(sem, -1, "a semaphore still has key {key:#x}");
}

/// The role this process was started in, if it is a child.
pub fn role() -> Option<String> {
    std::env::var("SHMKV_TEST_ROLE").ok()
}

/// A required environment variable of a child.
pub fn arg(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

/// Starts this test binary again, running only `test` in `role`.
pub fn spawn(test: &str, role: &str, env: &[(&str, String)]) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env("SHMKV_TEST_ROLE", role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Waits for a child and returns its `RESULT ` lines' payloads.
pub fn results(child: Child) -> (std::process::ExitStatus, Vec<String>) {
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT ").map(str::to_string))
        .collect();
    (out.status, lines)
}

/// Kills a child we started (by its pid) if it is still running.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
