//! `shmkv sync`: keeps a host's shmkv map a consistent replica of an etcd
//! key prefix (DESIGN.md "Sync from etcd" has the protocol).
//!
//! - A snapshot: the whole prefix read at one revision R (paged range
//!   reads, the later pages at R), applied as one batch that also removes
//!   the map's keys absent from etcd, with the sync state (revision R).
//! - Then a watch from R + 1: the events of one etcd revision are applied
//!   as one batch, with the sync state (that revision) in the same batch.
//! - Reconnects with exponential backoff and resumes from the stored
//!   revision + 1; a compacted revision gives a fresh snapshot.
//! - A lease (the owner's pid and start time in the sync state) keeps a
//!   second sync off the map unless it takes over.
//!
//! The entry points are [`Source`] (the command line; its etcd arguments
//! are [`EtcdArgs`]) and [`run`].

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KvClient, WatchClient, WatchOptions,
};
use shmkv::{is_live_owner, Error, Options, RawMap, Size, SourceKind, SyncState, SYNC_STATE_KEY};
use tracing::{debug, error, info, warn};

/// Exit codes of `shmkv sync` (DESIGN.md "Sync from etcd", "Exit codes").
pub mod exit {
    /// Stopped by SIGTERM/SIGINT after the batch in progress; lease released.
    pub const CLEAN: u8 = 0;
    /// Another error while running (the map became unusable, an
    /// unexpected map error): the map keeps its last consistent state.
    pub const ERROR: u8 = 1;
    /// Bad arguments, the map cannot be opened/created, or etcd cannot be
    /// reached at start (within the connect deadline).
    pub const USAGE: u8 = 2;
    /// The lease is held by another live sync (use `--take-over`), or was
    /// taken over while running.
    pub const LEASE: u8 = 3;
    /// A revision does not fit: `Full`, a value or key too large, or a
    /// reserved key. Nothing of that revision was applied.
    pub const FULL: u8 = 4;
}

/// `shmkv sync etcd`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated, e.g. http://127.0.0.1:2379
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        required = true
    )]
    pub endpoints: Vec<String>,
    /// The key prefix to mirror (bytes of the argument; "" = every key).
    #[arg(long)]
    pub prefix: String,
    /// Name of the map.
    pub map: String,
    /// Store keys without the prefix.
    #[arg(long)]
    pub strip_prefix: bool,
    /// Take the map over from a running sync (its lease is overwritten;
    /// the old sync stops within about a second with exit code 3).
    #[arg(long)]
    pub take_over: bool,
    /// Start with a fresh snapshot of etcd instead of resuming from the
    /// revision stored in the map: after a revision that did not fit
    /// (exit code 4) was deleted or shrunk in etcd. A sync state that
    /// cannot be read (corrupted, or written by an unknown version) is
    /// replaced instead of refused.
    #[arg(long)]
    pub resnapshot: bool,
    /// Create the map if it does not exist (with the sizing options).
    #[arg(long)]
    pub create: bool,
    /// Entries the first table holds (with --create).
    #[arg(long, value_name = "N", requires = "create")]
    pub capacity: Option<u64>,
    /// Arena bytes, e.g. 64mb (with --create).
    #[arg(long, value_name = "SIZE", requires = "create")]
    pub arena: Option<Size>,
    /// Upper bound of the map's shared memory, e.g. 1gb (with --create).
    #[arg(long, value_name = "SIZE", requires = "create")]
    pub max_size: Option<Size>,
    /// Permission bits in octal, e.g. 0640 (with --create).
    #[arg(long, value_name = "OCTAL", requires = "create", value_parser = parse_mode)]
    pub mode: Option<u32>,
    /// Keys per range read of a snapshot.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub page_size: i64,
    /// Seconds between the info-level summaries.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub summary_interval: u64,
    /// Seconds to keep trying to reach etcd at start before giving up
    /// (exit 2).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode like 0640")),
    }
}

/// The sources `shmkv sync` mirrors.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Source {
    /// Mirror an etcd v3 key prefix into MAP.
    Etcd(EtcdArgs),
}

