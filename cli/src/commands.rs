//! The subcommands that work on maps, one function each (`orphans.rs`
//! has the orphans').

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use shmkv::{list_maps, Error, RawMap, SyncState};

use crate::fail::{confirm, error_kind, fail, Fail};
use crate::format::*;
use crate::watch::snapshot;
use crate::{open, options, Cli, Out, Sizing};

/// Owned key/value pairs.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn entries(m: &RawMap) -> Result<Pairs, Error> {
    Ok(m.entries()?
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect())
}

/// `ls`: the maps on the machine.
pub(crate) fn ls(cli: &Cli, all: bool) -> Out {
    let maps = list_maps(all).map_err(|e| fail(error_kind(&e), e.to_string()))?;
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

/// `create`: a new, empty map sized by the flags (an error if it exists).
pub(crate) fn create(cli: &Cli, name: &str, sizing: &Sizing) -> Out {
    let m =
        RawMap::create(name, &sizing.apply(options(cli, false))).map_err(|e| Fail::map(name, e))?;
    let s = m.stats().map_err(|e| Fail::map(name, e))?;
    if cli.json {
        println!(
            "{}",
            json!({"map": name, "op": "create", "created": true, "key": s.key,
                   "capacity": s.capacity, "arena_size": s.arena_size,
                   "segment_size": s.segment_size, "data_shmid": s.data_shmid,
                   "root_shmid": s.root_shmid})
        );
    } else {
        eprintln!(
            "created map {name:?}: key {:#010x}, {} slots, arena {} bytes, segment {} bytes",
            s.key, s.capacity, s.arena_size, s.segment_size
        );
    }
    Ok(())
}

/// `stat`: counters and identity.
pub(crate) fn stat(cli: &Cli, name: &str) -> Out {
    let m = open(cli, name, true)?;
    let s = m.stats().map_err(|e| Fail::map(name, e))?;
    // Read raw: a state that does not decode (damaged, or written by a
    // newer version) is shown as such with its owner, not a failed `stat`.
    let raw = m
        .get(shmkv::SYNC_STATE_KEY)
        .map_err(|e| Fail::map(name, e))?;
    let sync = raw.as_deref().map(|b| (SyncState::decode(b), b));
    if cli.json {
        let mut v = stats_json(&s);
        v["sync"] = match &sync {
            None => Value::Null,
            Some((Ok(st), _)) => sync_json(st),
            Some((Err(e), b)) => unreadable_sync_json(e, b),
        };
        println!("{v}");
    } else {
        print_stats(&s);
        match &sync {
            None => {}
            Some((Ok(st), _)) => print_sync(st),
            Some((Err(e), b)) => print_unreadable_sync(e, b),
        }
    }
    Ok(())
}

/// `verify`: the full consistency check (exit 3 on problems).
pub(crate) fn verify(cli: &Cli, name: &str) -> Out {
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

/// `get`: one value.
pub(crate) fn get(cli: &Cli, name: &str, key: &str, key_b64: bool) -> Out {
    let k = key_bytes(key, key_b64)?;
    let m = open(cli, name, true)?;
    let v = m.get_ref(&k).map_err(|e| Fail::map(name, e))?;
    let Some(v) = v else {
        return Err(key_not_found(name, key, key_b64));
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

/// `put`: one value, into an existing map or (with `create`) a new one.
pub(crate) fn put(
    cli: &Cli,
    name: &str,
    key: &str,
    key_b64: bool,
    value: Option<&str>,
    file: Option<&Path>,
    create: Option<&Sizing>,
) -> Out {
    let k = key_bytes(key, key_b64)?;
    let bytes = match (value, file) {
        (Some(v), _) => v.as_bytes().to_vec(),
        (None, Some(f)) => {
            std::fs::read(f).map_err(|e| fail("io", format!("{}: {e}", f.display())))?
        }
        (None, None) => return Err(fail("usage", "put needs a VALUE or --file".into()).code(2)),
    };
    let m = match create {
        Some(sizing) => RawMap::open_or_create(name, &sizing.apply(options(cli, false)))
            .map_err(|e| Fail::map(name, e))?,
        None => open(cli, name, false)?,
    };
    m.insert(&k, &bytes).map_err(|e| Fail::map(name, e))?;
    if cli.json {
        let n = bytes.len().into();
        println!("{}", key_result(name, "put", &k, &[("value_bytes", n)]));
    }
    Ok(())
}

/// `rm`: removes a key (exit 4 if it was not there).
pub(crate) fn rm(cli: &Cli, name: &str, key: &str, key_b64: bool) -> Out {
    let k = key_bytes(key, key_b64)?;
    if !open(cli, name, false)?
        .remove(&k)
        .map_err(|e| Fail::map(name, e))?
    {
        return Err(key_not_found(name, key, key_b64));
    }
    if cli.json {
        println!(
            "{}",
            key_result(name, "rm", &k, &[("removed", true.into())])
        );
    }
    Ok(())
}

/// `keys`: the keys, sorted.
pub(crate) fn keys(cli: &Cli, name: &str) -> Out {
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

/// `dump`: every entry as JSON lines, sorted by key.
pub(crate) fn dump(cli: &Cli, name: &str) -> Out {
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

/// `load`: a dump applied as one batch, to an existing map or (with
/// `create`) a new one.
pub(crate) fn load(cli: &Cli, name: &str, file: &Path, create: Option<&Sizing>) -> Out {
    let f =
        std::fs::File::open(file).map_err(|e| fail("io", format!("{}: {e}", file.display())))?;
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
    let m = match create {
        Some(sizing) => RawMap::open_or_create(name, &sizing.apply(options(cli, false)))
            .map_err(|e| Fail::map(name, e))?,
        None => open(cli, name, false)?,
    };
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

/// `watch`: each new version with the keys that changed.
pub(crate) fn watch(cli: &Cli, name: &str, count: Option<u64>, idle_timeout: Option<u64>) -> Out {
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

/// `destroy NAME`: removes a map.
pub(crate) fn destroy(cli: &Cli, name: &str, yes: bool) -> Out {
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
    if !yes
        && !confirm(
            &format!("destroy map {name:?} and everything in it?"),
            cli.json,
        )?
    {
        return Err(fail(
            "not_confirmed",
            format!("map {name:?}: not destroyed (use --yes to skip the question)"),
        )
        .about(name));
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
