//! `shmkv._shmkv`: the native part of the Python package `shmkv` (PyO3).
//!
//! The Python package (`python/python/shmkv/__init__.py`) subclasses the
//! classes defined here with `collections.abc.MutableMapping`, so that the
//! hot methods (`__getitem__`, `get`, `__contains__`, `__setitem__`) stay
//! native and the mixins (`pop`, `update`, `keys`, ...) come from Python.
//! See DESIGN.md, "The Python package", for the pins, the GIL, threads and `fork`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use pyo3::exceptions::{PyBufferError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyString, PyTuple};
use shmkv::{Error, HugePages, Options, RawMap, RawTxn, Ref, Size};

// ---------------------------------------------------------------- errors

/// The exception classes, defined in Python (`shmkv/_errors.py`: they need
/// multiple inheritance, e.g. `NotFoundError(Error, KeyError)`), looked up
/// once.
static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn exc_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let m = ERRORS.get_or_try_init(py, || py.import("shmkv._errors").map(Bound::unbind))?;
    m.bind(py).getattr(name)
}

fn raise(py: Python<'_>, class: &str, msg: String) -> PyErr {
    match exc_class(py, class).and_then(|c| c.call1((msg,))) {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}

/// The Python exception of a `shmkv::Error`.
fn to_py(e: Error) -> PyErr {
    Python::attach(|py| {
        let msg = e.to_string();
        let class = match &e {
            Error::NotFound { .. } => "MapNotFoundError",
            Error::AlreadyExists { .. } => "MapExistsError",
            Error::PermissionDenied { .. } => "PermissionDeniedError",
            Error::ReadOnly => "ReadOnlyError",
            Error::InvalidSize(_)
            | Error::InvalidName(_)
            | Error::InvalidOption(_)
            | Error::Ftok { .. } => "InvalidArgumentError",
            Error::KeyTooLarge { .. } | Error::ValueTooLarge { .. } => "TooLargeError",
            Error::Full { .. } => "FullError",
            Error::LockTimeout { holder_pid, waited } => {
                let r = exc_class(py, "LockTimeoutError")
                    .and_then(|c| c.call1((msg.clone(), *holder_pid, waited.as_secs_f64())));
                return match r {
                    Ok(v) => PyErr::from_value(v),
                    Err(err) => err,
                };
            }
            Error::Incompatible(_) | Error::NameMismatch { .. } | Error::TypedMap { .. } => {
                "IncompatibleError"
            }
            Error::Corrupted(_) => "CorruptedError",
            Error::NestedWrite => "NestedWriteError",
            Error::ReservedKey { .. } => "ReservedKeyError",
            Error::Os { source, .. } if source.raw_os_error() == Some(libc_eacces()) => {
                "PermissionDeniedError"
            }
            _ => "Error",
        };
        raise(py, class, msg)
    })
}

const fn libc_eacces() -> i32 {
    13
}

trait OrPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> OrPy<T> for shmkv::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

fn missing_key(py: Python<'_>, key: &Bound<'_, PyAny>) -> PyErr {
    match exc_class(py, "NotFoundError").and_then(|c| c.call1((key,))) {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}

// ------------------------------------------------------------ conversions

/// The bytes of a key: `str` (UTF-8) or `bytes`; anything else is a
/// `TypeError`. The slice borrows the (immutable) Python object.
fn key_of<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes());
    }
    Err(PyTypeError::new_err(format!(
        "shmkv keys are str or bytes, not {}",
        key.get_type().name()?
    )))
}

/// A key as Python sees it when iterating: `str` if the bytes are UTF-8,
/// else `bytes`.
fn key_to_py(py: Python<'_>, k: &[u8]) -> Py<PyAny> {
    match std::str::from_utf8(k) {
        Ok(s) => PyString::new(py, s).into_any().unbind(),
        Err(_) => PyBytes::new(py, k).into_any().unbind(),
    }
}

/// Values at least this long are copied with the GIL released.
const LARGE: usize = 256 << 10;

