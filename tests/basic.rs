//! Single-process behaviour of the typed and raw maps.
#![allow(unreachable_pub)]

mod common;

use common::{assert_removed, Cleanup};
use shmkv::{Error, Options, RawMap, ShmMap, Size};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
struct Config {
    id: u64,
    name: String,
    tags: Vec<String>,
    weights: Vec<u32>,
    enabled: bool,
}

fn config(i: u64) -> Config {
    Config {
        id: i,
        name: format!("backend-{i}"),
        tags: (0..i % 4).map(|t| format!("tag{t}")).collect(),
        weights: (0..i % 7).map(|w| w as u32 * 3).collect(),
        enabled: i % 2 == 0,
    }
}

#[test]
fn typed_round_trips() {
    let c = Cleanup::new("typed");
    let map: ShmMap<str, Config> = ShmMap::create(&c.name, &c.opts).unwrap();
    assert!(map.is_empty());
    for i in 0..200 {
        map.insert(&format!("k{i}"), &config(i)).unwrap();
    }
    assert_eq!(map.len(), 200);
    for i in 0..200 {
        let key = format!("k{i}");
        assert_eq!(map.get(&key).unwrap(), Some(config(i)));
        let a = map.get_archived(&key).unwrap().unwrap();
        assert_eq!(a.id, i);
        assert_eq!(a.name.as_str(), format!("backend-{i}"));
        assert_eq!(a.weights.len() as u64, i % 7);
        // SAFETY: every value of this map is a Config written by this build.
        let u = unsafe { map.get_archived_unchecked(&key) }
            .unwrap()
            .unwrap();
        assert_eq!(u.id, i);
    }
    assert_eq!(map.get("missing").unwrap(), None);
    assert!(!map.contains_key("missing").unwrap());
    assert!(map.contains_key("k5").unwrap());
    let stats = map.stats().unwrap();
    map.destroy().unwrap();
    assert_removed(&stats);
}

#[test]
fn integer_empty_and_unit_values() {
    let c = Cleanup::new("ints");
    let a: ShmMap<u64, u64> = ShmMap::create(&c.name, &c.opts).unwrap();
    for i in 0..100u64 {
        a.insert(&i, &(i * i)).unwrap();
    }
    for i in 0..100u64 {
        assert_eq!(a.get(&i).unwrap(), Some(i * i));
        assert_eq!(*a.get_archived(&i).unwrap().unwrap(), i * i);
    }
    let mut keys = a.keys().unwrap();
    keys.sort();
    assert_eq!(keys, (0..100).collect::<Vec<_>>());
    drop(a);

    let c2 = Cleanup::new("units");
    let u: ShmMap<i64, ()> = ShmMap::create(&c2.name, &c2.opts).unwrap();
    u.insert(&-5, &()).unwrap();
    assert_eq!(u.get(&-5).unwrap(), Some(()));
    assert_eq!(u.get(&5).unwrap(), None);

    let c3 = Cleanup::new("empties");
    let e: ShmMap<[u8], Vec<u8>> = ShmMap::create(&c3.name, &c3.opts).unwrap();
    e.insert(b"", &Vec::new()).unwrap();
    e.insert(b"x", &vec![]).unwrap();
    assert_eq!(e.get(b"").unwrap(), Some(vec![]));
    assert_eq!(e.get(b"x").unwrap(), Some(vec![]));
    assert_eq!(e.len(), 2);

    let c4 = Cleanup::new("strings");
    let s: ShmMap<String, String> = ShmMap::create(&c4.name, &c4.opts).unwrap();
    s.insert(&"k".to_string(), &String::new()).unwrap();
    assert_eq!(s.get(&"k".to_string()).unwrap(), Some(String::new()));
}

#[test]
fn overwrite_remove_tombstone_reuse() {
    // A tiny table (16 slots) so probe chains, tombstones and reuse happen.
    let c = Cleanup::with("tomb", Options::new().capacity(14).arena_size(64u64 << 10));
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let cap = m.stats().unwrap().capacity;
    assert_eq!(cap, 16);
    for round in 0..50u32 {
        for k in 0..14u32 {
            let v = format!("{k}:{round}");
            m.insert(&k.to_le_bytes(), v.as_bytes()).unwrap();
        }
        assert_eq!(m.len(), 14);
        for k in (0..14u32).filter(|k| k % 3 == round % 3) {
            assert!(m.remove(&k.to_le_bytes()).unwrap());
            assert!(!m.remove(&k.to_le_bytes()).unwrap());
        }
        for k in 0..14u32 {
            let got = m.get(&k.to_le_bytes()).unwrap();
            if k % 3 == round % 3 {
                assert_eq!(got, None);
            } else {
                assert_eq!(got.unwrap(), format!("{k}:{round}").as_bytes());
            }
        }
        let s = m.stats().unwrap();
        assert!(s.live + s.tombstones <= cap - cap / 8, "{s:?}");
        let report = m.verify().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(
            report.live,
            14 - (0..14).filter(|k| k % 3 == round % 3).count() as u64
        );
    }
    let s = m.stats().unwrap();
    assert!(s.garbage_bytes > 0);
}

