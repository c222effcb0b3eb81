//! `shmkv`: inspect and operate shmkv maps from the shell. A thin layer
//! over the library's public API (`RawMap`, `list_maps`).
//!
//! Exit codes: 0 success; 1 error (one line on stderr naming the map and the
//! cause); 2 usage; 3 `verify` found problems; 4 key not found (`get`, `rm`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use shmkv::{list_maps, Error, Options, RawMap, Stats};

#[derive(Parser)]
#[command(
    name = "shmkv",
    version,
    about = "Inspect and operate shmkv maps in SysV shared memory"
)]
struct Cli {
    /// Machine-readable output (JSON).
    #[arg(long, global = true)]
    json: bool,
    /// Use this raw SysV key instead of the one derived from the name.
    #[arg(long, global = true)]
    sysv_key: Option<i32>,
    /// How long to wait for the write lock (and for a stuck writer).
    #[arg(long, global = true, default_value_t = 5000)]
    lock_timeout_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List every shmkv map on the machine.
    Ls,
    /// Counters and identity of a map.
    Stat { name: String },
    /// Full consistency check (exit 3 on problems).
    Verify { name: String },
    /// Print a value (raw bytes; with --json, UTF-8 or base64).
    Get { name: String, key: String },
    /// Store a value, given inline or read from a file.
    Put {
        name: String,
        key: String,
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Remove a key (exit 4 if it was not there).
    Rm { name: String, key: String },
    /// List the keys.
    Keys { name: String },
    /// Every entry as JSON lines: {"key":..,"value":..} (or key_b64/value_b64).
    Dump { name: String },
    /// Apply a dump (JSON lines) as one atomic batch.
    Load {
        name: String,
        file: PathBuf,
        /// Create the map if it does not exist.
        #[arg(long)]
        create: bool,
    },
    /// Print each new version with the keys that changed.
    Watch {
        name: String,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds without a change.
        #[arg(long)]
        idle_timeout: Option<u64>,
    },
    /// Remove the map's kernel objects (asks unless --yes).
    Destroy {
        name: String,
        #[arg(long)]
        yes: bool,
    },
}

/// A failure with its exit code.
struct Fail(u8, String);

impl Fail {
    fn map(name: &str, e: Error) -> Fail {
        let msg = e.to_string();
        if msg.contains(&format!("{name:?}")) {
            Fail(1, msg)
        } else {
            Fail(1, format!("map {name:?}: {msg}"))
        }
    }
}

type Out = Result<(), Fail>;

fn options(cli: &Cli, read_only: bool) -> Options {
    let o = Options::new()
        .read_only(read_only)
        .lock_timeout(Duration::from_millis(cli.lock_timeout_ms));
    match cli.sysv_key {
        Some(k) => o.sysv_key(k),
        None => o,
    }
}

fn open(cli: &Cli, name: &str, read_only: bool) -> Result<RawMap, Fail> {
    RawMap::open(name, &options(cli, read_only)).map_err(|e| Fail::map(name, e))
}

/// Bytes as JSON: a UTF-8 string under `field`, else base64 under `field_b64`.
fn bytes_json(obj: &mut serde_json::Map<String, Value>, field: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => obj.insert(field.into(), Value::String(s.into())),
        Err(_) => obj.insert(
            format!("{field}_b64"),
            Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
    };
}

fn json_bytes(obj: &Value, field: &str) -> Result<Vec<u8>, String> {
    if let Some(s) = obj.get(field).and_then(Value::as_str) {
        return Ok(s.as_bytes().to_vec());
    }
    match obj.get(format!("{field}_b64")).and_then(Value::as_str) {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("{field}_b64: {e}")),
        None => Err(format!("missing \"{field}\" or \"{field}_b64\"")),
    }
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "name": s.name, "key": s.key, "generation": s.generation, "capacity": s.capacity,
        "entries": s.live, "tombstones": s.tombstones, "arena_size": s.arena_size,
        "arena_used": s.arena_used, "garbage_bytes": s.garbage_bytes,
        "segment_size": s.segment_size, "version": s.version, "attached": s.attached,
        "lock_held": s.lock_held, "lock_pid": s.lock_pid, "root_shmid": s.root_shmid,
        "data_shmid": s.data_shmid, "semid": s.semid, "stale_segments": s.stale_segments,
    })
}

fn print_stats(s: &Stats) {
    let lock = match (s.lock_held, s.lock_pid) {
        (true, Some(p)) => format!("held by pid {p}"),
        (true, None) => "held".into(),
        (false, _) => "free".into(),
    };
    println!("name        {}", s.name);
    println!("key         {:#010x}", s.key);
    println!("entries     {}", s.live);
    println!("version     {}", s.version);
    println!("generation  {}", s.generation);
    println!("slots       {} ({} tombstones)", s.capacity, s.tombstones);
    println!(
        "arena       {} of {} bytes used, {} garbage",
        s.arena_used, s.arena_size, s.garbage_bytes
    );
    println!(
        "segment     {} bytes (data shmid {}, root shmid {})",
        s.segment_size, s.data_shmid, s.root_shmid
    );
    println!("attached    {} processes", s.attached);
    println!("lock        {lock} (semid {})", s.semid);
    if !s.stale_segments.is_empty() {
        println!("stale       {}", stale_text(&s.stale_segments));
    }
}