/// A `bytes` copy of stored bytes (the copy of a large value runs with the
/// GIL released: the new object is not visible to other threads yet).
fn bytes_of<'py>(py: Python<'py>, v: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    if v.len() < LARGE {
        return Ok(PyBytes::new(py, v));
    }
    PyBytes::new_with(py, v.len(), |buf| {
        py.detach(|| buf.copy_from_slice(v));
        Ok(())
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CodecKind {
    Bytes,
    Pickle,
    Json,
    Msgpack,
}

/// How values are turned into bytes and back.
struct Codec {
    kind: CodecKind,
    /// `pickle.dumps` / `json.dumps` / `msgpack.packb` (None for bytes).
    enc: Option<Py<PyAny>>,
    /// `pickle.loads` / `json.loads` / `msgpack.unpackb`.
    dec: Option<Py<PyAny>>,
}

impl Codec {
    fn new(py: Python<'_>, name: &str) -> PyResult<Codec> {
        let (kind, module, enc, dec) = match name {
            "bytes" => {
                return Ok(Codec {
                    kind: CodecKind::Bytes,
                    enc: None,
                    dec: None,
                })
            }
            "pickle" => (CodecKind::Pickle, "pickle", "dumps", "loads"),
            "json" => (CodecKind::Json, "json", "dumps", "loads"),
            "msgpack" => (CodecKind::Msgpack, "msgpack", "packb", "unpackb"),
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown codec {other:?}: use \"pickle\", \"json\", \"msgpack\" or \"bytes\""
                )))
            }
        };
        let m = match py.import(module) {
            Ok(m) => m,
            Err(e) if kind == CodecKind::Msgpack => {
                let err = pyo3::exceptions::PyImportError::new_err(
                    "codec \"msgpack\" needs the msgpack package: pip install msgpack",
                );
                err.set_cause(py, Some(e));
                return Err(err);
            }
            Err(e) => return Err(e),
        };
        Ok(Codec {
            kind,
            enc: Some(m.getattr(enc)?.unbind()),
            dec: Some(m.getattr(dec)?.unbind()),
        })
    }

    fn clone_ref(&self, py: Python<'_>) -> Codec {
        Codec {
            kind: self.kind,
            enc: self.enc.as_ref().map(|f| f.clone_ref(py)),
            dec: self.dec.as_ref().map(|f| f.clone_ref(py)),
        }
    }

    fn name(&self) -> &'static str {
        match self.kind {
            CodecKind::Bytes => "bytes",
            CodecKind::Pickle => "pickle",
            CodecKind::Json => "json",
            CodecKind::Msgpack => "msgpack",
        }
    }

    /// A value's stored bytes, as an object that keeps them alive.
    fn encode<'py>(&self, py: Python<'py>, v: &Bound<'py, PyAny>) -> PyResult<Encoded<'py>> {
        match self.kind {
            CodecKind::Bytes => {
                if let Ok(b) = v.cast::<PyBytes>() {
                    Ok(Encoded::Bytes(b.clone()))
                } else if let Ok(b) = v.cast::<PyByteArray>() {
                    Ok(Encoded::Owned(b.to_vec()))
                } else if v.cast::<PyMemoryView>().is_ok() {
                    let b = py.get_type::<PyBytes>().call1((v,))?;
                    Ok(Encoded::Bytes(b.cast_into::<PyBytes>()?))
                } else {
                    Err(PyTypeError::new_err(format!(
                        "codec \"bytes\" stores bytes, bytearray or memoryview values, not {}",
                        v.get_type().name()?
                    )))
                }
            }
            kind => {
                let enc = self.enc.as_ref().expect("codec with an encoder").bind(py);
                let out = match kind {
                    CodecKind::Pickle => enc.call1((v, 5))?,
                    CodecKind::Msgpack => {
                        let kw = PyDict::new(py);
                        kw.set_item("use_bin_type", true)?;
                        enc.call((v,), Some(&kw))?
                    }
                    _ => {
                        let kw = PyDict::new(py);
                        kw.set_item("separators", (",", ":"))?;
                        enc.call((v,), Some(&kw))?
                    }
                };
                if let Ok(s) = out.cast::<PyString>() {
                    return Ok(Encoded::Owned(s.to_str()?.as_bytes().to_vec()));
                }
                Ok(Encoded::Bytes(out.cast_into::<PyBytes>()?))
            }
        }
    }

    /// The value of stored bytes.
    fn decode<'py>(&self, py: Python<'py>, v: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        self.decode_bytes(py, bytes_of(py, v)?)
    }

    /// The value of stored bytes already copied into `b` (the decoder,
    /// which may run any Python code, runs without a pin held).
    fn decode_bytes<'py>(
        &self,
        py: Python<'py>,
        b: Bound<'py, PyBytes>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.kind {
            CodecKind::Bytes => Ok(b.into_any()),
            CodecKind::Msgpack => {
                let kw = PyDict::new(py);
                kw.set_item("raw", false)?;
                self.dec
                    .as_ref()
                    .expect("codec with a decoder")
                    .bind(py)
                    .call((b,), Some(&kw))
            }
            _ => self
                .dec
                .as_ref()
                .expect("codec with a decoder")
                .bind(py)
                .call1((b,)),
        }
    }
}

enum Encoded<'py> {
    Bytes(Bound<'py, PyBytes>),
    Owned(Vec<u8>),
}

impl Encoded<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Encoded::Bytes(b) => b.as_bytes(),
            Encoded::Owned(v) => v,
        }
    }
}

fn size_of(v: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Size>> {
    let Some(v) = v else { return Ok(None) };
    if v.is_none() {
        return Ok(None);
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Size::parse(s.to_str()?)
            .map(Some)
            .map_err(|e| to_py(Error::InvalidSize(e)));
    }
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{what} is an int or a str like \"64mb\""
        )));
    }
    match v.extract::<u64>() {
        Ok(n) => Ok(Some(Size::from(n))),
        Err(_) if v.is_instance_of::<pyo3::types::PyInt>() => Err(PyValueError::new_err(format!(
            "{what} must be a positive number of bytes"
        ))),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{what} is an int or a str like \"64mb\", not {}",
            v.get_type().name()?
        ))),
    }
}

/// Seconds from Python as a `Duration`: `None` for a value too large for
/// one (`inf` included): no limit. Negative or NaN: `ValueError`.
fn seconds(v: f64, what: &str) -> PyResult<Option<Duration>> {
    if v.is_nan() || v < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{what} is a non-negative number of seconds"
        )));
    }
    Ok(Duration::try_from_secs_f64(v).ok())
}

