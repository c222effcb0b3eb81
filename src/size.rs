//! Human-readable sizes: `"100kb"`, `"64 MB"`, `"1g"`, or plain bytes.

use std::fmt;
use std::str::FromStr;

/// A size in bytes, parsed from a human string or given as a number.
///
/// ```
/// use shmkv::Size;
/// assert_eq!(Size::parse("100kb").unwrap().bytes(), 100 * 1024);
/// assert_eq!("2 MB".parse::<Size>().unwrap().bytes(), 2 << 20);
/// assert_eq!(Size::from(4096u64).bytes(), 4096);
/// assert!(Size::parse("5 parsecs").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Nothing but whitespace.
    #[error("empty size")]
    Empty,
    /// A leading minus sign.
    #[error("negative size {0:?}")]
    Negative(String),
    /// The number part is missing or not decimal digits.
    #[error("not a number: {0:?}")]
    InvalidNumber(String),
    /// The unit is not one of b, k/kb, m/mb, g/gb, t/tb.
    #[error("unknown unit {0:?} (use b, kb, mb, gb or tb)")]
    UnknownUnit(String),
    /// The size is zero.
    #[error("size must not be zero")]
    Zero,
    /// The size does not fit in 64 bits.
    #[error("size {0:?} overflows 64 bits")]
    Overflow(String),
    /// A size that parses but is not usable for this purpose.
    #[error("{0}")]
    OutOfRange(String),
}

impl Size {
    /// Parses `"<digits>[ ]<unit>"`: units b, k/kb/kib, m/mb/mib, g/gb/gib,
    /// t/tb/tib (powers of 1024), any case; no unit means bytes.
    pub fn parse(s: &str) -> Result<Size, SizeError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(SizeError::Empty);
        }
        if t.starts_with('-') {
            return Err(SizeError::Negative(s.to_string()));
        }
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        if num.is_empty() {
            return Err(SizeError::InvalidNumber(s.to_string()));
        }
        let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(SizeError::UnknownUnit(unit.trim().to_string())),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| SizeError::Overflow(s.to_string()))?;
        let bytes = n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| SizeError::Overflow(s.to_string()))?;
        if bytes == 0 {
            return Err(SizeError::Zero);
        }
        Ok(Size(bytes))
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Size, SizeError> {
        Size::parse(s)
    }
}

impl From<u64> for Size {
    fn from(bytes: u64) -> Size {
        Size(bytes)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 4] = [("tb", 40), ("gb", 30), ("mb", 20), ("kb", 10)];
        for (name, shift) in UNITS {
            if self.0 >= 1 << shift && self.0 % (1 << shift) == 0 {
                return write!(f, "{}{name}", self.0 >> shift);
            }
        }
        write!(f, "{}b", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_forms() {
        let table: &[(&str, u64)] = &[
            ("1", 1),
            ("4096", 4096),
            ("10b", 10),
            ("10 B", 10),
            ("100kb", 100 << 10),
            ("100k", 100 << 10),
            ("100 KB", 100 << 10),
            ("100KiB", 100 << 10),
            ("64mb", 64 << 20),
            ("64M", 64 << 20),
            ("  64 mB  ", 64 << 20),
            ("1gb", 1 << 30),
            ("1G", 1 << 30),
            ("1tb", 1 << 40),
            ("2 T", 2 << 40),
            ("16777215tb", 16_777_215u64 << 40),
        ];
        for &(s, want) in table {
            assert_eq!(Size::parse(s), Ok(Size(want)), "{s:?}");
            assert_eq!(s.parse::<Size>(), Ok(Size(want)), "{s:?}");
        }
    }

    #[test]
    fn bad_forms() {
        use SizeError::*;
        let table: &[(&str, SizeError)] = &[
            ("", Empty),
            ("   ", Empty),
            ("kb", InvalidNumber("kb".into())),
            ("-5mb", Negative("-5mb".into())),
            ("5 parsecs", UnknownUnit("parsecs".into())),
            ("5xb", UnknownUnit("xb".into())),
            ("1.5mb", UnknownUnit(".5mb".into())),
            ("5 m b", UnknownUnit("m b".into())),
            ("0", Zero),
            ("0kb", Zero),
            ("16777216tb", Overflow("16777216tb".into())),
            (
                "99999999999999999999",
                Overflow("99999999999999999999".into()),
            ),
        ];
        for (s, want) in table {
            assert_eq!(Size::parse(s).as_ref(), Err(want), "{s:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for n in [1u64, 1000, 1024, 3 << 20, 5 << 30, 7 << 40, (1 << 20) + 1] {
            let s = Size(n).to_string();
            assert_eq!(Size::parse(&s), Ok(Size(n)), "{s}");
        }
    }
}
