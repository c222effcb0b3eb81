//! [`ShmMap`]: the typed map. Keys are [`Key`]s, values rkyv archives that
//! are read in place.

use std::marker::PhantomData;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::error::{Error, Result};
use crate::key::Key;
use crate::options::Options;
use crate::{RawBatch, RawMap, RawView, Ref, Stats};

/// A value type that can be stored: any type rkyv can serialize.
pub trait Storable:
    Archive + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}
impl<T> Storable for T where
    T: Archive + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// An archived type that can be validated in place (rkyv's `bytecheck`).
pub trait Checkable: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>> {}
impl<T> Checkable for T where T: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>> {}

/// A stored value type that can also be read back as an owned value.
pub trait Loadable:
    Sized + Archive<Archived: Checkable + Deserialize<Self, HighDeserializer<rancor::Error>>>
{
}
impl<T> Loadable for T where
    T: Archive<Archived: Checkable + Deserialize<T, HighDeserializer<rancor::Error>>>
{
}

/// Ties a handle to its key and value types without owning either.
type Marker<K, V> = PhantomData<(fn(&K), fn() -> V)>;

fn encode<V: Storable>(value: &V) -> Result<AlignedVec> {
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, AlignedVec::new())
        .map_err(|e| Error::Value(e.to_string()))
}

fn access<A: Checkable>(bytes: &[u8]) -> Result<&A> {
    rkyv::access::<A, rancor::Error>(bytes)
        .map_err(|e| Error::Value(format!("stored value does not validate: {e}")))
}

fn decode<V: Loadable>(bytes: &[u8]) -> Result<V> {
    let a = access::<V::Archived>(bytes)?;
    rkyv::deserialize::<V, rancor::Error>(a).map_err(|e| Error::Value(e.to_string()))
}

/// A typed map in SysV shared memory, shared by unrelated processes.
///
/// ```
/// # fn main() -> shmkv::Result<()> {
/// use shmkv::{Options, ShmMap};
/// let name = format!("doc-typed-{}", std::process::id());
/// # struct Cleanup(String);
/// # impl Drop for Cleanup { fn drop(&mut self) { let _ = shmkv::RawMap::destroy_by_name(&self.0, &shmkv::Options::new()); } }
/// # let _cleanup = Cleanup(name.clone());
/// let map: ShmMap<str, (u32, String)> = ShmMap::create(&name, &Options::new())?;
/// map.insert("a", &(1, "one".to_string()))?;
/// let v = map.get_archived("a")?.expect("present");
/// assert_eq!(v.0, 1);
/// assert_eq!(v.1.as_str(), "one");
/// assert_eq!(map.get("a")?, Some((1, "one".to_string())));
/// drop(v);
/// map.destroy()?;
/// # Ok(()) }
/// ```
pub struct ShmMap<K: ?Sized, V> {
    raw: RawMap,
    _types: Marker<K, V>,
}

impl<K: ?Sized, V> std::fmt::Debug for ShmMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmMap").field("raw", &self.raw).finish()
    }
}

impl<K: Key + ?Sized, V: Archive> ShmMap<K, V> {
    fn wrap(raw: RawMap) -> Self {
        ShmMap {
            raw,
            _types: PhantomData,
        }
    }

    /// The schema this handle records or expects: `KIND -> value`, the
    /// value being [`Options::schema`] or the value type's name.
    fn typed_options(opts: &Options) -> Options {
        let value = opts
            .schema
            .clone()
            .unwrap_or_else(|| std::any::type_name::<V>().to_string());
        opts.clone().typed(format!("{} -> {value}", K::KIND))
    }

    /// Creates a new map and records its schema (see [`Options::schema`]);
    /// [`Error::AlreadyExists`] if one is there.
    pub fn create(name: &str, opts: &Options) -> Result<Self> {
        RawMap::create(name, &Self::typed_options(opts)).map(Self::wrap)
    }

    /// Opens an existing map; [`Error::NotFound`] if there is none,
    /// [`Incompatible::Schema`](crate::Incompatible::Schema) if it was made
    /// with another key kind or value type.
    pub fn open(name: &str, opts: &Options) -> Result<Self> {
        RawMap::open(name, &Self::typed_options(opts)).map(Self::wrap)
    }

    /// Opens the map, creating it if needed (race-free across processes);
    /// the schema is recorded or checked as by [`create`](Self::create) and
    /// [`open`](Self::open).
    pub fn open_or_create(name: &str, opts: &Options) -> Result<Self> {
        RawMap::open_or_create(name, &Self::typed_options(opts)).map(Self::wrap)
    }

