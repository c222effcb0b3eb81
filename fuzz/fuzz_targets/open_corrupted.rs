//! Damaged shared memory: bytes of a map's data segment overwritten (by a
//! buggy or hostile process), then the real engine (`RawMap` over the heap
//! provider) used through the handle that was attached before the damage
//! and through one that attaches after it: reading every entry, looking
//! keys up, verifying, writing (insert, remove, a batch, which runs
//! recovery first) and compacting (a new generation) must give errors or
//! data, never a crash, a panic, a hang or an access outside the segment
//! (run under ASan, cargo-fuzz's default). Half the inputs patch a valid
//! segment with entries, so that the interesting paths (slot words, header
//! counters, redo logs, record bounds) are reached: bytes, or (third bit of
//! the first byte) whole 64-bit words, so that values next to `u64::MAX`
//! are one mutation away. With the second bit set, the header's
//! `counters_check` is recomputed after patching, so that damaged counters
//! get past the check word and reach the range checks. The other half
//! write the input's bytes over the start of the segment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmkv::__private::{data_offsets as off, HeapKernel};
use shmkv::{Options, RawMap};

/// A map with entries, garbage and a tombstone; its data segment's id.
fn valid_map(k: &HeapKernel) -> (RawMap, i32) {
    let m = k
        .create("c", &Options::new().capacity(1).arena_size(4096u64))
        .unwrap();
    m.write(|b| {
        for k in 0u8..10 {
            b.insert(&[k; 3], &[k; 20])?;
        }
        b.remove(&[3; 3])?;
        Ok(())
    })
    .unwrap();
    m.insert(&[4; 3], &[9; 40]).unwrap();
    m.remove(&[5; 3]).unwrap();
    let id = m.stats().unwrap().data_shmid;
    (m, id)
}

fn word(img: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(img[at..at + 8].try_into().unwrap())
}

/// Recomputes the counters' check word of an image, like a writer would.
fn reseal(img: &mut [u8]) {
    if img.len() < off::COUNTERS_CHECK + 8 {
        return;
    }
    let c = off::counters_check(
        word(img, off::ARENA_USED),
        word(img, off::LIVE),
        word(img, off::TOMBSTONES),
        word(img, off::GARBAGE),
    );
    img[off::COUNTERS_CHECK..off::COUNTERS_CHECK + 8].copy_from_slice(&c.to_le_bytes());
}

fn exercise(m: &RawMap) {
    let _ = m.len();
    let _ = m.entries();
    let _ = m.verify();
    for k in 0u8..12 {
        let _ = m.get(&[k; 3]);
        let _ = m.get_ref(&[k; 3]).map(|r| r.map(|v| v.len()));
    }
    let _ = m.stats();
    let _ = m.insert(b"new", b"value");
    let _ = m.remove(&[1; 3]);
    // Large enough that a wrapped record offset would point before the
    // start of the segment, where ASan sees it.
    let _ = m.insert(b"big", &[0x22; 2000]);
    let _ = m.write(|b| {
        b.insert(&[2; 3], &[0xee; 100])?;
        b.remove(&[6; 3])?;
        b.insert(b"batch", &[0x11; 700])?;
        let _ = b.get(&[2; 3])?;
        b.remove(b"new").map(drop)
    });
    let _ = m.entries();
    let _ = m.verify();
    if m.compact().is_ok() {
        let _ = m.entries();
        let _ = m.insert(b"after compact", &[1; 30]);
    }
}

fuzz_target!(|data: &[u8]| {
    let k = HeapKernel::new();
    let (m, id) = valid_map(&k);
    let flags = data.first().copied().unwrap_or(0);
    if flags & 1 == 1 {
        let mut img = k.read(id);
        if flags & 4 == 0 {
            // Patch bytes: triples of (offset LE u16, byte).
            for t in data[1..].chunks_exact(3) {
                let at = u16::from_le_bytes([t[0], t[1]]) as usize % img.len();
                img[at] = t[2];
            }
        } else {
            // Patch whole words (header counters, slot words, record
            // headers): (word index LE u16, kind, u64 LE): kind 0 stores the
            // value, kind 1 `u64::MAX - v % 65536`, kind 2 `v % 65536`, so
            // that values near both ends of the range are one mutation away.
            let words = img.len() / 8;
            for t in data[1..].chunks_exact(11) {
                let at = u16::from_le_bytes([t[0], t[1]]) as usize % words * 8;
                let v = u64::from_le_bytes(t[3..11].try_into().unwrap());
                let v = match t[2] % 3 {
                    0 => v,
                    1 => u64::MAX - v % 65536,
                    _ => v % 65536,
                };
                img[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        if flags & 2 == 2 {
            reseal(&mut img);
        }
        k.scribble(id, 0, &img);
    } else {
        k.scribble(id, 0, data);
    }
    // The handle attached before the damage, then one attached after it.
    exercise(&m);
    if let Ok(m2) = k.open("c", &Options::new()) {
        exercise(&m2);
    }
});