/// Runs `f` (which is `!Send` only because of what it captures) with the
/// GIL released.
struct AssertSend<T>(T);
// SAFETY: used only to carry values into `Python::detach`, which runs the
// closure synchronously on the calling thread: the value never reaches
// another thread.
unsafe impl<T> Send for AssertSend<T> {}

fn detached<T, F: FnOnce() -> T>(py: Python<'_>, f: F) -> T {
    let f = AssertSend(f);
    let r = py.detach(move || {
        let f = f;
        AssertSend((f.0)())
    });
    r.0
}

// -------------------------------------------------------------------- Map

/// A dict-like map in SysV shared memory (the native base of `shmkv.Map`).
#[pyclass(subclass, frozen, module = "shmkv._shmkv", name = "Map")]
struct Map {
    map: Arc<RawMap>,
    codec: Codec,
    opts: Options,
    read_only: bool,
    /// Seconds, as given (for `_reopen_args`).
    lock_timeout: f64,
}

#[pymethods]
impl Map {
    #[new]
    #[pyo3(signature = (name, *, create=true, capacity=None, arena=None, max_size=None,
        mode=0o600, read_only=false, lock_timeout=5.0, sysv_key=None, ftok=None,
        codec="pickle", huge_pages="off"),
        text_signature = "(name, *, create=True, capacity=None, arena=None, max_size=None, \
            mode=0o600, read_only=False, lock_timeout=5.0, sysv_key=None, ftok=None, \
            codec='pickle', huge_pages='off')")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        create: bool,
        capacity: Option<&Bound<'_, PyAny>>,
        arena: Option<&Bound<'_, PyAny>>,
        max_size: Option<&Bound<'_, PyAny>>,
        mode: u32,
        read_only: bool,
        lock_timeout: f64,
        sysv_key: Option<i32>,
        ftok: Option<&Bound<'_, PyAny>>,
        codec: &str,
        huge_pages: &str,
    ) -> PyResult<Map> {
        let name: String = name
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("the map's name is a str"))?
            .to_str()?
            .to_owned();
        let codec = Codec::new(py, codec)?;
        let huge = match huge_pages {
            "off" => HugePages::Off,
            "try" => HugePages::Try,
            "require" => HugePages::Require,
            other => {
                return Err(PyValueError::new_err(format!(
                    "huge_pages is 'off', 'try' or 'require', not {other:?}"
                )))
            }
        };
        let mut opts = Options::new()
            .mode(mode)
            .read_only(read_only)
            .huge_pages(huge);
        if let Some(c) = capacity {
            if !c.is_none() {
                if c.is_instance_of::<pyo3::types::PyBool>()
                    || !c.is_instance_of::<pyo3::types::PyInt>()
                {
                    return Err(PyTypeError::new_err("capacity is an int (entries)"));
                }
                let n: u64 = c
                    .extract()
                    .map_err(|_| PyValueError::new_err("capacity must be positive"))?;
                opts = opts.capacity(n);
            }
        }
        if let Some(s) = size_of(arena, "arena")? {
            opts = opts.arena_size(s);
        }
        if let Some(s) = size_of(max_size, "max_size")? {
            opts = opts.max_size(s);
        }
        opts = opts.lock_timeout(seconds(lock_timeout, "lock_timeout")?.unwrap_or(Duration::MAX));
        if let Some(k) = sysv_key {
            opts = opts.sysv_key(k);
        }
        if let Some(f) = ftok {
            if !f.is_none() {
                let (path, id): (std::path::PathBuf, u8) = if let Ok(t) = f.cast::<PyTuple>() {
                    t.extract()?
                } else {
                    (f.extract()?, 1)
                };
                opts = opts.ftok(path, id);
            }
        }
        let map = detached(py, || {
            if create {
                RawMap::open_or_create(&name, &opts)
            } else {
                RawMap::open(&name, &opts)
            }
        })
        .py_err()?;
        Ok(Map {
            map: Arc::new(map),
            codec,
            opts,
            read_only,
            lock_timeout,
        })
    }

    /// `m[key]`: the value stored under `key` (`str` or `bytes`);
    /// `shmkv.NotFoundError` (a `KeyError`) if there is none.
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let k = key_of(key)?;
        let b = match self.map.get_ref(k).py_err()? {
            Some(v) => bytes_of(py, &v)?,
            None => return Err(missing_key(py, key)),
        };
        self.codec.decode_bytes(py, b)
    }

    /// `m.get(key, default=None)`: the value under `key`, or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let k = key_of(key)?;
        let b = match self.map.get_ref(k).py_err()? {
            Some(v) => bytes_of(py, &v)?,
            None => return Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        };
        self.codec.decode_bytes(py, b)
    }

    /// `key in m`. Keys that are neither `str` nor `bytes` are never in it.
    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        match key_of(key) {
            Ok(k) => self.map.contains_key(k).py_err(),
            Err(_) => Ok(false),
        }
    }

    /// `m[key] = value`: one atomic, crash-safe write (the GIL is released
    /// while it waits for the lock and writes).
    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let k = key_of(key)?;
        let v = self.codec.encode(py, value)?;
        let v = v.as_bytes();
        let map = &self.map;
        py.detach(|| map.insert(k, v)).py_err()
    }

    /// `del m[key]`; `shmkv.NotFoundError` if there is no such key.
    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let k = key_of(key)?;
        let map = &self.map;
        if py.detach(|| map.remove(k)).py_err()? {
            Ok(())
        } else {
            Err(missing_key(py, key))
        }
    }

    /// Number of entries.
    fn __len__(&self) -> usize {
        self.map.len()
    }

    /// An iterator over the keys of one consistent snapshot (`str` for
    /// UTF-8 keys, `bytes` otherwise).
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys_list(py)?.try_iter().map(Bound::into_any)
    }

    /// The keys of one consistent snapshot, as a list.
    fn _keys_snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.keys_list(py)
    }

    /// The `(key, value)` pairs of one consistent snapshot, as a list.
    fn _items_snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let map = &self.map;
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = py
            .detach(|| {
                map.entries().map(|es| {
                    es.iter()
                        .map(|e| (e.0.to_vec(), e.1.to_vec()))
                        .collect::<Vec<_>>()
                })
            })
            .py_err()?;
        let out = PyList::empty(py);
        for (k, v) in pairs {
            out.append((key_to_py(py, &k), self.codec.decode(py, &v)?))?;
        }
        Ok(out)
    }

    /// A read-only, zero-copy `memoryview` of the bytes stored under `key`
    /// (the encoded value: for codec "bytes" the value itself). The bytes
    /// stay valid and unchanged while the view is held, whatever writers
    /// do; releasing it (`view.release()`, the end of a `with` block, or
    /// garbage collection) ends the pin. Release it on the thread that took
    /// it (see the package documentation).
    fn get_buffer<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyMemoryView>> {
        drain_deferred();
        let k = key_of(key)?;
        let r = self.map.get_ref(k).py_err()?;
        let Some(r) = r else {
            return Err(missing_key(py, key));
        };
        // SAFETY: the `Ref` borrows `*self.map`; the `PinnedRef` that holds
        // it also holds a clone of that `Arc` (`map`), so the map handle
        // outlives the reference: `PinnedRef::drop` drops the reference
        // before its fields go, or moves it, with its own clone of the
        // `Arc`, to the deferred list.
        let r: Ref<'static, [u8]> = unsafe { std::mem::transmute(r) };
        let p = Pinned {
            value: Mutex::new(Some(PinnedRef {
                r: std::mem::ManuallyDrop::new(r),
                owner: std::thread::current().id(),
                map: self.map.clone(),
            })),
            exports: Mutex::new(0),
        };
        let p = Bound::new(py, p)?;
        PyMemoryView::from(p.as_any())
    }

    /// Committed writes so far (any write advances it).
    #[getter]
    fn version(&self) -> u64 {
        self.map.version()
    }

    /// The map's name.
    #[getter]
    fn name(&self) -> &str {
        self.map.name()
    }

    /// The codec's name: "pickle", "json", "msgpack" or "bytes".
    #[getter]
    fn codec(&self) -> &'static str {
        self.codec.name()
    }

    /// Whether the map was opened read-only.
    #[getter]
    fn read_only(&self) -> bool {
        self.read_only
    }

    /// Sleeps (with the GIL released) until the version differs from
    /// `since`; returns the new version, or `None` once `timeout` seconds
    /// have passed (`None`: no limit). Ctrl-C interrupts it.
    #[pyo3(signature = (since, timeout=None))]
    fn wait_for_change(
        &self,
        py: Python<'_>,
        since: u64,
        timeout: Option<f64>,
    ) -> PyResult<Option<u64>> {
        let deadline = match timeout {
            // Beyond what an `Instant` can hold: no limit.
            Some(t) => {
                seconds(t, "timeout")?.and_then(|d| std::time::Instant::now().checked_add(d))
            }
            None => None,
        };
        let step = Duration::from_millis(100);
        loop {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(std::time::Instant::now()),
                None => step,
            };
            let chunk = left.min(step);
            let map = &self.map;
            if let Some(v) = py.detach(|| map.wait_for_change(since, chunk)).py_err()? {
                return Ok(Some(v));
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// What `__reduce__` (in Python) needs to open this map again in
    /// another process: `(name, sysv_key, codec, read_only, lock_timeout)`.
    fn _reopen_args(&self, py: Python<'_>) -> PyResult<(String, i32, &'static str, bool, f64)> {
        let map = &self.map;
        let s = py.detach(|| map.stats()).py_err()?;
        Ok((
            s.name,
            s.key,
            self.codec.name(),
            self.read_only,
            self.lock_timeout,
        ))
    }

    /// Counters and identity of the map, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        drain_deferred();
        let map = &self.map;
        let s = py.detach(|| map.stats()).py_err()?;
        stats_dict(py, &s)
    }

    /// A full consistency check; returns the report as a dict, raises
    /// `shmkv.CorruptedError` (listing the problems) if there are any.
    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let map = &self.map;
        let r = py.detach(|| map.verify()).py_err()?;
        if !r.is_ok() {
            return Err(raise(
                py,
                "CorruptedError",
                format!(
                    "verify found {} problem(s): {}",
                    r.problems.len(),
                    r.problems.join("; ")
                ),
            ));
        }
        let d = PyDict::new(py);
        d.set_item("generation", r.generation)?;
        d.set_item("capacity", r.capacity)?;
        d.set_item("live", r.live)?;
        d.set_item("tombstones", r.tombstones)?;
        d.set_item("live_bytes", r.live_bytes)?;
        d.set_item("arena_used", r.arena_used)?;
        d.set_item("garbage_bytes", r.garbage_bytes)?;
        Ok(d)
    }

    /// Rewrites the live entries into a new generation (readers keep
    /// working); views from `get_buffer` stay valid.
    fn compact(&self, py: Python<'_>) -> PyResult<()> {
        let map = &self.map;
        py.detach(|| map.compact()).py_err()
    }

    /// Removes the map from the kernel; every handle (in every process)
    /// gets `shmkv.MapNotFoundError` on its next operation. Views already
    /// taken stay readable until released.
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        let (name, opts) = (self.map.name().to_owned(), self.opts.clone());
        py.detach(|| RawMap::destroy_by_name(&name, &opts))
            .py_err()
            .map(drop)
    }

    fn __repr__(&self) -> String {
        format!(
            "shmkv.Map({:?}, codec={:?}{})",
            self.map.name(),
            self.codec.name(),
            if self.read_only {
                ", read_only=True"
            } else {
                ""
            }
        )
    }
}

