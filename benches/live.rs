//! Multi-process latency distributions (issue 12): what criterion, which
//! times one process, cannot measure. The binary spawns itself as child
//! processes for the roles (env `SHMKV_LIVE_ROLE`); they start together on
//! a flag in a small coordination segment and report one JSON line each on
//! their stdout. Rows go to `target/shmkv-bench/live.jsonl` (format: benches/README.md;
//! directory from `SHMKV_BENCH_DIR`), a summary to stdout.
//!
//! Sections (16-byte keys, 64-byte values):
//! - `reads-under-writes`: 1 and 2 reader processes doing random `get_ref`
//!   on a map of `entries` keys, every 64th read timed alone (`Instant`
//!   pair, the timer's median cost subtracted), while a writer process
//!   overwrites random existing keys at 0 (no writer), 10k, 100k writes/s
//!   (paced by deadline: yield until the next one is due) and unthrottled.
//! - `resize-under-readers`: readers time EVERY `get_ref` while a writer
//!   grows a map to `grow_to` entries in batches (several generation
//!   switches), then overwrites and deletes until it compacts, and compacts
//!   once more explicitly. Reads during a window (a write that switched the
//!   generation, from its start to 10 ms after it returned) are kept; the
//!   parent samples the map's SysV segments and the processes' PSS.
//! - `writers`: two writer processes overwriting random keys of one map
//!   (every insert timed: lock wait plus the write); one process's single
//!   inserts of fresh keys (growth included) then overwrites (compactions);
//!   batches of fresh keys with growth, ns per key.
//! - `redis`: with `SHMKV_BENCH_REDIS` set, redis GET/SET (plain and
//!   pipelined by 64) from 1 and 2 processes next to shmkv's same measure.
//!
//! `SHMKV_LIVE_QUICK=1`: small sizes and short runs (smoke check).
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shmkv::{HugePages, Options, RawMap, Size};
use shmkv_benches::{key, out_path, timer_cost, MapGuard, Rng};

// ---------------------------------------------------------------- basics

fn value(i: u64) -> [u8; 64] {
    let mut v = [0x5au8; 64];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// mean/p50/p99/p999/max/n of samples (ns); `{"n": 0}` if there are none.
fn summarize(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!({"n": 0});
    }
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({"mean": round3(mean), "p50": pct(&v, 0.5), "p99": pct(&v, 0.99),
           "p999": pct(&v, 0.999), "max": v[v.len() - 1], "n": v.len()})
}

/// Three significant digits (the nearest double, printed cleanly).
fn round3(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    format!("{x:.2e}").parse().unwrap_or(x)
}

fn env_f64(name: &str) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn env_u64(name: &str) -> u64 {
    env_f64(name) as u64
}

fn env_s(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} missing"))
}

/// CLOCK_MONOTONIC in ns (the clock `Instant` uses; the same in every
/// process).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given (vDSO, no system
    // call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The cost of a `now_ns` pair with nothing between (median, ns).
fn now_ns_cost() -> f64 {
    let mut v: Vec<f64> = (0..100_000)
        .map(|_| {
            let t = now_ns();
            (now_ns() - t) as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (minor page faults, involuntary and voluntary context switches) of this
/// process so far.
fn rusage() -> (u64, u64, u64) {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    (u.ru_minflt as u64, u.ru_nivcsw as u64, u.ru_nvcsw as u64)
}

/// A child's report: one line `RESULT <json>` on its stdout.
fn report(v: Value) {
    println!("RESULT {v}");
}

// --------------------------------------------------- coordination segment

const WINDOWS: usize = 4096;

/// Shared by the parent and its children (a private SysV segment, marked
/// for removal as soon as the parent attached it: it disappears with the
/// last process that has it, also when they are killed).
#[repr(C)]
struct Coord {
    /// Children that attached and are waiting.
    ready: AtomicU64,
    /// Set by the parent: start.
    go: AtomicU64,
    /// Set by a writer: readers stop.
    stop: AtomicU64,
    /// Keys committed so far (growth: readers pick keys below it).
    inserted: AtomicU64,
    /// The write window in progress: `phase << 32 | number`, 0 for none.
    window: AtomicU64,
    /// Per window number: 1 if its write switched the generation.
    switched: [AtomicU8; WINDOWS],
    /// Per window number: `now_ns` when its write began and returned.
    write_start: [AtomicU64; WINDOWS],
    write_end: [AtomicU64; WINDOWS],
}

struct CoordSeg {
    id: i32,
    ptr: *const Coord,
}

impl CoordSeg {
    fn create() -> CoordSeg {
        let size = std::mem::size_of::<Coord>();
        // SAFETY: plain system call; a private segment of `size` bytes.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, size, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
        let seg = CoordSeg::attach(id);
        // SAFETY: removal of the segment just made; Linux keeps it while
        // attached and lets children attach it by id until the last detach.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        seg
    }

    fn attach(id: i32) -> CoordSeg {
        // SAFETY: attaches segment `id` at an address the kernel picks.
        let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        assert!(
            p as isize != -1,
            "shmat: {}",
            std::io::Error::last_os_error()
        );
        CoordSeg {
            id,
            ptr: p.cast::<Coord>(),
        }
    }

    fn get(&self) -> &Coord {
        // SAFETY: the mapping is page-aligned, zero-initialised by the
        // kernel (a valid `Coord`: atomics only) and lives until drop.
        unsafe { &*self.ptr }
    }

    fn reset(&self) {
        let c = self.get();
        for a in [&c.ready, &c.go, &c.stop, &c.inserted, &c.window] {
            a.store(0, Ordering::SeqCst);
        }
        for s in &c.switched {
            s.store(0, Ordering::SeqCst);
        }
        for s in c.write_start.iter().chain(&c.write_end) {
            s.store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for CoordSeg {
    fn drop(&mut self) {
        // SAFETY: detaches the mapping made in `attach`; nothing refers to
        // it after drop.
        unsafe { libc::shmdt(self.ptr.cast()) };
    }
}

/// In a child: attach the parent's segment, say ready, wait for go (at
/// most 60 s).
fn child_coord() -> CoordSeg {
    // The parent's death kills the child (no orphan keeps running).
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let seg = CoordSeg::attach(env_u64("SHMKV_LIVE_COORD") as i32);
    seg.get().ready.fetch_add(1, Ordering::SeqCst);
    let t = Instant::now();
    while seg.get().go.load(Ordering::Acquire) == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "no go from parent");
        std::thread::sleep(Duration::from_micros(100));
    }
    seg
}

// ------------------------------------------------------ children (parent)

/// Children of the parent; killed (by pid) and reaped if still running
/// when this drops (panic in the parent, a failed child).
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Set by SIGINT/SIGTERM in the parent: the next wait for children panics,
/// which kills them and removes the maps (the guards' `Drop`).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
            )
        };
    }
}