    /// The untyped map underneath.
    pub fn raw(&self) -> &RawMap {
        &self.raw
    }

    /// Stores `value` under `key`, atomically.
    pub fn insert(&self, key: &K, value: &V) -> Result<()>
    where
        V: Storable,
    {
        let bytes = encode(value)?;
        self.raw.write(|b| b.insert_typed(&key.key_bytes(), &bytes))
    }

    /// The archived value under `key`, validated, read in place (zero-copy).
    pub fn get_archived(&self, key: &K) -> Result<Option<Ref<'_, V::Archived>>>
    where
        V::Archived: Checkable,
    {
        self.raw
            .get_ref(&key.key_bytes())?
            .map(|bytes| Ref::try_map(bytes, access::<V::Archived>))
            .transpose()
    }

    /// The archived value under `key` without validation (a value shorter
    /// than an archived `V` is still an error, not a read past its end).
    ///
    /// # Safety
    /// The stored bytes must be a valid archive of `V` made by a build with
    /// the same rkyv format (which `open` checks). What breaks this, so
    /// that the result is undefined behaviour:
    /// - a value written by a raw handle or `shmkv put --raw` (refused
    ///   without [`Options::raw_writes`]);
    /// - a map made with another value type under the same
    ///   [`Options::schema`] name (the schema is checked on open; a name
    ///   pins it, so changing the type under the same name is on the
    ///   caller), or a map without a recorded schema (made by a raw handle)
    ///   holding other data;
    /// - a segment corrupted by another process (see "Whom a map trusts"
    ///   in the crate docs).
    ///
    /// [`get_archived`](Self::get_archived) validates instead, at the cost
    /// of rkyv's check of the archive.
    pub unsafe fn get_archived_unchecked(&self, key: &K) -> Result<Option<Ref<'_, V::Archived>>>
    where
        V::Archived: Portable,
    {
        self.raw
            .get_ref(&key.key_bytes())?
            .map(|bytes| {
                Ref::try_map(bytes, |b| {
                    if b.len() < std::mem::size_of::<V::Archived>() {
                        return Err(Error::Value(format!(
                            "stored value of {} bytes is shorter than an archived value ({} bytes)",
                            b.len(),
                            std::mem::size_of::<V::Archived>()
                        )));
                    }
                    // SAFETY: long enough for rkyv's root object (checked
                    // above); the caller guarantees the bytes are a valid
                    // archive of V; they are 16-byte aligned and immutable
                    // while referenced (PUBLISHED-IMMUTABLE).
                    Ok(unsafe { rkyv::access_unchecked::<V::Archived>(b) })
                })
            })
            .transpose()
    }

