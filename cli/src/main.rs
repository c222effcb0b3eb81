//! `shmkv`: inspect and operate shmkv maps from the shell. A thin layer
//! over the library's public API (`RawMap`, `list_maps`).
//!
//! Exit codes: 0 success; 1 error (one line on stderr naming the map and the
//! cause); 2 usage; 3 `verify` found problems; 4 key not found (`get`, `rm`).
//! With `--json`, results are JSON on stdout and an error is one JSON object
//! on stderr: `{"error": message, "kind": ..., "exit_code": N, "map": name}`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use shmkv::{list_maps, Error, Options, RawMap};

#[derive(Parser)]
#[command(
    name = "shmkv",
    version,
    about = "Inspect and operate shmkv maps in SysV shared memory"
)]
struct Cli {
    /// Machine-readable output (JSON) on stdout; `put`, `rm`, `load` and
    /// `destroy` print a JSON result. An error is then one JSON object on
    /// stderr: {"error": message, "kind": e.g. "not_found", "exit_code": N,
    /// "map": name (when known)}.
    #[arg(long, global = true)]
    json: bool,
    /// Use this raw SysV key instead of the one derived from the name.
    #[arg(long, global = true)]
    sysv_key: Option<i32>,
    /// How long to wait for the write lock (and for a stuck writer).
    #[arg(long, global = true, default_value_t = 5000)]
    lock_timeout_ms: u64,
    /// Allow `put`/`load` into a typed map (one made by a `ShmMap`): the
    /// bytes are stored as given, and typed readers will reject (or, with
    /// `get_archived_unchecked`, misread) what is not a value of its type.
    #[arg(long, global = true)]
    raw: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List every shmkv map on the machine (ATTACHED counts this shmkv too),
    /// also those being created or destroyed, with their state. Other
    /// programs' segments are not attached.
    Ls {
        /// Also attach every segment of a root's size: roots whose lock is
        /// gone ("orphaned") and segments this user may not read
        /// ("unreadable").
        #[arg(long)]
        all: bool,
    },
    /// Counters and identity of a map (its attach count includes this shmkv).
    Stat { name: String },
    /// Full consistency check (exit 3 on problems).
    Verify { name: String },
    /// Print a value (raw bytes; with --json, UTF-8 or base64).
    Get {
        name: String,
        key: String,
        /// KEY is base64 (as `dump` prints binary keys: `key_b64`).
        #[arg(long)]
        key_b64: bool,
    },
    /// Store a value, given inline or read from a file.
    Put {
        name: String,
        key: String,
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// KEY is base64 (as `dump` prints binary keys: `key_b64`).
        #[arg(long)]
        key_b64: bool,
    },
    /// Remove a key (exit 4 if it was not there).
    Rm {
        name: String,
        key: String,
        /// KEY is base64 (as `dump` prints binary keys: `key_b64`).
        #[arg(long)]
        key_b64: bool,
    },
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
        /// With --create: writers of the new map wake waiters after every
        /// write, so read-only watchers that may not write the map sleep in
        /// the kernel instead of polling (costs every write a system call).
        #[arg(long, requires = "create")]
        wake_every_write: bool,
    },
    /// Print each new version with the keys that changed.
    Watch {
        name: String,
        /// Stop after this many versions have been reported.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds without a change.
        #[arg(long)]
        idle_timeout: Option<u64>,
    },
    /// Remove the map's kernel objects (asks unless --yes; a missing map is
    /// an error before any question).
    Destroy {
        name: String,
        #[arg(long)]
        yes: bool,
    },
}

mod fail;
mod format;
mod watch;

use fail::{error_kind, fail, Fail};
use format::*;
use watch::snapshot;

type Out = Result<(), Fail>;

fn options(cli: &Cli, read_only: bool) -> Options {
    let o = Options::new()
        .read_only(read_only)
        .lock_timeout(Duration::from_millis(cli.lock_timeout_ms))
        .raw_writes(cli.raw);
    match cli.sysv_key {
        Some(k) => o.sysv_key(k),
        None => o,
    }
}

