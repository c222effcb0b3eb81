//! A lookup loop for instruction counting (`scripts/instr-counts.sh` runs it
//! under `valgrind --tool=callgrind` at two lengths and reports the
//! difference per lookup). `cargo run --release --example lookup_loop --
//! get_ref|archived|unchecked|std N`.

use std::collections::HashMap;
use std::hint::black_box;

use shmkv::{Options, RawMap, ShmMap};

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k
}

/// Removes the map also on panic.
struct Destroy(String);

impl Drop for Destroy {
    fn drop(&mut self) {
        let _ = RawMap::destroy_by_name(&self.0, &Options::new());
    }
}

fn main() {
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
    for j in 0..n {
        let k = &keys[j % keys.len()];
        sum += match what {
            "get_ref" => u64::from(m.raw().get_ref(k).expect("get").expect("present")[0]),
            "archived" => u64::from(m.get_archived(&k[..]).expect("get").expect("present")[0]),
            // SAFETY: every value of this map was written as a Vec<u8> above.
            "unchecked" => u64::from(
                unsafe { m.get_archived_unchecked(&k[..]) }
                    .expect("get")
                    .expect("present")[0],
            ),
            _ => u64::from(s.get(&k[..]).expect("present")[0]),
        };
    }
    black_box(sum);
}