    /// An owned copy of the value under `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>>
    where
        V: Loadable,
    {
        match self.raw.get_ref(&key.key_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        self.raw.contains_key(&key.key_bytes())
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&self, key: &K) -> Result<bool> {
        self.raw.write(|b| b.remove_typed(&key.key_bytes()))
    }

    /// Number of entries (the hidden sync state not counted).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// The map's sync state (`shmkv sync`), `None` if it is not synced
    /// (see [`RawMap::sync_state`]).
    pub fn sync_state(&self) -> Result<Option<crate::SyncState>> {
        self.raw.sync_state()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The map's version: writes committed so far.
    pub fn version(&self) -> u64 {
        self.raw.version()
    }

    /// Sleeps until the version differs from `since` (see
    /// [`RawMap::wait_for_change`]).
    pub fn wait_for_change(&self, since: u64, timeout: std::time::Duration) -> Result<Option<u64>> {
        self.raw.wait_for_change(since, timeout)
    }

    /// Rewrites the live entries into a fresh generation (see
    /// [`RawMap::compact`]).
    pub fn compact(&self) -> Result<()> {
        self.raw.compact()
    }

    /// Counters and identity of the map.
    pub fn stats(&self) -> Result<Stats> {
        self.raw.stats()
    }

    /// A full consistency check (see [`RawMap::verify`]).
    pub fn verify(&self) -> Result<crate::VerifyReport> {
        self.raw.verify()
    }

    /// Every key, from one consistent snapshot.
    pub fn keys(&self) -> Result<Vec<K::Owned>> {
        self.raw
            .entries()?
            .iter()
            .map(|(k, _)| {
                K::from_key_bytes(k)
                    .ok_or_else(|| Error::Value("stored key does not decode".into()))
            })
            .collect()
    }

    /// Every entry as owned values, from one consistent snapshot (the
    /// hidden sync state left out).
    pub fn entries(&self) -> Result<Vec<(K::Owned, V)>>
    where
        V: Loadable,
    {
        self.raw
            .entries()?
            .iter()
            .map(|(k, v)| {
                let k = K::from_key_bytes(k)
                    .ok_or_else(|| Error::Value("stored key does not decode".into()))?;
                Ok((k, decode(v)?))
            })
            .collect()
    }

    /// Runs `f` with the write lock held and applies all it staged as one
    /// atomic write (the PHP class's `ensureAtomicity`, done right): readers
    /// in a [`view`](ShmMap::view) see all of it or none, a crash leaves the
    /// map before or after it, and `Err` or a panic from `f` applies nothing.
    ///
    /// ```
    /// # fn main() -> shmkv::Result<()> {
    /// # use shmkv::{Options, ShmMap};
    /// # let name = format!("doc-batch-{}", std::process::id());
    /// # struct Cleanup(String);
    /// # impl Drop for Cleanup { fn drop(&mut self) { let _ = shmkv::RawMap::destroy_by_name(&self.0, &shmkv::Options::new()); } }
    /// # let _cleanup = Cleanup(name.clone());
    /// let counters: ShmMap<str, u64> = ShmMap::create(&name, &Options::new())?;
    /// counters.write(|b| {
    ///     let hits = b.get("hits")?.unwrap_or(0);
    ///     b.insert("hits", &(hits + 1))?;
    ///     b.insert("last", &42)
    /// })?;
    /// assert_eq!(counters.get("hits")?, Some(1));
    /// # counters.destroy() }
    /// ```
    pub fn write<R>(&self, f: impl FnOnce(&mut Batch<'_, '_, K, V>) -> Result<R>) -> Result<R> {
        self.raw.write(|raw| {
            f(&mut Batch {
                raw,
                _types: PhantomData,
            })
        })
    }

    /// Runs `f` over a consistent snapshot of several keys; `f` may be run
    /// again if a write raced with it (see [`RawMap::view`]).
    pub fn view<'m, R>(&'m self, mut f: impl FnMut(&View<'_, 'm, K, V>) -> Result<R>) -> Result<R> {
        self.raw.view(|raw| {
            f(&View {
                raw,
                _types: PhantomData,
            })
        })
    }

    /// Removes the map from the kernel (segments and lock).
    pub fn destroy(self) -> Result<()> {
        self.raw.destroy()
    }
}

/// The typed operations of one atomic write (see [`ShmMap::write`]).
pub struct Batch<'b, 'm, K: ?Sized, V> {
    raw: &'b mut RawBatch<'m>,
    _types: Marker<K, V>,
}

impl<K: Key + ?Sized, V: Archive> Batch<'_, '_, K, V> {
    /// Stages `key → value`.
    pub fn insert(&mut self, key: &K, value: &V) -> Result<()>
    where
        V: Storable,
    {
        let bytes = encode(value)?;
        self.raw.insert_typed(&key.key_bytes(), &bytes)
    }

    /// Stages removal of `key`; returns whether it was present.
    pub fn remove(&mut self, key: &K) -> Result<bool> {
        self.raw.remove_typed(&key.key_bytes())
    }

    /// The value of `key` as this batch sees the map.
    pub fn get(&self, key: &K) -> Result<Option<V>>
    where
        V: Loadable,
    {
        self.raw.get(&key.key_bytes())?.map(decode).transpose()
    }

    /// Whether `key` is present as this batch sees the map.
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        self.raw.contains_key(&key.key_bytes())
    }
}

/// Typed consistent reads (see [`ShmMap::view`]).
pub struct View<'v, 'm, K: ?Sized, V> {
    raw: &'v RawView<'m>,
    _types: Marker<K, V>,
}

impl<'m, K: Key + ?Sized, V: Archive> View<'_, 'm, K, V> {
    /// The archived value under `key`, zero-copy and validated.
    pub fn get_archived(&self, key: &K) -> Result<Option<Ref<'m, V::Archived>>>
    where
        V::Archived: Checkable,
    {
        self.raw
            .get(&key.key_bytes())?
            .map(|bytes| Ref::try_map(bytes, access::<V::Archived>))
            .transpose()
    }

    /// An owned copy of the value under `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>>
    where
        V: Loadable,
    {
        self.raw
            .get(&key.key_bytes())?
            .map(|b| decode(&b))
            .transpose()
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        self.raw.contains_key(&key.key_bytes())
    }
}
