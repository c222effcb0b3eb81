//! The `shmkv` binary against real maps: made with the library, inspected
//! with the CLI, and the reverse through `load`; every error path. (Also
//! the CLI halves of library tests: typed maps from `tests/schema.rs`, the
//! name check of `tests/identity.rs`, stale segments of
//! `tests/multiuser.rs`.)
#![allow(unreachable_pub)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ok, shmkv, Cleanup, KillOnDrop, Segment};
use shmkv::__private::{data_offsets, root_offsets};
use shmkv::{key_from_name, Options, RawMap, ShmMap};

/// Exit code and the single stderr line of a failing command.
fn fails(args: &[&str]) -> (i32, String) {
    let o = shmkv(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line of error: {err:?}");
    (o.status.code().unwrap(), err.trim().to_string())
}

#[test]
fn inspect_a_map_made_by_the_library() {
    let c = Cleanup::new("cli");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"alpha", b"1").unwrap();
    m.insert(b"beta", b"two").unwrap();
    m.insert(b"bin", &[0xff, 0x00]).unwrap();
    let n = c.name.as_str();

    let stat: serde_json::Value = serde_json::from_str(&ok(&["--json", "stat", n])).unwrap();
    assert_eq!(stat["entries"], 3);
    assert_eq!(stat["version"], 3);
    assert_eq!(stat["name"], n);
    assert!(ok(&["stat", n]).contains("entries     3"));

    let ls: serde_json::Value = serde_json::from_str(&ok(&["--json", "ls"])).unwrap();
    assert!(ls
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == n && m["entries"] == 3));
    assert!(ok(&["ls"]).contains(n));

    assert_eq!(ok(&["get", n, "beta"]), "two");
    assert_eq!(ok(&["keys", n]), "alpha\nbeta\nbin\n");
    assert_eq!(
        ok(&["dump", n]),
        "{\"key\":\"alpha\",\"value\":\"1\"}\n{\"key\":\"beta\",\"value\":\"two\"}\n{\"key\":\"bin\",\"value_b64\":\"/wA=\"}\n"
    );
    assert!(ok(&["verify", n]).starts_with("ok:"));
    let v: serde_json::Value = serde_json::from_str(&ok(&["--json", "verify", n])).unwrap();
    assert_eq!(v["ok"], true);

    ok(&["put", n, "gamma", "3"]);
    let file = std::env::temp_dir().join(format!("{n}.value"));
    std::fs::write(&file, b"from a file").unwrap();
    ok(&["put", n, "delta", "--file", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(m.get(b"gamma").unwrap().unwrap(), b"3");
    assert_eq!(m.get(b"delta").unwrap().unwrap(), b"from a file");
    ok(&["rm", n, "gamma"]);
    assert_eq!(m.get(b"gamma").unwrap(), None);
    assert_eq!(fails(&["rm", n, "gamma"]).0, 4);
    let (code, err) = fails(&["get", n, "nope"]);
    assert_eq!(code, 4);
    assert!(err.contains("not found") && err.contains(n), "{err}");
}

#[test]
fn dump_and_load_round_trip_as_one_batch() {
    let a = Cleanup::new("cli-src");
    let b = Cleanup::new("cli-dst");
    let typed: ShmMap<str, String> = ShmMap::create(&a.name, &a.opts).unwrap();
    for i in 0..100 {
        typed
            .insert(&format!("k{i}"), &format!("value {i}"))
            .unwrap();
    }
    typed.raw().insert(&[0xfe, 0xff], &[1, 2, 3]).unwrap();
    let dump = ok(&["dump", &a.name]);
    let file = std::env::temp_dir().join(format!("{}.jsonl", b.name));
    std::fs::write(&file, &dump).unwrap();
    let (code, err) = fails(&["load", &b.name, file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    ok(&["load", &b.name, file.to_str().unwrap(), "--create"]);
    let dst = RawMap::open(&b.name, &Options::new()).unwrap();
    assert_eq!(dst.len(), 101);
    assert_eq!(dst.version(), 1, "loaded as one batch");
    let copy: ShmMap<str, String> = ShmMap::open(&b.name, &Options::new()).unwrap();
    assert_eq!(copy.get("k42").unwrap().as_deref(), Some("value 42"));
    assert_eq!(dst.get(&[0xfe, 0xff]).unwrap().unwrap(), vec![1, 2, 3]);
    assert_eq!(ok(&["dump", &b.name]), dump);
    // A bad line: nothing is applied.
    std::fs::write(&file, "{\"key\":\"x\",\"value\":\"1\"}\nnot json\n").unwrap();
    let (code, err) = fails(&["load", &b.name, file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(":2:"), "{err}");
    assert_eq!(dst.get(b"x").unwrap(), None);
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn error_paths_name_the_map_and_the_cause() {
    let missing = common::unique_name("cli-missing");
    let (code, err) = fails(&["stat", &missing]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("shmkv: ") && err.contains(&missing) && err.contains("not found"),
        "{err}"
    );
    assert_eq!(shmkv(&["frobnicate"]).status.code(), Some(2));

    // Lock held by a pid: hold it in a thread of this process.
    let c = Cleanup::new("cli-locked");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Held until the two commands below have run (not for a fixed time a
    // slow machine could outlast).
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(|| {
            let done_rx = done_rx; // moved in: a Receiver is not Sync
            m.write(|_| {
                tx.send(()).unwrap();
                let _ = done_rx.recv_timeout(Duration::from_secs(30));
                Ok(())
            })
            .unwrap()
        });
        rx.recv().unwrap();
        let stat: serde_json::Value =
            serde_json::from_str(&ok(&["--json", "stat", &c.name])).unwrap();
        assert_eq!(stat["lock_held"], true);
        assert_eq!(stat["lock_pid"], std::process::id());
        let (code, err) = fails(&["--lock-timeout-ms", "100", "put", &c.name, "k", "v"]);
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!("held by pid {}", std::process::id())),
            "{err}"
        );
        done_tx.send(()).unwrap();
    });

    // An incompatible layout version.
    let stats = m.stats().unwrap();
    let root = Segment::attach(stats.root_shmid);
    let restore = root.restore(root_offsets::LAYOUT_VERSION, 1);
    root.flip(root_offsets::LAYOUT_VERSION, 0x10);
    let (code, err) = fails(&["stat", &c.name]);
    drop(restore);
    drop(root);
    assert_eq!(code, 1);
    assert!(
        err.contains("incompatible") && err.contains("layout version"),
        "{err}"
    );

    // verify finds problems: exit 3. Damage the first record's header.
    m.insert(b"k", b"v").unwrap();
    let data = Segment::data_of(&stats);
    let arena = data_offsets::arena(stats.capacity);
    let restore = data.restore(arena, 1);
    data.flip(arena, 0x7);
    let (code, err) = fails(&["verify", &c.name]);
    drop(restore);
    drop(data);
    assert_eq!(code, 3, "{err}");
    assert!(ok(&["verify", &c.name]).starts_with("ok"));

    // destroy asks; without an answer nothing happens.
    let (code, _) = fails(&["destroy", &c.name]);
    assert_eq!(code, 1);
    assert!(RawMap::open(&c.name, &c.opts).is_ok());
    drop(m);
    ok(&["destroy", &c.name, "--yes"]);
    assert!(RawMap::open(&c.name, &c.opts).is_err());
    common::assert_removed(&stats);
}

#[test]
fn permission_denied_for_another_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot run the CLI as another user; skipped");
        return;
    }
    let c = Cleanup::new("cli-perm");
    let _m = RawMap::create(&c.name, &c.opts).unwrap();
    let out = Command::new(common::shmkv_bin())
        .args(["stat", &c.name])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("permission denied") && err.contains(&c.name),
        "{err}"
    );
}

