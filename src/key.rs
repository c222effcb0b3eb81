//! Key types: anything with a stable byte encoding.

/// The bytes of a key: borrowed for byte-like keys, inline for integers.
#[derive(Debug, Clone, Copy)]
pub enum KeyBytes<'a> {
    /// Borrowed from the key.
    Borrowed(&'a [u8]),
    /// An 8-byte little-endian integer.
    Int([u8; 8]),
}

impl std::ops::Deref for KeyBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Borrowed(b) => b,
            KeyBytes::Int(b) => b,
        }
    }
}

/// A key type of [`ShmMap`](crate::ShmMap). The encoding is part of the
/// on-memory format: it must be the same in every process and build.
/// Integers are 8 bytes little-endian (so `-1i32`, `-1i64` and
/// `u64::MAX` are the same bytes: a typed map records its key kind,
/// [`KIND`](Key::KIND), so that a handle of another integer type cannot
/// open it); strings are their UTF-8 bytes, byte strings themselves.
pub trait Key {
    /// The key kind recorded in a typed map's schema: `"str"` (`str`,
    /// `String`), `"bytes"` (`[u8]`, `Vec<u8>`), `"u64"`, `"u32"`, `"i64"`,
    /// `"i32"`. Types with the same encoding share a kind.
    const KIND: &'static str;
    /// The owned form handed back when listing entries.
    type Owned;
    /// The bytes that are hashed and stored.
    fn key_bytes(&self) -> KeyBytes<'_>;
    /// Decodes stored bytes; `None` if they are not a valid key of this type.
    fn from_key_bytes(bytes: &[u8]) -> Option<Self::Owned>;
}

impl Key for str {
    const KIND: &'static str = "str";
    type Owned = String;
    fn key_bytes(&self) -> KeyBytes<'_> {
        KeyBytes::Borrowed(self.as_bytes())
    }
    fn from_key_bytes(bytes: &[u8]) -> Option<String> {
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }
}

impl Key for String {
    const KIND: &'static str = "str";
    type Owned = String;
    fn key_bytes(&self) -> KeyBytes<'_> {
        KeyBytes::Borrowed(self.as_bytes())
    }
    fn from_key_bytes(bytes: &[u8]) -> Option<String> {
        str::from_key_bytes(bytes)
    }
}

impl Key for [u8] {
    const KIND: &'static str = "bytes";
    type Owned = Vec<u8>;
    fn key_bytes(&self) -> KeyBytes<'_> {
        KeyBytes::Borrowed(self)
    }
    fn from_key_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
        Some(bytes.to_vec())
    }
}

impl Key for Vec<u8> {
    const KIND: &'static str = "bytes";
    type Owned = Vec<u8>;
    fn key_bytes(&self) -> KeyBytes<'_> {
        KeyBytes::Borrowed(self)
    }
    fn from_key_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
        Some(bytes.to_vec())
    }
}

macro_rules! int_key {
    ($via:ty: $($t:ty),*) => {$(
        impl Key for $t {
            const KIND: &'static str = stringify!($t);
            type Owned = $t;
            fn key_bytes(&self) -> KeyBytes<'_> {
                KeyBytes::Int(<$via>::from(*self).to_le_bytes())
            }
            fn from_key_bytes(bytes: &[u8]) -> Option<$t> {
                <$t>::try_from(<$via>::from_le_bytes(bytes.try_into().ok()?)).ok()
            }
        }
    )*};
}
int_key!(u64: u64, u32);
int_key!(i64: i64, i32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_keys_round_trip() {
        for v in [0u64, 1, u64::MAX, 1 << 40] {
            assert_eq!(u64::from_key_bytes(&v.key_bytes()), Some(v));
        }
        for v in [0i64, -1, i64::MIN, i64::MAX] {
            assert_eq!(i64::from_key_bytes(&v.key_bytes()), Some(v));
        }
        for v in [0i32, -1, i32::MIN, i32::MAX] {
            assert_eq!(i32::from_key_bytes(&v.key_bytes()), Some(v));
        }
        assert_eq!(u32::from_key_bytes(&u64::MAX.key_bytes()), None);
        assert_eq!(u64::from_key_bytes(b"short"), None);
        assert_eq!(str::from_key_bytes(b"abc").as_deref(), Some("abc"));
        assert_eq!(str::from_key_bytes(&[0xff]), None);
    }
}
