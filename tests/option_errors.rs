//! Bad options and system limits are typed errors that name the cause (issue
//! 16, item 7): a mode with bits outside 0o777, an `ftok` path that does not
//! exist, and the kernel's shared memory limits.
#![allow(unreachable_pub)]

mod common;

use common::{role, unique_name, Cleanup};
use shmkv::{Error, Options, RawMap};

/// `.mode(644)` (decimal by mistake: 0o1204) used to be masked silently to
/// 0o204 (a map its owner could not read).
#[test]
fn a_mode_outside_0o777_is_an_error() {
    for mode in [644, 0o1644, 0o4000, u32::MAX] {
        // The guard removes with valid options, whatever happens.
        let c = Cleanup::new("mode");
        let err = RawMap::create(&c.name, &Options::new().mode(mode)).unwrap_err();
        assert!(matches!(err, Error::InvalidOption(_)), "{mode:#o}: {err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{mode:#o}")) && text.contains("0o777"),
            "{text}"
        );
        // Nothing was made at the key.
        assert!(matches!(
            RawMap::open(&c.name, &c.opts),
            Err(Error::NotFound { .. })
        ));
        // Open and destroy check it too.
        assert!(matches!(
            RawMap::open(&c.name, &Options::new().mode(mode)),
            Err(Error::InvalidOption(_))
        ));
    }
    // Every mode inside 0o777 is fine.
    let c = Cleanup::with("mode-ok", Options::new().mode(0o640));
    RawMap::create(&c.name, &c.opts).unwrap().destroy().unwrap();
}

/// `ftok` of a missing path used to read "map ... not found".
#[test]
fn ftok_of_a_missing_path_names_the_path_and_the_cause() {
    let path = std::env::temp_dir()
        .join(unique_name("no-such-dir"))
        .join("f");
    let opts = Options::new().ftok(&path, 7);
    for err in [
        RawMap::open("ftok-missing", &opts).unwrap_err(),
        RawMap::create("ftok-missing", &opts).unwrap_err(),
    ] {
        assert!(matches!(err, Error::Ftok { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string())
                && text.contains("No such file or directory")
                && text.contains("ftok-missing"),
            "{text}"
        );
    }
}

/// Runs in a child process in its own IPC namespace with `kernel.<limit>`
/// set to `value`, creates a map there and prints the error.
fn limit_role(limit: &str, value: &str) {
    // SAFETY: unshare only changes this thread's namespaces; the whole
    // test runs on this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWIPC) } != 0 {
        println!("RESULT skip: unshare: {}", std::io::Error::last_os_error());
        return;
    }
    std::fs::write(format!("/proc/sys/kernel/{limit}"), value).unwrap();
    // The namespace (and anything left in it) ends with this process.
    let err = RawMap::create("limit", &Options::new()).unwrap_err();
    println!("RESULT {err:?}");
    println!("RESULT {err}");
}

fn run_limit(test: &str, limit: &str, value: &str) -> (String, String) {
    let child = common::spawn(
        test,
        "limit",
        &[
            ("SHMKV_LIMIT", limit.to_string()),
            ("SHMKV_VALUE", value.to_string()),
        ],
    );
    let (status, lines) = common::results(child);
    assert!(status.success(), "{status}: {lines:?}");
    if lines.len() == 1 && lines[0].starts_with("skip") {
        eprintln!("{}; skipped", lines[0]);
        return Default::default();
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    (lines[0].clone(), lines[1].clone())
}

/// `ENOSPC` from `shmget` used to read "map is full: system shared memory
/// (needed N, available 0)", naming no limit.
#[test]
fn enospc_names_the_kernel_limit_and_the_sysctl() {
    if role().as_deref() == Some("limit") {
        return limit_role(&common::arg("SHMKV_LIMIT"), &common::arg("SHMKV_VALUE"));
    }
    // shmall: 2 pages (the root fits, the data segment does not);
    // shmmni: 1 segment (the root).
    for (limit, value) in [("shmall", "2"), ("shmmni", "1")] {
        let (debug, text) = run_limit("enospc_names_the_kernel_limit_and_the_sysctl", limit, value);
        if debug.is_empty() {
            return;
        }
        assert!(debug.starts_with("Full"), "{debug}");
        assert!(
            text.contains("kernel.shmall")
                && text.contains("kernel.shmmni")
                && text.contains("sysctl"),
            "{limit}: {text}"
        );
    }
}
