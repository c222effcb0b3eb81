//! Output of the `shmkv` command: keys given as text or base64, bytes as
//! JSON, the lock's state, `stat`'s counters.

use base64::Engine as _;
use serde_json::{json, Value};
use shmkv::{HugePages, Stats};

use crate::fail::{fail, Fail};

/// The key argument as bytes: its text, or base64 with `--key-b64`.
pub(crate) fn key_bytes(key: &str, b64: bool) -> Result<Vec<u8>, Fail> {
    if !b64 {
        return Ok(key.as_bytes().to_vec());
    }
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|e| fail("usage", format!("--key-b64 {key:?}: {e}")).code(2))
}

/// How messages name a key: as given on the command line.
pub(crate) fn key_label(key: &str, b64: bool) -> String {
    if b64 {
        format!("key (base64) {key:?}")
    } else {
        format!("key {key:?}")
    }
}

/// Exit 4: `key` is not in map `name`.
pub(crate) fn key_not_found(name: &str, key: &str, b64: bool) -> Fail {
    fail(
        "key_not_found",
        format!("map {name:?}: {} not found", key_label(key, b64)),
    )
    .about(name)
    .code(4)
}

/// A JSON result `{"map": name, "op": op, "key" or "key_b64": .., more}`.
pub(crate) fn key_result(name: &str, op: &str, key: &[u8], more: &[(&str, Value)]) -> Value {
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
pub(crate) fn lock_text(s: &Stats) -> String {
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

/// Bytes as JSON: a UTF-8 string under `field`, else base64 under `field_b64`.
pub(crate) fn bytes_json(obj: &mut serde_json::Map<String, Value>, field: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => obj.insert(field.into(), Value::String(s.into())),
        Err(_) => obj.insert(
            format!("{field}_b64"),
            Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
    };
}

/// The JSON type of `v`, for messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
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
pub(crate) fn json_bytes(obj: &Value, field: &str) -> Result<Vec<u8>, String> {
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

/// `Options::huge_pages` as the command prints it.
fn policy_text(p: HugePages) -> &'static str {
    match p {
        HugePages::Off => "off",
        HugePages::Try => "try",
        HugePages::Require => "require",
    }
}

pub(crate) fn stats_json(s: &Stats) -> Value {
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
        "huge_pages": s.huge_pages, "huge_page_policy": policy_text(s.huge_page_policy),
    })
}

pub(crate) fn print_stats(s: &Stats) {
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
    if s.huge_page_policy != HugePages::Off || s.huge_pages {
        println!(
            "pages       {} (huge page policy {})",
            if s.huge_pages {
                "huge (SHM_HUGETLB)"
            } else {
                "normal"
            },
            policy_text(s.huge_page_policy)
        );
    }
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
pub(crate) fn stale_text(ids: &[i32]) -> String {
    format!(
        "{} retired segment(s) left for a process allowed to remove them (shmid {})",
        ids.len(),
        ids.iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Seconds since `unix_ms` (0 if it is in the future or unset).
fn secs_since(unix_ms: u64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_sub(unix_ms) as f64 / 1000.0
}

/// `stat`'s sync state (`shmkv sync`): source, prefix, revisions, lag, owner.
pub(crate) fn sync_json(s: &shmkv::SyncState) -> Value {
    json!({
        "source": s.source.as_str(), "cluster_id": format!("{:x}", s.cluster_id),
        "prefix": String::from_utf8_lossy(&s.prefix), "strip_prefix": s.strip_prefix,
        "endpoints": s.endpoints, "revision": s.revision, "seen_revision": s.seen_revision,
        "lag_revisions": s.lag_revisions(),
        "seconds_since_last_event": (s.last_event_unix_ms != 0).then(|| secs_since(s.last_event_unix_ms)),
        "owner_pid": (s.owner_pid != 0).then_some(s.owner_pid), "owner_alive": s.owner_alive(),
    })
}

pub(crate) fn print_sync(s: &shmkv::SyncState) {
    println!(
        "sync        from {} {} (cluster {:x}, prefix {:?}{})",
        s.source.as_str(),
        s.endpoints,
        s.cluster_id,
        String::from_utf8_lossy(&s.prefix),
        if s.strip_prefix { ", stripped" } else { "" }
    );
    println!(
        "revision    {} applied, lag {} revisions (seen {}), last event {}",
        s.revision,
        s.lag_revisions(),
        s.seen_revision,
        if s.last_event_unix_ms == 0 {
            "never".to_string()
        } else {
            format!("{:.1} s ago", secs_since(s.last_event_unix_ms))
        }
    );
    println!(
        "owner       {}",
        match (s.owner_pid, s.owner_alive()) {
            (0, _) => "none (no sync running)".to_string(),
            (p, true) => format!("pid {p} (alive)"),
            (p, false) => format!("pid {p} (not running: the lease is free)"),
        }
    );
}

/// The owner a stored sync state that does not decode still names, as
/// `stat` shows it.
fn unreadable_owner(raw: &[u8]) -> Option<(u32, bool)> {
    shmkv::SyncState::encoded_owner(raw)
        .filter(|&(pid, _)| pid != 0)
        .map(|(pid, start)| (pid, shmkv::is_live_owner(pid, start)))
}

/// `stat --json`'s sync state when it does not decode.
pub(crate) fn unreadable_sync_json(e: &shmkv::Error, raw: &[u8]) -> Value {
    let owner = unreadable_owner(raw);
    json!({
        "unreadable": e.to_string(),
        "owner_pid": owner.map(|o| o.0), "owner_alive": owner.is_some_and(|o| o.1),
    })
}

pub(crate) fn print_unreadable_sync(e: &shmkv::Error, raw: &[u8]) {
    println!("sync        state unreadable ({e}); `shmkv sync etcd --resnapshot` replaces it");
    println!(
        "owner       {}",
        match unreadable_owner(raw) {
            None => "none readable".to_string(),
            Some((p, true)) => format!("pid {p} (alive)"),
            Some((p, false)) => format!("pid {p} (not running)"),
        }
    );
}
