//! Counters shared by processes: read-modify-write inside one atomic batch
//! (the PHP class's `ensureAtomicity`, done right). Several processes (here
//! threads) increment the same counter; no increment is lost.
//! Run: `cargo run --example counter`.

use shmkv::{Options, ShmMap};

fn main() -> shmkv::Result<()> {
    let name = format!("example-counter-{}", std::process::id());
    let map: ShmMap<str, u64> = ShmMap::create(&name, &Options::new())?;
    let _cleanup = Destroy(&name);

    std::thread::scope(|s| {
        for _ in 0..4 {
            let name = &name;
            s.spawn(move || -> shmkv::Result<()> {
                let map: ShmMap<str, u64> = ShmMap::open(name, &Options::new())?;
                for _ in 0..1000 {
                    map.write(|b| {
                        let n = b.get("hits")?.unwrap_or(0);
                        b.insert("hits", &(n + 1))
                    })?;
                }
                Ok(())
            });
        }
    });
    let hits = map.get("hits")?.unwrap_or(0);
    println!("hits = {hits} (4 writers x 1000 increments)");
    assert_eq!(hits, 4000);
    Ok(())
}

/// Removes the example's map when the example ends, also on error.
struct Destroy<'a>(&'a str);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        let _ = shmkv::RawMap::destroy_by_name(self.0, &Options::new());
    }
}
