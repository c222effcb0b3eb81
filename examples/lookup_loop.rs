//! A lookup loop for instruction counting (`scripts/instr-counts.sh` runs it
//! under `valgrind --tool=callgrind` at two lengths and reports the
//! difference per lookup). `cargo run --release --example lookup_loop --
//! get_ref|archived|unchecked|std N`. Ctrl-C (SIGINT) or SIGTERM ends the
//! loop early and removes the map.

use std::collections::HashMap;
use std::hint::black_box;

use shmkv::{Options, RawMap, ShmMap};

#[path = "signals/mod.rs"]
mod signals;
use signals::{exit_code, stop_on_signals, stopped};

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k
}

/// Removes the map also on panic, and after Ctrl-C/SIGTERM ended the loop.
struct Destroy(String);

impl Drop for Destroy {
    fn drop(&mut self) {
        let _ = RawMap::destroy_by_name(&self.0, &Options::new());
    }
}

fn main() {
    stop_on_signals();
    run();
    // The map was removed on the way here (drop guard).
    std::process::exit(exit_code());
}

fn run() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("get_ref", String::as_str);
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let name = format!("shmkv-lookup-loop-{}", std::process::id());
    let _d = Destroy(name.clone());
    let m: ShmMap<[u8], Vec<u8>> =
        ShmMap::create(&name, &Options::new().capacity(1000)).expect("create");
    m.write(|b| (0..1000u64).try_for_each(|i| b.insert(&key(i), &vec![i as u8; 64])))
        .expect("fill");
    let s: HashMap<Vec<u8>, Vec<u8>> = (0..1000u64)
        .map(|i| (key(i).to_vec(), vec![i as u8; 64]))
        .collect();
    let keys: Vec<[u8; 16]> = (0..4096u64)
        .map(|i| key(i.wrapping_mul(7919) % 1000))
        .collect();
    let mut sum = 0u64;
    // The stop flag is looked at once per 4,096 lookups, outside the
    // measured inner loop.
    for start in (0..n).step_by(4096) {
        if stopped() {
            break;
        }
        for j in start..n.min(start + 4096) {
            sum += lookup(what, &m, &s, &keys[j % keys.len()]);
        }
    }
    black_box(sum);
}

/// One lookup of `k` by the `what` method (inlined: the measured loop is
/// what it was before the stop flag).
#[inline(always)]
fn lookup(
    what: &str,
    m: &ShmMap<[u8], Vec<u8>>,
    s: &HashMap<Vec<u8>, Vec<u8>>,
    k: &[u8; 16],
) -> u64 {
    match what {
        "get_ref" => u64::from(m.raw().get_ref(k).expect("get").expect("present")[0]),
        "archived" => u64::from(m.get_archived(&k[..]).expect("get").expect("present")[0]),
        // SAFETY: every value of this map was written as a Vec<u8> above.
        "unchecked" => u64::from(
            unsafe { m.get_archived_unchecked(&k[..]) }
                .expect("get")
                .expect("present")[0],
        ),
        _ => u64::from(s.get(&k[..]).expect("present")[0]),
    }
}