#[test]
fn values_are_aligned_and_unchanged_after_overwrite() {
    let c = Cleanup::new("align");
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    for len in [0usize, 1, 7, 15, 16, 17, 100] {
        let key = vec![b'k'; len];
        m.insert(&key, &vec![len as u8; len + 3]).unwrap();
        let v = m.get_ref(&key).unwrap().unwrap();
        assert_eq!(v.as_ptr() as usize % 16, 0);
    }
    m.insert(b"x", b"first").unwrap();
    let held = m.get_ref(b"x").unwrap().unwrap();
    m.insert(b"x", b"second").unwrap();
    assert_eq!(&*held, b"first");
    assert_eq!(&*m.get_ref(b"x").unwrap().unwrap(), b"second");
}

#[test]
fn reopen_from_another_handle() {
    let c = Cleanup::new("reopen");
    let a: ShmMap<str, String> = ShmMap::create(&c.name, &c.opts).unwrap();
    a.insert("x", &"1".into()).unwrap();
    let b: ShmMap<str, String> = ShmMap::open(&c.name, &c.opts).unwrap();
    assert_eq!(b.get("x").unwrap().as_deref(), Some("1"));
    b.insert("y", &"2".into()).unwrap();
    assert_eq!(a.get("y").unwrap().as_deref(), Some("2"));
    assert_eq!(a.len(), 2);
    assert_eq!(a.version(), 2);
    drop(a);
    drop(b);
    let c2: ShmMap<str, String> = ShmMap::open_or_create(&c.name, &c.opts).unwrap();
    assert_eq!(c2.len(), 2);
    let ro: ShmMap<str, String> = ShmMap::open(&c.name, &c.opts.clone().read_only(true)).unwrap();
    assert_eq!(ro.get("x").unwrap().as_deref(), Some("1"));
    assert!(matches!(ro.insert("z", &"3".into()), Err(Error::ReadOnly)));
    assert!(matches!(ro.remove("x"), Err(Error::ReadOnly)));
    assert!(matches!(ro.write(|_| Ok(())), Err(Error::ReadOnly)));
}

#[test]
fn batches_apply_atomically_or_not_at_all() {
    let c = Cleanup::new("batch");
    let m: ShmMap<str, u64> = ShmMap::create(&c.name, &c.opts).unwrap();
    m.insert("a", &1).unwrap();
    m.insert("b", &2).unwrap();
    let v0 = m.version();
    // Read-modify-write with read-your-writes.
    let r = m
        .write(|b| {
            let a = b.get("a")?.unwrap();
            b.insert("a", &(a + 10))?;
            assert_eq!(b.get("a")?, Some(11));
            assert!(b.remove("b")?);
            assert_eq!(b.get("b")?, None);
            assert!(!b.contains_key("b")?);
            b.insert("c", &3)?;
            b.insert("c", &4)?;
            Ok("done")
        })
        .unwrap();
    assert_eq!(r, "done");
    assert_eq!(m.version(), v0 + 1);
    assert_eq!(m.get("a").unwrap(), Some(11));
    assert_eq!(m.get("b").unwrap(), None);
    assert_eq!(m.get("c").unwrap(), Some(4));
    assert_eq!(m.len(), 2);

    // An Err from the closure applies nothing.
    let before = m.entries().unwrap();
    let e = m.write(|b| {
        b.insert("a", &99)?;
        b.remove("c")?;
        b.insert("d", &5)?;
        Err::<(), _>(Error::Value("user abort".into()))
    });
    assert!(matches!(e, Err(Error::Value(_))));
    let mut after = m.entries().unwrap();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(before, after);

    // A panic inside the closure applies nothing and releases the lock.
    let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.write(|b| {
            b.insert("a", &1000)?;
            b.insert("e", &6)?;
            panic!("serializer exploded");
            #[allow(unreachable_code)]
            Ok(())
        })
    }));
    assert!(p.is_err());
    assert_eq!(m.get("a").unwrap(), Some(11));
    assert_eq!(m.get("e").unwrap(), None);
    assert_eq!(m.version(), v0 + 1);
    m.insert("f", &7).unwrap();
    assert_eq!(m.get("f").unwrap(), Some(7));

    // Nested writes are refused instead of deadlocking.
    let nested = m.write(|_| m.insert("g", &8));
    assert!(matches!(nested, Err(Error::NestedWrite)));
    assert_eq!(m.get("g").unwrap(), None);
}

