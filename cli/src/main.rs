//! `shmkv`: create, inspect and operate shmkv maps from the shell. A thin
//! layer over the library's public API (`RawMap`, `list_maps`,
//! `list_orphans`); one function per subcommand in `commands.rs`.
//!
//! Exit codes: 0 success; 1 error (one line on stderr naming the map and the
//! cause); 2 usage; 3 `verify` found problems; 4 key not found (`get`, `rm`).
//! With `--json`, results are JSON on stdout and an error is one JSON object
//! on stderr: `{"error": message, "kind": ..., "exit_code": N, "map": name}`
//! (and `"hint"` when there is one, e.g. how to create a missing map).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shmkv::{HugePages, Options, RawMap, Size};

mod commands;
mod fail;
mod format;
mod orphans;
mod watch;

use fail::{fail, Fail};

#[derive(Parser)]
#[command(
    name = "shmkv",
    version,
    about = "Create, inspect and operate shmkv maps in SysV shared memory",
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 verify found problems, \
                  4 key not found.\nA map is named; its SysV key is derived from the name \
                  unless --sysv-key is given."
)]
struct Cli {
    /// Machine-readable output (JSON) on stdout; `create`, `put`, `rm`,
    /// `load` and `destroy` print a JSON result. An error is then one JSON
    /// object on stderr: {"error": message, "kind": e.g. "not_found",
    /// "exit_code": N, "map": name (when known), "hint" (when there is one)}.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    /// Use this raw SysV key instead of the one derived from the name.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "KEY",
        allow_negative_numbers = true
    )]
    sysv_key: Option<i32>,
    /// How long to wait for the write lock (and for a stuck writer), in
    /// milliseconds.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        default_value_t = 5000,
        value_name = "MS"
    )]
    lock_timeout_ms: u64,
    /// Allow `put`/`load` into a typed map (one made by a `ShmMap`): the
    /// bytes are stored as given, and typed readers will reject (or, with
    /// `get_archived_unchecked`, misread) what is not a value of its type.
    #[arg(long, global = true, help_heading = "Global options")]
    raw: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a new map is made: `create`, and `put`/`load` with `--create`
/// (ignored when the map exists already).
#[derive(Args, Clone, Debug, Default)]
struct Sizing {
    /// Entries the first table holds before it grows (the slot count is
    /// rounded up to a power of two; default 1024).
    #[arg(long, value_name = "N")]
    capacity: Option<u64>,
    /// Bytes of the arena for keys and values, e.g. "64mb", "512kb", "1g"
    /// or plain bytes (default: 256 bytes per entry, at least 64 KiB).
    #[arg(long, value_name = "SIZE")]
    arena: Option<Size>,
    /// Upper bound on the map's total shared memory, e.g. "1gb": growth
    /// beyond it fails with "full" (default: no bound).
    #[arg(long, value_name = "SIZE")]
    max_size: Option<Size>,
    /// Permission bits of the map's segments and lock, in octal, e.g.
    /// 0640 (default 0600).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    mode: Option<u32>,
    /// Writers of the new map wake waiters after every write, so that
    /// read-only watchers that may not write the map sleep in the kernel
    /// instead of polling (costs every write a system call).
    #[arg(long)]
    wake_every_write: bool,
    /// Back the map's data segments with huge pages (SHM_HUGETLB): off
    /// (default), try (fall back to normal pages when the kernel has none
    /// free), require (fail without them; reserve with `sysctl -w
    /// vm.nr_hugepages=N`). Recorded in the map: every writer that grows it
    /// follows it.
    #[arg(long, value_name = "WHEN", value_parser = ["off", "try", "require"])]
    huge_pages: Option<String>,
}

impl Sizing {
    /// Whether any flag was given (they need `--create` on `put`/`load`).
    fn given(&self) -> bool {
        self.capacity.is_some()
            || self.arena.is_some()
            || self.max_size.is_some()
            || self.mode.is_some()
            || self.wake_every_write
            || self.huge_pages.is_some()
    }

    /// `o` with these flags.
    fn apply(&self, mut o: Options) -> Options {
        if let Some(c) = self.capacity {
            o = o.capacity(c);
        }
        if let Some(a) = self.arena {
            o = o.arena_size(a);
        }
        if let Some(m) = self.max_size {
            o = o.max_size(m);
        }
        if let Some(m) = self.mode {
            o = o.mode(m);
        }
        o = match self.huge_pages.as_deref() {
            Some("try") => o.huge_pages(HugePages::Try),
            Some("require") => o.huge_pages(HugePages::Require),
            _ => o,
        };
        o.wake_every_write(self.wake_every_write)
    }
}

