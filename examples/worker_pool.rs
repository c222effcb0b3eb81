//! The main job: a pool of reader processes doing zero-copy reads of a shared
//! config table while the parent process updates it at a steady rate.
//!
//! ```text
//! cargo run --release --example worker_pool -- [--workers N] [--seconds S]
//!     [--entries N] [--write-rate W]
//! ```
//!
//! Creates a uniquely named map, fills it, starts one reader process per core
//! (re-executing this binary), updates entries for the given time, prints
//! per-process and total reads/s, write latency p50/p99 and the number of
//! invalid values seen (must be 0), and destroys the map, also on error,
//! Ctrl-C (SIGINT) or SIGTERM: a signal stops the fill, the readers and the
//! writer within a fraction of a second, and the example exits with 128 +
//! the signal's number.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmkv::{Options, ShmMap, Size};

#[path = "signals/mod.rs"]
mod signals;
use signals::{exit_code, stop_on_signals, stopped};

/// One entry of the shared configuration.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct Config {
    id: u64,
    version: u64,
    name: String,
    weight: u32,
    limits: Vec<u32>,
    checksum: u64,
}

fn checksum(
    id: u64,
    version: u64,
    name: &str,
    weight: u32,
    limits: impl Iterator<Item = u32>,
) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&id.to_le_bytes());
    h.update(&version.to_le_bytes());
    h.update(name.as_bytes());
    h.update(&weight.to_le_bytes());
    for l in limits {
        h.update(&l.to_le_bytes());
    }
    h.digest()
}

fn config(id: u64, version: u64) -> Config {
    let name = format!("service-{id}.v{version}");
    let weight = (id * 31 + version) as u32 % 100;
    let limits: Vec<u32> = (0..4)
        .map(|i| (id as u32).wrapping_mul(i + 1) ^ version as u32)
        .collect();
    Config {
        checksum: checksum(id, version, &name, weight, limits.iter().copied()),
        id,
        version,
        name,
        weight,
        limits,
    }
}

fn valid(id: u64, c: &ArchivedConfig) -> bool {
    let limits = c.limits.iter().map(|l| l.to_native());
    c.id == id
        && c.checksum
            == checksum(
                id,
                c.version.to_native(),
                c.name.as_str(),
                c.weight.to_native(),
                limits,
            )
}

/// xorshift64.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

