//! Shared test support: unique map names, cleanup guards that remove every
//! SysV object also when a test fails, leak assertions, and child processes
//! (the test binary re-executed in a "role").
#![allow(dead_code)]

// The tests use `shmkv::__private` (crash points, the heap kernel, layout
// offsets), which exists only with this feature: fail loudly, never skip.
#[cfg(not(feature = "__test-hooks"))]
compile_error!(
    "the tests need the feature __test-hooks: run `bash scripts/test.sh` \
     (or `cargo test --workspace --all-features`)"
);

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

/// Reads the child's stdout up to the line `RESULT <payload>` (a child
/// saying it reached a point), byte by byte so that nothing after that line
/// is consumed: [`results`] still gets the rest. Panics if the child ends
/// first.
pub fn await_result(child: &mut Child, payload: &str) {
    use std::io::Read;
    let want = format!("RESULT {payload}");
    let out = child.stdout.as_mut().expect("the child's stdout is piped");
    let mut line = Vec::new();
    let mut b = [0u8];
    loop {
        match out.read(&mut b) {
            Ok(0) => panic!("the child ended before printing {want:?}"),
            Ok(_) if b[0] == b'\n' => {
                if line == want.as_bytes() {
                    return;
                }
                line.clear();
            }
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the child's stdout: {e}"),
        }
    }
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

/// A SysV segment attached directly by a test, to read or scribble on its
/// bytes (the one place tests call `shmat`). Every offset a test passes
/// comes from `shmkv::__private::{root_offsets, data_offsets}` (the layout's
/// `offset_of!`), never a literal. Detached on drop; the segment itself is
/// not removed.
pub struct Segment {
    p: *mut u8,
    len: usize,
    id: i32,
    writable: bool,
}

impl Segment {
    /// Attaches segment `shmid` read-write; panics if it cannot.
    pub fn attach(shmid: i32) -> Segment {
        Segment::try_attach(shmid, true).unwrap_or_else(|e| panic!("shmat of segment {shmid}: {e}"))
    }

    /// Attaches segment `shmid` read-only or read-write.
    pub fn try_attach(shmid: i32, writable: bool) -> std::io::Result<Segment> {
        // SAFETY: shmid_ds is plain data; all-zero is a valid value.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: ds is a valid, writable shmid_ds.
        if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = if writable { 0 } else { libc::SHM_RDONLY };
        // SAFETY: a null address lets the kernel choose.
        let p = unsafe { libc::shmat(shmid, std::ptr::null(), flags) };
        if p as isize == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Segment {
            p: p.cast(),
            len: ds.shm_segsz,
            id: shmid,
            writable,
        })
    }

    /// Makes a new segment of `size` bytes at `key` (`IPC_PRIVATE` for
    /// none) with `mode`, as "another program" would, and attaches it. The
    /// caller removes it.
    pub fn create(key: i32, size: usize, mode: i32) -> Segment {
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | mode;
        // SAFETY: plain integer arguments.
        let id = unsafe { libc::shmget(key, size, flags) };
        assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
        Segment::attach(id)
    }

    /// The root segment of the map at SysV key `key`.
    pub fn root_of(key: i32) -> Segment {
        // SAFETY: plain integer arguments.
        let id = unsafe { libc::shmget(key, 0, 0) };
        assert!(id >= 0, "no segment at key {key:#x}");
        Segment::attach(id)
    }

    /// The data segment in force of the map `stats` describe.
    pub fn data_of(stats: &Stats) -> Segment {
        Segment::attach(stats.data_shmid)
    }

    pub fn id(&self) -> i32 {
        self.id
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn check(&self, off: usize, n: usize, write: bool) {
        assert!(
            off.checked_add(n).is_some_and(|end| end <= self.len),
            "bytes {off}..+{n} outside segment {} of {} bytes",
            self.id,
            self.len
        );
        assert!(
            !write || self.writable,
            "segment {} attached read-only",
            self.id
        );
    }

    /// The little-endian word at `off` (8-aligned).
    pub fn read_u64(&self, off: usize) -> u64 {
        self.check(off, 8, false);
        assert_eq!(off % 8, 0, "unaligned word at {off}");
        // SAFETY: in bounds and aligned (checked); a volatile load of a
        // mapped word (other processes may write it: a test reads words no
        // writer is changing meanwhile).
        unsafe { self.p.add(off).cast::<u64>().read_volatile() }
    }

    /// Stores `v` at `off` (8-aligned).
    pub fn write_u64(&self, off: usize, v: u64) {
        self.check(off, 8, true);
        assert_eq!(off % 8, 0, "unaligned word at {off}");
        // SAFETY: in bounds, aligned, writable mapping (checked); scribbling
        // is the point of the test.
        unsafe { self.p.add(off).cast::<u64>().write_volatile(v) }
    }

    /// `n` bytes from `off`.
    pub fn read_bytes(&self, off: usize, n: usize) -> Vec<u8> {
        self.check(off, n, false);
        // SAFETY: in bounds (checked); byte loads need no alignment.
        (0..n)
            .map(|i| unsafe { self.p.add(off + i).read_volatile() })
            .collect()
    }

    /// Stores `bytes` at `off`.
    pub fn write_bytes(&self, off: usize, bytes: &[u8]) {
        self.check(off, bytes.len(), true);
        for (i, &b) in bytes.iter().enumerate() {
            // SAFETY: in bounds, writable mapping (checked).
            unsafe { self.p.add(off + i).write_volatile(b) };
        }
    }

    /// XORs the byte at `off` with `mask`.
    pub fn flip(&self, off: usize, mask: u8) {
        let b = self.read_bytes(off, 1)[0];
        self.write_bytes(off, &[b ^ mask]);
    }

    /// Saves the `n` bytes at `off` now and puts them back when the guard
    /// drops (also when the test panics, so that the map stays one
    /// `destroy` can remove).
    pub fn restore(&self, off: usize, n: usize) -> Restore<'_> {
        self.check(off, n, true);
        Restore {
            seg: self,
            saved: vec![(off, self.read_bytes(off, n))],
        }
    }

    /// [`restore`](Self::restore) of the words at `offs`.
    pub fn restore_words(&self, offs: &[usize]) -> Restore<'_> {
        for &o in offs {
            self.check(o, 8, true);
        }
        Restore {
            seg: self,
            saved: offs.iter().map(|&o| (o, self.read_bytes(o, 8))).collect(),
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `p` came from shmat and is detached once.
        unsafe { libc::shmdt(self.p.cast()) };
    }
}

