//! The torture suite: writer processes run random operations (single
//! writes, batches of up to 50, forced compactions) and are killed with
//! SIGKILL at random moments, or kill themselves at an armed point of the
//! write or resize protocol. Reader processes verify self-checking values
//! and batch invariants the whole time. After every kill the supervisor
//! checks that every acknowledged write is present (or superseded by a later
//! acknowledged one) and that nothing is torn.
//!
//! `SHMKV_TORTURE_KILLS` sets the number of kills (default 200).
#![allow(unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{arg, assert_removed, crash_point, results, role, spawn, Cleanup, KillOnDrop};
use shmkv::__private::arm;
use shmkv::{Options, RawMap};

const KEYS: u64 = 300;
const GROUPS: u64 = 8;
const GROUP_SIZE: u64 = 6;

fn key(k: u64) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn group_key(g: u64, i: u64) -> Vec<u8> {
    format!("group-{g}-{i}").into_bytes()
}

/// A self-checking value for `key` written as sequence number `seq`.
fn value(key: &[u8], seq: u64) -> Vec<u8> {
    let len = (seq % 97) as usize;
    let mut v = Vec::with_capacity(len + 24);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((0..len).map(|i| (i as u64 ^ seq) as u8));
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(key);
    h.update(&v);
    v.extend_from_slice(&h.digest().to_le_bytes());
    v
}

/// The sequence number of a valid value, or `None` if it is torn.
fn check(key: &[u8], v: &[u8]) -> Option<u64> {
    if v.len() < 16 {
        return None;
    }
    let (body, sum) = v.split_at(v.len() - 8);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(key);
    h.update(body);
    let seq = u64::from_le_bytes(body[..8].try_into().unwrap());
    (h.digest().to_le_bytes() == sum && value(key, seq) == v).then_some(seq)
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// One logged operation: `P key seq`, `R key`, `C` (compact).
#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, u64),
    Remove(Vec<u8>),
    Compact,
}