struct Args {
    workers: usize,
    seconds: f64,
    entries: u64,
    write_rate: u64,
    worker: Option<(String, usize)>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        seconds: 5.0,
        entries: 100_000,
        write_rate: 1_000,
        worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--workers" => a.workers = val()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--seconds" => a.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--entries" => a.entries = val()?.parse().map_err(|e| format!("--entries: {e}"))?,
            "--write-rate" => {
                a.write_rate = val()?.parse().map_err(|e| format!("--write-rate: {e}"))?
            }
            "--worker" => {
                let name = val()?;
                let id = val()?.parse().map_err(|e| format!("--worker id: {e}"))?;
                a.worker = Some((name, id));
            }
            "-h" | "--help" => {
                return Err(
                    "usage: worker_pool [--workers N] [--seconds S] [--entries N] [--write-rate W]"
                        .into(),
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.entries == 0 || a.workers == 0 || a.seconds <= 0.0 {
        return Err("--entries, --workers and --seconds must be positive".into());
    }
    Ok(a)
}

/// A reader process: random zero-copy reads until the time is up.
fn worker(name: &str, id: usize, seconds: f64, entries: u64) -> shmkv::Result<()> {
    let map: ShmMap<u64, Config> = ShmMap::open(name, &Options::new().read_only(true))?;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((id as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
    let (mut reads, mut invalid, mut missing) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    while !stopped() && Instant::now() < end {
        for _ in 0..1024 {
            let k = next(&mut rng) % entries;
            match map.get_archived(&k)? {
                Some(c) => invalid += u64::from(!valid(k, &c)),
                None => missing += 1,
            }
        }
        reads += 1024;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("reads={reads} invalid={invalid} missing={missing} secs={secs:.3}");
    Ok(())
}

/// Destroys the map when dropped: on success, error, panic or Ctrl-C.
struct Demo {
    map: Option<ShmMap<u64, Config>>,
    children: Vec<Child>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Only processes this demo started, by their pid.
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(m) = self.map.take() {
            let name = m.raw().name().to_string();
            match m.destroy() {
                Ok(()) => eprintln!("destroyed map {name}"),
                Err(e) => eprintln!("could not destroy map {name}: {e}"),
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("shmkv-demo-{}", std::process::id());
    let writes_expected = (a.write_rate as f64 * a.seconds) as u64 + 1;
    // Room for the entries twice over; updates that fill it trigger an online
    // compaction (a new generation) while the readers keep reading.
    let arena = a.entries * 2 * 160 + (1 << 20);
    let opts = Options::new()
        .capacity(a.entries)
        .arena_size(Size::from(arena));
    let mut demo = Demo {
        map: Some(ShmMap::create(&name, &opts)?),
        children: Vec::new(),
    };
    let map = demo.map.as_ref().expect("just created");
    let t = Instant::now();
    // In batches of 10,000, looking at the stop flag between them: Ctrl-C
    // during a long fill stops it at once.
    for chunk in (0..a.entries).collect::<Vec<_>>().chunks(10_000) {
        if stopped() {
            return Ok(());
        }
        map.write(|b| chunk.iter().try_for_each(|&k| b.insert(&k, &config(k, 0))))?;
    }
    let s = map.stats()?;
    println!(
        "map {name}: {} entries filled in {:.2?}; {} slots, segment {} bytes",
        map.len(),
        t.elapsed(),
        s.capacity,
        s.segment_size
    );

    let exe = std::env::current_exe()?;
    for id in 0..a.workers {
        if stopped() {
            return Ok(());
        }
        let child = Command::new(&exe)
            .args([
                "--worker",
                &name,
                &id.to_string(),
                "--seconds",
                &a.seconds.to_string(),
            ])
            .args(["--entries", &a.entries.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        demo.children.push(child);
    }
    println!(
        "{} reader processes, {:.1} s, parent writes {} updates/s",
        a.workers, a.seconds, a.write_rate
    );

    let mut latencies = Vec::with_capacity(writes_expected as usize);
    let mut versions = vec![0u64; a.entries as usize];
    let mut rng = 42u64;
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / a.write_rate.max(1) as f64);
    let mut due = start;
    while !stopped() && start.elapsed().as_secs_f64() < a.seconds {
        if a.write_rate > 0 {
            let k = next(&mut rng) % a.entries;
            versions[k as usize] += 1;
            let value = config(k, versions[k as usize]);
            let t = Instant::now();
            map.insert(&k, &value)?;
            latencies.push(t.elapsed());
            due += period;
        } else {
            due += Duration::from_millis(10);
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }

    if stopped() {
        // The readers are stopped (the guard kills them) and the map
        // destroyed by the guard; no report of a run cut short.
        return Ok(());
    }
    let mut total_reads = 0f64;
    let mut total_invalid = 0u64;
    for (id, child) in demo.children.iter_mut().enumerate() {
        let out = child.stdout.take().expect("piped");
        let line = BufReader::new(out)
            .lines()
            .next()
            .transpose()?
            .unwrap_or_default();
        let status = child.wait()?;
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let (reads, invalid, secs) = (field("reads"), field("invalid"), field("secs"));
        if !status.success() || reads.is_nan() {
            return Err(format!("reader {id} failed: {status}").into());
        }
        let rate = reads / secs;
        total_reads += rate;
        total_invalid += invalid as u64;
        println!(
            "reader {id}: {:>12.0} reads/s  invalid {invalid}  missing {}",
            rate,
            field("missing")
        );
    }
    demo.children.clear();
    latencies.sort();
    println!(
        "total:    {total_reads:>12.0} reads/s over {} processes",
        a.workers
    );
    println!(
        "writes:   {} done, latency p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!("invalid values seen: {total_invalid}");
    if total_invalid != 0 {
        return Err("invalid values seen".into());
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    stop_on_signals();
    if let Some((name, id)) = &args.worker {
        if let Err(e) = worker(name, *id, args.seconds, args.entries) {
            eprintln!("reader {id}: {e}");
            std::process::exit(1);
        }
        std::process::exit(exit_code());
    }
    if let Err(e) = run(&args) {
        eprintln!("worker_pool: {e}");
        std::process::exit(1);
    }
    // The map was destroyed on the way here (the `Demo` guard).
    std::process::exit(exit_code());
}