fn spawn(role: &str, coord: &CoordSeg, env: &[(&str, String)]) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env("SHMKV_LIVE_ROLE", role)
        .env("SHMKV_LIVE_COORD", coord.id.to_string())
        .stdout(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

impl Kids {
    /// Waits until all children attached, then starts them.
    fn start(&self, coord: &CoordSeg) {
        let t = Instant::now();
        while coord.get().ready.load(Ordering::SeqCst) < self.0.len() as u64 {
            assert!(t.elapsed() < Duration::from_secs(60), "children not ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        coord.get().go.store(1, Ordering::Release);
    }

    /// Each child's report, in spawn order; a child that fails or runs past
    /// `limit` fails the bench (the others are killed by `Drop`).
    fn collect(mut self, limit: Duration) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let mut done = true;
            for c in &mut self.0 {
                match c.try_wait() {
                    Ok(Some(st)) => assert!(st.success(), "child {} failed: {st}", c.id()),
                    _ => done = false,
                }
            }
            if done {
                break;
            }
            assert!(
                !INTERRUPTED.load(Ordering::Relaxed),
                "interrupted (SIGINT/SIGTERM)"
            );
            assert!(t.elapsed() < limit, "a child ran past {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut out = Vec::new();
        for c in std::mem::take(&mut self.0) {
            let pid = c.id();
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "child {pid} failed: {:?}", o.status);
            let text = String::from_utf8_lossy(&o.stdout);
            let line = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("RESULT "))
                .unwrap_or_else(|| panic!("child {pid} reported nothing"));
            out.push(serde_json::from_str(line).unwrap());
        }
        out
    }

    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }
}

// ------------------------------------------------------------ row output

struct Out {
    file: std::fs::File,
    cores: usize,
}

impl Out {
    fn new() -> Out {
        let file = std::fs::File::create(out_path("live.jsonl")).unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Out { file, cores }
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        section: &str,
        subject: &str,
        mut params: Value,
        measure: &str,
        cache: &str,
        keys: &str,
        stats: Value,
        extra: Value,
    ) {
        params["cores"] = json!(self.cores);
        params["key_bytes"] = json!(16);
        params["value_bytes"] = json!(64);
        let r = json!({"section": section, "subject": subject, "params": params,
            "measure": measure, "cache": cache, "keys": keys, "unit": "ns",
            "stats": stats, "extra": extra});
        writeln!(self.file, "{r}").unwrap();
        let f = |k: &str| {
            stats
                .get(k)
                .and_then(Value::as_f64)
                .map_or("-".to_string(), |x| format!("{}", round3(x)))
        };
        let mut p = params.clone();
        for k in ["cores", "key_bytes", "value_bytes"] {
            p.as_object_mut().unwrap().remove(k);
        }
        let mut e = extra.clone();
        if let Some(o) = e.as_object_mut() {
            o.remove("note");
        }
        println!(
            "  {subject:<44} {p}\n      p50 {:>7} p99 {:>8} p999 {:>8} max {:>9} mean {:>8} n {:>8}  {e}",
            f("p50"),
            f("p99"),
            f("p999"),
            f("max"),
            f("mean"),
            f("n")
        );
    }
}

// ----------------------------------------------------------------- sizes

struct Cfg {
    quick: bool,
    /// Seconds each timed run lasts.
    secs: f64,
    /// Keys of the read/write map.
    entries: u64,
    /// Keys the growth run reaches.
    grow_to: u64,
    /// Keys per growth batch.
    grow_batch: u64,
    /// Single inserts of fresh keys (then as many overwrites).
    singles: u64,
    /// Fresh keys inserted in batches.
    batch_keys: u64,
}

fn cfg() -> Cfg {
    let on = |v: &str| std::env::var(v).is_ok_and(|v| v != "0" && !v.is_empty());
    // `SHMKV_BENCH_QUICK` is what scripts/bench.sh sets for all benches.
    let quick = on("SHMKV_LIVE_QUICK") || on("SHMKV_BENCH_QUICK");
    if quick {
        Cfg {
            quick,
            secs: 0.4,
            entries: 10_000,
            grow_to: 100_000,
            grow_batch: 5_000,
            singles: 20_000,
            batch_keys: 100_000,
        }
    } else {
        Cfg {
            quick,
            secs: 4.0,
            entries: 100_000,
            grow_to: 1_000_000,
            grow_batch: 10_000,
            singles: 300_000,
            batch_keys: 1_000_000,
        }
    }
}

fn filled_map(name: &str, n: u64) -> RawMap {
    let m = RawMap::create(
        name,
        &Options::new()
            .capacity(n)
            .arena_size(Size::from(n * 112 + (4 << 20))),
    )
    .unwrap();
    let all: Vec<u64> = (0..n).collect();
    for chunk in all.chunks(10_000) {
        m.write(|b| chunk.iter().try_for_each(|&i| b.insert(&key(i), &value(i))))
            .unwrap();
    }
    m
}

// ------------------------------------------------------------ child roles

/// Random `get_ref` for `SHMKV_LIVE_SECS`, every 64th timed alone.
fn role_reader() {
    let coord = child_coord();
    let m = RawMap::open(&env_s("SHMKV_LIVE_MAP"), &Options::new().read_only(true)).unwrap();
    let entries = env_u64("SHMKV_LIVE_ENTRIES");
    let secs = env_f64("SHMKV_LIVE_SECS");
    let timer = timer_cost();
    let mut rng = Rng::seeded();
    let mut samples = Vec::with_capacity(1 << 20);
    let (mut reads, mut overlaps, mut sum) = (0u64, 0u64, 0u64);
    let ru0 = rusage();
    let retries0 = shmkv::read_retries();
    let start = Instant::now();
    drop(coord);
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            for _ in 0..63 {
                let r = m.get_ref(&key(rng.below(entries))).unwrap();
                sum += u64::from(r.map_or(0, |v| v[0]));
            }
            let k = key(rng.below(entries));
            let v0 = m.version();
            let t = Instant::now();
            let r = m.get_ref(&k).unwrap();
            sum += u64::from(r.map_or(0, |v| v[0]));
            let ns = t.elapsed().as_nanos() as f64;
            if m.version() != v0 {
                overlaps += 1;
            }
            samples.push((ns - timer).max(0.0));
        }
        reads += 64 * 64;
    }
    let el = start.elapsed().as_secs_f64();
    let retries = shmkv::read_retries() - retries0;
    black_box(sum);
    let n = samples.len() as f64;
    let ru1 = rusage();
    report(
        json!({"nivcsw": ru1.1 - ru0.1, "stats": summarize(samples), "reads_per_s": reads as f64 / el,
        "overlap_frac": overlaps as f64 / n, "timer_ns": timer,
        "retries_per_read": retries as f64 / reads as f64}),
    );
}

