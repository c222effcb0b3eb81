<?php

declare(strict_types=1);

namespace Shmkv;

use FFI;
use FFI\CData;

/**
 * A shmkv map: a hash map in SysV shared memory that every PHP process of
 * the host can open by name. Reads take no lock and see every value whole;
 * each write (one `set`/`remove`, or a whole `atomic`) is atomic and
 * survives the writer being killed at any point.
 *
 *     $map = new Map('routes', ['capacity' => 100_000, 'arena' => '64mb']);
 *     $map['/api'] = ['backend' => '10.0.0.7:8080'];   // any serializable value
 *     $route = $map['/api'];                            // in any process
 *     $map->atomic(function (Batch $b) {                // all or nothing
 *         $b['hits'] = ($b['hits'] ?? 0) + 1;
 *     });
 *
 * Values are encoded with the map's codec: `serialize` (the default: any
 * PHP value, `false` and `null` included, as `shm_put_var` did),
 * `igbinary` (when the extension is loaded), `json`, or `raw` (strings
 * stored as they are, readable by any language). Every process must open a
 * map with the codec its values were written with.
 *
 * @implements \ArrayAccess<string, mixed>
 * @implements \IteratorAggregate<string, mixed>
 */
final class Map implements \ArrayAccess, \Countable, \IteratorAggregate
{
    use KeyedAccess;

    public const CODECS = ['serialize', 'igbinary', 'json', 'raw'];
    private const SERIALIZE = 0;
    private const IGBINARY = 1;
    private const JSON = 2;
    private const RAW = 3;

    private const OPTIONS = ['create', 'exclusive', 'capacity', 'arena', 'max_size', 'mode', 'read_only',
        'lock_timeout', 'verify_reads', 'sysv_key', 'ftok', 'codec', 'library'];

    private FFI $ffi;
    private ?CData $handle = null;
    /** `size_t[1]`: passed as `size_t *` without an FFI::addr per call. */
    private CData $lenp;
    /** `uint64_t[1]`, likewise. */
    private CData $u64p;
    private readonly string $name;
    private readonly string $codec;
    private readonly int $codecId;
    /** The batch of the atomic() running on this handle, if any. */
    private ?Batch $batch = null;
    /**
     * The thread's copy buffer of `shmkv_get_copy` (one per thread in the
     * library, so shared by every Map) and its capacity; -1: not asked yet.
     */
    private static ?CData $copyBuf = null;
    private static int $copyCap = -1;
    /**
     * True from a get's `shmkv_get_copy` until it has read the copy buffer.
     * PHP code can run in between (a pcntl signal handler, with async
     * signals, at the interrupt check after an FFI call): a get made there
     * must neither overwrite the buffer the interrupted get is about to
     * read nor read through `$copyBuf` before the interrupted get refreshed
     * it (after a growth, the old address is freed memory). Such a get
     * uses a buffer of its own (getOwnBuffer).
     */
    private static bool $copying = false;
    /** `SHMKV_ABSENT`, from the header. */
    private static int $absent = 0;

