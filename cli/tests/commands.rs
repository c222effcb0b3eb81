//! `shmkv create`, `put --create`, the not-found hint, help texts and
//! shell completions (issue 13).
#![allow(unreachable_pub)]

mod common;

use common::{ok, shmkv, Cleanup};
use shmkv::{Options, RawMap};

/// Exit code and stderr of a failing command.
fn fails(args: &[&str]) -> (i32, String) {
    let o = shmkv(args);
    assert!(!o.status.success(), "{args:?} should fail");
    (
        o.status.code().unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

fn stat(name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&["--json", "stat", name])).unwrap()
}

/// Permission bits of segment `shmid`.
fn mode_of(shmid: i32) -> u32 {
    // SAFETY: shmid_ds is plain data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid, writable shmid_ds.
    assert_eq!(unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) }, 0);
    u32::from(ds.shm_perm.mode) & 0o777
}

#[test]
fn create_makes_a_map_of_the_sizes_given() {
    let c = Cleanup::new("cli-create");
    let n = c.name.as_str();
    let out: serde_json::Value = serde_json::from_str(&ok(&[
        "--json",
        "create",
        n,
        "--capacity",
        "5000",
        "--arena",
        "2mb",
        "--mode",
        "0640",
    ]))
    .unwrap();
    assert_eq!(
        (&out["op"], &out["created"]),
        (&"create".into(), &true.into())
    );
    let s = stat(n);
    assert_eq!(s["entries"], 0);
    assert_eq!(s["arena_size"], 2 << 20);
    // 5000 entries at most 7/8 full: the next power of two slots.
    assert_eq!(s["capacity"], 8192, "{s}");
    assert_eq!(out["capacity"], s["capacity"]);
    let (root, data) = (
        s["root_shmid"].as_i64().unwrap() as i32,
        s["data_shmid"].as_i64().unwrap() as i32,
    );
    assert_eq!((mode_of(root), mode_of(data)), (0o640, 0o640));
    // The map works, through the library too.
    ok(&["put", n, "k", "v"]);
    let m = RawMap::open(n, &c.opts).unwrap();
    assert_eq!(m.get(b"k").unwrap().unwrap(), b"v");

    // A second create is an error naming the map; the map is untouched.
    let (code, err) = fails(&["create", n]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists") && err.contains(n), "{err}");
    let (code, err) = fails(&["--json", "create", n, "--capacity", "1"]);
    let e: serde_json::Value = serde_json::from_str(&err).unwrap();
    assert_eq!((code, &e["kind"]), (1, &"already_exists".into()), "{e}");
    assert_eq!(stat(n)["capacity"], 8192);
    assert_eq!(m.get(b"k").unwrap().unwrap(), b"v");
}

/// `--max-size` is honoured: a value that needs the map to grow beyond it
/// is refused, naming the bound; the same value fits a map without it.
#[test]
fn create_honours_max_size() {
    let bounded = Cleanup::new("cli-max");
    let free = Cleanup::new("cli-nomax");
    for (c, more) in [(&bounded, &["--max-size", "200kb"][..]), (&free, &[][..])] {
        let mut args = vec![
            "create",
            c.name.as_str(),
            "--capacity",
            "16",
            "--arena",
            "64kb",
        ];
        args.extend_from_slice(more);
        ok(&args);
    }
    let file = std::env::temp_dir().join(format!("{}.value", bounded.name));
    std::fs::write(&file, vec![7u8; 300 << 10]).unwrap();
    let f = file.to_str().unwrap();
    ok(&["put", &free.name, "big", "--file", f]);
    let (code, err) = fails(&["--json", "put", &bounded.name, "big", "--file", f]);
    std::fs::remove_file(&file).unwrap();
    let e: serde_json::Value = serde_json::from_str(&err).unwrap();
    assert_eq!((code, &e["kind"]), (1, &"value_too_large".into()), "{e}");
    assert!(e["error"].as_str().unwrap().contains("(max 204800)"), "{e}");
    assert_eq!(stat(&bounded.name)["entries"], 0);
}

#[test]
fn bad_sizes_and_modes_are_usage_errors() {
    let c = Cleanup::new("cli-badsize");
    for (flag, value, says) in [
        ("--arena", "5 parsecs", "unknown unit"),
        ("--arena=-3mb", "", "negative"),
        ("--max-size", "lots", "not a number"),
        ("--capacity", "many", "invalid digit"),
        ("--mode", "0800", "octal"),
        ("--mode", "1777", "outside 0777"),
    ] {
        let mut args = vec!["create", c.name.as_str(), flag];
        if !value.is_empty() {
            args.push(value);
        }
        let (code, err) = fails(&args);
        let flag = flag.split('=').next().unwrap();
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
    }
    // Nothing was made.
    assert!(RawMap::open(&c.name, &c.opts).is_err());
    // Sizing flags without --create on put: a usage error, nothing made.
    let (code, err) = fails(&["put", &c.name, "k", "v", "--capacity", "10"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("need --create"), "{err}");
    assert!(RawMap::open(&c.name, &c.opts).is_err());
}

#[test]
fn put_create_makes_the_map_with_its_sizes_once() {
    let c = Cleanup::new("cli-put-create");
    let n = c.name.as_str();
    ok(&[
        "put",
        "--create",
        n,
        "k",
        "v",
        "--capacity",
        "3000",
        "--arena",
        "1mb",
    ]);
    let s = stat(n);
    assert_eq!(
        (&s["capacity"], &s["arena_size"]),
        (&4096.into(), &(1 << 20).into())
    );
    assert_eq!(ok(&["get", n, "k"]), "v");
    // The map exists: --create opens it, the sizing flags are not applied.
    ok(&["put", "--create", n, "k2", "v2", "--capacity", "10"]);
    let s = stat(n);
    assert_eq!((&s["capacity"], &s["entries"]), (&4096.into(), &2.into()));
}

/// A missing map's error says how to create it (in the text; in JSON the
/// fields stay and a `hint` field is added).
#[test]
fn not_found_says_how_to_create_the_map() {
    let missing = common::unique_name("cli-hint");
    for args in [
        vec!["get", missing.as_str(), "k"],
        vec!["put", missing.as_str(), "k", "v"],
        vec!["stat", missing.as_str()],
    ] {
        let (code, err) = fails(&args);
        assert_eq!(code, 1, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("not found"), "{err}");
        assert!(
            err.contains(&format!("create it with `shmkv create {missing}`")),
            "{args:?}: {err}"
        );
    }
    let (_, err) = fails(&["--sysv-key", "12345", "get", &missing, "k"]);
    assert!(
        err.contains(&format!("`shmkv --sysv-key 12345 create {missing}`")),
        "{err}"
    );
    let (code, err) = fails(&["--json", "get", &missing, "k"]);
    let e: serde_json::Value = serde_json::from_str(&err).unwrap();
    assert_eq!(code, 1);
    assert_eq!(e["kind"], "not_found");
    assert_eq!(e["map"], missing.as_str());
    assert_eq!(e["exit_code"], 1);
    assert_eq!(e["error"], format!("map {missing:?} not found"));
    assert_eq!(
        e["hint"],
        format!("create it with `shmkv create {missing}`")
    );
}

#[test]
fn help_explains_every_argument() {
    let put = ok(&["help", "put"]);
    for text in [
        "Name of the map",
        "The key",
        "The value",
        "--file",
        "--create",
        "--capacity",
        "--arena",
        "--max-size",
        "--mode",
        "--json",
    ] {
        assert!(put.contains(text), "{text}: {put}");
    }
    // No argument line without its explanation: `<NAME>` alone on a line
    // (clap prints no help) would be a bare word.
    for cmd in [
        "ls",
        "create",
        "get",
        "destroy",
        "load",
        "watch",
        "completions",
    ] {
        let h = ok(&["help", cmd]);
        for l in h.lines().filter(|l| l.starts_with("  ")) {
            assert!(l.trim().contains("  "), "{cmd}: bare line {l:?}\n{h}");
        }
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let bash = ok(&["completions", "bash"]);
    for sub in [
        "ls",
        "create",
        "stat",
        "verify",
        "get",
        "put",
        "rm",
        "keys",
        "dump",
        "load",
        "watch",
        "destroy",
        "completions",
    ] {
        assert!(
            bash.contains(&format!("shmkv,{sub})")) || bash.contains(&format!("shmkv__{sub}")),
            "bash completion lacks {sub}"
        );
    }
    assert!(bash.contains("--orphans") && bash.contains("--capacity"));
    assert!(ok(&["completions", "zsh"]).contains("#compdef shmkv"));
    assert!(ok(&["completions", "fish"]).contains("complete -c shmkv"));
    let (code, _) = fails(&["completions", "tcsh"]);
    assert_eq!(code, 2);
}

/// `HugePages_Free` of /proc/meminfo.
fn huge_pages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn create_with_huge_pages_records_the_policy() {
    let c = Cleanup::new("cli-huge-try");
    ok(&["create", &c.name, "--huge-pages", "try"]);
    let s = stat(&c.name);
    assert_eq!(s["huge_page_policy"], "try", "{s}");
    // With no free huge page, `try` falls back to normal pages.
    if huge_pages_free() == 0 {
        assert_eq!(s["huge_pages"], false, "{s}");
    }
    let text = ok(&["stat", &c.name]);
    assert!(text.contains("huge page policy try"), "{text}");

    let r = Cleanup::new("cli-huge-require");
    if huge_pages_free() == 0 {
        let (code, err) = fails(&["--json", "create", &r.name, "--huge-pages", "require"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("huge_pages_unavailable"), "{err}");
        assert!(err.contains("vm.nr_hugepages"), "{err}");
        assert!(RawMap::open(&r.name, &shmkv::Options::new()).is_err());
    } else {
        ok(&["create", &r.name, "--huge-pages", "require"]);
        assert_eq!(stat(&r.name)["huge_pages"], true);
    }
    let (code, err) = fails(&["create", "x", "--huge-pages", "sometimes"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = fails(&["put", &c.name, "k", "v", "--huge-pages", "try"]);
    assert_eq!(code, 2, "sizing flags need --create: {err}");
}

/// A synced map (`shmkv sync`): `keys`, `dump`, `ls` and `stat` count and
/// list only the user entries; `stat` shows the sync state (source,
/// prefix, revision, lag, owner); `put` of a reserved key is refused.
#[test]
fn a_synced_map_hides_its_sync_state_and_stat_shows_it() {
    let c = Cleanup::new("cli-sync");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let st = shmkv::SyncState {
        source: shmkv::SourceKind::Etcd,
        cluster_id: 0xabc,
        prefix: b"/config/".to_vec(),
        strip_prefix: false,
        endpoints: "http://127.0.0.1:2379".into(),
        revision: 40,
        seen_revision: 43,
        last_event_unix_ms: 1,
        updated_unix_ms: 1,
        owner_pid: std::process::id(),
        owner_start_time: shmkv::process_start_time(std::process::id()).unwrap(),
    };
    m.write(|b| {
        b.insert(b"/config/a", b"1")?;
        b.set_sync_state(&st)
    })
    .unwrap();
    let n = c.name.as_str();
    assert_eq!(ok(&["keys", n]), "/config/a\n");
    assert_eq!(
        ok(&["dump", n]),
        "{\"key\":\"/config/a\",\"value\":\"1\"}\n"
    );
    let stat: serde_json::Value = serde_json::from_str(&ok(&["--json", "stat", n])).unwrap();
    assert_eq!(stat["entries"], 1);
    assert_eq!(stat["sync"]["revision"], 40);
    assert_eq!(stat["sync"]["lag_revisions"], 3);
    assert_eq!(stat["sync"]["prefix"], "/config/");
    assert_eq!(stat["sync"]["owner_alive"], true);
    let text = ok(&["stat", n]);
    assert!(text.contains("entries     1"), "{text}");
    assert!(
        text.contains("revision    40 applied, lag 3 revisions"),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid {} (alive)", std::process::id())),
        "{text}"
    );
    let ls: serde_json::Value = serde_json::from_str(&ok(&["--json", "ls"])).unwrap();
    assert!(ls
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == n && m["entries"] == 1));
    // The reserved key (a NUL cannot be in an argument: base64).
    let (code, err) = fails(&["put", n, "--key-b64", "AHNobWt2OnN5bmM=", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("reserved"), "{err}");
    // A state written by a newer version (it does not decode): `stat`
    // still shows the counters, says so and names the owner.
    let mut newer = st.encode();
    newer[4] = 2;
    m.write(|b| shmkv::__private::set_raw_sync_state(b, &newer))
        .unwrap();
    let text = ok(&["stat", n]);
    assert!(text.contains("entries     1"), "{text}");
    assert!(
        text.contains("state unreadable") && text.contains("unknown version 2"),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid {} (alive)", std::process::id())),
        "{text}"
    );
    let stat: serde_json::Value = serde_json::from_str(&ok(&["--json", "stat", n])).unwrap();
    assert!(stat["sync"]["unreadable"]
        .as_str()
        .unwrap()
        .contains("unknown version 2"));
    assert_eq!(stat["sync"]["owner_pid"], std::process::id());
    assert_eq!(stat["sync"]["owner_alive"], true);
    // A plain map has no sync lines.
    m.write(|b| b.clear_sync_state()).unwrap();
    let stat: serde_json::Value = serde_json::from_str(&ok(&["--json", "stat", n])).unwrap();
    assert!(stat["sync"].is_null());
}

/// `shmkv sync etcd` (feature `etcd`) without an etcd: a missing map is
/// exit 2, as is an etcd unreachable at start (after taking the lease,
/// which it releases again); a live owner's lease is exit 3.
#[cfg(feature = "etcd")]
/// The global options reach the sync: `shmkv --sysv-key K sync etcd
/// --create ...` creates the map at key K (it was created at the name's
/// key: the flag, listed in `sync --help`, was dropped).
#[test]
fn sync_opens_the_map_with_the_global_options() {
    let key = 0x5f00_0000 | (std::process::id() as i32 & 0xffff);
    let c = Cleanup::with("cli-sync-key", Options::new().sysv_key(key));
    let o = shmkv(&[
        "--sysv-key",
        &key.to_string(),
        "sync",
        "etcd",
        "--endpoints",
        "http://127.0.0.1:1",
        "--prefix",
        "/x/",
        &c.name,
        "--connect-timeout",
        "1",
        "--create",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot reach etcd"), "{err}");
    let m = RawMap::open(&c.name, &c.opts).unwrap();
    assert_eq!(m.stats().unwrap().key, key);
    assert!(m.sync_state().unwrap().is_some());
}

#[test]
fn sync_exit_codes_without_etcd() {
    let c = Cleanup::new("cli-sync-exit");
    let n = c.name.as_str();
    let args = |extra: &[&str]| -> (i32, String) {
        let mut a = vec![
            "sync",
            "etcd",
            "--endpoints",
            "http://127.0.0.1:1",
            "--prefix",
            "/x/",
            n,
            "--connect-timeout",
            "1",
        ];
        a.extend_from_slice(extra);
        let o = shmkv(&a);
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = args(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot open the map"), "{err}");
    let (code, err) = args(&["--create"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot reach etcd"), "{err}");
    let m = RawMap::open(n, &c.opts).unwrap();
    let st = m.sync_state().unwrap().expect("the lease was written");
    assert_eq!(st.owner_pid, 0, "the lease was released");
    assert_eq!(st.revision, 0);
    // A live owner (this test process): refused.
    m.write(|b| {
        let mut s = st.clone();
        s.owner_pid = std::process::id();
        s.owner_start_time = shmkv::process_start_time(std::process::id()).unwrap();
        b.set_sync_state(&s)
    })
    .unwrap();
    let (code, err) = args(&[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    // Usage errors are exit 2 (clap): --capacity needs --create.
    let (code, _) = args(&["--capacity", "10"]);
    assert_eq!(code, 2);
}

/// `stat` of a sync state with extreme revisions (any i64 decodes: a
/// library user's `set_sync_state`, or a scribble): the lag was
/// `seen_revision - revision` unchecked, an overflow panic (exit 101).
#[test]
fn stat_of_a_sync_state_with_extreme_revisions_does_not_panic() {
    let c = Cleanup::new("cli-sync-extreme");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let st = shmkv::SyncState {
        source: shmkv::SourceKind::Etcd,
        cluster_id: 1,
        prefix: b"/p/".to_vec(),
        strip_prefix: false,
        endpoints: String::new(),
        revision: i64::MIN,
        seen_revision: i64::MAX,
        last_event_unix_ms: u64::MAX,
        updated_unix_ms: u64::MAX,
        owner_pid: u32::MAX,
        owner_start_time: u64::MAX,
    };
    m.write(|b| b.set_sync_state(&st)).unwrap();
    let n = c.name.as_str();
    let stat: serde_json::Value = serde_json::from_str(&ok(&["--json", "stat", n])).unwrap();
    assert_eq!(stat["sync"]["lag_revisions"], i64::MAX);
    let text = ok(&["stat", n]);
    assert!(text.contains("revision "), "{text}");
}