/// Waits until `due`: sleeps while more than 300 µs away, then yields.
fn pace(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > Duration::from_micros(300) {
            std::thread::sleep(left - Duration::from_micros(200));
        } else {
            std::thread::yield_now();
        }
    }
}

/// Overwrites random existing keys at `SHMKV_LIVE_RATE` per second (0:
/// unthrottled) for `SHMKV_LIVE_SECS`; every insert timed.
fn role_writer() {
    let coord = child_coord();
    let m = RawMap::open(&env_s("SHMKV_LIVE_MAP"), &Options::new()).unwrap();
    let entries = env_u64("SHMKV_LIVE_ENTRIES");
    let secs = env_f64("SHMKV_LIVE_SECS");
    let rate = env_f64("SHMKV_LIVE_RATE");
    drop(coord);
    let timer = timer_cost();
    let gen0 = m.stats().unwrap().generation;
    let mut rng = Rng::seeded();
    let mut lat = Vec::with_capacity(1 << 20);
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let start = Instant::now();
    let mut due = start;
    let mut writes = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        if let Some(p) = period {
            pace(due);
            due += p;
            // Fallen far behind (descheduled): do not burst to catch up.
            let now = Instant::now();
            if now > due + Duration::from_millis(10) {
                due = now;
            }
        }
        let i = rng.below(entries);
        let t = Instant::now();
        m.insert(&key(i), &value(writes)).unwrap();
        lat.push((t.elapsed().as_nanos() as f64 - timer).max(0.0));
        writes += 1;
    }
    let el = start.elapsed().as_secs_f64();
    let switches = m.stats().unwrap().generation - gen0;
    report(json!({"writes_per_s": writes as f64 / el, "writes": writes,
        "stats": summarize(lat), "switches": switches}));
}

