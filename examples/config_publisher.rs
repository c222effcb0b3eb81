//! A config publisher and its readers: one process publishes a table of
//! backends; reader processes (here: threads of this example, the same API)
//! read it zero-copy. Run: `cargo run --example config_publisher`.

use shmkv::{Options, ShmMap};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct Backend {
    host: String,
    port: u16,
    weight: u32,
}

fn main() -> shmkv::Result<()> {
    let name = format!("example-config-{}", std::process::id());
    let map: ShmMap<str, Backend> = ShmMap::create(&name, &Options::new().mode(0o644))?;
    let _cleanup = Destroy(&name);

    // Publish the whole table atomically: readers see all of it or none.
    map.write(|b| {
        for (i, host) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
            let backend = Backend {
                host: host.to_string(),
                port: 8080,
                weight: 10 * (i as u32 + 1),
            };
            b.insert(&format!("backend/{i}"), &backend)?;
        }
        Ok(())
    })?;

    // Readers open the map read-only and read in place: no copy, no lock.
    std::thread::scope(|s| {
        for r in 0..2 {
            let name = &name;
            s.spawn(move || -> shmkv::Result<()> {
                let map: ShmMap<str, Backend> =
                    ShmMap::open(name, &Options::new().read_only(true))?;
                let total: u32 = map.view(|v| {
                    (0..3)
                        .map(|i| {
                            Ok(v.get_archived(&format!("backend/{i}"))?
                                .map_or(0, |b| b.weight.to_native()))
                        })
                        .sum()
                })?;
                let first = map.get_archived("backend/0")?.expect("published");
                println!(
                    "reader {r}: first backend {}:{}, total weight {total}",
                    first.host, first.port
                );
                Ok(())
            });
        }
    });
    Ok(())
}

/// Removes the example's map when the example ends, also on error.
struct Destroy<'a>(&'a str);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        let _ = shmkv::RawMap::destroy_by_name(self.0, &Options::new());
    }
}
