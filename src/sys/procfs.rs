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

/// The state letter of process `pid` (field 3 of `/proc/<pid>/stat`: `R`,
/// `S`, `Z` for a zombie, ...), `None` if there is no such process.
pub(crate) fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether process `pid` exists (`kill(pid, 0)`; `EPERM` means it does).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || Errno::last() == Errno::EPERM }
}

/// The kernel's default huge page size: `Hugepagesize` of `/proc/meminfo`
/// (in kB there), `None` if the line is missing or unreadable (no hugetlb
/// support). `SHM_HUGETLB` segments use this size.
pub(crate) fn huge_page_size() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_huge_page_size(&text)
}

/// The `Hugepagesize:` line of a `/proc/meminfo` text, in bytes.
pub(crate) fn parse_huge_page_size(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("Hugepagesize:"))?;
    let mut words = line["Hugepagesize:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    n.checked_mul(unit).filter(|b| b.is_power_of_two())
}

#[cfg(test)]
mod huge_page_size_tests {
    use super::parse_huge_page_size;

    #[test]
    fn parses_the_meminfo_line() {
        let t = "MemTotal: 1 kB\nHugepagesize:       2048 kB\nHugetlb: 0 kB\n";
        assert_eq!(parse_huge_page_size(t), Some(2 << 20));
        assert_eq!(
            parse_huge_page_size("Hugepagesize: 1048576 kB\n"),
            Some(1 << 30)
        );
        assert_eq!(parse_huge_page_size("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_huge_page_size("Hugepagesize: 3 kB\n"), None);
        assert_eq!(parse_huge_page_size("Hugepagesize: x kB\n"), None);
    }
}