impl Map {
    fn keys_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let map = &self.map;
        let keys: Vec<Vec<u8>> = py
            .detach(|| {
                map.entries()
                    .map(|es| es.iter().map(|e| e.0.to_vec()).collect::<Vec<_>>())
            })
            .py_err()?;
        PyList::new(py, keys.iter().map(|k| key_to_py(py, k)))
    }
}

fn stats_dict<'py>(py: Python<'py>, s: &shmkv::Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &s.name)?;
    d.set_item("key", s.key)?;
    d.set_item("generation", s.generation)?;
    d.set_item("capacity", s.capacity)?;
    d.set_item("live", s.live)?;
    d.set_item("tombstones", s.tombstones)?;
    d.set_item("arena_size", s.arena_size)?;
    d.set_item("arena_used", s.arena_used)?;
    d.set_item("garbage_bytes", s.garbage_bytes)?;
    d.set_item("segment_size", s.segment_size)?;
    d.set_item("version", s.version)?;
    d.set_item("attached", s.attached)?;
    d.set_item("lock_held", s.lock_held)?;
    d.set_item("lock_pid", s.lock_pid)?;
    d.set_item("root_shmid", s.root_shmid)?;
    d.set_item("data_shmid", s.data_shmid)?;
    d.set_item("semid", s.semid)?;
    d.set_item("mapped_generations", s.mapped_generations)?;
    d.set_item("stale_segments", s.stale_segments.clone())?;
    d.set_item("schema", s.schema.clone())?;
    d.set_item("wake_every_write", s.wake_every_write)?;
    d.set_item("huge_pages", s.huge_pages)?;
    d.set_item("huge_page_policy", format!("{:?}", s.huge_page_policy))?;
    Ok(d)
}

