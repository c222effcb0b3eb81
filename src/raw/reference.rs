//! [`Ref`]: zero-copy references into a map, valid while held.

use std::ops::Deref;
use std::ptr::NonNull;

use super::gens::Pin;
use crate::error::Result;

/// A zero-copy reference into the map's shared memory. It stays valid and
/// unchanged for as long as it is held, also across generation switches:
/// published arena bytes are never written again, and the mapping they live
/// in is detached only after every `Ref` into it is dropped.
///
/// A `Ref` pins its thread (see DESIGN.md "Reclamation") and so is not
/// `Send`.
pub struct Ref<'m, T: ?Sized> {
    pub(super) value: NonNull<T>,
    pub(super) _pin: Pin<'m>,
}

impl<'m, T: ?Sized> Ref<'m, T> {
    pub(super) fn new(value: &T, pin: Pin<'m>) -> Ref<'m, T> {
        Ref {
            value: NonNull::from(value),
            _pin: pin,
        }
    }

    /// Turns a reference to the bytes into a reference to something inside.
    pub fn map<U: ?Sized>(r: Ref<'m, T>, f: impl for<'x> FnOnce(&'x T) -> &'x U) -> Ref<'m, U> {
        let value = NonNull::from(f(&*r));
        Ref {
            value,
            _pin: r._pin,
        }
    }

    /// Like [`Ref::map`] for a fallible projection.
    pub fn try_map<U: ?Sized, E>(
        r: Ref<'m, T>,
        f: impl for<'x> FnOnce(&'x T) -> Result<&'x U, E>,
    ) -> Result<Ref<'m, U>, E> {
        let value = NonNull::from(f(&*r)?);
        Ok(Ref {
            value,
            _pin: r._pin,
        })
    }
}

impl<T: ?Sized> Deref for Ref<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `value` points into published arena bytes (immutable) of a
        // generation that `_pin` keeps mapped while this Ref lives.
        unsafe { self.value.as_ref() }
    }
}

impl<T: ?Sized> Clone for Ref<'_, T> {
    fn clone(&self) -> Self {
        Ref {
            value: self.value,
            _pin: self._pin.clone(),
        }
    }
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for Ref<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// A key and its value, zero-copy.
pub type Entry<'m> = (Ref<'m, [u8]>, Ref<'m, [u8]>);

#[cfg(test)]
mod tests {
    /// A `Ref` is a fat pointer and a two-word pin (DESIGN.md "Reclamation", the pin's shape).
    #[test]
    fn a_ref_is_four_words() {
        assert_eq!(
            std::mem::size_of::<super::Ref<'static, [u8]>>(),
            4 * std::mem::size_of::<usize>()
        );
    }
}