fn open(cli: &Cli, name: &str, read_only: bool) -> Result<RawMap, Fail> {
    RawMap::open(name, &options(cli, read_only)).map_err(|e| Fail::map(name, e))
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
        Cmd::Ls { all } => {
            let maps = list_maps(*all).map_err(|e| fail(error_kind(&e), e.to_string()))?;
            if cli.json {
                let v: Vec<Value> = maps
                    .iter()
                    .map(|l| match &l.stats {
                        Some(s) => {
                            let mut v = stats_json(s);
                            v["state"] = json!(l.state.as_str());
                            v
                        }
                        None => json!({
                            "name": l.name,
                            "key": l.key,
                            "state": l.state.as_str(),
                            "error": l.error
                        }),
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
                            lock_text(s)
                        ),
                        None => println!(
                            "{:<32} {:#010x}  {}: {}",
                            if l.name.is_empty() { "?" } else { &l.name },
                            l.key,
                            l.state.as_str(),
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
                Err(fail(
                    "verify_problems",
                    format!("map {name:?}: {} problems", r.problems.len()),
                )
                .about(name)
                .code(3))
            }
        }
        Cmd::Get { name, key, key_b64 } => {
            let k = key_bytes(key, *key_b64)?;
            let m = open(cli, name, true)?;
            let v = m.get_ref(&k).map_err(|e| Fail::map(name, e))?;
            let Some(v) = v else {
                return Err(key_not_found(name, key, *key_b64));
            };
            if cli.json {
                let mut o = serde_json::Map::new();
                bytes_json(&mut o, "key", &k);
                bytes_json(&mut o, "value", &v);
                println!("{}", Value::Object(o));
            } else {
                std::io::stdout()
                    .write_all(&v)
                    .map_err(|e| fail("io", e.to_string()))?;
            }
            Ok(())
        }
        Cmd::Put {
            name,
            key,
            value,
            file,
            key_b64,
        } => {
            let k = key_bytes(key, *key_b64)?;
            let bytes = match (value, file) {
                (Some(v), _) => v.as_bytes().to_vec(),
                (None, Some(f)) => {
                    std::fs::read(f).map_err(|e| fail("io", format!("{}: {e}", f.display())))?
                }
                (None, None) => {
                    return Err(fail("usage", "put needs a VALUE or --file".into()).code(2))
                }
            };
            open(cli, name, false)?
                .insert(&k, &bytes)
                .map_err(|e| Fail::map(name, e))?;
            if cli.json {
                let n = bytes.len().into();
                println!("{}", key_result(name, "put", &k, &[("value_bytes", n)]));
            }
            Ok(())
        }
        Cmd::Rm { name, key, key_b64 } => {
            let k = key_bytes(key, *key_b64)?;
            if !open(cli, name, false)?
                .remove(&k)
                .map_err(|e| Fail::map(name, e))?
            {
                return Err(key_not_found(name, key, *key_b64));
            }
            if cli.json {
                println!(
                    "{}",
                    key_result(name, "rm", &k, &[("removed", true.into())])
                );
            }
            Ok(())
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
                writeln!(out, "{}", Value::Object(o)).map_err(|e| fail("io", e.to_string()))?;
            }
            Ok(())
        }
        Cmd::Load {
            name,
            file,
            create,
            wake_every_write,
        } => {
            let f = std::fs::File::open(file)
                .map_err(|e| fail("io", format!("{}: {e}", file.display())))?;
            let mut rows = Vec::new();
            for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.map_err(|e| fail("io", format!("{}: {e}", file.display())))?;
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |e: String| fail("input", format!("{}:{}: {e}", file.display(), n + 1));
                let v: Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
                if !v.is_object() {
                    return Err(bad(format!(
                        "a line must be a JSON object, not {}",
                        json_type(&v)
                    )));
                }
                rows.push((
                    json_bytes(&v, "key").map_err(bad)?,
                    json_bytes(&v, "value").map_err(bad)?,
                ));
            }
            let opts = options(cli, false).wake_every_write(*wake_every_write);
            let m = if *create {
                RawMap::open_or_create(name, &opts)
            } else {
                RawMap::open(name, &opts)
            }
            .map_err(|e| Fail::map(name, e))?;
            m.write(|b| rows.iter().try_for_each(|(k, v)| b.insert(k, v)))
                .map_err(|e| Fail::map(name, e))?;
            if cli.json {
                println!(
                    "{}",
                    json!({"map": name, "op": "load", "entries": rows.len(), "batch": true})
                );
            } else {
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
            let mut before = snapshot(&m).map_err(|e| Fail::map(name, e))?;
            let mut seen = 0;
            let wait = Duration::from_secs(idle_timeout.unwrap_or(u64::MAX / 4));
            println!("watching {name:?} from version {}", before.version);
            std::io::stdout().flush().ok();
            while count.is_none_or(|c| seen < c) {
                if m.wait_for_change(before.version, wait)
                    .map_err(|e| Fail::map(name, e))?
                    .is_none()
                {
                    break;
                }
                // The version is read inside the snapshot the diff is made
                // of: the line covers exactly the versions between the two.
                let now = snapshot(&m).map_err(|e| Fail::map(name, e))?;
                if now.version == before.version {
                    continue;
                }
                let diff = now.diff(&before);
                let (from, to) = (before.version + 1, now.version);
                if cli.json {
                    println!("{}", json!({"from": from, "to": to, "changes": diff}));
                } else {
                    let label = if from == to {
                        format!("version {to}")
                    } else {
                        format!("versions {from}..{to}")
                    };
                    let what = if diff.is_empty() {
                        "(no key changed)".to_string()
                    } else {
                        diff.join(" ")
                    };
                    println!("{label}: {what}");
                }
                std::io::stdout().flush().ok();
                seen += to - before.version;
                before = now;
            }
            Ok(())
        }
        Cmd::Destroy { name, yes } => {
            // What is there is found out before asking: a missing map (or
            // another map's key, not allowed, locked) is an error at once.
            let opts = options(cli, false);
            let map = match RawMap::open(name, &opts) {
                Ok(m) => Some(m),
                // A map that does not open because of its content
                // (half-created, corrupted, another build's) is still
                // removed; `destroy_by_name` removes only objects that are
                // provably this map's.
                Err(Error::Corrupted(_) | Error::Incompatible(_)) => None,
                // Missing, another map's (`NameMismatch`), another
                // program's (`KeyInUse`), not allowed, locked: say so.
                Err(e) => return Err(Fail::map(name, e)),
            };
            if !yes {
                eprint!("destroy map {name:?} and everything in it? [y/N] ");
                let mut answer = String::new();
                std::io::stdin()
                    .read_line(&mut answer)
                    .map_err(|e| fail("io", e.to_string()))?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    if answer.is_empty() && cli.json {
                        // EOF: the JSON error gets a line of its own.
                        eprintln!();
                    }
                    return Err(fail(
                        "not_confirmed",
                        format!("map {name:?}: not destroyed (use --yes to skip the question)"),
                    )
                    .about(name));
                }
            }
            match map {
                Some(m) => m.destroy(),
                None => RawMap::destroy_by_name(name, &opts).map(drop),
            }
            .map_err(|e| Fail::map(name, e))?;
            if cli.json {
                println!(
                    "{}",
                    json!({"map": name, "op": "destroy", "destroyed": true})
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let help = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if help || !std::env::args_os().any(|a| a == "--json") {
                e.exit();
            }
            // A usage error with --json: one JSON object, like every error.
            let text = e.render().to_string();
            let msg = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg).to_string();
            fail("usage", msg).code(2).report(true);
            return ExitCode::from(2);
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            f.report(cli.json);
            ExitCode::from(f.code)
        }
    }
}