// ----------------------------------------------------------------- buffers

/// A pinned value: a `Ref` (lifetime erased) plus the thread that took it.
/// A `Ref` pins its thread's reclamation record and must be dropped on that
/// thread (DESIGN.md "Reclamation"); Python may release a memoryview on
/// any thread, so a reference released elsewhere is handed back to its
/// thread through `DEFERRED` and dropped there (on that thread's next
/// `get_buffer` or `stats`).
struct PinnedRef {
    r: std::mem::ManuallyDrop<Ref<'static, [u8]>>,
    owner: ThreadId,
    /// Keeps the map handle the reference borrows alive, also while the
    /// reference waits in `DEFERRED`.
    map: Arc<RawMap>,
}

// SAFETY: the only thread-affine part of a `PinnedRef` is the `Pin` inside
// `r`, and that is only ever dropped on `owner` (`Drop` below, and
// `drain_deferred`, which takes only the current thread's entries). Other
// threads only read the pointer and length of the pinned bytes, which are
// immutable and stay mapped while the pin lives (PUBLISHED-IMMUTABLE,
// PINNED-STAYS-MAPPED). In a child forked by another thread the owner does
// not exist, but the pin still holds: the module turns on
// `shmkv::retain_foreign_pins_at_fork`, so the child keeps the parent's
// other threads' pins (and their generations mapped), and the reference,
// whose owner never runs there, is never dropped (it waits in `DEFERRED`).
unsafe impl Send for PinnedRef {}

impl Drop for PinnedRef {
    fn drop(&mut self) {
        if std::thread::current().id() == self.owner {
            // SAFETY: dropped once, here, on the thread that took the pin.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.r) };
        } else {
            // SAFETY: moved out once; `self.r` is not used afterwards (the
            // moved value is dropped on its owner thread by
            // `drain_deferred`).
            let r = unsafe { std::mem::ManuallyDrop::take(&mut self.r) };
            let d = PinnedRef {
                r: std::mem::ManuallyDrop::new(r),
                owner: self.owner,
                map: self.map.clone(),
            };
            match deferred() {
                Some(mut list) => list.push(d),
                // Not obtainable (see `deferred`): keep the pin for good.
                None => std::mem::forget(d),
            }
        }
    }
}