    /**
     * Opens the map `$name`, creating it if it does not exist (unless
     * `create` is false).
     *
     * Options (all optional):
     * - `create` (bool, true), `exclusive` (bool, false: with `create`,
     *   fail with MapExistsException if it exists);
     * - `capacity` (int: entries before the table grows), `arena` and
     *   `max_size` (bytes or a size string: "100kb", "64mb", "1gb");
     * - `mode` (int, 0600), `read_only` (bool), `lock_timeout` (seconds),
     *   `verify_reads` (bool: every read checks its record's checksum);
     * - the SysV key: from the name by default, or `sysv_key` (int), or
     *   `ftok` ([path, project id]);
     * - `codec`: "serialize" (default), "igbinary", "json" or "raw";
     * - `library`: the path of libshmkv_ffi.so (used by the first map a
     *   process opens; see Library).
     *
     * @param array<string, mixed> $options
     */
    public function __construct(string $name, array $options = [])
    {
        foreach ($options as $k => $_) {
            if (!in_array($k, self::OPTIONS, true)) {
                throw new InvalidArgumentException("unknown option '$k' (known: " . implode(', ', self::OPTIONS) . ')');
            }
        }
        $codec = $options['codec'] ?? 'serialize';
        $codecId = array_search($codec, self::CODECS, true);
        if ($codecId === false) {
            throw new InvalidArgumentException("unknown codec '$codec' (" . implode(', ', self::CODECS) . ')');
        }
        if ($codecId === self::IGBINARY && !function_exists('igbinary_serialize')) {
            throw new InvalidArgumentException('codec "igbinary" needs the igbinary extension (php8.2-igbinary)');
        }
        $library = $options['library'] ?? null;
        if ($library !== null && !is_string($library)) {
            throw new InvalidArgumentException('library must be a path');
        }
        $ffi = Library::ffi($library);
        $o = $ffi->new('ShmkvOptions');
        $ffi->shmkv_options_init(FFI::addr($o));
        $o->capacity = self::countOption($options, 'capacity');
        $o->arena_size = isset($options['arena']) ? self::bytes($options['arena']) : 0;
        $o->max_size = isset($options['max_size']) ? self::bytes($options['max_size']) : 0;
        $o->mode = self::countOption($options, 'mode');
        $o->read_only = empty($options['read_only']) ? 0 : 1;
        $o->verify_reads = empty($options['verify_reads']) ? 0 : 1;
        if (isset($options['lock_timeout'])) {
            $ms = (int) ceil(1000 * (float) $options['lock_timeout']);
            if ($ms <= 0) {
                throw new InvalidArgumentException('lock_timeout must be positive');
            }
            $o->lock_timeout_ms = $ms;
        }
        if (isset($options['sysv_key'])) {
            $o->use_sysv_key = 1;
            $o->sysv_key = (int) $options['sysv_key'];
        }
        $path = null;
        if (isset($options['ftok'])) {
            [$p, $id] = $options['ftok'];
            $path = FFI::new('char[' . (strlen($p) + 1) . ']', false);
            FFI::memcpy($path, $p . "\0", strlen($p) + 1);
            $o->ftok_path = FFI::cast('char *', $path);
            $o->ftok_id = (int) $id;
        }
        $flags = 0;
        if ($options['create'] ?? true) {
            $flags |= Library::constant('SHMKV_CREATE');
            if ($options['exclusive'] ?? false) {
                $flags |= Library::constant('SHMKV_EXCL');
            }
        }
        $out = $ffi->new('ShmkvMap *');
        try {
            Library::check($ffi->shmkv_open($name, FFI::addr($o), $flags, FFI::addr($out)));
        } finally {
            if ($path !== null) {
                FFI::free($path);
            }
        }
        $this->ffi = $ffi;
        $this->handle = $out;
        $this->name = $name;
        $this->codec = $codec;
        $this->codecId = $codecId;
        $this->lenp = $ffi->new('size_t[1]');
        $this->u64p = $ffi->new('uint64_t[1]');
    }

    /**
     * The same as `new Map($name, $options)`.
     *
     * @param array<string, mixed> $options
     */
    public static function open(string $name, array $options = []): self
    {
        return new self($name, $options);
    }

    /**
     * Parses a size ("64mb", "100 KB", 4096) into bytes; units b, k/kb,
     * m/mb, g/gb, t/tb (case-insensitive).
     *
     * @throws InvalidArgumentException on an unknown unit, zero or overflow
     */
    public static function bytes(int|string $size): int
    {
        if (is_int($size)) {
            if ($size <= 0) {
                throw new InvalidArgumentException("size must be positive, got $size");
            }
            return $size;
        }
        $ffi = Library::ffi();
        $out = $ffi->new('uint64_t[1]');
        Library::check($ffi->shmkv_parse_size($size, $out));
        return $out[0];
    }

    /** @param array<string, mixed> $options */
    private static function countOption(array $options, string $key): int
    {
        $v = $options[$key] ?? 0;
        if (!is_int($v) || $v < 0) {
            throw new InvalidArgumentException("$key must be a non-negative integer");
        }
        return $v;
    }

