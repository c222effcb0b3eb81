//! Arbitrary bytes as a segment image: attaching, reading every slot,
//! looking keys up, recovering, writing (insert, remove, a batch) and
//! compacting (`Table::load_from` into a fresh heap table) must give errors
//! or data, never a crash, a panic, a hang or an access outside the image
//! (run under ASan, cargo-fuzz's default). Half the inputs start from a
//! valid image with entries, then get bytes overwritten, so that the
//! interesting paths (slot words, header counters, redo logs, record
//! bounds) are reached: bytes, or (third bit of the first byte) whole
//! 64-bit words, so that values next to `u64::MAX` are one mutation away.
//! With the second bit set, the header's `counters_check` is recomputed
//! after patching, so that damaged counters get past the check word and
//! reach the range checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmkv::__private::{data_offsets as off, HeapMap};

const SEED: u64 = 7;

fn valid_image() -> Vec<u8> {
    let m = HeapMap::new(16, 4096, SEED).unwrap();
    m.write(|b| {
        for k in 0u8..10 {
            b.insert(&[k; 3], &[k; 20])?;
        }
        b.remove(&[3; 3])?;
        Ok(())
    })
    .unwrap();
    // Some garbage and a tombstone in the published image.
    m.write(|b| b.insert(&[4; 3], &[9; 40])).unwrap();
    m.write(|b| b.remove(&[5; 3]).map(drop)).unwrap();
    m.image()
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

fn exercise(m: &HeapMap) {
    let _ = m.len();
    let _ = m.entries();
    let _ = m.verify();
    for k in 0u8..12 {
        let _ = m.get(&[k; 3]);
    }
    if let Ok(c) = m.compact() {
        let _ = c.verify();
        let _ = c.entries();
        let _ = c.write(|b| b.insert(b"after compact", &[1; 30]));
    }
    if m.recover().is_ok() {
        let _ = m.write(|b| b.insert(b"new", b"value"));
        let _ = m.write(|b| b.remove(&[1; 3]));
        // Large enough that a wrapped record offset would point before the
        // start of the image, where ASan sees it.
        let _ = m.write(|b| b.insert(b"big", &[0x22; 2000]));
        let _ = m.write(|b| {
            b.insert(&[2; 3], &[0xee; 100])?;
            b.remove(&[6; 3])?;
            b.insert(b"batch", &[0x11; 700])?;
            let _ = b.get(&[2; 3])?;
            b.remove(b"new")
        });
        let _ = m.entries();
        let _ = m.verify();
        if let Ok(c) = m.compact() {
            let _ = c.entries();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let flags = data.first().copied().unwrap_or(0);
    if flags & 1 == 1 {
        let mut img = valid_image();
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
        if let Ok(m) = HeapMap::from_image(&img, SEED) {
            exercise(&m);
        }
    } else if let Ok(m) = HeapMap::from_image(data, SEED) {
        exercise(&m);
    }
});