/// Sets up logging (`RUST_LOG`, default `info`; `RUST_LOG=shmkv_sync=debug`
/// adds a line per applied revision) to stderr. Idempotent.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs `shmkv sync SOURCE` to its end; returns the exit code ([`exit`]).
/// The map is opened (or created) with `base`: the `shmkv` command's
/// global options (`--sysv-key`, `--lock-timeout-ms`, `--raw`), or
/// `Options::new()`.
pub fn run(source: &Source, base: &Options) -> u8 {
    init_logging();
    let Source::Etcd(args) = source;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return exit::ERROR;
        }
    };
    rt.block_on(run_etcd(args, base))
}

/// The end of `[prefix, end)` covering every key beginning with `prefix`
/// (etcd's rule: the last byte below 0xff incremented, the rest dropped;
/// `"\0"` = to the end of the key space).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("non-empty") += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why the sync stops: its exit code (the cause is logged where it is met).
#[derive(Debug)]
struct Stop(u8);

/// Why the lease batch at start did not take the lease.
enum Refused {
    /// Another live sync (this pid) holds it (no `--take-over`).
    Lease(u32),
    /// The stored state does not decode (no `--resnapshot`).
    Unreadable(Error),
}

/// A failure of one attempt: retried (etcd) or fatal.
enum Fault {
    /// etcd unreachable or the stream broke: reconnect with backoff.
    Etcd(etcd_client::Error),
    /// The revision we need was compacted: take a fresh snapshot.
    Compacted,
    /// Stop with this code.
    Stop(Stop),
}

impl From<etcd_client::Error> for Fault {
    fn from(e: etcd_client::Error) -> Self {
        if e.to_string().contains("compacted") {
            Fault::Compacted
        } else {
            Fault::Etcd(e)
        }
    }
}

/// One revision's (or a snapshot's) changes, in map keys.
#[derive(Default)]
struct Change {
    puts: Vec<(Vec<u8>, Vec<u8>)>,
    dels: Vec<Vec<u8>>,
}

/// What a batch of `Syncer::apply` writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// A snapshot at one revision (replaces the contents).
    Snapshot,
    /// The events of one etcd revision.
    Revision,
    /// A progress notification: no event of the prefix up to this
    /// revision was left unsent, so the stored revision moves up to it
    /// (no data changes; the time of the last event stays).
    Progress,
}

struct Syncer<'a> {
    args: &'a EtcdArgs,
    map: RawMap,
    prefix: Vec<u8>,
    me: (u32, u64),
    /// The last state written (in memory).
    state: SyncState,
    /// Newest header revision seen.
    seen: i64,
    cluster_id: u64,
    // Summary counters since the last summary.
    revs: u64,
    events: u64,
    /// Becomes `true` on SIGTERM/SIGINT.
    stop: tokio::sync::watch::Receiver<bool>,
}

async fn run_etcd(args: &EtcdArgs, base: &Options) -> u8 {
    let me = (
        std::process::id(),
        shmkv::process_start_time(std::process::id()).unwrap_or(0),
    );
    let signals = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    );
    let (Ok(mut term), Ok(mut int)) = signals else {
        error!("cannot install the signal handlers");
        return exit::ERROR;
    };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping after the batch in progress"),
            _ = int.recv() => info!("SIGINT: stopping after the batch in progress"),
        }
        let _ = stop_tx.send(true);
    });
    if args.page_size <= 0 {
        error!("--page-size must be positive");
        return exit::USAGE;
    }
    let map = match open_map(args, base) {
        Ok(m) => m,
        Err(e) => {
            error!(map = %args.map, "cannot open the map: {e}");
            return exit::USAGE;
        }
    };
    let prefix = args.prefix.as_bytes().to_vec();
    // The lease: check-and-set in one write batch (under the write lock).
    let acquired = map.write(|b| {
        // A map error (a damaged table) propagates; a stored value that
        // does not decode is the state's own trouble, and its owner (at
        // fixed offsets in every version) is still honoured.
        let raw = b.get(SYNC_STATE_KEY)?;
        let owner = raw.and_then(SyncState::encoded_owner);
        let decoded = raw.map(SyncState::decode).transpose();
        if let Some((pid, start)) = owner {
            if pid != me.0 && is_live_owner(pid, start) {
                if !args.take_over {
                    return Ok(Err(Refused::Lease(pid)));
                }
                warn!(
                    owner = pid,
                    "taking the map over from the sync holding its lease"
                );
            }
        }
        let old = match decoded {
            Ok(s) => s,
            Err(e) if args.resnapshot => {
                warn!("replacing the map's unreadable sync state ({e})");
                None
            }
            Err(e) => return Ok(Err(Refused::Unreadable(e))),
        };
        let mut s = old.unwrap_or_else(|| SyncState {
            source: SourceKind::Etcd,
            cluster_id: 0,
            prefix: prefix.clone(),
            strip_prefix: args.strip_prefix,
            endpoints: args.endpoints.join(","),
            revision: 0,
            seen_revision: 0,
            last_event_unix_ms: 0,
            updated_unix_ms: 0,
            owner_pid: 0,
            owner_start_time: 0,
        });
        s.owner_pid = me.0;
        s.owner_start_time = me.1;
        s.updated_unix_ms = now_ms();
        b.set_sync_state(&s)?;
        Ok(Ok(s))
    });
    let state = match acquired {
        Ok(Ok(s)) => s,
        Ok(Err(Refused::Lease(pid))) => {
            error!(
                map = %args.map,
                owner = pid,
                "another sync (pid {pid}) holds the map's lease; stop it or use --take-over"
            );
            return exit::LEASE;
        }
        Ok(Err(Refused::Unreadable(e))) => {
            error!(
                map = %args.map,
                "cannot take the lease: the map's sync state does not decode ({e}); --resnapshot replaces it with a fresh snapshot"
            );
            return exit::ERROR;
        }
        Err(e) => {
            error!(map = %args.map, "cannot take the lease: {e}");
            return code_of(&e);
        }
    };
    info!(
        map = %args.map,
        prefix = %args.prefix,
        endpoints = %args.endpoints.join(","),
        revision = state.revision,
        "sync started"
    );
    let mut s = Syncer {
        args,
        map,
        prefix,
        me,
        state,
        seen: 0,
        cluster_id: 0,
        revs: 0,
        events: 0,
        stop,
    };
    let Stop(code) = s.main_loop().await;
    if code != exit::LEASE {
        s.release();
    }
    info!(code, "sync stopped");
    code
}