    /**
     * Removes the map `$name` from the kernel; whether anything was there.
     *
     * @param array<string, mixed> $options only `library`
     */
    public static function destroyByName(string $name, array $options = []): bool
    {
        $ffi = Library::ffi($options['library'] ?? null);
        $removed = $ffi->new('char[1]');
        Library::check($ffi->shmkv_destroy_by_name($name, null, $removed));
        return $removed[0] !== "\0";
    }

    public function name(): string
    {
        return $this->name;
    }

    public function codec(): string
    {
        return $this->codec;
    }

    private function closed(): never
    {
        throw new ShmkvException("map '{$this->name}' is closed");
    }

    /** The stored bytes of `$key`, or null. One lookup, one copy. */
    public function getRaw(string $key): ?string
    {
        // One call with three arguments (each argument of an FFI call costs):
        // the value is copied into the thread's buffer of the library.
        $h = $this->handle ?? $this->closed();
        if (self::$copying) {
            return $this->getOwnBuffer($h, $key);
        }
        self::$copying = true;
        try {
            $n = $this->ffi->shmkv_get_copy($h, $key, \strlen($key));
            if ($n >= 0) {
                if ($n > self::$copyCap) {
                    // First use, or the buffer grew (and moved) for this value.
                    self::$copyBuf = $this->ffi->shmkv_copy_buffer($this->lenp);
                    self::$copyCap = $this->lenp[0];
                }
                return $n === 0 ? '' : FFI::string(self::$copyBuf, $n);
            }
        } finally {
            self::$copying = false;
        }
        if ($n === (self::$absent ?: self::$absent = Library::constant('SHMKV_ABSENT'))) {
            return null;
        }
        Library::check($n);
        return null;
    }

    /**
     * getRaw for a get made while another reads the thread's copy buffer
     * (see `$copying`): `shmkv_get` into a buffer of its own.
     */
    private function getOwnBuffer(CData $h, string $key): ?string
    {
        $len = $this->ffi->new('size_t[1]');
        $size = 4096;
        while (true) {
            $buf = $this->ffi->new("char[$size]");
            $rc = $this->ffi->shmkv_get($h, $key, \strlen($key), $buf, $size, $len);
            if ($rc === 0) {
                return FFI::string($buf, $len[0]);
            }
            if ($rc === Library::constant('SHMKV_MISSING')) {
                return null;
            }
            if ($rc !== Library::constant('SHMKV_E_BUFFER_TOO_SMALL')) {
                Library::check($rc);
            }
            // The value may change before the next look: retry with room.
            $size = max($len[0], 2 * $size);
        }
    }

    /**
     * The value of `$key`, or `$default` when absent (a stored `false` or
     * `null` is returned as such, not as the default).
     */
    public function get(string $key, mixed $default = null): mixed
    {
        // The hot path, kept flat (getRaw's steps, inline): one FFI call of
        // three arguments, one copy, one decode.
        // Inside another get's use of the copy buffer (see `$copying`).
        $h = $this->handle ?? $this->closed();
        if (self::$copying) {
            $raw = $this->getOwnBuffer($h, $key);
            if ($raw === null) {
                return $default;
            }
        } else {
            self::$copying = true;
            try {
                $n = $this->ffi->shmkv_get_copy($h, $key, \strlen($key));
                if ($n >= 0) {
                    if ($n > self::$copyCap) {
                        self::$copyBuf = $this->ffi->shmkv_copy_buffer($this->lenp);
                        self::$copyCap = $this->lenp[0];
                    }
                    $raw = $n === 0 ? '' : FFI::string(self::$copyBuf, $n);
                }
            } finally {
                self::$copying = false;
            }
            if ($n < 0) {
                if ($n !== (self::$absent ?: self::$absent = Library::constant('SHMKV_ABSENT'))) {
                    Library::check($n);
                }
                return $default;
            }
        }
        if ($this->codecId === self::SERIALIZE) {
            $v = @\unserialize($raw);
            if ($v !== false || $raw === 'b:0;') {
                return $v;
            }
        }
        return self::decode($this->codec, $raw);
    }

    public function has(string $key): bool
    {
        return Library::check($this->ffi->shmkv_contains($this->handle ?? $this->closed(), $key, \strlen($key))) === 0;
    }

