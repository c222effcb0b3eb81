//! Watch and reload: a reader keeps a derived cache and rebuilds it only
//! when the map's version moves, sleeping in the kernel in between
//! (`wait_for_change`, a futex: no polling). Run:
//! `cargo run --example watch_reload`.

use std::time::Duration;

use shmkv::{Options, ShmMap};

fn main() -> shmkv::Result<()> {
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
            while seen.len() < 3 {
                // Sleeps until a writer commits (or 5 s pass).
                match map.wait_for_change(version, Duration::from_secs(5))? {
                    Some(v) => {
                        version = v;
                        // Rebuild the derived cache from the new contents.
                        seen.push(map.get("greeting")?.unwrap_or_default().to_uppercase());
                    }
                    None => break,
                }
            }
            Ok(seen)
        });
        for word in ["bonjour", "hallo"] {
            std::thread::sleep(Duration::from_millis(100));
            map.insert("greeting", &word.to_string())?;
        }
        let seen = reader.join().expect("reader")?;
        println!("reader rebuilt its cache {} times: {seen:?}", seen.len());
        Ok(())
    })
}

/// Removes the example's map when the example ends, also on error.
struct Destroy<'a>(&'a str);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        let _ = shmkv::RawMap::destroy_by_name(self.0, &Options::new());
    }
}
