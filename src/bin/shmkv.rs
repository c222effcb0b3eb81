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

/// A failure: exit code, a machine-readable kind, the map if one is
/// concerned, and the one-line message.
struct Fail {
    code: u8,
    kind: &'static str,
    map: Option<String>,
    msg: String,
}

/// Exit code 1 with this kind and message, no map.
fn fail(kind: &'static str, msg: String) -> Fail {
    Fail {
        code: 1,
        kind,
        map: None,
        msg,
    }
}

impl Fail {
    /// A library error about map `name`.
    fn map(name: &str, e: Error) -> Fail {
        let msg = e.to_string();
        let msg = if msg.contains(&format!("{name:?}")) {
            msg
        } else {
            format!("map {name:?}: {msg}")
        };
        Fail {
            code: 1,
            kind: error_kind(&e),
            map: Some(name.to_string()),
            msg,
        }
    }

    /// This failure about map `name`.
    fn about(mut self, name: &str) -> Fail {
        self.map = Some(name.to_string());
        self
    }

    /// This failure with exit code `code`.
    fn code(mut self, code: u8) -> Fail {
        self.code = code;
        self
    }

    /// Prints the failure on stderr: one line of text, or one JSON object.
    fn report(&self, json: bool) {
        if json {
            let mut o = serde_json::Map::new();
            o.insert("error".into(), self.msg.clone().into());
            o.insert("kind".into(), self.kind.into());
            o.insert("exit_code".into(), self.code.into());
            if let Some(m) = &self.map {
                o.insert("map".into(), m.clone().into());
            }
            eprintln!("{}", Value::Object(o));
        } else {
            eprintln!("shmkv: {}", self.msg);
        }
    }
}

/// The `kind` of a library error in JSON errors.
fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::NotFound { .. } => "not_found",
        Error::AlreadyExists { .. } => "already_exists",
        Error::PermissionDenied { .. } => "permission_denied",
        Error::InvalidSize(_) => "invalid_size",
        Error::InvalidName(_) => "invalid_name",
        Error::InvalidOption(_) => "invalid_option",
        Error::Ftok { .. } => "ftok",
        Error::KeyTooLarge { .. } => "key_too_large",
        Error::ValueTooLarge { .. } => "value_too_large",
        Error::Full { .. } => "full",
        Error::LockTimeout { .. } => "lock_timeout",
        Error::Busy { .. } => "busy",
        Error::TypedMap { .. } => "typed_map",
        Error::Incompatible(_) => "incompatible",
        Error::Corrupted(_) => "corrupted",
        Error::NameMismatch { .. } => "name_mismatch",
        Error::ReadOnly => "read_only",
        Error::NestedWrite => "nested_write",
        Error::Value(_) => "value",
        Error::KeyInUse { .. } => "key_in_use",
        Error::Os { .. } => "os",
        _ => "other",
    }
}

/// The key argument as bytes: its text, or base64 with `--key-b64`.
fn key_bytes(key: &str, b64: bool) -> Result<Vec<u8>, Fail> {
    if !b64 {
        return Ok(key.as_bytes().to_vec());
    }
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|e| fail("usage", format!("--key-b64 {key:?}: {e}")).code(2))
}

/// How messages name a key: as given on the command line.
fn key_label(key: &str, b64: bool) -> String {
    if b64 {
        format!("key (base64) {key:?}")
    } else {
        format!("key {key:?}")
    }
}

/// Exit 4: `key` is not in map `name`.
fn key_not_found(name: &str, key: &str, b64: bool) -> Fail {
    fail(
        "key_not_found",
        format!("map {name:?}: {} not found", key_label(key, b64)),
    )
    .about(name)
    .code(4)
}

/// A JSON result `{"map": name, "op": op, "key" or "key_b64": .., more}`.
fn key_result(name: &str, op: &str, key: &[u8], more: &[(&str, Value)]) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("map".into(), name.into());
    o.insert("op".into(), op.into());
    bytes_json(&mut o, "key", key);
    for (k, v) in more {
        o.insert((*k).into(), v.clone());
    }
    Value::Object(o)
}

