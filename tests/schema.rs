//! Typed maps know their types (issue 16 item 5): the schema (key kind and
//! value type identity) is recorded at creation and checked on open; raw
//! writes into a typed map are refused unless allowed; a short value does
//! not make `get_archived_unchecked` read past it.
#![allow(unreachable_pub)]

mod common;

use common::Cleanup;
use shmkv::{Error, Options, RawMap, ShmMap};

fn incompatible_naming_both<T>(r: shmkv::Result<T>, found: &str, expected: &str) {
    match r {
        Err(e @ Error::Incompatible(_)) => {
            let msg = e.to_string();
            assert!(msg.contains(found) && msg.contains(expected), "{msg}");
        }
        Err(e) => panic!("expected Incompatible, got {e}"),
        Ok(_) => panic!("opened with another schema"),
    }
}

#[test]
fn another_value_type_or_key_kind_is_incompatible() {
    let c = Cleanup::new("schema-types");
    let m: ShmMap<str, u64> = ShmMap::create(&c.name, &c.opts).unwrap();
    m.insert("a", &7).unwrap();
    incompatible_naming_both(ShmMap::<str, f64>::open(&c.name, &c.opts), "u64", "f64");
    incompatible_naming_both(
        ShmMap::<str, (u32, u32)>::open(&c.name, &c.opts),
        "str -> u64",
        "(u32, u32)",
    );
    incompatible_naming_both(
        ShmMap::<u64, u64>::open(&c.name, &c.opts),
        "str",
        "u64 -> u64",
    );
    // The same types open, also through open_or_create.
    let same: ShmMap<String, u64> = ShmMap::open_or_create(&c.name, &c.opts).unwrap();
    assert_eq!(same.get(&"a".to_string()).unwrap(), Some(7));
    assert_eq!(
        m.raw().stats().unwrap().schema.as_deref(),
        Some("str -> u64")
    );
}

#[test]
fn integer_key_kinds_do_not_alias() {
    let c = Cleanup::new("schema-ints");
    let m: ShmMap<i32, u64> = ShmMap::create(&c.name, &c.opts).unwrap();
    m.insert(&-1, &1).unwrap();
    incompatible_naming_both(ShmMap::<u64, u64>::open(&c.name, &c.opts), "i32", "u64");
    incompatible_naming_both(ShmMap::<i64, u64>::open(&c.name, &c.opts), "i32", "i64");
}

#[test]
fn a_schema_name_pins_the_identity() {
    let c = Cleanup::new("schema-named");
    let v2 = Options::new().schema("backend/v2");
    let m: ShmMap<str, u64> = ShmMap::create(&c.name, &v2).unwrap();
    m.insert("a", &1).unwrap();
    incompatible_naming_both(
        ShmMap::<str, u64>::open(&c.name, &Options::new().schema("backend/v3")),
        "backend/v2",
        "backend/v3",
    );
    // Without the name, the type's name is expected: another schema.
    incompatible_naming_both(
        ShmMap::<str, u64>::open(&c.name, &Options::new()),
        "backend/v2",
        "u64",
    );
    let again: ShmMap<str, u64> = ShmMap::open(&c.name, &v2).unwrap();
    assert_eq!(again.get("a").unwrap(), Some(1));
}

#[test]
fn raw_inserts_into_a_typed_map_are_refused_unless_allowed() {
    let c = Cleanup::new("schema-raw");
    let m: ShmMap<str, u64> = ShmMap::create(&c.name, &c.opts).unwrap();
    m.insert("a", &1).unwrap();
    let raw = RawMap::open(&c.name, &Options::new()).unwrap();
    match raw.insert(b"a", b"x") {
        Err(e @ Error::TypedMap { .. }) => assert!(e.to_string().contains("str -> u64"), "{e}"),
        other => panic!("expected TypedMap, got {other:?}"),
    }
    assert_eq!(m.get("a").unwrap(), Some(1));
    // Removing is allowed (it cannot store a wrong value).
    assert!(raw.remove(b"a").unwrap());
    let forced = RawMap::open(&c.name, &Options::new().raw_writes(true)).unwrap();
    forced.insert(b"short", b"x").unwrap();
    // A one-byte value: `get_archived` rejects it, and
    // `get_archived_unchecked` does not read past it.
    assert!(matches!(m.get_archived("short"), Err(Error::Value(_))));
    // SAFETY: the call under test must return an error for a value shorter
    // than an archived u64 instead of forming a reference past it.
    let r = unsafe { m.get_archived_unchecked("short") };
    assert!(matches!(r, Err(Error::Value(_))), "{r:?}");
}