/// `--mode`: octal permission bits, with or without a leading 0 or 0o.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        Ok(_) => Err(format!("{s:?} has bits outside 0777")),
        Err(_) => Err(format!("{s:?} is not an octal mode like 0640")),
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// List every shmkv map on the machine (ATTACHED counts this shmkv too),
    /// also those being created or destroyed, with their state. Other
    /// programs' segments are not attached.
    Ls {
        /// Also attach every segment of a root's size: roots whose lock is
        /// gone ("orphaned") and segments this user may not read
        /// ("unreadable").
        #[arg(long, conflicts_with = "orphans")]
        all: bool,
        /// List orphaned data segments instead of maps: shmkv data
        /// segments whose root is gone or corrupted (they hold memory
        /// nothing uses; `shmkv destroy --orphans` removes them). Every
        /// private segment this user may read is attached read-only for a
        /// moment to read its header.
        #[arg(long)]
        orphans: bool,
    },
    /// Create a new, empty map (an error if it exists already).
    Create {
        /// Name of the map.
        name: String,
        #[command(flatten, next_help_heading = "Sizing of a new map")]
        sizing: Sizing,
    },
    /// Counters and identity of a map (its attach count includes this shmkv).
    Stat {
        /// Name of the map.
        name: String,
    },
    /// Full consistency check (exit 3 on problems).
    Verify {
        /// Name of the map.
        name: String,
    },
    /// Print a value (raw bytes; with --json, UTF-8 or base64).
    Get {
        /// Name of the map.
        name: String,
        /// The key (text, or base64 with --key-b64).
        key: String,
        /// KEY is base64 (as `dump` prints binary keys: `key_b64`).
        #[arg(long)]
        key_b64: bool,
    },
    /// Store a value, given inline or read from a file.
    Put {
        /// Name of the map.
        name: String,
        /// The key (text, or base64 with --key-b64).
        key: String,
        /// The value, as given (or use --file).
        value: Option<String>,
        /// Read the value from this file (its bytes as they are).
        #[arg(long, conflicts_with = "value", value_name = "PATH")]
        file: Option<PathBuf>,
        /// KEY is base64 (as `dump` prints binary keys: `key_b64`).
        #[arg(long)]
        key_b64: bool,
        /// Create the map if it does not exist (sized by the flags below).
        #[arg(long)]
        create: bool,
        #[command(flatten, next_help_heading = "Sizing of a new map")]
        sizing: Sizing,
    },
    /// Remove a key (exit 4 if it was not there).
    Rm {
        /// Name of the map.
        name: String,
        /// The key (text, or base64 with --key-b64).
        key: String,
        /// KEY is base64 (as `dump` prints binary keys: `key_b64`).
        #[arg(long)]
        key_b64: bool,
    },
    /// List the keys.
    Keys {
        /// Name of the map.
        name: String,
    },
    /// Every entry as JSON lines: {"key":..,"value":..} (or key_b64/value_b64).
    Dump {
        /// Name of the map.
        name: String,
    },
    /// Apply a dump (JSON lines) as one atomic batch.
    Load {
        /// Name of the map.
        name: String,
        /// The dump to apply: JSON lines as `dump` prints them.
        file: PathBuf,
        /// Create the map if it does not exist (sized by the flags below).
        #[arg(long)]
        create: bool,
        #[command(flatten, next_help_heading = "Sizing of a new map")]
        sizing: Sizing,
    },
    /// Keep MAP a consistent replica of a key prefix of a store (etcd),
    /// until SIGTERM/SIGINT. Exit codes: 0 stopped by a signal, 1 error,
    /// 2 usage, the map cannot be opened or created, or the store is
    /// unreachable at start, 3 another sync holds the map's lease (see
    /// --take-over), 4 a revision does not fit (full, key or value too
    /// large, reserved key): nothing of it was applied (fix it in etcd, then
    /// restart with --resnapshot). Logs to stderr (RUST_LOG, default
    /// info).
    #[cfg(feature = "etcd")]
    Sync {
        #[command(subcommand)]
        source: shmkv_sync::Source,
    },
    /// Print each new version with the keys that changed.
    Watch {
        /// Name of the map.
        name: String,
        /// Stop after this many versions have been reported.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this many seconds without a change.
        #[arg(long, value_name = "SECS")]
        idle_timeout: Option<u64>,
    },
    /// Remove a map's kernel objects (asks unless --yes; a missing map is
    /// an error before any question), or with --orphans the orphaned data
    /// segments.
    Destroy {
        /// Name of the map. With --orphans: only the orphans whose root was
        /// this map's (at its key); without a name, every orphan.
        #[arg(required_unless_present = "orphans")]
        name: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Remove orphaned data segments (as `ls --orphans` lists them)
        /// instead of a map; each is checked again right before its
        /// removal. A segment some process still has attached is left
        /// (exit 1) unless --force; a segment this user may not remove is
        /// reported and the others are still removed (exit 1).
        #[arg(long)]
        orphans: bool,
        /// With --orphans: remove also orphans still attached (they
        /// disappear at their last detach; the processes keep their
        /// mapping).
        #[arg(long, requires = "orphans")]
        force: bool,
    },
    /// Print a completion script for a shell, e.g.
    /// `shmkv completions bash > /etc/bash_completion.d/shmkv`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