fn open_map(args: &EtcdArgs, base: &Options) -> shmkv::Result<RawMap> {
    if !args.create {
        return RawMap::open(&args.map, base);
    }
    let mut o = base.clone();
    if let Some(c) = args.capacity {
        o = o.capacity(c);
    }
    if let Some(a) = args.arena {
        o = o.arena_size(a);
    }
    if let Some(m) = args.max_size {
        o = o.max_size(m);
    }
    if let Some(m) = args.mode {
        o = o.mode(m);
    }
    RawMap::open_or_create(&args.map, &o)
}

/// The exit code for a map error.
fn code_of(e: &Error) -> u8 {
    match e {
        Error::Full { .. }
        | Error::ValueTooLarge { .. }
        | Error::KeyTooLarge { .. }
        | Error::ReservedKey { .. } => exit::FULL,
        _ => exit::ERROR,
    }
}

/// The backoff between reconnection attempts: doubling from 100 ms, at
/// most 3 s.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// The largest gRPC message the sync decodes (a snapshot page, a watch
/// response). The client's default, 4 MiB, is below what etcd sends: a
/// page of `--page-size` keys of large values, or a catch-up watch
/// response of up to 1000 revisions; a message over the limit failed
/// every attempt, so the sync reconnected forever. etcd's own send limit
/// is `i32::MAX`.
const MAX_MESSAGE: usize = i32::MAX as usize;

/// How often a watching sync checks that it still holds the lease when no
/// revision arrives (a take-over stops it within this time).
const LEASE_CHECK: Duration = Duration::from_secs(1);

