//! Counters shared by processes: read-modify-write inside one atomic batch
//! (the PHP class's `ensureAtomicity`, done right). Several processes (this
//! example started again as `counter --worker NAME N`, one per process)
//! increment the same counter; no increment is lost.
//!
//! ```text
//! cargo run --example counter [-- --processes P --increments N]
//! ```
//!
//! Ctrl-C (SIGINT) or SIGTERM stops every process; the counter then still
//! equals the increments done, and the map is removed.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use shmkv::{Options, ShmMap};

#[path = "signals/mod.rs"]
mod signals;
use signals::{exit_code, stop_on_signals, stopped};

fn main() {
    stop_on_signals();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--worker") => worker(&args),
        _ => parent(&args),
    };
    if let Err(e) = result {
        eprintln!("counter: {e}");
        std::process::exit(1);
    }
    // Everything was cleaned up on the way here (drop guards).
    std::process::exit(exit_code());
}

/// The value of `--flag` in `args`, or `default`.
fn flag(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or(format!("{name} needs a number")),
        None => Ok(default),
    }
}

/// A worker process: `--worker NAME N`. Prints how many increments it did.
fn worker(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let name = args.get(1).ok_or("--worker needs a map name")?;
    let n: u64 = args.get(2).ok_or("--worker needs a count")?.parse()?;
    let map: ShmMap<str, u64> = ShmMap::open(name, &Options::new())?;
    let mut done = 0;
    while done < n && !stopped() {
        map.write(|b| {
            let hits = b.get("hits")?.unwrap_or(0);
            b.insert("hits", &(hits + 1))
        })?;
        done += 1;
    }
    println!("{done}");
    Ok(())
}

fn parent(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let processes = flag(args, "--processes", 4)?;
    let increments = flag(args, "--increments", 1000)?;
    let name = format!("example-counter-{}", std::process::id());
    let map: ShmMap<str, u64> = ShmMap::create(&name, &Options::new())?;
    let _cleanup = Destroy(&name);

    let exe = std::env::current_exe()?;
    let mut workers = Workers(Vec::new());
    for _ in 0..processes {
        if stopped() {
            break;
        }
        let child = Command::new(&exe)
            .args(["--worker", &name, &increments.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        workers.0.push(child);
    }
    let mut done = 0;
    for (status, out) in workers.wait()? {
        done += out
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("a worker failed ({status})"))?;
    }
    let hits = map.get("hits")?.unwrap_or(0);
    if stopped() {
        println!("interrupted: hits = {hits}, increments done = {done}");
    } else {
        println!("hits = {hits} ({processes} processes x {increments} increments)");
    }
    if hits != done {
        return Err(format!("lost increments: hits {hits}, done {done}").into());
    }
    Ok(())
}

/// Worker processes this example started. Dropped early (error, signal):
/// asks them to stop (SIGTERM, by pid), then kills what is left.
struct Workers(Vec<Child>);

impl Workers {
    /// Waits for every worker and returns their output; on a signal asks
    /// them to stop first (they finish the increment they are in).
    fn wait(&mut self) -> std::io::Result<Vec<(ExitStatus, String)>> {
        let mut told = false;
        while !self
            .0
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            if stopped() && !told {
                signals::terminate(&self.0);
                told = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut outs = Vec::new();
        for mut c in self.0.drain(..) {
            let mut out = String::new();
            if let Some(mut s) = c.stdout.take() {
                s.read_to_string(&mut out)?;
            }
            outs.push((c.wait()?, out));
        }
        Ok(outs)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        signals::stop(&mut self.0);
    }
}

/// Removes the example's map when the example ends: on success, error,
/// panic, or after Ctrl-C/SIGTERM ended its loops.
struct Destroy<'a>(&'a str);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        let _ = shmkv::RawMap::destroy_by_name(self.0, &Options::new());
    }
}
