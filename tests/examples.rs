//! The examples stop on Ctrl-C (SIGINT) and SIGTERM within a few seconds
//! and leave no SysV object behind, also their reader/writer processes
//! (issue 16, item 9).
//!
//! Runs the example binaries that `cargo build --examples` puts in
//! `target/<profile>/examples/` (plain `cargo test` builds them too; `cargo
//! test --test examples` does not, so build them first). A binary older than
//! its source or the library's is refused as stale.
#![allow(unreachable_pub)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shmkv::{key_from_name, Options, RawMap};

/// How long an example may take to exit after the signal.
const EXIT_WITHIN: Duration = Duration::from_secs(3);

/// The newest modification time of the library's files under `dir` (not
/// `src/bin`: the examples do not depend on the CLI, and cargo does not
/// relink them when it changes).
fn newest(dir: &Path) -> SystemTime {
    let mut t = SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.ends_with("src/bin") {
            continue;
        }
        let m = if p.is_dir() {
            newest(&p)
        } else {
            p.metadata().unwrap().modified().unwrap()
        };
        t = t.max(m);
    }
    t
}

/// The built example `name`, next to this test binary's directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    let built = path
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo build --examples` first",
                path.display()
            )
        });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = newest(&root.join("src")).max(
        root.join("examples")
            .join(format!("{name}.rs"))
            .metadata()
            .unwrap()
            .modified()
            .unwrap(),
    );
    assert!(
        built >= source,
        "{} is older than its sources; run `cargo build --examples` first",
        path.display()
    );
    path
}

/// Rows of `/proc/sysvipc/sem` (key, semid).
fn sysv_semaphores() -> Vec<(i32, i32)> {
    std::fs::read_to_string("/proc/sysvipc/sem")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect()
}

/// Pids of the processes whose command line contains `needle` (the
/// example's own processes get the map's name as an argument).
fn processes_with(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The example process and what it may leave behind; on drop (also when
/// the test fails) kills what is left of it and removes its map.
struct Run {
    child: Option<Child>,
    pid: u32,
    name: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Processes the example started (its own re-executions, named by
        // the map's name), by pid.
        for pid in processes_with(&self.name) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = RawMap::destroy_by_name(&self.name, &Options::new());
        // Data segments of a map whose root is gone: made by the example.
        for row in common::sysv_segments() {
            if row.cpid == self.pid && row.nattch == 0 {
                // SAFETY: IPC_RMID ignores the buffer argument.
                unsafe { libc::shmctl(row.shmid, libc::IPC_RMID, std::ptr::null_mut()) };
            }
        }
    }
}

/// Starts example `name` with `args`; `map` gives its map's name from its
/// pid. Waits until the map exists and `settle` more, sends `sig`, and
/// checks that it exits within [`EXIT_WITHIN`] with status 128 + signal,
/// and that no segment, semaphore or process of it remains.
fn interrupt(name: &str, args: &[&str], map: fn(u32) -> String, settle: Duration, sig: Signal) {
    let child = Command::new(example(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut run = Run {
        child: Some(child),
        pid,
        name: map(pid),
    };
    let key = key_from_name(&run.name);
    let t = Instant::now();
    while !common::sysv_segments().iter().any(|r| r.key == key) {
        let c = run.child.as_mut().unwrap();
        if let Some(status) = c.try_wait().unwrap() {
            panic!(
                "{name} ended ({status}) before its map {} existed",
                run.name
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{name}: no map {}",
            run.name
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(settle);
    let c = run.child.as_mut().unwrap();
    assert!(
        c.try_wait().unwrap().is_none(),
        "{name} ended before it was signalled"
    );
    kill(Pid::from_raw(pid as i32), sig).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < EXIT_WITHIN,
            "{name} still running {EXIT_WITHIN:?} after {sig}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    run.child = None;
    let waited = t.elapsed();
    // Its processes are gone, so are its objects.
    let t = Instant::now();
    while !processes_with(&run.name).is_empty() && t.elapsed() < EXIT_WITHIN {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        processes_with(&run.name),
        Vec::<i32>::new(),
        "{name}: processes of it remain"
    );
    let segs: Vec<_> = common::sysv_segments()
        .into_iter()
        .filter(|r| r.key == key || r.cpid == pid)
        .collect();
    assert!(segs.is_empty(), "{name} left segments: {segs:?}");
    let sems: Vec<_> = sysv_semaphores()
        .into_iter()
        .filter(|s| s.0 == key)
        .collect();
    assert!(sems.is_empty(), "{name} left semaphores: {sems:?}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.code(),
        Some(128 + sig as i32),
        "{name}: {status} (signal {:?})",
        status.signal()
    );
    eprintln!("{name}: exited {waited:?} after {sig}, nothing left");
}

const SETTLE: Duration = Duration::from_millis(500);

#[test]
fn counter_stops_on_sigint_and_sigterm() {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        interrupt(
            "counter",
            &["--processes", "2", "--increments", "100000000"],
            |pid| format!("example-counter-{pid}"),
            SETTLE,
            sig,
        );
    }
}

#[test]
fn config_publisher_stops_on_sigint_and_sigterm() {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        interrupt(
            "config_publisher",
            &["--seconds", "60"],
            |pid| format!("example-config-{pid}"),
            SETTLE,
            sig,
        );
    }
}

#[test]
fn watch_reload_stops_on_sigint() {
    interrupt(
        "watch_reload",
        &["--updates", "100000"],
        |pid| format!("example-watch-{pid}"),
        SETTLE,
        Signal::SIGINT,
    );
}

#[test]
fn lookup_loop_stops_on_sigint() {
    interrupt(
        "lookup_loop",
        &["get_ref", "100000000000"],
        |pid| format!("shmkv-lookup-loop-{pid}"),
        SETTLE,
        Signal::SIGINT,
    );
}

/// Interrupted while it fills 500,000 entries (several seconds in a debug
/// build): it stops filling.
#[test]
fn worker_pool_stops_on_sigint_while_filling() {
    interrupt(
        "worker_pool",
        &["--entries", "500000", "--workers", "1", "--seconds", "60"],
        |pid| format!("shmkv-demo-{pid}"),
        Duration::from_millis(300),
        Signal::SIGINT,
    );
}

/// And while its readers run.
#[test]
fn worker_pool_stops_on_sigterm_while_reading() {
    interrupt(
        "worker_pool",
        &["--entries", "1000", "--workers", "2", "--seconds", "60"],
        |pid| format!("shmkv-demo-{pid}"),
        Duration::from_millis(800),
        Signal::SIGTERM,
    );
}