/// A value whose serialization panics halfway through.
struct Exploding;

impl rkyv::Archive for Exploding {
    type Archived = rkyv::Archived<u64>;
    type Resolver = ();
    fn resolve(&self, _: (), out: rkyv::Place<Self::Archived>) {
        7u64.resolve((), out)
    }
}

impl<S: rkyv::rancor::Fallible + ?Sized> rkyv::Serialize<S> for Exploding {
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        panic!("serializer panics");
    }
}

#[test]
fn panicking_serializer_leaves_map_unchanged() {
    let c = Cleanup::new("panicser");
    let m: ShmMap<str, Exploding> = ShmMap::create(&c.name, &c.opts).unwrap();
    let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.insert("x", &Exploding)));
    assert!(p.is_err());
    assert_eq!(m.len(), 0);
    assert_eq!(m.version(), 0);
    assert!(!m.contains_key("x").unwrap());
    // The lock was released: a write from another handle succeeds at once.
    let other = RawMap::open(
        &c.name,
        &c.opts
            .clone()
            .raw_writes(true)
            .lock_timeout(std::time::Duration::from_millis(200)),
    )
    .unwrap();
    other.insert(b"y", b"1").unwrap();
    assert_eq!(m.len(), 1);
}

#[test]
fn view_reads_consistently() {
    let c = Cleanup::new("view");
    let m: ShmMap<str, u64> = ShmMap::create(&c.name, &c.opts).unwrap();
    m.write(|b| {
        b.insert("x", &1)?;
        b.insert("y", &1)
    })
    .unwrap();
    let (x, y) = m
        .view(|v| Ok((v.get("x")?.unwrap(), v.get("y")?.unwrap())))
        .unwrap();
    assert_eq!((x, y), (1, 1));
    let a = m.view(|v| v.get_archived("x")).unwrap().unwrap();
    assert_eq!(*a, 1);
}

#[test]
fn size_limits_and_full() {
    // 128 slots and an 8 KiB arena; growth is capped at 16 KiB in all.
    let c = Cleanup::with(
        "full",
        Options::new()
            .capacity(100)
            .arena_size(Size::parse("8kb").unwrap())
            .max_size(Size::parse("16kb").unwrap()),
    );
    let m = RawMap::create(&c.name, &c.opts).unwrap();
    let big_key = vec![0u8; shmkv::MAX_KEY_LEN + 1];
    assert!(matches!(
        m.insert(&big_key, b"v"),
        Err(Error::KeyTooLarge { .. })
    ));
    assert!(matches!(
        m.insert(b"k", &vec![0u8; 16 << 10]),
        Err(Error::ValueTooLarge { .. })
    ));
    let mut stored = Vec::new();
    let mut i = 0u32;
    let err = loop {
        match m.insert(&i.to_le_bytes(), &[i as u8; 200]) {
            Ok(()) => stored.push(i),
            Err(e) => break e,
        }
        i += 1;
    };
    assert!(matches!(err, Error::Full { .. }), "{err:?}");
    assert!(stored.len() > 20);
    assert_eq!(m.len(), stored.len());
    for k in &stored {
        assert_eq!(
            m.get(&k.to_le_bytes()).unwrap().unwrap(),
            vec![*k as u8; 200]
        );
    }
    // A failing batch changes nothing either.
    let v = m.version();
    assert!(m
        .write(|b| {
            b.insert(b"new", &[1; 100])?;
            b.insert(b"new2", &[2; 3000])
        })
        .is_err());
    assert_eq!(m.version(), v);
    assert!(!m.contains_key(b"new").unwrap());
    // Removal still works when the map is full (a reserve keeps room for
    // the redo log), singly and in a batch.
    assert!(m.remove(&0u32.to_le_bytes()).unwrap());
    m.write(|b| {
        stored[1..11]
            .iter()
            .try_for_each(|k| b.remove(&k.to_le_bytes()).map(drop))
    })
    .unwrap();
    assert_eq!(m.len(), stored.len() - 11);
    // Compaction makes the removed entries' room usable again.
    m.compact().unwrap();
    for k in 0..5u32 {
        m.insert(&(1000 + k).to_le_bytes(), &[7; 200]).unwrap();
    }
    assert_eq!(m.len(), stored.len() - 11 + 5);
    for k in &stored[11..] {
        assert_eq!(
            m.get(&k.to_le_bytes()).unwrap().unwrap(),
            vec![*k as u8; 200]
        );
    }
    let s = m.stats().unwrap();
    assert!(s.segment_size + 512 <= 16 << 10, "{s:?}");
}
