//! What is read from `/proc` (the SysV segment table, process start times)
//! or asked of other processes (whether one exists).

use nix::errno::Errno;

/// One row of `/proc/sysvipc/shm`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShmRow {
    pub(crate) key: i32,
    pub(crate) shmid: libc::c_int,
    pub(crate) size: u64,
    pub(crate) cpid: u32,
    pub(crate) nattch: u64,
}

/// Every segment of `/proc/sysvipc/shm` (the one place it is parsed).
pub(crate) fn sysvipc_shm() -> std::io::Result<Vec<ShmRow>> {
    let table = std::fs::read_to_string("/proc/sysvipc/shm")?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|l| {
            // key shmid perms size cpid lpid nattch ...
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
            Some(ShmRow {
                key: num(0)? as i32,
                shmid: num(1)? as libc::c_int,
                size: num(3)? as u64,
                cpid: num(4)? as u32,
                nattch: num(6)? as u64,
            })
        })
        .collect())
}

/// Start time of process `pid` (clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`), `None` if there is no such process.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` exists (`kill(pid, 0)`; `EPERM` means it does).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || Errno::last() == Errno::EPERM }
}