/// Times every `get_ref` until the writer says stop; keeps the reads made
/// during windows whose write switched the generation, per phase.
fn role_resize_reader() {
    let coord = child_coord();
    let c = coord.get();
    let m = RawMap::open(&env_s("SHMKV_LIVE_MAP"), &Options::new().read_only(true)).unwrap();
    let timer = now_ns_cost();
    let mut rng = Rng::seeded();
    // Reads (ns, start) of the window in progress, and those kept per phase
    // (1 growth, 2 compaction) with where they began: 0 while the write
    // ran, 1 after it returned.
    type Reads = Vec<(f64, u64)>;
    let mut cur: (u64, Reads) = (0, Vec::new());
    let mut kept: [Vec<(f64, u8)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    // Per phase: the slowest kept read (ns, ms after its write began,
    // whether after the write returned).
    let mut slowest = [(0f64, 0f64, false); 3];
    let mut outside_max = 0f64;
    let (mut reads, mut misses, mut sum) = (0u64, 0u64, 0u64);
    let mut finish = |cur: &mut (u64, Reads), kept: &mut [Vec<(f64, u8)>; 3]| {
        let (w, v) = std::mem::take(cur);
        let n = (w & 0xffff_ffff) as usize % WINDOWS;
        if w == 0 || c.switched[n].load(Ordering::Acquire) != 1 {
            return;
        }
        let phase = (w >> 32) as usize % 3;
        let (ws, we) = (
            c.write_start[n].load(Ordering::Acquire),
            c.write_end[n].load(Ordering::Acquire),
        );
        for (ns, at) in v {
            let after = we != 0 && at >= we;
            if ns > slowest[phase].0 {
                slowest[phase] = (ns, at.saturating_sub(ws) as f64 / 1e6, after);
            }
            kept[phase].push((ns, u8::from(after)));
        }
    };
    let ru0 = rusage();
    let start = Instant::now();
    while c.stop.load(Ordering::Acquire) == 0 {
        let w = c.window.load(Ordering::Acquire);
        let n = c.inserted.load(Ordering::Acquire);
        for _ in 0..16 {
            let k = key(rng.below(n));
            let t = now_ns();
            let r = m.get_ref(&k).unwrap();
            match &r {
                Some(v) => sum += u64::from(v[0]),
                None => misses += 1,
            }
            drop(r);
            let ns = ((now_ns() - t) as f64 - timer).max(0.0);
            if w != 0 {
                if w != cur.0 {
                    finish(&mut cur, &mut kept);
                    cur.0 = w;
                }
                cur.1.push((ns, t));
            } else {
                outside_max = outside_max.max(ns);
            }
        }
        if w == 0 && cur.0 != 0 {
            finish(&mut cur, &mut kept);
        }
        reads += 16;
        assert!(start.elapsed() < Duration::from_secs(300), "no stop");
    }
    finish(&mut cur, &mut kept);
    black_box(sum);
    let ru1 = rusage();
    let mut r = json!({"minflt": ru1.0 - ru0.0, "nivcsw": ru1.1 - ru0.1, "nvcsw": ru1.2 - ru0.2,
        "outside_max": outside_max, "reads": reads, "misses": misses, "timer_ns": timer,
        "reads_per_s": reads as f64 / start.elapsed().as_secs_f64()});
    for (phase, name) in [(1, "growth"), (2, "compaction")] {
        let v = std::mem::take(&mut kept[phase]);
        let over = |after: u8| v.iter().filter(|x| x.0 > 1e6 && x.1 == after).count();
        r[format!("{name}_over_1ms_during_write")] = json!(over(0));
        r[format!("{name}_over_1ms_after_write")] = json!(over(1));
        let (ns, ms, after) = slowest[phase];
        r[format!("{name}_slowest")] =
            json!({"ns": ns, "ms_after_write_began": round3(ms), "after_write_returned": after});
        r[name] = summarize(v.into_iter().map(|x| x.0).collect());
    }
    report(r);
}

/// Grows the map to `SHMKV_LIVE_GROW_TO` keys in batches, then overwrites
/// and deletes until it compacts, then compacts explicitly. Each write is
/// a window; those that switched the generation are marked.
fn role_resize_writer() {
    let coord = child_coord();
    let c = coord.get();
    let m = RawMap::open(&env_s("SHMKV_LIVE_MAP"), &Options::new()).unwrap();
    let grow_to = env_u64("SHMKV_LIVE_GROW_TO");
    let batch = env_u64("SHMKV_LIVE_BATCH");
    let mut n = c.inserted.load(Ordering::Acquire);
    let mut number = 0u64;
    let mut gen = m.stats().unwrap().generation;
    let mut switch_ms: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut window = |phase: u64, write: &mut dyn FnMut()| {
        number += 1;
        let slot = number as usize % WINDOWS;
        c.write_end[slot].store(0, Ordering::Release);
        c.write_start[slot].store(now_ns(), Ordering::Release);
        c.window.store(phase << 32 | number, Ordering::Release);
        let t = Instant::now();
        write();
        c.write_end[slot].store(now_ns(), Ordering::Release);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let g = m.stats().unwrap().generation;
        if g != gen {
            gen = g;
            c.switched[number as usize % WINDOWS].store(1, Ordering::Release);
            switch_ms[phase as usize].push(ms);
            // Readers switch on their next read: keep the window open.
            std::thread::sleep(Duration::from_millis(10));
        }
        c.window.store(0, Ordering::Release);
    };
    // Readers run a while before the first window.
    std::thread::sleep(Duration::from_millis(100));
    while n < grow_to {
        let hi = (n + batch).min(grow_to);
        window(1, &mut || {
            m.write(|b| (n..hi).try_for_each(|i| b.insert(&key(i), &value(i))))
                .unwrap()
        });
        n = hi;
        c.inserted.store(n, Ordering::Release);
    }
    let after_growth = m.stats().unwrap();
    // Compaction: overwrite every key once (garbage), delete every 8th
    // (tombstones), in batches; the map compacts on its own when garbage
    // passes half the arena; then once more explicitly.
    let mut i = 0;
    while i < grow_to {
        let hi = (i + batch).min(grow_to);
        window(2, &mut || {
            m.write(|b| {
                (i..hi).try_for_each(|j| {
                    if j % 8 == 7 {
                        b.remove(&key(j)).map(drop)
                    } else {
                        b.insert(&key(j), &value(j + 1))
                    }
                })
            })
            .unwrap()
        });
        i = hi;
    }
    window(2, &mut || m.compact().unwrap());
    c.stop.store(1, Ordering::Release);
    let s = m.stats().unwrap();
    report(
        json!({"growth_switches": switch_ms[1].len(), "growth_switch_ms": switch_ms[1],
        "compaction_switches": switch_ms[2].len(), "compaction_switch_ms": switch_ms[2],
        "capacity_after_growth": after_growth.capacity,
        "segment_bytes_after_growth": after_growth.segment_size,
        "live_end": s.live, "generation_end": s.generation}),
    );
}

/// Single inserts of `SHMKV_LIVE_N` fresh keys into a new small map, then
/// as many overwrites of random keys; every insert timed.
fn role_single() {
    let coord = child_coord();
    drop(coord);
    let m = RawMap::open(&env_s("SHMKV_LIVE_MAP"), &Options::new()).unwrap();
    let n = env_u64("SHMKV_LIVE_N");
    let timer = timer_cost();
    let mut fresh = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        m.insert(&key(i), &value(i)).unwrap();
        fresh.push((t.elapsed().as_nanos() as f64 - timer).max(0.0));
    }
    let g1 = m.stats().unwrap().generation;
    let mut rng = Rng::seeded();
    let mut over = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        m.insert(&key(rng.below(n)), &value(i + 1)).unwrap();
        over.push((t.elapsed().as_nanos() as f64 - timer).max(0.0));
    }
    let g2 = m.stats().unwrap().generation;
    report(
        json!({"fresh": summarize(fresh), "overwrite": summarize(over),
        "switches_fresh": g1 - 1, "switches_overwrite": g2 - g1}),
    );
}

/// Batches of `SHMKV_LIVE_BATCH` fresh keys into a new small map up to
/// `SHMKV_LIVE_N`: ns per key overall.
fn role_batch() {
    let coord = child_coord();
    drop(coord);
    let m = RawMap::open(&env_s("SHMKV_LIVE_MAP"), &Options::new()).unwrap();
    let n = env_u64("SHMKV_LIVE_N");
    let batch = env_u64("SHMKV_LIVE_BATCH");
    let mut per_batch = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let hi = (i + batch).min(n);
        let t = Instant::now();
        m.write(|b| (i..hi).try_for_each(|j| b.insert(&key(j), &value(j))))
            .unwrap();
        per_batch.push(t.elapsed().as_nanos() as f64 / (hi - i) as f64);
        i = hi;
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    let s = m.stats().unwrap();
    report(
        json!({"ns_per_key": ns, "per_batch_ns_per_key": summarize(per_batch),
        "switches": s.generation - 1, "capacity": s.capacity}),
    );
}

/// Redis GET or SET (`SHMKV_LIVE_OP`), one connection, plain (every
/// command timed) for `SECS`, then pipelined by 64 (ns per command).
fn role_redis() {
    let coord = child_coord();
    drop(coord);
    let client = redis::Client::open(env_s("SHMKV_BENCH_REDIS")).unwrap();
    let mut con = client.get_connection().unwrap();
    let entries = env_u64("SHMKV_LIVE_ENTRIES");
    let secs = env_f64("SHMKV_LIVE_SECS");
    let set = env_s("SHMKV_LIVE_OP") == "set";
    let mut rng = Rng::seeded();
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut w = 0u64;
    while start.elapsed().as_secs_f64() < secs / 2.0 {
        let i = rng.below(entries);
        let t = Instant::now();
        if set {
            w += 1;
            redis::cmd("SET")
                .arg(&key(i)[..])
                .arg(&value(w)[..])
                .query::<()>(&mut con)
                .unwrap();
        } else {
            let v: Option<Vec<u8>> = redis::cmd("GET").arg(&key(i)[..]).query(&mut con).unwrap();
            assert_eq!(v.map(|v| v.len()), Some(64));
        }
        lat.push(t.elapsed().as_nanos() as f64);
    }
    let start = Instant::now();
    let mut cmds = 0u64;
    while start.elapsed().as_secs_f64() < secs / 2.0 {
        let mut p = redis::pipe();
        for _ in 0..64 {
            let i = rng.below(entries);
            if set {
                w += 1;
                p.cmd("SET").arg(&key(i)[..]).arg(&value(w)[..]).ignore();
            } else {
                p.cmd("GET").arg(&key(i)[..]);
            }
        }
        if set {
            p.query::<()>(&mut con).unwrap();
        } else {
            let v: Vec<Option<Vec<u8>>> = p.query(&mut con).unwrap();
            assert_eq!(v.len(), 64);
        }
        cmds += 64;
    }
    let piped = start.elapsed().as_nanos() as f64 / cmds as f64;
    report(json!({"stats": summarize(lat), "pipelined_ns": piped, "pipelined_n": cmds}));
}

