//! A config publisher and its reader processes: one process publishes a
//! table of backends as one atomic batch; reader processes (this example
//! started again as `config_publisher --reader NAME ID SECONDS`) open the
//! map read-only and read it zero-copy, without a lock.
//!
//! ```text
//! cargo run --example config_publisher [-- --seconds S]
//! ```
//!
//! With `--seconds S` the publisher republishes the table every 100 ms for
//! S seconds while the readers keep reading; every table a reader sees is
//! whole (all backends of one round). Ctrl-C (SIGINT) or SIGTERM stops
//! every process and removes the map.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use shmkv::{Options, ShmMap};

#[path = "signals/mod.rs"]
mod signals;
use signals::{exit_code, stop_on_signals, stopped};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct Backend {
    host: String,
    port: u16,
    weight: u32,
}

const HOSTS: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];

fn main() {
    stop_on_signals();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--reader") => reader(&args),
        _ => publisher(&args),
    };
    if let Err(e) = result {
        eprintln!("config_publisher: {e}");
        std::process::exit(1);
    }
    // Everything was cleaned up on the way here (drop guards).
    std::process::exit(exit_code());
}

/// Publishes round `round` of the table, all backends in one batch:
/// backend i has weight 10 * (i + 1) + round.
fn publish(map: &ShmMap<str, Backend>, round: u32) -> shmkv::Result<()> {
    map.write(|b| {
        for (i, host) in HOSTS.iter().enumerate() {
            let backend = Backend {
                host: host.to_string(),
                port: 8080,
                weight: 10 * (i as u32 + 1) + round,
            };
            b.insert(&format!("backend/{i}"), &backend)?;
        }
        Ok(())
    })
}

fn publisher(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = match args.iter().position(|a| a == "--seconds") {
        Some(i) => args.get(i + 1).ok_or("--seconds needs a value")?.parse()?,
        None => 0.0,
    };
    let name = format!("example-config-{}", std::process::id());
    let map: ShmMap<str, Backend> = ShmMap::create(&name, &Options::new().mode(0o644))?;
    let _cleanup = Destroy(&name);
    publish(&map, 0)?;

    // Readers are separate processes: this program, started again.
    let exe = std::env::current_exe()?;
    let mut readers = Readers(Vec::new());
    for r in 0..2 {
        let child = Command::new(&exe)
            .args(["--reader", &name, &r.to_string(), &seconds.to_string()])
            .spawn()?;
        readers.0.push(child);
    }
    // Republish until the time is up (or a signal).
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut round = 0;
    while !stopped() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        round += 1;
        publish(&map, round)?;
    }
    readers.wait()?;
    println!("published {} rounds", round + 1);
    Ok(())
}

/// A reader process: `--reader NAME ID SECONDS`.
fn reader(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [_, name, id, seconds] = args else {
        return Err("usage: --reader NAME ID SECONDS".into());
    };
    let end = Instant::now() + Duration::from_secs_f64(seconds.parse()?);
    // Readers open the map read-only and read in place: no copy, no lock.
    let map: ShmMap<str, Backend> = ShmMap::open(name, &Options::new().read_only(true))?;
    let mut reads = 0u64;
    loop {
        // One consistent snapshot of the whole table.
        let weights: Vec<u32> = map.view(|v| {
            (0..HOSTS.len())
                .map(|i| {
                    Ok(v.get_archived(&format!("backend/{i}"))?
                        .map_or(0, |b| b.weight.to_native()))
                })
                .collect()
        })?;
        let round = weights[0].checked_sub(10).ok_or("table not published")?;
        if weights
            .iter()
            .enumerate()
            .any(|(i, w)| *w != 10 * (i as u32 + 1) + round)
        {
            return Err(format!("reader {id}: a torn table {weights:?}").into());
        }
        reads += 1;
        if stopped() || Instant::now() >= end {
            let first = map.get_archived("backend/0")?.ok_or("not published")?;
            let total: u32 = weights.iter().sum();
            println!(
                "reader {id}: {reads} reads, first backend {}:{}, total weight {total} (round {round})",
                first.host, first.port
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reader processes this example started. Dropped early (error, signal):
/// asks them to stop (SIGTERM, by pid), then kills what is left.
struct Readers(Vec<Child>);

impl Readers {
    /// Waits for every reader; on a signal asks them to stop first.
    fn wait(&mut self) -> Result<(), Box<dyn std::error::Error>> {
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
        for mut c in self.0.drain(..) {
            let status = c.wait()?;
            // A reader stopped by a signal exits with 128 + signal.
            if status.code() == Some(1) {
                return Err(format!("a reader failed ({status})").into());
            }
        }
        Ok(())
    }
}

impl Drop for Readers {
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
