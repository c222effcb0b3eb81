//! The etcd scenarios' harness: a real `etcd` on free loopback ports with a
//! temporary data dir (killed by pid on drop, also on panic), the sync as a
//! subprocess (the `shmkv-sync` binary), the map's cleanup, and the
//! convergence check against `etcdctl get --prefix -w json`.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use etcd_client::{Client, Txn, TxnOp};
use shmkv::{Options, RawMap};

/// Key/value pairs.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A unique name for maps and directories.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "shmkv-sync-test-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running etcd (single member).
pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    peer: String,
    dir: PathBuf,
    /// More `etcd` arguments (`start_with`).
    extra: Vec<String>,
}

impl Etcd {
    /// Starts etcd; panics (the test fails, it is never skipped) when the
    /// `etcd` binary is absent.
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    /// `start` with more `etcd` arguments (kept across restarts).
    pub fn start_with(extra: &[&str]) -> Etcd {
        let found = Command::new("etcd")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "the etcd scenarios need `etcd` and `etcdctl` on PATH \
             (Debian: apt-get install etcd-server etcd-client; scripts/test.sh does it)"
        );
        let dir = std::env::temp_dir().join(unique("etcd"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut e = Etcd {
            child: None,
            url: format!("http://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&self.url)
            .arg("--advertise-client-urls")
            .arg(&self.url)
            .arg("--listen-peer-urls")
            .arg(&self.peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer)
            .arg("--initial-cluster")
            .arg(format!("default={}", self.peer))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            let ok = self
                .ctl(&["endpoint", "health"])
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "etcd did not become healthy; log:\n{}",
                std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs etcd (its data dir stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills etcd, deletes its data and starts a new one on the same ports
    /// with the same member name: the same cluster id, its revision back
    /// at 1 (as a cluster restored from an older backup).
    pub fn wipe_and_restart(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.dir.join("data")).unwrap();
        self.spawn();
    }

    /// `etcdctl --endpoints URL ARGS`.
    pub fn ctl(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.url)
            .args(args)
            .output()
    }

    /// `etcdctl` that must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args).expect("run etcdctl");
        assert!(
            o.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Every key and value under `prefix` and the header revision, from
    /// `etcdctl get --prefix -w json`.
    pub fn get_prefix(&self, prefix: &str) -> (i64, Pairs) {
        let out = self.ctl_ok(&["get", "--prefix", prefix, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        let b64 = |s: &serde_json::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(s.as_str().unwrap_or(""))
                .expect("base64")
        };
        let rev = v["header"]["revision"].as_i64().expect("revision");
        let mut kvs: Vec<_> = v["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| (b64(&kv["key"]), b64(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default();
        kvs.sort();
        (rev, kvs)
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl_ok(&["get", "/nonexistent-key-for-the-revision", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    }

    /// A client for bulk writes (one txn of up to 100 operations per
    /// revision).
    pub fn client(&self) -> Bulk {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(Client::connect([&self.url], None)).unwrap();
        Bulk { rt, client }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client for the tests' writes.
pub struct Bulk {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Bulk {
    /// Puts every pair, 100 per txn (one revision each); the last revision.
    pub fn put_all(&mut self, kvs: &[(String, Vec<u8>)]) -> i64 {
        let mut rev = 0;
        for chunk in kvs.chunks(100) {
            rev = self.txn(
                chunk
                    .iter()
                    .map(|(k, v)| TxnOp::put(k.as_bytes(), v.clone(), None))
                    .collect(),
            );
        }
        rev
    }

    /// One txn of `ops` (one revision); its revision.
    pub fn txn(&mut self, ops: Vec<TxnOp>) -> i64 {
        let r = self
            .rt
            .block_on(self.client.txn(Txn::new().and_then(ops)))
            .expect("txn");
        r.header().unwrap().revision()
    }

    /// Tries one txn (`Err` when etcd is down).
    pub fn try_txn(&mut self, ops: Vec<TxnOp>) -> Result<i64, etcd_client::Error> {
        let r = self
            .rt
            .block_on(self.client.txn(Txn::new().and_then(ops)))?;
        Ok(r.header().unwrap().revision())
    }
}

/// Removes the map when dropped (also on panic).
pub struct MapGuard(pub String);

impl Drop for MapGuard {
    fn drop(&mut self) {
        let _ = RawMap::destroy_by_name(&self.0, &Options::new());
    }
}

/// A running sync (`shmkv-sync etcd ...`), SIGKILLed by pid on drop.
pub struct Sync {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Sync {
    /// Starts `shmkv-sync etcd --endpoints URL --prefix PREFIX MAP EXTRA...`
    /// with its stderr in a log file.
    pub fn start(etcd: &Etcd, prefix: &str, map: &str, extra: &[&str]) -> Sync {
        let log = std::env::temp_dir().join(format!("{}.log", unique("sync")));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shmkv-sync"))
            .env("RUST_LOG", "shmkv_sync=debug")
            .args(["etcd", "--endpoints", &etcd.url, "--prefix", prefix, map])
            .args(if extra.contains(&"--summary-interval") {
                &[][..]
            } else {
                &["--summary-interval", "1"][..]
            })
            .args(extra)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start shmkv-sync");
        Sync {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` and waits for the exit code (None: killed by a signal).
    pub fn signal_and_wait(&mut self, sig: i32) -> Option<i32> {
        let mut c = self.child.take().expect("running");
        // SAFETY: a plain kill(2) of our own child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
        c.wait().unwrap().code()
    }

    /// Waits (up to `limit`) for it to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        let c = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st.code();
            }
            assert!(
                t0.elapsed() < limit,
                "the sync did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("sync log kept: {}", self.log.display());
        }
    }
}

/// The map's user entries, sorted.
pub fn map_entries(map: &str) -> Pairs {
    let m = RawMap::open(map, &Options::new().read_only(true)).expect("open map");
    let mut v: Vec<_> = m
        .entries()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    v.sort();
    v
}

/// The map's applied revision (0 without a sync state or map).
pub fn map_revision(map: &str) -> i64 {
    RawMap::open(map, &Options::new().read_only(true))
        .ok()
        .and_then(|m| m.sync_state().unwrap())
        .map_or(0, |s| s.revision)
}

/// The convergence check: waits until the map's applied revision reaches
/// etcd's current revision, then compares the whole map with `etcdctl get
/// --prefix` (keys stripped of the prefix when `strip`).
pub fn assert_converges(etcd: &Etcd, prefix: &str, map: &str, strip: bool, sync: &Sync) {
    let t0 = Instant::now();
    loop {
        let (rev, kvs) = etcd.get_prefix(prefix);
        let expected: Vec<_> = kvs
            .into_iter()
            .map(|(k, v)| {
                let k = if strip { k[prefix.len()..].to_vec() } else { k };
                (k, v)
            })
            .collect();
        let mine = map_revision(map);
        if mine >= rev {
            let got = map_entries(map);
            if got != expected {
                let missing = expected.iter().filter(|e| !got.contains(e)).count();
                let extra = got.iter().filter(|e| !expected.contains(e)).count();
                panic!(
                    "map {map} at revision {mine} differs from etcd at {rev}: \
                     {} entries vs {}, {missing} of etcd's missing or different, \
                     {extra} extra or different; sync log:\n{}",
                    got.len(),
                    expected.len(),
                    tail(&sync.log())
                );
            }
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "map {map} stuck at revision {mine}, etcd at {rev}; sync log:\n{}",
            tail(&sync.log())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<_> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until `cond` or panics after `limit` with `what`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a child process by pid on drop.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process that stands for another sync holding a lease: `sleep 120`,
/// SIGKILLed by pid on drop.
pub struct Holder(KillOnDrop);

impl Holder {
    pub fn start() -> Holder {
        let child = Command::new("sleep")
            .arg("120")
            .spawn()
            .expect("start sleep");
        Holder(KillOnDrop(Some(child)))
    }

    /// Its pid and start time (a live lease owner).
    pub fn owner(&self) -> (u32, u64) {
        let pid = self.0 .0.as_ref().expect("running").id();
        (pid, shmkv::process_start_time(pid).expect("sleep runs"))
    }
}

/// XORs `x` into the 8-byte word at `off` of the map's data segment in
/// force (a scribble by "another program"; `off` from
/// `shmkv::__private::data_offsets`).
pub fn scribble_data_word(map: &str, off: usize, x: u64) {
    let m = RawMap::open(map, &Options::new()).unwrap();
    let id = m.stats().unwrap().data_shmid;
    // SAFETY: a null address lets the kernel choose; plain arguments.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    assert_ne!(p as isize, -1, "shmat: {}", std::io::Error::last_os_error());
    assert_eq!(off % 8, 0);
    // SAFETY: `off` is a header field's offset, inside the segment and
    // 8-aligned (checked); the word is shared memory, so volatile;
    // scribbling on it is the point of the test.
    unsafe {
        let w = p.cast::<u8>().add(off).cast::<u64>();
        w.write_volatile(w.read_volatile() ^ x);
        libc::shmdt(p);
    }
}