type Out = Result<(), Fail>;

/// The options every command opens with (the global flags).
fn options(cli: &Cli, read_only: bool) -> Options {
    let o = Options::new()
        .read_only(read_only)
        .lock_timeout(Duration::from_millis(cli.lock_timeout_ms))
        .raw_writes(cli.raw);
    match cli.sysv_key {
        Some(k) => o.sysv_key(k),
        None => o,
    }
}

/// Opens map `name`; a missing map's error says how to create it.
fn open(cli: &Cli, name: &str, read_only: bool) -> Result<RawMap, Fail> {
    RawMap::open(name, &options(cli, read_only)).map_err(|e| Fail::map(name, e).create_hint(cli))
}

fn run(cli: &Cli) -> Out {
    use commands::*;
    match &cli.cmd {
        Cmd::Ls { all, orphans } => {
            if *orphans {
                orphans::ls(cli)
            } else {
                ls(cli, *all)
            }
        }
        Cmd::Create { name, sizing } => create(cli, name, sizing),
        Cmd::Stat { name } => stat(cli, name),
        Cmd::Verify { name } => verify(cli, name),
        Cmd::Get { name, key, key_b64 } => get(cli, name, key, *key_b64),
        Cmd::Put {
            name,
            key,
            value,
            file,
            key_b64,
            create,
            sizing,
        } => put(
            cli,
            name,
            key,
            *key_b64,
            value.as_deref(),
            file.as_deref(),
            create.then_some(sizing),
        ),
        Cmd::Rm { name, key, key_b64 } => rm(cli, name, key, *key_b64),
        Cmd::Keys { name } => keys(cli, name),
        Cmd::Dump { name } => dump(cli, name),
        Cmd::Load {
            name,
            file,
            create,
            sizing,
        } => load(cli, name, file, create.then_some(sizing)),
        #[cfg(feature = "etcd")]
        Cmd::Sync { .. } => Err(fail("usage", "sync runs from main".into())),
        Cmd::Watch {
            name,
            count,
            idle_timeout,
        } => watch(cli, name, *count, *idle_timeout),
        Cmd::Destroy {
            name,
            yes,
            orphans,
            force,
        } => {
            if *orphans {
                orphans::destroy(cli, name.as_deref(), *yes, *force)
            } else {
                // `name` is required without --orphans (clap checks).
                destroy(cli, name.as_deref().unwrap_or_default(), *yes)
            }
        }
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "shmkv", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Sizing flags given to `put`/`load` without `--create`: a usage error.
fn sizing_needs_create(cli: &Cli) -> Out {
    let (create, sizing) = match &cli.cmd {
        Cmd::Put { create, sizing, .. } | Cmd::Load { create, sizing, .. } => (*create, sizing),
        _ => return Ok(()),
    };
    if !create && sizing.given() {
        return Err(fail(
            "usage",
            "--capacity, --arena, --max-size, --mode, --wake-every-write and --huge-pages need --create".into(),
        )
        .code(2));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let help = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if help || !std::env::args_os().any(|a| a == "--json") {
                e.exit();
            }
            // A usage error with --json: one JSON object, like every error.
            let text = e.render().to_string();
            let msg = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg).to_string();
            fail("usage", msg).code(2).report(true);
            return ExitCode::from(2);
        }
    };
    #[cfg(feature = "etcd")]
    if let Cmd::Sync { source } = &cli.cmd {
        // Its own exit codes and log lines (shmkv_sync::exit).
        return ExitCode::from(shmkv_sync::run(source, &options(&cli, false)));
    }
    match sizing_needs_create(&cli).and_then(|()| run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            f.report(cli.json);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand (nested ones too) has an about text, and every
    /// argument (positional or flag, global ones included) a help text:
    /// `shmkv help CMD` explains each.
    #[test]
    fn every_subcommand_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(format!("{p} (the subcommand)"));
                }
                walk(sub, &p, missing);
            }
        }
        let mut cmd = super::Cli::command();
        cmd.build();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "shmkv", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
        // The walk saw the subcommands and their arguments.
        let put = cmd.find_subcommand("put").unwrap();
        for id in [
            "name", "key", "value", "file", "create", "capacity", "arena",
        ] {
            assert!(put.get_arguments().any(|a| a.get_id() == id), "{id}");
        }
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(super::parse_mode("0640"), Ok(0o640));
        assert_eq!(super::parse_mode("640"), Ok(0o640));
        assert_eq!(super::parse_mode("0o600"), Ok(0o600));
        assert!(super::parse_mode("0800").is_err());
        assert!(super::parse_mode("1777").is_err());
    }
}
