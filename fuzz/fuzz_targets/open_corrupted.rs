//! Arbitrary bytes as a segment image: attaching, reading every slot,
//! looking keys up, recovering and writing must give errors or data, never
//! a crash, a panic or a hang. Half the inputs start from a valid image with
//! entries, then get bytes overwritten, so that the interesting paths (slot
//! words, redo logs, record bounds) are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmkv::__private::HeapMap;

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
    m.image()
}

fn exercise(m: &HeapMap) {
    let _ = m.len();
    let _ = m.entries();
    for k in 0u8..12 {
        let _ = m.get(&[k; 3]);
    }
    if m.recover().is_ok() {
        let _ = m.write(|b| {
            b.insert(b"new", b"value")?;
            b.remove(&[1; 3])
        });
        let _ = m.entries();
    }
}

fuzz_target!(|data: &[u8]| {
    if data.first().is_some_and(|b| b & 1 == 1) {
        // Patch a valid image: pairs of (offset, byte).
        let mut img = valid_image();
        for pair in data[1..].chunks_exact(3) {
            let off = u16::from_le_bytes([pair[0], pair[1]]) as usize % img.len();
            img[off] = pair[2];
        }
        if let Ok(m) = HeapMap::from_image(&img, SEED) {
            exercise(&m);
        }
    } else if let Ok(m) = HeapMap::from_image(data, SEED) {
        exercise(&m);
    }
});