    /** Stores `$value` under `$key`, atomically (crash-safe). */
    public function set(string $key, mixed $value): void
    {
        $bytes = $this->codecId === self::SERIALIZE ? \serialize($value) : self::encode($this->codec, $value);
        $rc = $this->ffi->shmkv_insert($this->handle ?? $this->closed(), $key, \strlen($key), $bytes, \strlen($bytes));
        if ($rc !== 0) {
            Library::check($rc);
        }
    }

    /** The same as `set` (the original class's name). */
    public function add(string $key, mixed $value): void
    {
        $this->set($key, $value);
    }

    /** Removes `$key`; whether it was there. */
    public function remove(string $key): bool
    {
        return Library::check($this->ffi->shmkv_remove($this->handle ?? $this->closed(), $key, \strlen($key))) === 0;
    }

    /** The same as `remove`. */
    public function delete(string $key): bool
    {
        return $this->remove($key);
    }

    /**
     * Runs `$fn(Batch $b)` with the write lock held; everything it writes
     * through `$b` is applied as one atomic write when it returns, nothing
     * if it throws (the exception is rethrown). Other processes see all of
     * it or none of it, also when this process is killed half-way.
     * Returns what `$fn` returned.
     *
     * An `atomic()` inside `$fn` on the same handle joins the outer batch
     * (its `$fn` gets the same Batch): one write, all or nothing. An
     * exception thrown by the inner one aborts the whole write even if the
     * outer `$fn` catches it (the outer `atomic()` rethrows it). Writes
     * through the Map itself (not the batch) inside `$fn` throw
     * NestedWriteException.
     */
    public function atomic(callable $fn): mixed
    {
        if ($this->batch !== null) {
            try {
                return $fn($this->batch);
            } catch (\Throwable $e) {
                $this->batch->poison($e);
                throw $e;
            }
        }
        $result = null;
        $thrown = null;
        $callback = function ($txn, $ctx) use ($fn, &$result, &$thrown): int {
            $batch = new Batch($this->ffi, $txn, $this->codec);
            $this->batch = $batch;
            try {
                $result = $fn($batch);
                $thrown = $batch->poisoned();
                return $thrown === null ? 0 : 1;
            } catch (\Throwable $e) {
                $thrown = $e;
                return 1;
            } finally {
                $this->batch = null;
                $batch->close();
            }
        };
        $rc = $this->ffi->shmkv_write($this->handle ?? $this->closed(), $callback, null);
        if ($thrown !== null) {
            throw $thrown;
        }
        Library::check($rc);
        return $result;
    }

    /** The same as `atomic`. */
    public function batch(callable $fn): mixed
    {
        return $this->atomic($fn);
    }

    /** Number of entries. */
    public function count(): int
    {
        Library::check($this->ffi->shmkv_len($this->handle ?? $this->closed(), $this->u64p));
        return $this->u64p[0];
    }

    /** The number of writes committed so far (changes with every write). */
    public function version(): int
    {
        Library::check($this->ffi->shmkv_version($this->handle ?? $this->closed(), $this->u64p));
        return $this->u64p[0];
    }

    /**
     * Sleeps until the version differs from `$since` (returns the new
     * one) or `$timeout` seconds pass (returns null).
     */
    public function waitForChange(int $since, float $timeout): ?int
    {
        $ms = max(0, (int) ceil($timeout * 1000));
        $rc = Library::check($this->ffi->shmkv_wait_for_change($this->handle ?? $this->closed(), $since, $ms, $this->u64p));
        return $rc === 0 ? $this->u64p[0] : null;
    }

    /** Every key, from one consistent snapshot. @return list<string> */
    public function keys(): array
    {
        return array_map('strval', array_keys($this->toArray(false)));
    }