#[test]
fn watch_prints_versions_and_changed_keys() {
    let c = Cleanup::new("cli-watch");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"a", b"1").unwrap();
    m.insert(b"b", b"1").unwrap();
    let mut w = KillOnDrop(Some(
        Command::new(common::shmkv_bin())
            .args(["watch", &c.name, "--count", "2", "--idle-timeout", "20"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // Each write only after the watcher printed the line before it (it
    // prints a line per wake-up, so writes it has not yet seen would merge).
    let mut lines = BufReader::new(w.0.as_mut().unwrap().stdout.take().unwrap()).lines();
    let mut next_line = || lines.next().unwrap().unwrap();
    assert_eq!(next_line(), format!("watching {:?} from version 2", c.name));
    m.write(|b| {
        b.insert(b"a", b"2")?;
        b.insert(b"c", b"1")?;
        b.remove(b"b").map(drop)
    })
    .unwrap();
    assert_eq!(next_line(), "version 3: ~a -b +c");
    m.insert(b"c", b"2").unwrap();
    assert_eq!(next_line(), "version 4: ~c");
    assert!(lines.next().is_none(), "more lines after --count 2");
    assert!(w.0.take().unwrap().wait().unwrap().success());
}

/// Issue 16 item 2: `watch` labels each line with the versions it covers
/// (read in the same snapshot it diffs), counts versions, not lines, and
/// reports a key removed and re-added with the same value as changed.
#[test]
fn watch_lines_cover_exactly_their_versions() {
    let c = Cleanup::new("cli-watch-range");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"x3", b"same").unwrap();
    let start = m.version();
    let mut w = KillOnDrop(Some(
        Command::new(common::shmkv_bin())
            .args([
                "--json",
                "watch",
                &c.name,
                "--count",
                "14",
                "--idle-timeout",
                "20",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // The writes start once the watcher has printed its first line (it
    // knows its starting version then).
    let mut stdout = BufReader::new(w.0.as_mut().unwrap().stdout.take().unwrap());
    let mut text = String::new();
    stdout.read_line(&mut text).unwrap();
    // 14 versions in quick succession: the watcher merges some of them.
    for i in 0..12u8 {
        m.insert(format!("x{}", 10 + i).as_bytes(), b"v").unwrap();
    }
    m.remove(b"x3").unwrap();
    m.insert(b"x3", b"same").unwrap();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    assert!(w.0.take().unwrap().wait().unwrap().success());
    let mut next = start + 1;
    let mut changed = std::collections::BTreeSet::new();
    for line in text.lines().skip(1) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["from"], next, "{text}");
        let to = v["to"].as_u64().unwrap();
        assert!(to >= next, "{text}");
        next = to + 1;
        for ch in v["changes"].as_array().unwrap() {
            changed.insert(ch.as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        next,
        start + 15,
        "the lines cover versions up to {}: {text}",
        next - 1
    );
    for i in 0..12u8 {
        assert!(changed.contains(&format!("+x{}", 10 + i)), "{text}");
    }
    // Removed and re-added with the same value: changed (`~`), or seen
    // apart as `-` then `+`.
    assert!(
        changed.contains("~x3") || (changed.contains("-x3") && changed.contains("+x3")),
        "the re-added key is missing: {text}"
    );
}

/// Issue 16 item 8: binary keys, as `dump` prints them (`key_b64`), are
/// addressable by `get`, `put` and `rm`.
#[test]
fn key_b64_addresses_binary_keys() {
    let c = Cleanup::new("cli-b64");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(&[0xff, 0x00], b"bin").unwrap();
    let n = c.name.as_str();
    assert!(ok(&["dump", n]).contains("\"key_b64\":\"/wA=\""));
    assert_eq!(ok(&["get", n, "--key-b64", "/wA="]), "bin");
    ok(&["put", n, "--key-b64", "/wE=", "one"]);
    assert_eq!(m.get(&[0xff, 0x01]).unwrap().unwrap(), b"one");
    ok(&["rm", n, "--key-b64", "/wE="]);
    assert_eq!(m.get(&[0xff, 0x01]).unwrap(), None);
    // Without the flag the argument is the key's text.
    assert_eq!(fails(&["get", n, "/wA="]).0, 4);
    let (code, err) = fails(&["get", n, "--key-b64", "not base64!"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--key-b64"), "{err}");
}

/// Issue 16 item 8: `stat` says that its count includes itself.
#[test]
fn stat_says_the_attach_count_includes_itself() {
    let c = Cleanup::new("cli-attach");
    let _m = RawMap::create(&c.name, &c.opts).unwrap();
    let text = ok(&["stat", &c.name]);
    assert!(
        text.contains("attached    2 (this shmkv included: 1 without it)"),
        "{text}"
    );
    let stat: serde_json::Value = serde_json::from_str(&ok(&["--json", "stat", &c.name])).unwrap();
    assert_eq!(stat["attached"], 2);
    assert_eq!(stat["attached_includes_self"], true);
}

/// Issue 16 item 8: `destroy` of a missing map says so instead of asking.
#[test]
fn destroy_checks_the_map_exists_before_asking() {
    let missing = common::unique_name("cli-destroy-missing");
    let o = shmkv(&["destroy", &missing]);
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("[y/N]"), "asked first: {err}");
    assert!(err.contains("not found") && err.contains(&missing), "{err}");
    // An existing map: it asks (and keeps the map without an answer).
    let c = Cleanup::new("cli-destroy-ask");
    let _m = RawMap::create(&c.name, &c.opts).unwrap();
    let o = shmkv(&["destroy", &c.name]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[y/N]"));
    assert!(RawMap::open(&c.name, &c.opts).is_ok());
}

/// The single JSON object a failing `--json` command prints on stderr.
fn json_error(args: &[&str]) -> (i32, serde_json::Value) {
    let o = shmkv(args);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(o.stdout.is_empty(), "{args:?}: stdout {:?}", o.stdout);
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line of error: {err:?}");
    let v: serde_json::Value =
        serde_json::from_str(&err).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {err}"));
    (o.status.code().unwrap(), v)
}

/// Issue 16 item 8: with `--json`, errors are JSON objects on stderr and
/// `put`, `rm`, `load` print a JSON result on stdout.
#[test]
fn json_errors_and_results() {
    let missing = common::unique_name("cli-json-missing");
    let (code, e) = json_error(&["--json", "stat", &missing]);
    assert_eq!(code, 1);
    assert_eq!(e["exit_code"], 1);
    assert_eq!(e["kind"], "not_found");
    assert_eq!(e["map"], missing.as_str());
    assert!(e["error"].as_str().unwrap().contains("not found"), "{e}");
    let (code, e) = json_error(&["--json", "frobnicate"]);
    assert_eq!((code, &e["kind"]), (2, &serde_json::json!("usage")), "{e}");

    let c = Cleanup::new("cli-json");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let n = c.name.as_str();
    let put: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "put", n, "k", "v1"])).unwrap();
    assert_eq!(
        put,
        serde_json::json!({"map": n, "op": "put", "key": "k", "value_bytes": 2})
    );
    let rm: serde_json::Value = serde_json::from_str(&ok(&["--json", "rm", n, "k"])).unwrap();
    assert_eq!(
        rm,
        serde_json::json!({"map": n, "op": "rm", "key": "k", "removed": true})
    );
    let (code, e) = json_error(&["--json", "rm", n, "k"]);
    assert_eq!((code, &e["kind"]), (4, &serde_json::json!("key_not_found")));
    let (code, e) = json_error(&["--json", "get", n, "k"]);
    assert_eq!((code, &e["kind"]), (4, &serde_json::json!("key_not_found")));

    let file = std::env::temp_dir().join(format!("{n}.jsonl"));
    std::fs::write(
        &file,
        "{\"key\":\"a\",\"value\":\"1\"}\n{\"key_b64\":\"/wA=\",\"value\":\"2\"}\n",
    )
    .unwrap();
    let out = shmkv(&["--json", "load", n, file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let load: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        load,
        serde_json::json!({"map": n, "op": "load", "entries": 2, "batch": true})
    );
    assert_eq!(m.len(), 2);
}

/// Issue 16 item 8: a JSON number as a value is named as such.
#[test]
fn load_says_a_value_must_be_a_string() {
    let c = Cleanup::new("cli-load-num");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let file = std::env::temp_dir().join(format!("{}.jsonl", c.name));
    std::fs::write(
        &file,
        "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\",\"value\":5}\n",
    )
    .unwrap();
    let (code, err) = fails(&["load", &c.name, file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains(":2:") && err.contains("value must be a string or value_b64"),
        "{err}"
    );
    assert_eq!(m.len(), 0, "nothing applied");
}

/// Semaphore 1 of a set (the tag), read with `GETVAL`.
fn sem_val(semid: i32, n: i32) -> i32 {
    // SAFETY: GETVAL takes no further argument.
    unsafe { libc::semctl(semid, n, libc::GETVAL) }
}

/// Sets semaphore `n` of `semid` to `v` when dropped.
struct SetVal(i32, i32, i32);

impl Drop for SetVal {
    fn drop(&mut self) {
        // SAFETY: SETVAL takes an int argument.
        unsafe { libc::semctl(self.0, self.1, libc::SETVAL, self.2) };
    }
}

/// Issue 16 item 8: a held lock whose holder the kernel does not know
/// (`GETPID` 0) is not listed as "free".
#[test]
fn ls_does_not_say_free_when_the_holder_is_unknown() {
    let c = Cleanup::new("cli-ls-lock");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let s = m.stats().unwrap();
    let tag = sem_val(s.semid, 1);
    assert!(tag > 0);
    // Replace the map's set by one whose lock (semaphore 0) is 0, held,
    // and was never operated (no pid): the tag set with SETVAL, then a
    // semop on the tag only.
    // SAFETY: plain integer arguments.
    assert_eq!(unsafe { libc::semctl(s.semid, 0, libc::IPC_RMID) }, 0);
    // SAFETY: plain integer arguments.
    let id = unsafe { libc::semget(s.key, 2, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    assert!(id >= 0);
    // Freed again (whatever happens) before the guard destroys the map.
    let _free = SetVal(id, 0, 1);
    let mut ops = [
        libc::sembuf {
            sem_num: 1,
            sem_op: 1,
            sem_flg: 0,
        },
        libc::sembuf {
            sem_num: 1,
            sem_op: -1,
            sem_flg: 0,
        },
    ];
    // SAFETY: SETVAL takes an int; semop reads `ops.len()` operations.
    unsafe {
        assert_eq!(libc::semctl(id, 1, libc::SETVAL, tag), 0);
        assert_eq!(libc::semop(id, ops.as_mut_ptr(), ops.len()), 0);
    }
    let stat: serde_json::Value = serde_json::from_str(&ok(&["--json", "stat", &c.name])).unwrap();
    assert_eq!(stat["lock_held"], true, "{stat}");
    assert_eq!(stat["lock_pid"], serde_json::Value::Null, "{stat}");
    let line = ok(&["ls"])
        .lines()
        .find(|l| l.starts_with(c.name.as_str()))
        .unwrap()
        .to_string();
    assert!(!line.contains("free"), "{line}");
    assert!(line.contains("held (holder unknown)"), "{line}");
    assert!(ok(&["stat", &c.name]).contains("lock        held (holder unknown)"));
}

/// `shm_lpid` of segment `id` (the last process that attached or detached it).
fn last_attacher(id: i32) -> i32 {
    // SAFETY: shmid_ds is plain data; all-zero is valid.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid, writable shmid_ds.
    assert_eq!(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) }, 0);
    ds.shm_lpid
}

/// Issue 16 item 7: `ls` does not attach other programs' segments of a
/// root's size (their `shm_lpid` stays), and lists a half-created map with
/// its state instead of hiding it.
#[test]
fn ls_leaves_foreign_segments_alone_and_shows_half_created_maps() {
    // Another program's 512-byte segment at some key, no lock there.
    let key = 0x5e00_0000 | (std::process::id() as i32 & 0xffff);
    // Detached at once (the guard drops): a segment this process keeps
    // attached is inherited by any fork of it (another test's `Command`
    // with `uid()` forks), and that child's exec detaches it, setting
    // `shm_lpid` to the child's pid: a false "ls attached it" (seen once).
    let foreign_id = Segment::create(key, 512, 0o600).id();
    struct Rm(i32);
    impl Drop for Rm {
        fn drop(&mut self) {
            // SAFETY: IPC_RMID ignores the buffer argument.
            unsafe { libc::shmctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
    let _rm = Rm(foreign_id);
    let me = std::process::id() as i32;
    assert_eq!(last_attacher(foreign_id), me);
    // A map whose creator has not finished.
    let c = Cleanup::new("cli-ls-creating");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let map_key = m.stats().unwrap().key;
    drop(m);
    let root = Segment::root_of(map_key);
    root.write_u64(root_offsets::MAGIC, u64::from_le_bytes(*b"SHMKVRC\x01"));
    let text = ok(&["ls"]);
    assert_eq!(
        last_attacher(foreign_id),
        me,
        "ls attached another program's segment"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&c.name))
        .unwrap_or_else(|| panic!("the half-created map is not listed:\n{text}"));
    assert!(line.contains("creating"), "{line}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["--json", "ls"])).unwrap();
    let entry = json
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == c.name.as_str())
        .unwrap();
    assert_eq!(entry["state"], "creating");
    // `destroy` removes it.
    ok(&["--lock-timeout-ms", "200", "destroy", &c.name, "--yes"]);
    assert!(!ok(&["ls"]).contains(&c.name));
}

/// Issue 16 item 7: `read_only(true)` with `open_or_create` opens an
/// existing map (and says why it cannot create a missing one).
#[test]
fn read_only_open_or_create_opens_an_existing_map() {
    let c = Cleanup::new("ro-ooc");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    m.insert(b"k", b"v").unwrap();
    let ro = RawMap::open_or_create(&c.name, &Options::new().read_only(true)).unwrap();
    assert_eq!(ro.get(b"k").unwrap(), Some(b"v".to_vec()));
    let missing = Cleanup::new("ro-ooc-missing");
    assert!(matches!(
        RawMap::open_or_create(&missing.name, &Options::new().read_only(true)),
        Err(shmkv::Error::ReadOnly)
    ));
}

/// `load --create --wake-every-write` makes a map whose writers wake
/// waiters on every write (`stat` shows it); without the flag they do not.
#[test]
fn load_can_create_a_map_that_wakes_on_every_write() {
    let c = Cleanup::new("cli-wake");
    let plain = Cleanup::new("cli-nowake");
    let file = std::env::temp_dir().join(format!("{}.jsonl", c.name));
    std::fs::write(&file, "{\"key\":\"a\",\"value\":\"1\"}\n").unwrap();
    let f = file.to_str().unwrap();
    ok(&["load", &c.name, f, "--create", "--wake-every-write"]);
    ok(&["load", &plain.name, f, "--create"]);
    std::fs::remove_file(&file).unwrap();
    let stat = |n: &str| -> serde_json::Value {
        serde_json::from_str(&ok(&["--json", "stat", n])).unwrap()
    };
    assert_eq!(stat(&c.name)["wake_every_write"], true);
    assert_eq!(stat(&plain.name)["wake_every_write"], false);
    assert!(ok(&["stat", &c.name]).contains("wakes       on every write"));
}

/// From `tests/schema.rs`.
#[test]
fn the_cli_refuses_put_into_a_typed_map_without_raw() {
    let c = Cleanup::new("schema-cli");
    let m: ShmMap<str, u64> = ShmMap::create(&c.name, &c.opts).unwrap();
    m.insert("k", &5).unwrap();
    let out = Command::new(common::shmkv_bin())
        .args(["put", &c.name, "k", "x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("typed") && err.contains("--raw"), "{err}");
    assert_eq!(m.get("k").unwrap(), Some(5));
    let out = Command::new(common::shmkv_bin())
        .args(["put", "--raw", &c.name, "k2", "x"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stat = Command::new(common::shmkv_bin())
        .args(["stat", &c.name])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&stat.stdout).contains("str -> u64"));
}

/// From `tests/identity.rs` `destroy_by_name_needs_the_stored_name`: the
/// CLI does not fall back to `destroy_by_name` on a `NameMismatch`.
#[test]
fn cli_destroy_does_not_fall_back_on_a_name_mismatch() {
    let a = common::unique_name("name-a");
    let typo = common::unique_name("name-typo");
    let key = key_from_name(&a) ^ 0x2c2c;
    let opts = Options::new().sysv_key(key);
    let _ca = Cleanup {
        name: a.clone(),
        opts: opts.clone(),
    };
    let m = RawMap::create(&a, &opts).unwrap();
    m.insert(b"k", b"v").unwrap();
    let out = Command::new(common::shmkv_bin())
        .args(["--sysv-key", &key.to_string(), "destroy", &typo, "--yes"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&a), "{err}");
    let again = RawMap::open(&a, &opts).unwrap();
    assert_eq!(again.get(b"k").unwrap().unwrap(), b"v");
    let s = m.stats().unwrap();
    drop(again);
    m.destroy().unwrap();
    common::assert_removed(&s);
}

/// From `tests/multiuser.rs` (where another user's writer leaves a retired
/// segment it may not remove): `stat` and `verify` show the root's `stale`
/// list. Here the list is written directly, naming a segment of "another
/// program" (put back before the map is destroyed).
#[test]
fn stat_and_verify_show_stale_segments() {
    let c = Cleanup::new("cli-stale");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let s = m.stats().unwrap();
    let other = Segment::create(libc::IPC_PRIVATE, 4096, 0o600);
    // SAFETY: IPC_RMID ignores the buffer; the segment is ours, attached by
    // `other` until the end of the test.
    unsafe { libc::shmctl(other.id(), libc::IPC_RMID, std::ptr::null_mut()) };
    let root = Segment::root_of(s.key);
    let _put_back = root.restore(root_offsets::STALE, 8);
    root.write_u64(root_offsets::STALE, other.id() as u64 + 1);
    for cmd in ["stat", "verify"] {
        let text = ok(&[cmd, &c.name]);
        assert!(
            text.contains("1 retired segment(s) left for a process allowed to remove them")
                && text.contains(&format!("shmid {}", other.id())),
            "{cmd}: {text}"
        );
    }
}
