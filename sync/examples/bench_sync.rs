//! `shmkv sync` figures (run by `sync/bench.sh`, not CI): put→visible
//! latency, snapshot time of 100,000 keys, sustained revisions/s applied,
//! and a read of a synced key through shmkv vs an etcd range read vs a
//! Redis GET over loopback. Starts its own etcd and redis-server on free
//! loopback ports and stops them (by pid) at the end.
//!
//! Env: `SHMKV_SYNC_BIN` (the `shmkv-sync` binary), `SHMKV_BENCH_QUICK=1`
//! for smaller counts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, Txn, TxnOp};
use shmkv::{Options, RawMap};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct MapGuard(String);

impl Drop for MapGuard {
    fn drop(&mut self) {
        let _ = RawMap::destroy_by_name(&self.0, &Options::new());
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn revision(map: &str) -> i64 {
    RawMap::open(map, &Options::new().read_only(true))
        .ok()
        .and_then(|m| m.sync_state().ok().flatten())
        .map_or(0, |s| s.revision)
}

fn wait_revision(map: &str, rev: i64) {
    let t0 = Instant::now();
    while revision(map) < rev {
        assert!(t0.elapsed() < Duration::from_secs(300), "sync stuck");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn start_sync(bin: &str, url: &str, prefix: &str, map: &str) -> Proc {
    let c = Command::new(bin)
        .args([
            "etcd",
            "--endpoints",
            url,
            "--prefix",
            prefix,
            map,
            "--create",
        ])
        .args([
            "--capacity",
            "200000",
            "--arena",
            "64mb",
            "--page-size",
            "5000",
        ])
        .env("RUST_LOG", "shmkv_sync=info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start shmkv-sync");
    Proc(c)
}

fn main() {
    let quick = std::env::var("SHMKV_BENCH_QUICK").is_ok_and(|v| v == "1");
    let bin = std::env::var("SHMKV_SYNC_BIN").expect("SHMKV_SYNC_BIN");
    let dir = std::env::temp_dir().join(format!("shmkv-bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cp, pp) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let etcd = Proc(
        Command::new("etcd")
            .args(["--name", "default", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--quota-backend-bytes", "4294967296"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = loop {
        if let Ok(mut c) = rt.block_on(Client::connect([&url], None)) {
            if rt.block_on(c.get("x", None)).is_ok() {
                break c;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "etcd {} (single member, data in {}), loopback",
        String::from_utf8_lossy(
            &Command::new("etcd")
                .arg("--version")
                .output()
                .unwrap()
                .stdout
        )
        .lines()
        .next()
        .unwrap_or(""),
        dir.display()
    );

    // 1. Snapshot of 100,000 keys (64-byte values).
    let n_snap = if quick { 10_000 } else { 100_000 };
    let val = |i: usize| format!("{i:064}");
    for chunk in (0..n_snap).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<_> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("/snap/k{i:06}"), val(*i), None))
            .collect();
        rt.block_on(client.txn(Txn::new().and_then(ops))).unwrap();
    }
    let head = rt
        .block_on(client.get(
            "/snap/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        ))
        .unwrap();
    let rev = head.header().unwrap().revision();
    let snap_map = MapGuard(format!("bench-sync-snap-{}", std::process::id()));
    let t0 = Instant::now();
    let mut s = start_sync(&bin, &url, "/snap/", &snap_map.0);
    wait_revision(&snap_map.0, rev);
    let snap = t0.elapsed();
    println!(
        "snapshot: {n_snap} keys (64-byte values) visible {:.0} ms after the sync started \
         (process start, connect, paged reads of 5,000, one batch)",
        snap.as_secs_f64() * 1e3
    );
    let _ = s.0.kill();
    let _ = s.0.wait();

    // 2. put -> visible latency.
    let map = MapGuard(format!("bench-sync-{}", std::process::id()));
    let _sync = start_sync(&bin, &url, "/lat/", &map.0);
    rt.block_on(client.put("/lat/hot", "0", None)).unwrap();
    let m = loop {
        if let Ok(m) = RawMap::open(&map.0, &Options::new().read_only(true)) {
            if m.get(b"/lat/hot").unwrap().is_some() {
                break m;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let n_lat = 1000;
    let mut lats = Vec::with_capacity(n_lat);
    let mut acks = Vec::with_capacity(n_lat);
    for i in 1..=n_lat {
        let v = format!("{i}");
        let t = Instant::now();
        rt.block_on(client.put("/lat/hot", v.as_bytes(), None))
            .unwrap();
        let put_done = t.elapsed();
        while m.get_ref(b"/lat/hot").unwrap().as_deref() != Some(v.as_bytes()) {
            std::hint::spin_loop();
        }
        acks.push(put_done);
        lats.push(t.elapsed());
    }
    println!(
        "put -> visible in the map (etcdctl-equivalent client put, then spin on get): \
         p50 {:.0} us, p99 {:.0} us, max {:.0} us over {n_lat} updates \
         (the put's own acknowledgement: p50 {:.0} us, p99 {:.0} us)",
        pct(&mut lats, 0.5).as_secs_f64() * 1e6,
        pct(&mut lats, 0.99).as_secs_f64() * 1e6,
        pct(&mut lats, 1.0).as_secs_f64() * 1e6,
        pct(&mut acks, 0.5).as_secs_f64() * 1e6,
        pct(&mut acks, 0.99).as_secs_f64() * 1e6
    );
    drop(_sync);

    // 3. Sustained revisions/s: revisions written while the sync is
    // stopped, then a resumed sync replays them (watch from the stored
    // revision + 1, one batch per revision).
    let n_rev = if quick { 5_000 } else { 20_000 };
    rt.block_on(async {
        let mut kv = client.kv_client();
        let mut pending = Vec::new();
        for i in 0..n_rev {
            let mut kv2 = kv.clone();
            pending.push(tokio::spawn(async move {
                kv2.put(format!("/lat/r{}", i % 1000), format!("{i}"), None)
                    .await
                    .unwrap();
            }));
            if pending.len() >= 64 {
                for p in pending.drain(..) {
                    p.await.unwrap();
                }
            }
        }
        for p in pending {
            p.await.unwrap();
        }
        let _ = kv.get("x", None).await;
    });
    let last = rt
        .block_on(client.get(
            "/lat/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        ))
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let from = revision(&map.0);
    let t0 = Instant::now();
    let _sync = start_sync(&bin, &url, "/lat/", &map.0);
    wait_revision(&map.0, last);
    let dt = t0.elapsed();
    println!(
        "sustained apply: {} revisions (one put each) replayed in {:.2} s = {:.0} revisions/s \
         (including the process start and connect)",
        last - from,
        dt.as_secs_f64(),
        (last - from) as f64 / dt.as_secs_f64()
    );

    // 4. A read of a synced key: shmkv get vs etcd range read vs Redis GET.
    let key = b"/lat/hot";
    let n = 2_000_000;
    let t = Instant::now();
    let mut sum = 0usize;
    for _ in 0..n {
        sum += m.get_ref(key).unwrap().map_or(0, |v| v.len());
    }
    let shm = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    std::hint::black_box(sum);
    let n_net = 5_000;
    let t = Instant::now();
    for _ in 0..n_net {
        let r = rt.block_on(client.get(&key[..], None)).unwrap();
        std::hint::black_box(r.kvs().len());
    }
    let etcd_ns = t.elapsed().as_secs_f64() * 1e9 / n_net as f64;
    let t = Instant::now();
    for _ in 0..n_net {
        let r = rt
            .block_on(client.get(&key[..], Some(GetOptions::new().with_serializable())))
            .unwrap();
        std::hint::black_box(r.kvs().len());
    }
    let etcd_ser_ns = t.elapsed().as_secs_f64() * 1e9 / n_net as f64;
    let rport = free_port();
    let redis = Proc(
        Command::new("redis-server")
            .args([
                "--port",
                &rport.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    let mut conn = loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", rport)) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    conn.set_nodelay(true).unwrap();
    let value = m.get(key).unwrap().unwrap();
    let set = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{}\r\n${}\r\n{}\r\n",
        key.len(),
        String::from_utf8_lossy(key),
        value.len(),
        String::from_utf8_lossy(&value)
    );
    conn.write_all(set.as_bytes()).unwrap();
    let mut rd = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    rd.read_line(&mut line).unwrap();
    let get = format!(
        "*2\r\n$3\r\nGET\r\n${}\r\n{}\r\n",
        key.len(),
        String::from_utf8_lossy(key)
    );
    let t = Instant::now();
    for _ in 0..n_net {
        conn.write_all(get.as_bytes()).unwrap();
        line.clear();
        rd.read_line(&mut line).unwrap(); // $len
        let len: usize = line[1..].trim().parse().unwrap();
        let mut buf = vec![0; len + 2];
        rd.read_exact(&mut buf).unwrap();
    }
    let redis_ns = t.elapsed().as_secs_f64() * 1e9 / n_net as f64;
    println!(
        "read of a synced key ({} bytes): shmkv get_ref {shm:.0} ns; etcd range read \
         (etcd-client, loopback) {:.1} us linearizable, {:.1} us serializable; Redis GET (RESP over loopback TCP, no pipelining) \
         {:.1} us",
        value.len(),
        etcd_ns / 1e3,
        etcd_ser_ns / 1e3,
        redis_ns / 1e3
    );
    drop(redis);
    drop(_sync);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}