// -------------------------------------------------------- parent sections

const NOTE_CORES: &str = "the machine has few cores: with more busy processes than cores, \
    processes are descheduled and tail latencies (p99 and beyond, max) measure the scheduler, \
    not shmkv";

/// Peaks of the map's SysV segments and the processes' PSS, sampled every
/// 20 ms by a thread until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64, u64)>,
}

/// Sum of sizes of segments created by `cpids`, except `skip`.
fn segment_bytes(cpids: &[u32], skip: i32) -> u64 {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let col = |n: &str| head.iter().position(|h| *h == n);
    let (Some(ci), Some(si), Some(ii)) = (col("cpid"), col("size"), col("shmid")) else {
        return 0;
    };
    lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > ci.max(si).max(ii))
        .filter(|f| f[ii].parse::<i32>().ok() != Some(skip))
        .filter(|f| f[ci].parse::<u32>().is_ok_and(|p| cpids.contains(&p)))
        .filter_map(|f| f[si].parse::<u64>().ok())
        .sum()
}

/// `Pss:` of a process in KiB (0 if it is gone).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Sampler {
    fn start(cpids: Vec<u32>, skip: i32, writer: u32, readers: Vec<u32>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut seg, mut pw, mut pr) = (0, 0, 0);
            let mut tick = 0u64;
            while !s.load(Ordering::Relaxed) {
                seg = seg.max(segment_bytes(&cpids, skip));
                // smaps_rollup walks the process's mappings under its mmap
                // lock (which a reader attaching a new generation needs):
                // every 200 ms only, to disturb the readers little.
                if tick % 10 == 0 {
                    pw = pw.max(pss_kib(writer));
                    for &r in &readers {
                        pr = pr.max(pss_kib(r));
                    }
                }
                tick += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (seg, pw, pr)
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn reads_under_writes(cfg: &Cfg, out: &mut Out, coord: &CoordSeg, tag: &str) {
    println!(
        "\n== reads-under-writes ({} entries, {} s per run)",
        cfg.entries, cfg.secs
    );
    let name = format!("shmkv-live-{tag}-ruw");
    let _g = MapGuard(name.clone());
    let m = filled_map(&name, cfg.entries);
    let limit = Duration::from_secs_f64(cfg.secs * 3.0 + 60.0);
    for readers in [1usize, 2] {
        let mut base_p99 = None;
        for rate in [0u64, 10_000, 100_000, u64::MAX] {
            coord.reset();
            let env = |r: u64| {
                vec![
                    ("SHMKV_LIVE_MAP", name.clone()),
                    ("SHMKV_LIVE_ENTRIES", cfg.entries.to_string()),
                    ("SHMKV_LIVE_SECS", cfg.secs.to_string()),
                    ("SHMKV_LIVE_RATE", r.to_string()),
                ]
            };
            let mut kids = Kids(
                (0..readers)
                    .map(|_| spawn("reader", coord, &env(0)))
                    .collect(),
            );
            if rate > 0 {
                let r = if rate == u64::MAX { 0 } else { rate };
                kids.0.push(spawn("writer", coord, &env(r)));
            }
            kids.start(coord);
            let res = kids.collect(limit);
            let mut samples_p99 = Vec::new();
            let mut merged = json!({});
            // One row per reader count and rate: the readers' figures
            // combined (n summed, percentiles the worst reader's, mean
            // averaged) would mix; report reader 0 and list the others.
            let first = &res[0]["stats"];
            for r in &res[..readers] {
                samples_p99.push(r["stats"]["p99"].as_f64().unwrap_or(0.0));
            }
            merged["per_reader_p99"] = json!(samples_p99);
            merged["reads_per_s_total"] = json!(round3(
                res[..readers]
                    .iter()
                    .map(|r| r["reads_per_s"].as_f64().unwrap())
                    .sum::<f64>()
            ));
            merged["retries_per_read"] = json!(
                res[..readers]
                    .iter()
                    .map(|r| r["retries_per_read"].as_f64().unwrap())
                    .sum::<f64>()
                    / readers as f64
            );
            merged["reads_overlapping_a_write"] = json!(round3(
                res[..readers]
                    .iter()
                    .map(|r| r["overlap_frac"].as_f64().unwrap())
                    .sum::<f64>()
                    / readers as f64
            ));
            merged["timer_ns"] = res[0]["timer_ns"].clone();
            merged["reader_nivcsw"] = json!(res[..readers]
                .iter()
                .map(|r| r["nivcsw"].as_u64().unwrap_or(0))
                .collect::<Vec<_>>());
            if rate > 0 {
                let w = &res[readers];
                merged["achieved_writes_per_s"] =
                    json!(round3(w["writes_per_s"].as_f64().unwrap()));
                merged["write_p99"] = w["stats"]["p99"].clone();
                merged["generation_switches"] = w["switches"].clone();
            } else {
                merged["achieved_writes_per_s"] = json!(0);
            }
            let p99 = first["p99"].as_f64().unwrap_or(0.0);
            if rate == 0 {
                base_p99 = Some(p99);
            } else if let Some(b) = base_p99 {
                merged["p99_vs_no_writer"] = json!(round3(p99 / b.max(1.0)));
            }
            let procs = readers + usize::from(rate > 0);
            merged["note"] = json!(format!(
                "{procs} busy process(es) on {} cores. {NOTE_CORES}; reader_nivcsw: the readers' \
                 involuntary context switches during the run (getrusage). Writers pace by \
                 deadline (sleep while > 300 us away, then yield): an achieved rate below the \
                 target means the writer did not get the CPU. retries_per_read: seqlock slot \
                 retries per read (shmkv::read_retries, averaged over the readers); \
                 reads_overlapping_a_write = fraction of \
                 timed reads during which the map's version moved (an upper bound on reads that \
                 could have met a write, not a retry count)",
                out.cores
            ));
            let wr = if rate == u64::MAX {
                json!("max")
            } else {
                json!(rate)
            };
            out.row(
                "reads-under-writes",
                "shmkv get_ref",
                json!({"readers": readers, "write_rate": wr, "entries": cfg.entries,
                    "processes": procs}),
                "latency",
                "mixed",
                "uniform random existing keys; every 64th read timed (stats of reader 0)",
                first.clone(),
                merged,
            );
        }
    }
    drop(m);
}

/// Bytes of free huge pages (`HugePages_Free` × `Hugepagesize`).
fn free_huge_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field("HugePages_Free:") * field("Hugepagesize:") * 1024
}