/// References released on a thread other than theirs, waiting for it.
static DEFERRED: Mutex<Vec<PinnedRef>> = Mutex::new(Vec::new());

/// The deferred list, locked; `None` if the lock stays taken. A `fork()`
/// while another thread held it leaves it locked for good in the child,
/// so it is never waited for without bound: a caller that cannot get it
/// keeps its reference pinned (a leak of one mapping, never a hang).
fn deferred() -> Option<std::sync::MutexGuard<'static, Vec<PinnedRef>>> {
    for _ in 0..1000 {
        match DEFERRED.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
        }
    }
    None
}

/// Drops the current thread's deferred references.
fn drain_deferred() {
    let me = std::thread::current().id();
    let mine: Vec<PinnedRef> = {
        let Some(mut d) = deferred() else { return };
        if d.is_empty() {
            return;
        }
        let (mine, others) = std::mem::take(&mut *d)
            .into_iter()
            .partition(|p| p.owner == me);
        *d = others;
        mine
    };
    drop(mine);
}

/// The exporter behind a `get_buffer` memoryview (private).
#[pyclass(module = "shmkv._shmkv", name = "_Pinned", frozen)]
struct Pinned {
    value: Mutex<Option<PinnedRef>>,
    exports: Mutex<usize>,
}

#[pymethods]
impl Pinned {
    /// # Safety
    /// Called by Python's buffer protocol with a valid `Py_buffer`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        let v = me.value.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = v.as_ref() else {
            return Err(PyBufferError::new_err("this shmkv buffer was released"));
        };
        let bytes: &[u8] = &p.r;
        let len = isize::try_from(bytes.len())
            .map_err(|_| PyBufferError::new_err("value too large for a buffer"))?;
        // SAFETY: `view` is valid (the caller's contract); the buffer is
        // read-only (`readonly = 1`: PyBuffer_FillInfo refuses
        // PyBUF_WRITABLE) and points to bytes the pin keeps mapped and
        // unchanged until `__releasebuffer__` of the last export (the view
        // holds a reference to this object, so that happens first).
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut std::os::raw::c_void,
                len,
                1,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        *me.exports.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(())
    }

    /// # Safety
    /// Called by Python's buffer protocol.
    unsafe fn __releasebuffer__(slf: Bound<'_, Self>, _view: *mut pyo3::ffi::Py_buffer) {
        let me = slf.get();
        let mut n = me.exports.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            // The last export ends the pin (dropped on its thread, or
            // handed back to it).
            let r = me.value.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(n);
            drop(r);
        }
    }
}

// ------------------------------------------------------------------ Batch

/// An open `RawTxn` (lifetime erased), the thread that began it and the
/// process it was begun in. A `RawTxn` is not `Send`: its `Pin` belongs to
/// that thread. Every use checks the thread (`get`, `get_mut`, `end`: a
/// `RuntimeError` elsewhere); dropped on another thread it is leaked
/// instead (the lock stays held until the process exits, as for a leaked C
/// batch). A child forked while the batch was open inherits the object but
/// not the lock (`SEM_UNDO` adjustments are not inherited) and must not
/// touch the parent's staging in the shared segment: in another process
/// every use is a `RuntimeError`, and ending or dropping it leaks it there
/// (it never commits, aborts or releases the semaphore).
struct OwnedTxn {
    txn: std::mem::ManuallyDrop<RawTxn<'static>>,
    owner: ThreadId,
    /// `std::process::id()` of the process that began it.
    pid: u32,
    /// The map handle the transaction borrows (kept alive past the
    /// transaction: declared after it, and leaked with it).
    map: Arc<RawMap>,
}

// SAFETY: the transaction is reached only through `get`, `get_mut` and
// `end`, which refuse every thread but `owner`, and dropped only on
// `owner` (`Drop` leaks it elsewhere): it never runs on another thread.
unsafe impl Send for OwnedTxn {}
// SAFETY: as for `Send`: shared access from another thread is refused by
// the same checks.
unsafe impl Sync for OwnedTxn {}

fn wrong_thread() -> PyErr {
    PyRuntimeError::new_err(
        "a shmkv batch belongs to the thread that opened it; use it (and end it) there",
    )
}

fn forked_batch() -> PyErr {
    PyRuntimeError::new_err(
        "this shmkv batch was open when the process forked: it belongs to the parent \
         (which holds the lock); the child cannot use, commit or end it",
    )
}

/// Where a transaction is used from, relative to where it was begun.
#[derive(PartialEq, Eq)]
enum Whose {
    Mine,
    OtherThread,
    /// A child forked while it was open.
    OtherProcess,
}

impl OwnedTxn {
    fn whose(&self) -> Whose {
        if std::process::id() != self.pid {
            Whose::OtherProcess
        } else if std::thread::current().id() != self.owner {
            Whose::OtherThread
        } else {
            Whose::Mine
        }
    }

    fn check(&self) -> PyResult<()> {
        match self.whose() {
            Whose::Mine => Ok(()),
            Whose::OtherThread => Err(wrong_thread()),
            Whose::OtherProcess => Err(forked_batch()),
        }
    }

