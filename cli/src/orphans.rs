//! `ls --orphans` and `destroy --orphans`: shmkv data segments whose root
//! is gone or corrupted (the library's `list_orphans`/`remove_orphan`).

use serde_json::{json, Value};
use shmkv::{key_from_name, list_orphans, remove_orphan, Orphan, OrphanRemoval};

use crate::fail::{confirm, error_kind, fail};
use crate::{Cli, Out};

fn orphan_json(o: &Orphan) -> Value {
    json!({"shmid": o.shmid, "size": o.size, "attached": o.attached,
           "generation": o.generation, "key": o.key, "root_shmid": o.root_shmid,
           "creator_pid": o.creator_pid, "cause": o.cause.as_str()})
}

fn find(key: Option<i32>) -> Result<Vec<Orphan>, crate::fail::Fail> {
    let mut all = list_orphans().map_err(|e| fail(error_kind(&e), e.to_string()))?;
    if let Some(k) = key {
        all.retain(|o| o.key == k);
    }
    all.sort_by_key(|o| o.shmid);
    Ok(all)
}

/// `ls --orphans`: the orphaned data segments (only those whose root was
/// at `--sysv-key`, if given).
pub(crate) fn ls(cli: &Cli) -> Out {
    let all = find(cli.sysv_key)?;
    if cli.json {
        println!("{}", Value::Array(all.iter().map(orphan_json).collect()));
        return Ok(());
    }
    println!(
        "{:>10} {:>11} {:>8} {:>4} {:>10} {:>10}  cause",
        "SHMID", "BYTES", "ATTACHED", "GEN", "ROOT KEY", "ROOT SHMID"
    );
    for o in &all {
        println!(
            "{:>10} {:>11} {:>8} {:>4} {:#010x} {:>10}  {}",
            o.shmid,
            o.size,
            o.attached,
            o.generation,
            o.key,
            o.root_shmid,
            o.cause.as_str()
        );
    }
    Ok(())
}

/// `destroy --orphans [NAME]`: removes the orphans (of map NAME's key, or
/// of `--sysv-key`, if given), each checked again right before. Those
/// still attached (without `force`) or that this user may not remove are
/// reported, the others still removed; exit 1 if any was left.
pub(crate) fn destroy(cli: &Cli, name: Option<&str>, yes: bool, force: bool) -> Out {
    let key = cli.sysv_key.or(name.map(key_from_name));
    let found = find(key)?;
    if found.is_empty() {
        if cli.json {
            println!(
                "{}",
                json!({"op": "destroy_orphans", "removed": [], "left": []})
            );
        } else {
            eprintln!("no orphaned data segments");
        }
        return Ok(());
    }
    if !yes {
        let bytes: u64 = found.iter().map(|o| o.size).sum();
        let question = format!(
            "remove {} orphaned data segment(s), {bytes} bytes?",
            found.len()
        );
        if !confirm(&question, cli.json)? {
            return Err(fail(
                "not_confirmed",
                "orphans not removed (use --yes to skip the question)".into(),
            ));
        }
    }
    let (mut removed, mut left) = (Vec::new(), Vec::new());
    for o in &found {
        let why = match remove_orphan(o.shmid, force) {
            Ok(OrphanRemoval::Removed) => {
                removed.push(o.shmid);
                if !cli.json {
                    println!(
                        "removed orphaned data segment {} ({} bytes, root {} at key {:#010x})",
                        o.shmid, o.size, o.root_shmid, o.key
                    );
                }
                continue;
            }
            // Gone, or its root is back: nothing to do.
            Ok(OrphanRemoval::NotAnOrphan) => continue,
            Ok(OrphanRemoval::Attached(n)) => {
                format!("attached by {n} process(es) (--force removes it at its last detach)")
            }
            Ok(OrphanRemoval::Denied) => "permission denied".to_string(),
            Err(e) => e.to_string(),
        };
        if !cli.json {
            println!("left orphaned data segment {}: {why}", o.shmid);
        }
        left.push(json!({"shmid": o.shmid, "reason": why}));
    }
    if cli.json {
        println!(
            "{}",
            json!({"op": "destroy_orphans", "removed": removed, "left": left})
        );
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(fail(
            "orphans_left",
            format!(
                "{} orphaned data segment(s) left, {} removed",
                left.len(),
                removed.len()
            ),
        ))
    }
}