/// The `stale` line: retired segments another user's writer could not remove.
fn stale_text(ids: &[i32]) -> String {
    format!(
        "{} retired segment(s) left for a process allowed to remove them (shmid {})",
        ids.len(),
        ids.iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Owned key/value pairs.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn entries(m: &RawMap) -> Result<Pairs, Error> {
    Ok(m.entries()?
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect())
}

fn run(cli: &Cli) -> Out {
    match &cli.cmd {
        Cmd::Ls => {
            let maps = list_maps().map_err(|e| Fail(1, e.to_string()))?;
            if cli.json {
                let v: Vec<Value> = maps
                    .iter()
                    .map(|l| match &l.stats {
                        Some(s) => stats_json(s),
                        None => json!({"name": l.name, "key": l.key, "error": l.error}),
                    })
                    .collect();
                println!("{}", Value::Array(v));
            } else {
                println!(
                    "{:<32} {:>10} {:>9} {:>11} {:>4} {:>8}  lock",
                    "NAME", "KEY", "ENTRIES", "BYTES", "GEN", "ATTACHED"
                );
                for l in &maps {
                    match &l.stats {
                        Some(s) => println!(
                            "{:<32} {:#010x} {:>9} {:>11} {:>4} {:>8}  {}",
                            s.name,
                            s.key,
                            s.live,
                            s.segment_size + 512,
                            s.generation,
                            s.attached,
                            match (s.lock_held, s.lock_pid) {
                                (true, Some(p)) => format!("held by pid {p}"),
                                _ => "free".into(),
                            }
                        ),
                        None => println!(
                            "{:<32} {:#010x}  ({})",
                            l.name,
                            l.key,
                            l.error.as_deref().unwrap_or("")
                        ),
                    }
                }
            }
            Ok(())
        }
        Cmd::Stat { name } => {
            let s = open(cli, name, true)?
                .stats()
                .map_err(|e| Fail::map(name, e))?;
            if cli.json {
                println!("{}", stats_json(&s));
            } else {
                print_stats(&s);
            }
            Ok(())
        }
        Cmd::Verify { name } => {
            let m = open(cli, name, true)?;
            let r = m.verify().map_err(|e| Fail::map(name, e))?;
            let stale = m.stats().map_err(|e| Fail::map(name, e))?.stale_segments;
            if cli.json {
                println!(
                    "{}",
                    json!({"ok": r.is_ok(), "generation": r.generation, "capacity": r.capacity,
                           "entries": r.live, "tombstones": r.tombstones, "live_bytes": r.live_bytes,
                           "arena_used": r.arena_used, "garbage_bytes": r.garbage_bytes,
                           "problems": r.problems, "stale_segments": stale})
                );
            } else {
                for p in &r.problems {
                    println!("problem: {p}");
                }
                if !stale.is_empty() {
                    println!("note: {}", stale_text(&stale));
                }
                println!(
                    "{}: generation {}, {} entries, {} tombstones, {} slots",
                    if r.is_ok() { "ok" } else { "PROBLEMS FOUND" },
                    r.generation,
                    r.live,
                    r.tombstones,
                    r.capacity
                );
            }
            if r.is_ok() {
                Ok(())
            } else {
                Err(Fail(
                    3,
                    format!("map {name:?}: {} problems", r.problems.len()),
                ))
            }
        }
        Cmd::Get { name, key } => {
            let m = open(cli, name, true)?;
            let v = m.get_ref(key.as_bytes()).map_err(|e| Fail::map(name, e))?;
            let Some(v) = v else {
                return Err(Fail(4, format!("map {name:?}: key {key:?} not found")));
            };
            if cli.json {
                let mut o = serde_json::Map::new();
                bytes_json(&mut o, "key", key.as_bytes());
                bytes_json(&mut o, "value", &v);
                println!("{}", Value::Object(o));
            } else {
                std::io::stdout()
                    .write_all(&v)
                    .map_err(|e| Fail(1, e.to_string()))?;
            }
            Ok(())
        }
        Cmd::Put {
            name,
            key,
            value,
            file,
        } => {
            let bytes = match (value, file) {
                (Some(v), _) => v.as_bytes().to_vec(),
                (None, Some(f)) => {
                    std::fs::read(f).map_err(|e| Fail(1, format!("{}: {e}", f.display())))?
                }
                (None, None) => return Err(Fail(2, "put needs a VALUE or --file".into())),
            };
            open(cli, name, false)?
                .insert(key.as_bytes(), &bytes)
                .map_err(|e| Fail::map(name, e))
        }
        Cmd::Rm { name, key } => {
            if open(cli, name, false)?
                .remove(key.as_bytes())
                .map_err(|e| Fail::map(name, e))?
            {
                Ok(())
            } else {
                Err(Fail(4, format!("map {name:?}: key {key:?} not found")))
            }
        }
        Cmd::Keys { name } => {
            let m = open(cli, name, true)?;
            let mut keys: Vec<Vec<u8>> = entries(&m)
                .map_err(|e| Fail::map(name, e))?
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            for k in keys {
                if cli.json {
                    let mut o = serde_json::Map::new();
                    bytes_json(&mut o, "key", &k);
                    println!("{}", Value::Object(o));
                } else {
                    println!("{}", String::from_utf8_lossy(&k));
                }
            }
            Ok(())
        }
        Cmd::Dump { name } => {
            let m = open(cli, name, true)?;
            let mut all = entries(&m).map_err(|e| Fail::map(name, e))?;
            all.sort();
            let mut out = std::io::stdout().lock();
            for (k, v) in all {
                let mut o = serde_json::Map::new();
                bytes_json(&mut o, "key", &k);
                bytes_json(&mut o, "value", &v);
                writeln!(out, "{}", Value::Object(o)).map_err(|e| Fail(1, e.to_string()))?;
            }
            Ok(())
        }
        Cmd::Load { name, file, create } => {
            let f = std::fs::File::open(file)
                .map_err(|e| Fail(1, format!("{}: {e}", file.display())))?;
            let mut rows = Vec::new();
            for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.map_err(|e| Fail(1, e.to_string()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |e: String| Fail(1, format!("{}:{}: {e}", file.display(), n + 1));
                let v: Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
                rows.push((
                    json_bytes(&v, "key").map_err(bad)?,
                    json_bytes(&v, "value").map_err(bad)?,
                ));
            }
            let opts = options(cli, false);
            let m = if *create {
                RawMap::open_or_create(name, &opts)
            } else {
                RawMap::open(name, &opts)
            }
            .map_err(|e| Fail::map(name, e))?;
            m.write(|b| rows.iter().try_for_each(|(k, v)| b.insert(k, v)))
                .map_err(|e| Fail::map(name, e))?;
            if !cli.json {
                eprintln!("loaded {} entries into {name:?} as one batch", rows.len());
            }
            Ok(())
        }
        Cmd::Watch {
            name,
            count,
            idle_timeout,
        } => {
            let m = open(cli, name, false).or_else(|_| open(cli, name, true))?;
            let mut version = m.version();
            let mut before = entries(&m).map_err(|e| Fail::map(name, e))?;
            let mut seen = 0;
            let wait = Duration::from_secs(idle_timeout.unwrap_or(u64::MAX / 4));
            println!("watching {name:?} from version {version}");
            while count.is_none_or(|c| seen < c) {
                let Some(v) = m
                    .wait_for_change(version, wait)
                    .map_err(|e| Fail::map(name, e))?
                else {
                    break;
                };
                let now = entries(&m).map_err(|e| Fail::map(name, e))?;
                let old: std::collections::HashMap<_, _> = before.iter().cloned().collect();
                let new: std::collections::HashMap<_, _> = now.iter().cloned().collect();
                let mut diff: Vec<String> = Vec::new();
                for (k, v2) in &new {
                    match old.get(k) {
                        None => diff.push(format!("+{}", String::from_utf8_lossy(k))),
                        Some(v1) if v1 != v2 => {
                            diff.push(format!("~{}", String::from_utf8_lossy(k)))
                        }
                        _ => {}
                    }
                }
                diff.extend(
                    old.keys()
                        .filter(|k| !new.contains_key(*k))
                        .map(|k| format!("-{}", String::from_utf8_lossy(k))),
                );
                diff.sort_by(|a, b| a[1..].cmp(&b[1..]));
                if cli.json {
                    println!("{}", json!({"version": v, "changes": diff}));
                } else {
                    println!(
                        "version {v}: {}",
                        if diff.is_empty() {
                            "(no key changed)".into()
                        } else {
                            diff.join(" ")
                        }
                    );
                }
                std::io::stdout().flush().ok();
                version = v;
                before = now;
                seen += 1;
            }
            Ok(())
        }
        Cmd::Destroy { name, yes } => {
            if !yes {
                eprint!("destroy map {name:?} and everything in it? [y/N] ");
                let mut answer = String::new();
                std::io::stdin()
                    .read_line(&mut answer)
                    .map_err(|e| Fail(1, e.to_string()))?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Err(Fail(
                        1,
                        format!("map {name:?}: not destroyed (use --yes to skip the question)"),
                    ));
                }
            }
            let opts = options(cli, false);
            match RawMap::open(name, &opts) {
                Ok(m) => m.destroy().map_err(|e| Fail::map(name, e)),
                // A map that does not open because of its content
                // (half-created, corrupted, another build's) is still
                // removed; `destroy_by_name` removes only objects that are
                // provably this map's.
                Err(Error::Corrupted(_) | Error::Incompatible(_)) => {
                    RawMap::destroy_by_name(name, &opts)
                        .map(drop)
                        .map_err(|e| Fail::map(name, e))
                }
                // Missing, another map's (`NameMismatch`), another
                // program's (`KeyInUse`), not allowed, locked: say so.
                Err(e) => Err(Fail::map(name, e)),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("shmkv: {msg}");
            ExitCode::from(code)
        }
    }
}
