//! Words stored in a slot, as small newtypes with named bit fields.

/// State of a slot, in the low bits of its [`SlotWord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag(u64);

impl Tag {
    /// Never used: ends every probe sequence. A new segment is all EMPTY.
    pub(crate) const EMPTY: Tag = Tag(0);
    /// Holds a key; the word's offset points at its record.
    pub(crate) const FULL: Tag = Tag(1);
    /// Held a key that was removed; probe sequences continue past it.
    pub(crate) const TOMBSTONE: Tag = Tag(2);
}

/// Bits of the tag.
pub(crate) const TAG_BITS: u32 = 2;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// The record offset is stored in units of 16 bytes above the tag.
pub(crate) const OFFSET_SHIFT: u32 = TAG_BITS;
/// log2 of the unit of stored offsets.
pub(crate) const OFFSET_UNIT_BITS: u32 = 4;

/// The slot's `rec` word: tag and the arena offset of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotWord(pub(crate) u64);

impl SlotWord {
    pub(crate) const EMPTY: SlotWord = SlotWord(0);
    pub(crate) const TOMBSTONE: SlotWord = SlotWord(Tag::TOMBSTONE.0);

    /// A FULL word for a record at `offset` (a multiple of 16).
    pub(crate) fn full(offset: u64) -> SlotWord {
        debug_assert_eq!(offset % (1 << OFFSET_UNIT_BITS), 0);
        SlotWord(((offset >> OFFSET_UNIT_BITS) << OFFSET_SHIFT) | Tag::FULL.0)
    }

    /// The tag, or `None` for a bit pattern no writer produces.
    pub(crate) fn tag(self) -> Option<Tag> {
        let t = Tag(self.0 & TAG_MASK);
        match t {
            Tag::EMPTY | Tag::TOMBSTONE if self.0 >> OFFSET_SHIFT != 0 => None,
            Tag::EMPTY | Tag::FULL | Tag::TOMBSTONE => Some(t),
            _ => None,
        }
    }

    /// Arena offset of the record (meaningful for FULL).
    pub(crate) fn offset(self) -> u64 {
        (self.0 >> OFFSET_SHIFT) << OFFSET_UNIT_BITS
    }
}

/// The slot's `lens` word: key length in the low half, value length above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lens(pub(crate) u64);

/// Bits of the key length.
pub(crate) const KEY_LEN_BITS: u32 = 32;
/// Shift of the value length.
pub(crate) const VALUE_LEN_SHIFT: u32 = KEY_LEN_BITS;

impl Lens {
    pub(crate) fn new(key_len: u32, value_len: u32) -> Lens {
        Lens(u64::from(key_len) | (u64::from(value_len) << VALUE_LEN_SHIFT))
    }
    pub(crate) fn key_len(self) -> u64 {
        self.0 & ((1 << KEY_LEN_BITS) - 1)
    }
    pub(crate) fn value_len(self) -> u64 {
        self.0 >> VALUE_LEN_SHIFT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_word_round_trips() {
        for off in [0u64, 16, 4096, 1 << 40, ((1u64 << 62) - 1) << 4] {
            let w = SlotWord::full(off);
            assert_eq!(w.tag(), Some(Tag::FULL));
            assert_eq!(w.offset(), off);
        }
        assert_eq!(SlotWord::EMPTY.tag(), Some(Tag::EMPTY));
        assert_eq!(SlotWord::TOMBSTONE.tag(), Some(Tag::TOMBSTONE));
        assert_eq!(SlotWord(3).tag(), None);
        assert_eq!(SlotWord(2 | 4).tag(), None);
    }

    #[test]
    fn lens_round_trip() {
        for (k, v) in [
            (0u32, 0u32),
            (1, 2),
            (u32::MAX, 0),
            (0, u32::MAX),
            (u32::MAX, u32::MAX),
        ] {
            let l = Lens::new(k, v);
            assert_eq!((l.key_len(), l.value_len()), (u64::from(k), u64::from(v)));
        }
    }
}