/// The lock as `stat` and `ls` show it. "free" only when the kernel says
/// the lock is free; a held lock whose holder is unknown says so.
fn lock_text(s: &Stats) -> String {
    match (s.lock_held, s.lock_pid) {
        (true, Some(p)) => format!("held by pid {p}"),
        (true, None) => "held (holder unknown)".into(),
        (false, Some(_)) => "free".into(),
        // `Stats` reads the value and the pid with the same permission: no
        // pid is a set never operated, or a value that could not be read.
        (false, None) => {
            // SAFETY: GETVAL takes no further argument; any semid is safe
            // to pass (a wrong one fails with EINVAL).
            let v = unsafe { libc::semctl(s.semid, 0, libc::GETVAL) };
            match v {
                1.. => "free".into(),
                0 => "held (holder unknown)".into(),
                _ => format!("unknown ({})", std::io::Error::last_os_error()),
            }
        }
    }
}

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

/// The JSON type of `v`, for messages.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `field` (a UTF-8 string) or `field_b64` (base64) of a dump line.
fn json_bytes(obj: &Value, field: &str) -> Result<Vec<u8>, String> {
    let b64 = format!("{field}_b64");
    match (obj.get(field), obj.get(&b64)) {
        (Some(Value::String(s)), None) => Ok(s.as_bytes().to_vec()),
        (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("{b64}: {e}")),
        (Some(_), Some(_)) => Err(format!("both {field} and {b64} given; give one")),
        (None, None) => Err(format!("missing \"{field}\" or \"{b64}\"")),
        (Some(v), None) => Err(format!(
            "{field} must be a string or {b64} (base64), not {}",
            json_type(v)
        )),
        (None, Some(v)) => Err(format!(
            "{b64} must be a base64 string, not {}",
            json_type(v)
        )),
    }
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "name": s.name, "key": s.key, "generation": s.generation, "capacity": s.capacity,
        "entries": s.live, "tombstones": s.tombstones, "arena_size": s.arena_size,
        "arena_used": s.arena_used, "garbage_bytes": s.garbage_bytes,
        "segment_size": s.segment_size, "version": s.version, "attached": s.attached,
        "attached_includes_self": true,
        "lock_held": s.lock_held, "lock_pid": s.lock_pid, "lock": lock_text(s),
        "root_shmid": s.root_shmid,
        "data_shmid": s.data_shmid, "semid": s.semid, "stale_segments": s.stale_segments,
        "schema": s.schema, "wake_every_write": s.wake_every_write,
    })
}

fn print_stats(s: &Stats) {
    let lock = lock_text(s);
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
    // This shmkv has the map open too: say so rather than leave it to guess.
    println!(
        "attached    {} (this shmkv included: {} without it)",
        s.attached,
        s.attached.saturating_sub(1)
    );
    println!("lock        {lock} (semid {})", s.semid);
    if s.wake_every_write {
        println!("wakes       on every write (read-only waiters sleep in the kernel)");
    }
    if let Some(schema) = &s.schema {
        println!("schema      {schema} (typed: put/load need --raw)");
    }
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

/// One consistent look at a map for `watch`: its version, generation and
/// entries (with their records' offsets), all from the same view.
struct Snapshot {
    version: u64,
    generation: u64,
    entries: std::collections::HashMap<Vec<u8>, (Vec<u8>, u64)>,
}

fn snapshot(m: &RawMap) -> Result<Snapshot, Error> {
    m.view(|v| {
        Ok(Snapshot {
            version: v.version(),
            generation: v.generation(),
            entries: v
                .entries_with_records()?
                .into_iter()
                .map(|((k, val), rec)| (k.to_vec(), (val.to_vec(), rec)))
                .collect(),
        })
    })
}

impl Snapshot {
    /// `+key` added, `-key` removed, `~key` changed: another value, or
    /// (within one generation) the same value written again, e.g. removed
    /// and re-added between the two looks. Sorted by key.
    fn diff(&self, old: &Snapshot) -> Vec<String> {
        let same_gen = self.generation == old.generation;
        let mut diff: Vec<String> = Vec::new();
        for (k, (v2, r2)) in &self.entries {
            match old.entries.get(k) {
                None => diff.push(format!("+{}", String::from_utf8_lossy(k))),
                Some((v1, r1)) if v1 != v2 || (same_gen && r1 != r2) => {
                    diff.push(format!("~{}", String::from_utf8_lossy(k)))
                }
                _ => {}
            }
        }
        diff.extend(
            old.entries
                .keys()
                .filter(|k| !self.entries.contains_key(*k))
                .map(|k| format!("-{}", String::from_utf8_lossy(k))),
        );
        diff.sort_by(|a, b| a[1..].cmp(&b[1..]));
        diff
    }
}

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