fn resize_under_readers(cfg: &Cfg, out: &mut Out, coord: &CoordSeg, tag: &str) {
    println!(
        "\n== resize-under-readers (growth to {} entries in batches of {}, then compaction)",
        cfg.grow_to, cfg.grow_batch
    );
    // Latency runs without the memory sampler: reading a process's
    // smaps_rollup takes its mmap lock, which a reader attaching a new
    // generation (and its page faults queued behind that) waits for, so the
    // sampler itself made reads of several ms. Memory from a run of its own.
    // On 4 KiB pages, then on huge pages (the data segments' page tables
    // are 512 times smaller to set up and tear down) when the kernel has
    // them (`scripts/bench.sh` reserves them).
    for huge in [false, true] {
        for readers in [1usize, 2] {
            resize_run(cfg, out, coord, tag, readers, false, huge);
        }
    }
    resize_run(cfg, out, coord, tag, 1, true, false);
}

/// One growth and compaction under `readers` readers: read latencies, or
/// with `sample` the memory peaks (a `memory` row) instead.
fn resize_run(
    cfg: &Cfg,
    out: &mut Out,
    coord: &CoordSeg,
    tag: &str,
    readers: usize,
    sample: bool,
    huge: bool,
) {
    let name = format!("shmkv-live-{tag}-resize{readers}");
    let _g = MapGuard(name.clone());
    // A small map with a first batch, so that readers have keys to read.
    // About twice a generation's size at the end of the growth (old and new
    // side by side at a switch): 741 MB measured for 10⁶ entries.
    let need = cfg.grow_to * 800;
    if huge && free_huge_bytes() < need {
        println!(
            "!! resize on huge pages not measured: {} MB of free huge pages, about {} MB needed \
             (scripts/bench.sh reserves them)",
            free_huge_bytes() >> 20,
            need >> 20
        );
        return;
    }
    let opts = if huge {
        Options::new().huge_pages(HugePages::Require)
    } else {
        Options::new()
    };
    let m = match RawMap::create(&name, &opts) {
        Ok(m) => m,
        Err(e) => {
            println!("!! resize on huge pages not measured: {e}");
            return;
        }
    };
    let pages = if huge { "2m" } else { "4k" };
    let first = 1000u64;
    m.write(|b| (0..first).try_for_each(|i| b.insert(&key(i), &value(i))))
        .unwrap();
    coord.reset();
    coord.get().inserted.store(first, Ordering::SeqCst);
    let env = vec![
        ("SHMKV_LIVE_MAP", name.clone()),
        ("SHMKV_LIVE_GROW_TO", cfg.grow_to.to_string()),
        ("SHMKV_LIVE_BATCH", cfg.grow_batch.to_string()),
    ];
    let mut kids = Kids(
        (0..readers)
            .map(|_| spawn("resize-reader", coord, &env))
            .collect(),
    );
    kids.0.push(spawn("resize-writer", coord, &env));
    let pids = kids.pids();
    let sampler = sample.then(|| {
        Sampler::start(
            vec![std::process::id(), pids[readers]],
            coord.id,
            pids[readers],
            pids[..readers].to_vec(),
        )
    });
    kids.start(coord);
    let res = kids.collect(Duration::from_secs(300));
    let w = &res[readers];
    if let Some(sampler) = sampler {
        let (seg_peak, pss_w, pss_r) = sampler.finish();
        out.row(
            "memory",
            &format!(
                "shmkv growth to {} entries, then compaction: peaks",
                cfg.grow_to
            ),
            json!({"entries": cfg.grow_to, "readers": readers, "batch": cfg.grow_batch,
                "key_bytes": 16, "value_bytes": 64}),
            "size",
            "n/a",
            "-",
            json!({"max": seg_peak}),
            json!({"segment_bytes_peak": seg_peak, "pss_kib_reader": pss_r,
                "pss_kib_writer": pss_w,
                "capacity_after_growth": w["capacity_after_growth"],
                "note": "stats.max = segment_bytes_peak: sum of the map's SysV segments (root, \
                    data generations: old and new side by side at a switch) sampled every 20 ms \
                    from /proc/sysvipc/shm; PSS peaks from /proc/<pid>/smaps_rollup sampled \
                    every 200 ms (max over readers); a run of its own: the sampling disturbs \
                    the readers"}),
        );
        drop(m);
        return;
    }
    for (phase, subject) in [
        ("growth", "shmkv get_ref during growth"),
        ("compaction", "shmkv get_ref during compaction"),
    ] {
        // Worst reader per statistic would mix; merge max, report reader 0
        // percentiles and every reader's max and p99.
        let stats = res[0][phase].clone();
        let maxes: Vec<f64> = res[..readers]
            .iter()
            .map(|r| r[phase]["max"].as_f64().unwrap_or(0.0))
            .collect();
        let p99s: Vec<f64> = res[..readers]
            .iter()
            .map(|r| r[phase]["p99"].as_f64().unwrap_or(0.0))
            .collect();
        let mut stats = stats;
        stats["max"] = json!(maxes.iter().copied().fold(0.0, f64::max));
        let switches = &w[format!("{phase}_switches")];
        out.row(
            "resize-under-readers",
            subject,
            json!({"entries": cfg.grow_to, "readers": readers, "processes": readers + 1,
                "batch": cfg.grow_batch, "pages": pages}),
            "latency",
            "mixed",
            "uniform random among keys committed so far; every read timed; kept: reads during \
             writes that switched the generation (from their start to 10 ms after)",
            stats,
            json!({"switches": switches,
                "switch_write_ms": w[format!("{phase}_switch_ms")],
                "per_reader_max": maxes, "per_reader_p99": p99s,
                "reader_minflt": res[..readers].iter()
                    .map(|r| r["minflt"].as_u64().unwrap_or(0)).collect::<Vec<_>>(),
                "reader_nivcsw": res[..readers].iter()
                    .map(|r| r["nivcsw"].as_u64().unwrap_or(0)).collect::<Vec<_>>(),
                "reader_nvcsw": res[..readers].iter()
                    .map(|r| r["nvcsw"].as_u64().unwrap_or(0)).collect::<Vec<_>>(),
                "reads_over_1ms_during_write": res[..readers].iter()
                    .map(|r| r[format!("{phase}_over_1ms_during_write")].as_u64().unwrap_or(0))
                    .sum::<u64>(),
                "reads_over_1ms_after_write": res[..readers].iter()
                    .map(|r| r[format!("{phase}_over_1ms_after_write")].as_u64().unwrap_or(0))
                    .sum::<u64>(),
                "slowest_read_per_reader": res[..readers].iter()
                    .map(|r| r[format!("{phase}_slowest")].clone()).collect::<Vec<_>>(),
                "max_outside_windows": res[..readers].iter()
                    .map(|r| r["outside_max"].as_f64().unwrap_or(0.0)).fold(0.0, f64::max),
                "reads_per_s_reader0": round3(res[0]["reads_per_s"].as_f64().unwrap_or(0.0)),
                "capacity_after_growth": w["capacity_after_growth"],
                "note": format!("{} busy processes on {} cores. {NOTE_CORES}. stats: reader 0's \
                    percentiles, max over all readers; memory: the `memory` section (a run of \
                    its own); reader_minflt / reader_nivcsw / reader_nvcsw: the readers' minor page faults, \
                    involuntary context switches (descheduled) and voluntary ones (slept, e.g. a \
                    read-only reader backing off from a bucket being written) over the whole run \
                    (getrusage); slowest_read_per_reader: when the slowest kept read began, in ms \
                    after its window's write began, and whether after that write returned (the \
                    switch: attaching and faulting in the new generation) or while it ran",
                    readers + 1, out.cores)}),
        );
    }
    drop(m);
}