/// Bytes of a [`Segment`] put back as they were when it drops.
pub struct Restore<'a> {
    seg: &'a Segment,
    saved: Vec<(usize, Vec<u8>)>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for (off, bytes) in self.saved.iter().rev() {
            self.seg.write_bytes(*off, bytes);
        }
    }
}

/// The crash point named like its variant (`"MidApply"`), through the
/// library's own `CrashPoint::from_name`; panics on an unknown name.
pub fn crash_point(name: &str) -> shmkv::__private::CrashPoint {
    shmkv::__private::CrashPoint::from_name(name)
        .unwrap_or_else(|| panic!("unknown crash point {name}"))
}

/// One row of `/proc/sysvipc/shm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmRow {
    pub key: i32,
    pub shmid: i32,
    pub size: u64,
    pub cpid: u32,
    pub nattch: u64,
}

/// Every SysV segment on the machine (the one parser of the table that the
/// tests use).
pub fn sysv_segments() -> Vec<ShmRow> {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            // key shmid perms size cpid lpid nattch ...
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| f[i].parse::<i64>().unwrap();
            ShmRow {
                key: num(0) as i32,
                shmid: num(1) as i32,
                size: num(3) as u64,
                cpid: num(4) as u32,
                nattch: num(6) as u64,
            }
        })
        .collect()
}