    fn get(&self) -> PyResult<&RawTxn<'static>> {
        self.check()?;
        Ok(&self.txn)
    }

    fn get_mut(&mut self) -> PyResult<&mut RawTxn<'static>> {
        self.check()?;
        Ok(&mut self.txn)
    }

    /// The transaction, to commit or abort it. On another thread an error,
    /// the transaction left in `slot`; in a forked child `Ok(None)`: the
    /// slot is emptied and the inherited transaction leaked (by `Drop`).
    fn end(slot: &mut Option<OwnedTxn>) -> PyResult<Option<RawTxn<'static>>> {
        let Some(t) = slot.as_ref() else {
            return Ok(None);
        };
        match t.whose() {
            Whose::OtherThread => return Err(wrong_thread()),
            Whose::OtherProcess => {
                drop(slot.take());
                return Ok(None);
            }
            Whose::Mine => {}
        }
        let Some(t) = slot.take() else {
            return Ok(None);
        };
        let mut me = std::mem::ManuallyDrop::new(t);
        // SAFETY: moved out once; `me` is never dropped (ManuallyDrop), and
        // its `map` is released below after the transaction is moved out.
        let txn = unsafe { std::mem::ManuallyDrop::take(&mut me.txn) };
        // SAFETY: the `Arc` is moved out once and `me` is not used again.
        let map = unsafe { std::ptr::read(&me.map) };
        // The transaction borrows `*map`; the caller's `Batch` holds
        // another clone of the same `Arc` (its `map` field) for as long
        // as it lives, which outlives the transaction's end.
        drop(map);
        Ok(Some(txn))
    }
}

impl Drop for OwnedTxn {
    fn drop(&mut self) {
        if self.whose() == Whose::Mine {
            // SAFETY: dropped once, on the thread that began it, before
            // the `map` field (dropped after this body).
            unsafe { std::mem::ManuallyDrop::drop(&mut self.txn) };
        } else {
            // Leak the transaction and a reference to its map: its pin may
            // not be released from this thread, and in a forked child
            // dropping it would release the parent's lock.
            std::mem::forget(self.map.clone());
        }
    }
}

fn not_open() -> PyErr {
    PyRuntimeError::new_err("the batch is not open: use it inside `with m.batch() as b:`")
}

/// An atomic batch of writes (the native base of `shmkv.Batch`). It holds
/// the map's write lock from `__enter__` to `__exit__`; it belongs to the
/// thread that began it.
#[pyclass(subclass, module = "shmkv._shmkv", name = "Batch")]
struct Batch {
    // Field order matters: the transaction (which borrows `*map`) drops
    // before the map handle.
    txn: Option<OwnedTxn>,
    /// Keys this batch wrote: `true` inserted, `false` removed (for
    /// iteration and `len`).
    staged: HashMap<Vec<u8>, bool>,
    done: bool,
    codec: Codec,
    map: Arc<RawMap>,
}

impl Batch {
    fn txn_ref(&self) -> PyResult<&RawTxn<'static>> {
        self.txn.as_ref().ok_or_else(not_open)?.get()
    }

    fn txn(&mut self) -> PyResult<&mut RawTxn<'static>> {
        self.txn.as_mut().ok_or_else(not_open)?.get_mut()
    }
}

#[pymethods]
impl Batch {
    /// A batch on `map` (`map.batch()`); it takes the lock on `__enter__`.
    #[new]
    fn new(py: Python<'_>, map: &Bound<'_, Map>) -> Batch {
        let m = map.get();
        Batch {
            txn: None,
            staged: HashMap::new(),
            done: false,
            codec: m.codec.clone_ref(py),
            map: m.map.clone(),
        }
    }

