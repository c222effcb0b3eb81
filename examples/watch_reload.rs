//! Watch and reload: a reader keeps a derived cache and rebuilds it only
//! when the map's version moves, sleeping in the kernel in between
//! (`wait_for_change`, a futex: no polling). Run:
//!
//! ```text
//! cargo run --example watch_reload [-- --updates N]
//! ```
//!
//! The writer changes the greeting N times (default 2), 100 ms apart.
//! Ctrl-C (SIGINT) or SIGTERM stops both and removes the map.

use std::time::{Duration, Instant};

use shmkv::{Options, ShmMap};

#[path = "signals/mod.rs"]
mod signals;
use signals::{exit_code, stop_on_signals, stopped};

const WORDS: [&str; 3] = ["bonjour", "hallo", "hello"];

fn main() {
    stop_on_signals();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let updates = match args.iter().position(|a| a == "--updates") {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()),
        None => Some(2),
    };
    let Some(updates) = updates else {
        eprintln!("usage: watch_reload [--updates N]");
        std::process::exit(2);
    };
    if let Err(e) = run(updates) {
        eprintln!("watch_reload: {e}");
        std::process::exit(1);
    }
    // Everything was cleaned up on the way here (drop guards).
    std::process::exit(exit_code());
}

fn run(updates: usize) -> shmkv::Result<()> {
    let name = format!("example-watch-{}", std::process::id());
    let map: ShmMap<str, String> = ShmMap::create(&name, &Options::new())?;
    let _cleanup = Destroy(&name);
    map.insert("greeting", &"hello".to_string())?;

    std::thread::scope(|s| {
        let name = &name;
        let reader = s.spawn(move || -> shmkv::Result<Vec<String>> {
            let map: ShmMap<str, String> = ShmMap::open(name, &Options::new())?;
            let mut version = map.version();
            let mut seen = vec![map.get("greeting")?.unwrap_or_default().to_uppercase()];
            let mut last_change = Instant::now();
            while seen.len() <= updates && !stopped() {
                // Sleeps until a writer commits, or 200 ms pass (to look
                // at the stop flag; a signal does not end the wait).
                match map.wait_for_change(version, Duration::from_millis(200))? {
                    Some(v) => {
                        version = v;
                        last_change = Instant::now();
                        // Rebuild the derived cache from the new contents.
                        seen.push(map.get("greeting")?.unwrap_or_default().to_uppercase());
                    }
                    // No change for 5 s: the writer is gone.
                    None if last_change.elapsed() > Duration::from_secs(5) => break,
                    None => {}
                }
            }
            Ok(seen)
        });
        for i in 0..updates {
            if stopped() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            map.insert("greeting", &WORDS[i % WORDS.len()].to_string())?;
        }
        let seen = reader.join().expect("reader")?;
        if seen.len() <= 5 {
            println!("reader rebuilt its cache {} times: {seen:?}", seen.len());
        } else {
            println!("reader rebuilt its cache {} times", seen.len());
        }
        Ok(())
    })
}

/// Removes the example's map when the example ends: on success, error,
/// panic, or after Ctrl-C/SIGTERM ended its loops.
struct Destroy<'a>(&'a str);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        let _ = shmkv::RawMap::destroy_by_name(self.0, &Options::new());
    }
}
