//! `shmkv-sync`: the same as `shmkv sync` (for the crate's own tests and
//! for hosts that install only the sync): `shmkv-sync etcd --endpoints URL
//! --prefix P MAP`.

use clap::Parser;

/// Keeps a shmkv map a consistent replica of an etcd key prefix.
#[derive(Parser)]
#[command(name = "shmkv-sync", version)]
struct Cli {
    #[command(subcommand)]
    source: shmkv_sync::Source,
}

fn main() -> std::process::ExitCode {
    let source = Cli::parse().source;
    std::process::ExitCode::from(shmkv_sync::run(&source, &shmkv::Options::new()))
}