fn encode(ops: &[Op]) -> String {
    ops.iter()
        .map(|op| match op {
            Op::Put(k, s) => format!("P {} {s}", String::from_utf8_lossy(k)),
            Op::Remove(k) => format!("R {}", String::from_utf8_lossy(k)),
            Op::Compact => "C".to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn decode(line: &str) -> Vec<Op> {
    line.split(';')
        .map(|op| {
            let f: Vec<&str> = op.split(' ').collect();
            match f[0] {
                "P" => Op::Put(f[1].as_bytes().to_vec(), f[2].parse().unwrap()),
                "R" => Op::Remove(f[1].as_bytes().to_vec()),
                _ => Op::Compact,
            }
        })
        .collect()
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(model: &mut Model, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put(k, s) => {
                model.insert(k.clone(), value(k, *s));
            }
            Op::Remove(k) => {
                model.remove(k);
            }
            Op::Compact => {}
        }
    }
}

/// A writer: logs `B <ops>` before and `A` after each write, one `write`
/// system call per line, so the log survives SIGKILL exactly.
fn writer_role() {
    let m = RawMap::open(&arg("MAP"), &Options::new()).unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(arg("LOG"))
        .unwrap();
    let mut rng: u64 = arg("SEED").parse().unwrap();
    let mut seq: u64 = arg("SEQ").parse().unwrap();
    if let Ok(p) = std::env::var("POINT") {
        arm(crash_point(&p), next(&mut rng) % 20);
    }
    loop {
        let choice = next(&mut rng) % 100;
        let mut ops = Vec::new();
        if choice < 50 {
            seq += 1;
            ops.push(Op::Put(key(next(&mut rng) % KEYS), seq));
        } else if choice < 65 {
            ops.push(Op::Remove(key(next(&mut rng) % KEYS)));
        } else if choice < 80 {
            // A group batch: every key of the group gets the same sequence.
            seq += 1;
            let g = next(&mut rng) % GROUPS;
            ops.extend((0..GROUP_SIZE).map(|i| Op::Put(group_key(g, i), seq)));
        } else if choice < 97 {
            for _ in 0..1 + next(&mut rng) % 50 {
                seq += 1;
                let k = key(next(&mut rng) % KEYS);
                ops.push(if next(&mut rng) % 4 == 0 {
                    Op::Remove(k)
                } else {
                    Op::Put(k, seq)
                });
            }
        } else {
            ops.push(Op::Compact);
        }
        log.write_all(format!("B {}\n", encode(&ops)).as_bytes())
            .unwrap();
        match &ops[..] {
            [Op::Compact] => m.compact().unwrap(),
            [Op::Put(k, s)] => m.insert(k, &value(k, *s)).unwrap(),
            [Op::Remove(k)] => {
                m.remove(k).unwrap();
            }
            _ => m
                .write(|b| {
                    for op in &ops {
                        match op {
                            Op::Put(k, s) => b.insert(k, &value(k, *s))?,
                            Op::Remove(k) => {
                                b.remove(k)?;
                            }
                            Op::Compact => {}
                        }
                    }
                    Ok(())
                })
                .unwrap(),
        }
        log.write_all(b"A\n").unwrap();
    }
}

/// A reader: random reads and group views until the stop file appears.
fn reader_role() {
    let ro = std::env::var("READ_ONLY").is_ok();
    let m = RawMap::open(&arg("MAP"), &Options::new().read_only(ro)).unwrap();
    let stop = PathBuf::from(arg("STOP"));
    let mut rng = std::process::id() as u64 | 1;
    let (mut reads, mut views, mut torn, mut mixed) = (0u64, 0u64, 0u64, 0u64);
    let mut longest = Duration::ZERO;
    while !stop.exists() {
        for _ in 0..500 {
            let k = key(next(&mut rng) % KEYS);
            let t = Instant::now();
            if let Some(v) = m.get_ref(&k).unwrap() {
                torn += u64::from(check(&k, &v).is_none());
            }
            longest = longest.max(t.elapsed());
            reads += 1;
        }
        let g = next(&mut rng) % GROUPS;
        let t = Instant::now();
        let seqs = m
            .view(|v| {
                (0..GROUP_SIZE)
                    .map(|i| {
                        let k = group_key(g, i);
                        Ok(v.get(&k)?.map(|x| check(&k, &x)))
                    })
                    .collect::<shmkv::Result<Vec<_>>>()
            })
            .unwrap();
        longest = longest.max(t.elapsed());
        views += 1;
        torn += seqs.iter().filter(|s| matches!(s, Some(None))).count() as u64;
        if seqs.windows(2).any(|w| w[0] != w[1]) {
            mixed += 1;
        }
    }
    println!(
        "RESULT reads={reads} views={views} torn={torn} mixed={mixed} longest_us={}",
        longest.as_micros()
    );
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap()
        .parse()
        .unwrap()
}

fn snapshot(m: &RawMap) -> Model {
    m.entries()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

#[test]
fn writers_killed_at_random_lose_nothing() {
    match role().as_deref() {
        Some("writer") => return writer_role(),
        Some("reader") => return reader_role(),
        _ => {}
    }
    let kills: u64 = std::env::var("SHMKV_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let test = "writers_killed_at_random_lose_nothing";
    // Small table and arena: writers grow and compact the map all the time.
    let c = Cleanup::with("torture", Options::new().capacity(14).arena_size(4096u64));
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let dir = std::env::temp_dir().join(&c.name);
    std::fs::create_dir_all(&dir).unwrap();
    let stop = dir.join("stop");
    let base_env = [
        ("MAP", c.name.clone()),
        ("STOP", stop.display().to_string()),
    ];
    let mut readers: Vec<KillOnDrop> = vec![
        KillOnDrop(Some(spawn(test, "reader", &base_env))),
        KillOnDrop(Some(spawn(
            test,
            "reader",
            &[
                base_env[0].clone(),
                base_env[1].clone(),
                ("READ_ONLY", "1".into()),
            ],
        ))),
    ];

    let points = [
        "AfterStage",
        "AfterRedoLog",
        "BeforeCommit",
        "AfterCommit",
        "MidApply",
        "AfterApply",
        "MidResize",
        "AfterPublish",
    ];
    let mut model = Model::new();
    let mut rng = 0x5eed_u64 ^ std::process::id() as u64;
    let mut writer_pids = Vec::new();
    let (mut acked, mut inflight_applied, mut inflight_lost, mut self_killed) =
        (0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    for round in 0..kills {
        let log_path = dir.join(format!("writer-{round}.log"));
        std::fs::File::create(&log_path).unwrap();
        let mut env = vec![
            ("MAP", c.name.clone()),
            ("LOG", log_path.display().to_string()),
            ("SEED", (next(&mut rng) | 1).to_string()),
            ("SEQ", (round << 32).to_string()),
        ];
        let armed = next(&mut rng) % 2 == 0;
        if armed {
            env.push((
                "POINT",
                points[(next(&mut rng) % points.len() as u64) as usize].to_string(),
            ));
        }
        let mut child: Child = spawn(test, "writer", &env);
        writer_pids.push(child.id());
        // Let it run 1-30 ms, then kill it (unless it already killed itself).
        std::thread::sleep(Duration::from_micros(1000 + next(&mut rng) % 29_000));
        let _ = child.kill();
        let status = child.wait().unwrap();
        assert!(!status.success(), "writer {round} must die: {status:?}");
        if armed && std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
            self_killed += 1;
        }

        // Replay the log: acknowledged writes, and at most one in flight.
        let log = std::fs::read_to_string(&log_path).unwrap();
        let mut inflight: Option<Vec<Op>> = None;
        // A line cut short by the kill was never followed by its write.
        for line in log
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
        {
            if let Some(ops) = line.strip_prefix("B ") {
                inflight = Some(decode(ops));
            } else if line == "A" {
                apply(&mut model, &inflight.take().unwrap());
                acked += 1;
            }
        }
        // This view also recovers whatever the dead writer left.
        let got = snapshot(&m);
        let report = m.verify().unwrap();
        assert!(report.is_ok(), "round {round}: {:?}", report.problems);
        for (k, v) in &got {
            assert!(
                check(k, v).is_some(),
                "round {round}: torn value for {}",
                String::from_utf8_lossy(k)
            );
        }
        if got != model {
            let ops = inflight.clone().unwrap_or_default();
            let mut with = model.clone();
            apply(&mut with, &ops);
            assert!(
                got == with,
                "round {round}: the map is neither the acknowledged state nor that plus the write in flight ({ops:?})"
            );
            model = with;
            inflight_applied += 1;
        } else if inflight.is_some() {
            inflight_lost += 1;
        }
        std::fs::remove_file(&log_path).unwrap();
    }
    let took = start.elapsed();
    std::fs::File::create(&stop).unwrap();
    let mut longest_us = 0;
    for r in &mut readers {
        let (status, lines) = results(r.0.take().unwrap());
        assert!(status.success(), "reader failed: {status:?}");
        let l = &lines[0];
        eprintln!("reader: {l}");
        assert!(field(l, "reads") > 0 && field(l, "views") > 0);
        assert_eq!(field(l, "torn"), 0, "torn values seen");
        assert_eq!(field(l, "mixed"), 0, "a view saw part of a batch");
        longest_us = longest_us.max(field(l, "longest_us"));
    }
    let s = m.stats().unwrap();
    eprintln!(
        "torture: {kills} kills ({self_killed} at armed protocol points) in {took:?}; {acked} acknowledged writes checked, \
         {inflight_applied} in-flight writes found applied, {inflight_lost} not; torn 0, lost 0; \
         longest reader operation {longest_us} us; final {s:?}"
    );
    m.destroy().unwrap();
    assert_removed(&s);
    // No segment made by any writer (or by us) is left.
    let left: Vec<common::ShmRow> = common::sysv_segments()
        .into_iter()
        .filter(|r| writer_pids.contains(&r.cpid))
        .collect();
    assert!(left.is_empty(), "leaked segments: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