    /// Takes the write lock (waiting up to the map's lock timeout, with the
    /// GIL released) and opens the batch.
    fn __enter__<'a>(mut slf: PyRefMut<'a, Self>) -> PyResult<PyRefMut<'a, Self>> {
        let py = slf.py();
        if slf.txn.is_some() || slf.done {
            return Err(PyRuntimeError::new_err("a batch can be entered once"));
        }
        let map = slf.map.clone();
        let txn = detached(py, || {
            map.begin().map(|t| {
                // SAFETY: the transaction borrows `*map`, the same
                // allocation as `self.map`, which the batch keeps in a
                // field declared after `txn` (dropped after it).
                unsafe { std::mem::transmute::<RawTxn<'_>, RawTxn<'static>>(t) }
            })
        })
        .py_err()?;
        slf.txn = Some(OwnedTxn {
            txn: std::mem::ManuallyDrop::new(txn),
            owner: std::thread::current().id(),
            pid: std::process::id(),
            map: slf.map.clone(),
        });
        Ok(slf)
    }

    /// Commits (no exception) or aborts (an exception: nothing is applied,
    /// the exception propagates).
    #[pyo3(signature = (exc_type, _exc=None, _tb=None))]
    fn __exit__(
        &mut self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_some_and(|t| !t.is_none()) {
            self.abort()?;
        } else {
            self.commit(py)?;
        }
        Ok(false)
    }

    /// Applies everything staged as one atomic write and releases the lock.
    fn commit(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.txn.is_none() {
            return Err(PyRuntimeError::new_err(
                "the batch is not open (already committed or aborted?)",
            ));
        }
        let txn = OwnedTxn::end(&mut self.txn)?;
        self.done = true;
        self.staged.clear();
        match txn {
            Some(txn) => detached(py, || txn.commit()).py_err(),
            // A forked child: the batch is the parent's.
            None => Err(forked_batch()),
        }
    }

    /// Discards everything staged and releases the lock.
    fn abort(&mut self) -> PyResult<()> {
        // In a forked child `end` leaks the parent's transaction: nothing
        // of it is the child's to abort.
        if let Some(txn) = OwnedTxn::end(&mut self.txn)? {
            txn.abort();
        }
        self.done = true;
        self.staged.clear();
        Ok(())
    }

    fn __getitem__<'py>(
        &mut self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let k = key_of(key)?;
        let t = self.txn_ref()?;
        match t.get(k).py_err()? {
            Some(v) => self.codec.decode(py, v),
            None => Err(missing_key(py, key)),
        }
    }

    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &mut self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let k = key_of(key)?;
        let t = self.txn_ref()?;
        match t.get(k).py_err()? {
            Some(v) => self.codec.decode(py, v),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    fn __contains__(&mut self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(k) = key_of(key) else { return Ok(false) };
        self.txn()?.contains_key(k).py_err()
    }

    fn __setitem__(
        &mut self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let k = key_of(key)?;
        let v = self.codec.encode(py, value)?;
        let v = v.as_bytes();
        let t = self.txn()?;
        detached(py, || t.insert(k, v)).py_err()?;
        self.staged.insert(k.to_vec(), true);
        Ok(())
    }

    fn __delitem__(&mut self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let k = key_of(key)?;
        let t = self.txn()?;
        if detached(py, || t.remove(k)).py_err()? {
            self.staged.insert(k.to_vec(), false);
            Ok(())
        } else {
            Err(missing_key(py, key))
        }
    }

    fn __len__(&mut self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.keys(py)?.len())
    }

    fn __iter__<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let keys = self.keys(py)?;
        PyList::new(py, keys.iter().map(|k| key_to_py(py, k)))?
            .try_iter()
            .map(Bound::into_any)
    }
}

impl Batch {
    /// The keys as this batch sees the map: the committed ones (stable: the
    /// batch holds the write lock) with its own writes applied.
    fn keys(&mut self, py: Python<'_>) -> PyResult<Vec<Vec<u8>>> {
        self.txn()?;
        let map = &self.map;
        let mut keys: Vec<Vec<u8>> = py
            .detach(|| {
                map.entries()
                    .map(|es| es.iter().map(|e| e.0.to_vec()).collect::<Vec<_>>())
            })
            .py_err()?;
        keys.retain(|k| self.staged.get(k).copied().unwrap_or(true));
        let committed: std::collections::HashSet<Vec<u8>> = keys.iter().cloned().collect();
        for (k, inserted) in &self.staged {
            if *inserted && !committed.contains(k) {
                keys.push(k.clone());
            }
        }
        Ok(keys)
    }
}

// ------------------------------------------------------------ module level

/// Every shmkv map on this machine this process can see, as dicts
/// (`name`, `key`, `state`, `stats` or `None`, `error` or `None`).
#[pyfunction]
#[pyo3(signature = (all=false))]
fn list_maps<'py>(py: Python<'py>, all: bool) -> PyResult<Bound<'py, PyList>> {
    let maps = py.detach(|| shmkv::list_maps(all)).py_err()?;
    let out = PyList::empty(py);
    for m in maps {
        let d = PyDict::new(py);
        d.set_item("name", &m.name)?;
        d.set_item("key", m.key)?;
        d.set_item("state", m.state.as_str())?;
        match &m.stats {
            Some(s) => d.set_item("stats", stats_dict(py, s)?)?,
            None => d.set_item("stats", py.None())?,
        }
        d.set_item("error", m.error.clone())?;
        out.append(d)?;
    }
    Ok(out)
}

/// Parses a human size ("64mb", "4k", "1024") into bytes.
#[pyfunction]
fn parse_size(s: &str) -> PyResult<u64> {
    Size::parse(s)
        .map(Size::bytes)
        .map_err(|e| to_py(Error::InvalidSize(e)))
}

/// Test support: the address of the stored bytes of `key` (to check that
/// `get_buffer` views are zero-copy), or `None`.
#[pyfunction]
fn _value_address(m: &Bound<'_, Map>, key: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    let k = key_of(key)?;
    Ok(m.get()
        .map
        .get_ref(k)
        .py_err()?
        .map(|r| r.as_ptr() as usize))
}

#[pymodule]
fn _shmkv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A `get_buffer` view taken on one thread may be read by the thread
    // that forks, in the child: the child keeps the generations the
    // parent's other threads had pinned (see `PinnedRef`).
    shmkv::retain_foreign_pins_at_fork();
    m.add_class::<Map>()?;
    m.add_class::<Batch>()?;
    m.add_class::<Pinned>()?;
    m.add_function(wrap_pyfunction!(list_maps, m)?)?;
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    m.add_function(wrap_pyfunction!(_value_address, m)?)?;
    m.add("MAX_KEY_LEN", shmkv::MAX_KEY_LEN)?;
    Ok(())
}