fn writers(cfg: &Cfg, out: &mut Out, coord: &CoordSeg, tag: &str) {
    println!("\n== writers");
    let limit = Duration::from_secs_f64(cfg.secs * 3.0 + 120.0);
    // Two writer processes overwriting random keys of one map.
    {
        let name = format!("shmkv-live-{tag}-w2");
        let _g = MapGuard(name.clone());
        let m = filled_map(&name, cfg.entries);
        coord.reset();
        let env = vec![
            ("SHMKV_LIVE_MAP", name.clone()),
            ("SHMKV_LIVE_ENTRIES", cfg.entries.to_string()),
            ("SHMKV_LIVE_SECS", cfg.secs.to_string()),
            ("SHMKV_LIVE_RATE", "0".to_string()),
        ];
        let kids = Kids((0..2).map(|_| spawn("writer", coord, &env)).collect());
        kids.start(coord);
        let res = kids.collect(limit);
        let total: f64 = res
            .iter()
            .map(|r| r["writes_per_s"].as_f64().unwrap())
            .sum();
        for (i, r) in res.iter().enumerate() {
            out.row(
                "writers",
                "shmkv insert, 2 writer processes",
                json!({"writers": 2, "writer": i, "entries": cfg.entries, "processes": 2}),
                "latency",
                "mixed",
                "uniform random existing keys (overwrites); every insert timed from call to \
                 return: the lock wait plus the write (shmkv exposes no separate lock-wait figure)",
                r["stats"].clone(),
                json!({"total_writes_per_s": round3(total),
                    "this_writer_writes_per_s": round3(r["writes_per_s"].as_f64().unwrap()),
                    "generation_switches": r["switches"],
                    "note": format!("2 busy processes on {} cores. {NOTE_CORES}", out.cores)}),
            );
        }
        drop(m);
    }
    // Single inserts, fresh keys then overwrites, one process.
    {
        let name = format!("shmkv-live-{tag}-single");
        let _g = MapGuard(name.clone());
        let m = RawMap::create(&name, &Options::new()).unwrap();
        coord.reset();
        let env = vec![
            ("SHMKV_LIVE_MAP", name.clone()),
            ("SHMKV_LIVE_N", cfg.singles.to_string()),
        ];
        let kids = Kids(vec![spawn("single", coord, &env)]);
        kids.start(coord);
        let r = &kids.collect(limit)[0];
        out.row(
            "writers",
            "shmkv single insert",
            json!({"entries": cfg.singles, "processes": 1, "start_capacity": 1024}),
            "latency",
            "mixed",
            "fresh keys 0..entries in order into a map created with default options (growth \
             included); every insert timed",
            r["fresh"].clone(),
            json!({"generation_switches": r["switches_fresh"]}),
        );
        out.row(
            "writers",
            "shmkv single insert (overwrite)",
            json!({"entries": cfg.singles, "processes": 1}),
            "latency",
            "mixed",
            "uniform random existing keys after the fresh inserts (compactions included); \
             every insert timed",
            r["overwrite"].clone(),
            json!({"generation_switches": r["switches_overwrite"]}),
        );
        drop(m);
    }
    // Batches of fresh keys with growth.
    for batch in [1000u64, 10_000] {
        let name = format!("shmkv-live-{tag}-batch{batch}");
        let _g = MapGuard(name.clone());
        let m = RawMap::create(&name, &Options::new()).unwrap();
        coord.reset();
        let env = vec![
            ("SHMKV_LIVE_MAP", name.clone()),
            ("SHMKV_LIVE_N", cfg.batch_keys.to_string()),
            ("SHMKV_LIVE_BATCH", batch.to_string()),
        ];
        let kids = Kids(vec![spawn("batch", coord, &env)]);
        kids.start(coord);
        let r = &kids.collect(limit)[0];
        out.row(
            "writers",
            "shmkv batch insert of fresh keys (with growth)",
            json!({"entries": cfg.batch_keys, "batch": batch, "processes": 1,
                "start_capacity": 1024}),
            "throughput",
            "mixed",
            "fresh keys 0..entries in order, `write` batches; mean = total time / keys",
            json!({"mean": round3(r["ns_per_key"].as_f64().unwrap()), "n": cfg.batch_keys}),
            json!({"generation_switches": r["switches"], "capacity_end": r["capacity"],
                "per_batch_ns_per_key": r["per_batch_ns_per_key"]}),
        );
        drop(m);
    }
}

