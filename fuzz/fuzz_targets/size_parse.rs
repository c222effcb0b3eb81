//! `Size::parse` never panics, and what it accepts round-trips through
//! `Display` and agrees with a simple reference parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmkv::Size;

fn reference(s: &str) -> Option<u64> {
    let t = s.trim();
    let i = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..i].parse().ok()?;
    let mult: u64 = match t[i..].trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let got = Size::parse(s).ok().map(Size::bytes);
    assert_eq!(got, reference(s), "{s:?}");
    if let Some(b) = got {
        assert_eq!(Size::parse(&Size::from(b).to_string()).map(Size::bytes), Ok(b));
    }
});