    /**
     * Every entry, from one consistent snapshot. (PHP turns keys that look
     * like integers into ints.)
     *
     * @return array<string, mixed>
     */
    public function toArray(bool $decode = true): array
    {
        $ffi = $this->ffi;
        $snap = $ffi->new('ShmkvSnapshot *');
        $n = $ffi->new('uint64_t');
        Library::check($ffi->shmkv_snapshot($this->handle ?? $this->closed(), FFI::addr($snap), FFI::addr($n)));
        $k = $ffi->new('const char *');
        $v = $ffi->new('const char *');
        $kl = $ffi->new('size_t');
        $vl = $ffi->new('size_t');
        $out = [];
        try {
            for ($i = 0; $i < $n->cdata; $i++) {
                Library::check($ffi->shmkv_snapshot_entry($snap, $i, FFI::addr($k), FFI::addr($kl), FFI::addr($v), FFI::addr($vl)));
                $key = $kl->cdata === 0 ? '' : FFI::string($k, $kl->cdata);
                $raw = $vl->cdata === 0 ? '' : FFI::string($v, $vl->cdata);
                $out[$key] = $decode ? self::decode($this->codec, $raw) : true;
            }
        } finally {
            $ffi->shmkv_snapshot_free($snap);
        }
        return $out;
    }

    public function getIterator(): \Generator
    {
        yield from $this->toArray();
    }

    /** Counters and identity (a few system calls). @return array<string, mixed> */
    public function stats(): array
    {
        $json = $this->ffi->new('char *');
        Library::check($this->ffi->shmkv_stats_json($this->handle ?? $this->closed(), FFI::addr($json)));
        try {
            return json_decode(FFI::string($json), true, 8, JSON_THROW_ON_ERROR);
        } finally {
            $this->ffi->shmkv_string_free($json);
        }
    }

    /** A full consistency check; throws CorruptedException with the problems. */
    public function verify(): void
    {
        Library::check($this->ffi->shmkv_verify($this->handle ?? $this->closed()));
    }

    /** Rewrites the live entries without garbage; readers keep working. */
    public function compact(): void
    {
        Library::check($this->ffi->shmkv_compact($this->handle ?? $this->closed()));
    }

    /**
     * Removes the map from the kernel (segments and lock) and closes this
     * handle. Other processes' handles get NotFoundException afterwards.
     */
    public function destroy(): void
    {
        $h = $this->handle ?? $this->closed();
        $this->handle = null;
        Library::check($this->ffi->shmkv_destroy($h));
    }

    /** Detaches (the map stays in the kernel). Also done on destruction. */
    public function close(): void
    {
        if ($this->handle !== null) {
            $this->ffi->shmkv_close($this->handle);
            $this->handle = null;
        }
    }

    public function isOpen(): bool
    {
        return $this->handle !== null;
    }

    public function __destruct()
    {
        $this->close();
    }

    /** @internal */
    public static function encode(string $codec, mixed $value): string
    {
        return match ($codec) {
            'serialize' => serialize($value),
            'igbinary' => \igbinary_serialize($value),
            'json' => json_encode($value, JSON_THROW_ON_ERROR | JSON_PRESERVE_ZERO_FRACTION),
            'raw' => is_string($value)
                ? $value
                : throw new InvalidArgumentException('codec "raw" stores strings only, got ' . get_debug_type($value)),
        };
    }

    /** @internal */
    public static function decode(string $codec, string $bytes): mixed
    {
        switch ($codec) {
            case 'raw':
                return $bytes;
            case 'json':
                try {
                    return json_decode($bytes, true, 512, JSON_THROW_ON_ERROR);
                } catch (\JsonException $e) {
                    throw new CorruptedException('stored value is not JSON: ' . $e->getMessage(), 0, $e);
                }
            case 'igbinary':
                // igbinary's header: 4 bytes, version 1 or 2 (big-endian).
                if (strlen($bytes) < 5 || !in_array(substr($bytes, 0, 4), ["\0\0\0\1", "\0\0\0\2"], true)) {
                    throw new CorruptedException('stored value is not igbinary data (written with another codec?)');
                }
                $v = @\igbinary_unserialize($bytes);
                if ($v === null && $bytes !== \igbinary_serialize(null)) {
                    throw new CorruptedException('stored value is not igbinary data (written with another codec?)');
                }
                return $v;
            default:
                if ($bytes === 'b:0;') {
                    return false;
                }
                $v = @unserialize($bytes);
                if ($v === false) {
                    throw new CorruptedException('stored value is not a serialized PHP value (written with another codec?)');
                }
                return $v;
        }
    }
}