fn redis_section(cfg: &Cfg, out: &mut Out, coord: &CoordSeg, tag: &str) {
    println!("\n== redis");
    let Ok(url) = std::env::var("SHMKV_BENCH_REDIS") else {
        println!(
            "  !!!!! redis NOT RUN: SHMKV_BENCH_REDIS unset (e.g. redis://127.0.0.1:6399/) !!!!!"
        );
        out.row(
            "redis",
            "redis GET",
            json!({}),
            "latency",
            "warm",
            "-",
            json!({}),
            json!({"note": "not run: SHMKV_BENCH_REDIS unset"}),
        );
        return;
    };
    let client = redis::Client::open(url.clone()).unwrap();
    let mut con = client.get_connection().unwrap();
    let all: Vec<u64> = (0..cfg.entries).collect();
    for chunk in all.chunks(1000) {
        let mut p = redis::pipe();
        for &i in chunk {
            p.cmd("SET").arg(&key(i)[..]).arg(&value(i)[..]).ignore();
        }
        p.query::<()>(&mut con).unwrap();
    }
    let name = format!("shmkv-live-{tag}-redis");
    let _g = MapGuard(name.clone());
    let m = filled_map(&name, cfg.entries);
    let limit = Duration::from_secs_f64(cfg.secs * 3.0 + 60.0);
    let cores = out.cores;
    let note = |procs: usize| {
        format!(
            "{procs} busy client processes plus the redis server on {cores} cores. {NOTE_CORES}"
        )
    };
    for procs in [1usize, 2] {
        for op in ["get", "set"] {
            // Redis.
            coord.reset();
            let env = vec![
                ("SHMKV_BENCH_REDIS", url.clone()),
                ("SHMKV_LIVE_ENTRIES", cfg.entries.to_string()),
                ("SHMKV_LIVE_SECS", cfg.secs.to_string()),
                ("SHMKV_LIVE_OP", op.to_string()),
            ];
            let kids = Kids((0..procs).map(|_| spawn("redis", coord, &env)).collect());
            kids.start(coord);
            let rr = kids.collect(limit);
            // shmkv's same measure, same processes count.
            coord.reset();
            let env = vec![
                ("SHMKV_LIVE_MAP", name.clone()),
                ("SHMKV_LIVE_ENTRIES", cfg.entries.to_string()),
                ("SHMKV_LIVE_SECS", (cfg.secs / 2.0).to_string()),
                ("SHMKV_LIVE_RATE", "0".to_string()),
            ];
            let role = if op == "get" { "reader" } else { "writer" };
            let kids = Kids((0..procs).map(|_| spawn(role, coord, &env)).collect());
            kids.start(coord);
            let sr = kids.collect(limit);
            let shm_p50 = sr[0]["stats"]["p50"].as_f64().unwrap_or(0.0);
            let shm_p99 = sr[0]["stats"]["p99"].as_f64().unwrap_or(0.0);
            let up = op.to_uppercase();
            let params = json!({"entries": cfg.entries, "processes": procs, "readers": procs});
            let rs = &rr[0]["stats"];
            out.row(
                "redis",
                &format!("redis {up}"),
                params.clone(),
                "latency",
                "warm",
                "uniform random existing keys; one connection per process, not pipelined; \
                 every command timed (stats of process 0)",
                rs.clone(),
                json!({"p50_vs_shmkv": round3(rs["p50"].as_f64().unwrap_or(0.0) / shm_p50.max(1.0)),
                    "p99_vs_shmkv": round3(rs["p99"].as_f64().unwrap_or(0.0) / shm_p99.max(1.0)),
                    "note": note(procs)}),
            );
            let piped = rr[0]["pipelined_ns"].as_f64().unwrap();
            out.row(
                "redis",
                &format!("redis {up} pipelined"),
                json!({"entries": cfg.entries, "processes": procs, "readers": procs,
                    "pipeline": 64}),
                "throughput",
                "warm",
                "uniform random existing keys; batches of 64 commands per round trip; mean = \
                 ns per command (process 0)",
                json!({"mean": round3(piped), "n": rr[0]["pipelined_n"]}),
                json!({"note": note(procs)}),
            );
            let subject = if op == "get" {
                "shmkv get_ref (redis peer run)"
            } else {
                "shmkv insert (redis peer run)"
            };
            let how = if op == "get" {
                "uniform random existing keys; every 64th read timed (stats of process 0)"
            } else {
                "uniform random existing keys (overwrites); every insert timed (stats of process 0)"
            };
            out.row(
                "redis",
                subject,
                params,
                "latency",
                "warm",
                how,
                sr[0]["stats"].clone(),
                json!({"note": note(procs)}),
            );
        }
    }
    let mut p = redis::pipe();
    for &i in &all {
        p.cmd("DEL").arg(&key(i)[..]).ignore();
    }
    let _ = p.query::<()>(&mut con);
    drop(m);
}

fn main() {
    if let Ok(role) = std::env::var("SHMKV_LIVE_ROLE") {
        match role.as_str() {
            "reader" => role_reader(),
            "writer" => role_writer(),
            "resize-reader" => role_resize_reader(),
            "resize-writer" => role_resize_writer(),
            "single" => role_single(),
            "batch" => role_batch(),
            "redis" => role_redis(),
            r => panic!("unknown role {r}"),
        }
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` runs this with
    // no arguments: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    catch_signals();
    let cfg = cfg();
    let t = Instant::now();
    let mut out = Out::new();
    let tag = std::process::id().to_string();
    let coord = CoordSeg::create();
    println!(
        "shmkv live bench: {} cores, {} run, timer cost subtracted: {:.0} ns (median Instant pair)",
        out.cores,
        if cfg.quick { "QUICK" } else { "full" },
        timer_cost()
    );
    if out.cores <= 2 {
        println!("  note: {NOTE_CORES}");
    }
    reads_under_writes(&cfg, &mut out, &coord, &tag);
    resize_under_readers(&cfg, &mut out, &coord, &tag);
    writers(&cfg, &mut out, &coord, &tag);
    redis_section(&cfg, &mut out, &coord, &tag);
    println!(
        "\ntotal {:.1} s; rows in target/shmkv-bench/live.jsonl",
        t.elapsed().as_secs_f64()
    );
}