impl Syncer<'_> {
    /// Connect, snapshot or resume, watch; reconnect on faults.
    async fn main_loop(&mut self) -> Stop {
        let started = Instant::now();
        let mut backoff = BACKOFF_MIN;
        let mut ever_connected = false;
        let mut force_snapshot = self.args.resnapshot;
        loop {
            let mut stop = self.stop.clone();
            if *stop.borrow() {
                return Stop(exit::CLEAN);
            }
            // Also between reconnection attempts (etcd down for long).
            if let Err(Fault::Stop(s)) = self.check_lease() {
                return s;
            }
            let attempt = self.attempt(&mut force_snapshot, &mut ever_connected);
            let r = tokio::select! {
                r = attempt => r,
                _ = stop.changed() => return Stop(exit::CLEAN),
            };
            match r {
                Ok(stop) => return stop,
                Err(Fault::Stop(s)) => return s,
                Err(Fault::Compacted) => {
                    warn!(
                        revision = self.state.revision,
                        "the revision to resume from was compacted: taking a fresh snapshot"
                    );
                    force_snapshot = true;
                    backoff = BACKOFF_MIN;
                    continue;
                }
                Err(Fault::Etcd(e)) => {
                    if !ever_connected
                        && started.elapsed() > Duration::from_secs(self.args.connect_timeout)
                    {
                        error!(
                            "cannot reach etcd at {}: {e}",
                            self.args.endpoints.join(",")
                        );
                        return Stop(exit::USAGE);
                    }
                    warn!("etcd: {e}; reconnecting in {} ms", backoff.as_millis());
                }
            }
            let sleep = tokio::time::sleep(backoff);
            tokio::select! {
                _ = sleep => {}
                _ = stop.changed() => return Stop(exit::CLEAN),
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection's life: returns `Ok` only to stop.
    async fn attempt(
        &mut self,
        force_snapshot: &mut bool,
        ever_connected: &mut bool,
    ) -> Result<Stop, Fault> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let client = Client::connect(&self.args.endpoints, Some(opts)).await?;
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let mut watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        // The cluster id and the current revision: one cheap range read.
        let head = kv
            .get(
                self.start_key(),
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(&self.prefix))
                        .with_count_only(),
                ),
            )
            .await?;
        *ever_connected = true;
        let h = head.header().ok_or_else(no_header)?;
        self.cluster_id = h.cluster_id();
        self.seen = self.seen.max(h.revision());
        let current = h.revision();
        let st = &self.state;
        let same_source = st.cluster_id == self.cluster_id
            && st.prefix == self.prefix
            && st.strip_prefix == self.args.strip_prefix;
        if st.revision > 0 && !same_source {
            warn!(
                stored_cluster = format!("{:x}", st.cluster_id),
                cluster = format!("{:x}", self.cluster_id),
                stored_prefix = %String::from_utf8_lossy(&st.prefix),
                "the map mirrored another source: taking a fresh snapshot"
            );
        }
        // etcd behind the map (a cluster restored from an older backup, or
        // wiped, with the same cluster id): a watch from the stored
        // revision + 1 would be a future revision, which etcd accepts
        // silently, so the map would keep keys etcd no longer has and miss
        // every change until etcd's revision passed the stored one.
        let went_back = same_source && st.revision > current;
        if went_back {
            warn!(
                stored_revision = st.revision,
                revision = current,
                "etcd's revision is behind the map's: taking a fresh snapshot"
            );
        }
        if *force_snapshot || st.revision <= 0 || !same_source || went_back {
            self.snapshot(&mut kv).await?;
            *force_snapshot = false;
        } else {
            info!(revision = st.revision, "resuming the watch");
        }
        self.watch(&mut watch).await
    }

    /// Reads the prefix at one revision (paged) and replaces the map's
    /// contents with it in one batch.
    async fn snapshot(&mut self, client: &mut KvClient) -> Result<(), Fault> {
        let t0 = Instant::now();
        let end = prefix_end(&self.prefix);
        let mut rev = 0;
        let mut kvs = Vec::new();
        let mut from = self.start_key();
        loop {
            let mut o = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.args.page_size);
            if rev != 0 {
                o = o.with_revision(rev);
            }
            let mut r = client.get(from.clone(), Some(o)).await?;
            if rev == 0 {
                rev = r.header().ok_or_else(no_header)?.revision();
            }
            let more = r.more();
            let page = r.take_kvs();
            let Some(last) = page.last() else { break };
            from = last.key().to_vec();
            from.push(0);
            kvs.extend(page.into_iter().map(|kv| kv.into_key_value()));
            if !more {
                break;
            }
        }
        self.seen = self.seen.max(rev);
        let fetched = t0.elapsed();
        let mut change = Change::default();
        for (k, v) in kvs {
            change.puts.push((self.map_key(&k), v));
        }
        change.dels = {
            let existing = self
                .map
                .entries()
                .map_err(|e| Fault::Stop(self.map_failed(&e, rev, None)))?;
            let keep: HashSet<&[u8]> = change.puts.iter().map(|(k, _)| k.as_slice()).collect();
            existing
                .iter()
                .filter(|(k, _)| !keep.contains(&**k))
                .map(|(k, _)| k.to_vec())
                .collect()
        };
        let n = change.puts.len();
        let removed = change.dels.len();
        self.apply(rev, &change, Applied::Snapshot)?;
        info!(
            revision = rev,
            keys = n,
            removed,
            fetch_ms = fetched.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "snapshot applied"
        );
        Ok(())
    }

    /// The first key of the prefix's range (`"\0"` for the empty prefix:
    /// etcd reads an empty key as no key).
    fn start_key(&self) -> Vec<u8> {
        if self.prefix.is_empty() {
            vec![0]
        } else {
            self.prefix.clone()
        }
    }

    /// The map key of an etcd key.
    fn map_key(&self, k: &[u8]) -> Vec<u8> {
        if self.args.strip_prefix {
            k.get(self.prefix.len()..).unwrap_or_default().to_vec()
        } else {
            k.to_vec()
        }
    }

    /// Watches from the stored revision + 1, applying each revision as one
    /// batch.
    async fn watch(&mut self, client: &mut WatchClient) -> Result<Stop, Fault> {
        let from = self.state.revision + 1;
        let mut stream = client
            .watch(
                self.start_key(),
                Some(
                    WatchOptions::new()
                        .with_range(prefix_end(&self.prefix))
                        .with_start_revision(from)
                        .with_progress_notify(),
                ),
            )
            .await?;
        debug!(from, "watching");
        let mut tick =
            tokio::time::interval(Duration::from_secs(self.args.summary_interval.max(1)));
        tick.tick().await;
        let mut lease_tick = tokio::time::interval(LEASE_CHECK);
        lease_tick.tick().await;
        let mut stop = self.stop.clone();
        loop {
            if *stop.borrow() {
                return Ok(Stop(exit::CLEAN));
            }
            let msg = tokio::select! {
                m = stream.message() => m?,
                _ = tick.tick() => { self.summary(); continue; }
                _ = lease_tick.tick() => { self.check_lease()?; continue; }
                _ = stop.changed() => return Ok(Stop(exit::CLEAN)),
            };
            let Some(resp) = msg else {
                return Err(Fault::Etcd(etcd_client::Error::WatchError(
                    "the watch stream ended".into(),
                )));
            };
            if resp.compact_revision() > 0 {
                warn!(
                    compact_revision = resp.compact_revision(),
                    "watch: revision {from} compacted"
                );
                return Err(Fault::Compacted);
            }
            if resp.canceled() {
                return Err(Fault::Etcd(etcd_client::Error::WatchError(format!(
                    "watch canceled: {}",
                    resp.cancel_reason()
                ))));
            }
            if let Some(h) = resp.header() {
                self.seen = self.seen.max(h.revision());
            }
            // A progress notification (no events, not the creation
            // response, whose header revision says nothing about what was
            // sent): etcd sends it only to a synced watcher, so every event
            // of the prefix up to its header revision has been delivered.
            // Storing that revision keeps a quiet prefix's resume point
            // ahead of etcd's compaction (no fresh snapshot on reconnect).
            if resp.events().is_empty() && !resp.created() {
                if let Some(h) = resp.header() {
                    if h.revision() > self.state.revision {
                        self.apply(h.revision(), &Change::default(), Applied::Progress)?;
                    }
                }
                continue;
            }
            // Group the events by revision (a response never splits one).
            let events: Vec<_> = resp
                .events()
                .iter()
                .filter_map(|ev| ev.kv().map(|kv| (ev.event_type(), kv)))
                .collect();
            for group in events.chunk_by(|a, b| a.1.mod_revision() == b.1.mod_revision()) {
                let mut c = Change::default();
                for (kind, kv) in group {
                    let k = self.map_key(kv.key());
                    match kind {
                        EventType::Put => c.puts.push((k, kv.value().to_vec())),
                        EventType::Delete => c.dels.push(k),
                    }
                }
                self.apply(group[0].1.mod_revision(), &c, Applied::Revision)?;
            }
        }
    }

    /// Applies one revision (or a snapshot) and its sync state as one
    /// batch; checks the lease in the same batch.
    fn apply(&mut self, rev: i64, c: &Change, kind: Applied) -> Result<(), Fault> {
        if kind != Applied::Snapshot && rev <= self.state.revision {
            // Already applied (a resumed watch never sends these; guard).
            return Ok(());
        }
        let now = now_ms();
        let mut next = self.state.clone();
        next.cluster_id = self.cluster_id;
        next.prefix = self.prefix.clone();
        next.strip_prefix = self.args.strip_prefix;
        next.endpoints = self.args.endpoints.join(",");
        next.revision = rev;
        next.seen_revision = self.seen.max(rev);
        if kind != Applied::Progress {
            next.last_event_unix_ms = now;
        }
        next.updated_unix_ms = now;
        next.owner_pid = self.me.0;
        next.owner_start_time = self.me.1;
        let mut failed_key: Option<&[u8]> = None;
        let mut lost = None;
        let r = self.map.write(|b| {
            lost = self.other_holder(b.get(SYNC_STATE_KEY)?);
            if lost.is_some() {
                return Ok(());
            }
            for k in &c.dels {
                failed_key = Some(k);
                b.remove(k)?;
            }
            for (k, v) in &c.puts {
                failed_key = Some(k);
                b.insert(k, v)?;
            }
            failed_key = None;
            b.set_sync_state(&next)
        });
        if let Err(e) = r {
            return Err(Fault::Stop(self.map_failed(&e, rev, failed_key)));
        }
        if let Some(owner) = lost {
            error!(owner, "the lease was taken over by another sync; stopping");
            return Err(Fault::Stop(Stop(exit::LEASE)));
        }
        self.state = next;
        if kind == Applied::Progress {
            debug!(
                revision = rev,
                "progress: no event of the prefix up to this revision"
            );
        } else if kind == Applied::Revision {
            self.revs += 1;
            self.events += (c.puts.len() + c.dels.len()) as u64;
            debug!(
                revision = rev,
                puts = c.puts.len(),
                deletes = c.dels.len(),
                "applied revision"
            );
        }
        Ok(())
    }

    /// Logs a map failure (naming the revision and the key) and gives the
    /// exit code.
    fn map_failed(&self, e: &Error, rev: i64, key: Option<&[u8]>) -> Stop {
        let key = key.map_or_else(
            || "(at commit)".to_string(),
            |k| String::from_utf8_lossy(k).into_owned(),
        );
        let code = code_of(e);
        let hint = if code == exit::FULL {
            "; delete or shrink it in etcd and restart with --resnapshot, or recreate the map larger"
        } else {
            ""
        };
        error!(
            map = %self.args.map,
            revision = rev,
            key = %key,
            "cannot apply revision {rev} (key {key:?}): {e}; the map keeps revision {}{hint}",
            self.state.revision
        );
        Stop(code)
    }

    /// Between revisions: the lease must still be ours (a take-over while
    /// etcd is quiet would otherwise be noticed only at the next revision,
    /// leaving the old sync running and watching indefinitely).
    fn check_lease(&self) -> Result<(), Fault> {
        if let Ok(raw) = self.map.get_ref(SYNC_STATE_KEY) {
            if let Some(owner) = self.other_holder(raw.as_deref()) {
                error!(owner, "the lease was taken over by another sync; stopping");
                return Err(Fault::Stop(Stop(exit::LEASE)));
            }
        }
        Ok(())
    }

    /// The holder of the lease recorded in the stored state `raw` when it
    /// is not this process: its pid, read at the lease fields' fixed
    /// offsets (so also from a state another version wrote), or 0 when the
    /// state has no readable owner. `None` when there is no state or the
    /// lease is ours.
    fn other_holder(&self, raw: Option<&[u8]>) -> Option<u32> {
        match SyncState::encoded_owner(raw?) {
            Some(owner) if owner == self.me => None,
            Some((pid, _)) => Some(pid),
            None => Some(0),
        }
    }

    fn summary(&mut self) {
        info!(
            revisions = self.revs,
            events = self.events,
            revision = self.state.revision,
            lag = self.seen.saturating_sub(self.state.revision).max(0),
            "summary"
        );
        self.revs = 0;
        self.events = 0;
    }

    /// Clears the owner in a final batch (if we still hold the lease).
    fn release(&self) {
        let me = self.me;
        let r = self.map.write(|b| {
            if let Some(mut s) = b.sync_state()? {
                if s.owner_pid == me.0 && s.owner_start_time == me.1 {
                    s.owner_pid = 0;
                    s.owner_start_time = 0;
                    s.seen_revision = s.seen_revision.max(self.seen);
                    s.updated_unix_ms = now_ms();
                    b.set_sync_state(&s)?;
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            warn!("cannot release the lease: {e}");
        }
    }
}

fn no_header() -> Fault {
    Fault::Etcd(etcd_client::Error::InvalidArgs(
        "etcd response without a header".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
