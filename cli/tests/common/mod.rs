//! Test support of the `shmkv` command's tests: the library's own
//! `tests/common` (unique map names, cleanup guards, leak assertions,
//! direct access to segments, child processes), plus the command's binary.
#![allow(dead_code, unused_imports)]

#[path = "../../../tests/common/mod.rs"]
mod shared;

pub use shared::*;

/// The `shmkv` command of this crate, as Cargo built it for the tests.
pub fn shmkv_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shmkv")
}

/// Runs the command with `args` (stdin empty).
pub fn shmkv(args: &[&str]) -> std::process::Output {
    std::process::Command::new(shmkv_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// The stdout of a command that must succeed.
pub fn ok(args: &[&str]) -> String {
    let o = shmkv(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}
