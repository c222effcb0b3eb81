<?php

declare(strict_types=1);

namespace Shmkv;

use FFI;
use FFI\CData;

/**
 * A shmkv map: a hash map in SysV shared memory that every PHP process of
 * the host can open by name. Reads take no lock and see every value whole;
 * each write (one `set`/`delete`, or a whole `batch`) is atomic and
 * survives the writer being killed at any point.
 *
 *     $map = Map::open('routes', ['capacity' => 100_000, 'arena' => '64mb']);
 *     $map['/api'] = ['backend' => '10.0.0.7:8080'];   // any serializable value
 *     $route = $map['/api'];                            // in any process
 *     $map->batch(function (Batch $b) {                 // all or nothing
 *         $b['hits'] = ($b['hits'] ?? 0) + 1;
 *     });
 *
 * Values are encoded with the map's codec: `serialize` (the default: any
 * PHP value, `false` and `null` included, as `shm_put_var` did), `json`,
 * or `raw` (strings stored as they are, readable by any language).
 *
 * @implements \ArrayAccess<string, mixed>
 * @implements \IteratorAggregate<string, mixed>
 */
final class Map implements \ArrayAccess, \Countable, \IteratorAggregate
{
    private const INITIAL_BUFFER = 4096;

    private FFI $ffi;
    private ?CData $handle;
    private CData $buffer;
    private int $bufferSize;
    private CData $len;
    private CData $u64;

    private function __construct(CData $handle, private readonly string $name, private readonly string $codec)
    {
        $this->ffi = Library::ffi();
        $this->handle = $handle;
        $this->bufferSize = self::INITIAL_BUFFER;
        $this->buffer = $this->ffi->new("char[{$this->bufferSize}]");
        $this->len = $this->ffi->new('size_t');
        $this->u64 = $this->ffi->new('uint64_t');
    }

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
     * - `codec`: "serialize" (default), "json" or "raw".
     *
     * @param array<string, mixed> $options
     */
    public static function open(string $name, array $options = []): self
    {
        $ffi = Library::ffi();
        $known = ['create', 'exclusive', 'capacity', 'arena', 'max_size', 'mode', 'read_only',
            'lock_timeout', 'verify_reads', 'sysv_key', 'ftok', 'codec'];
        foreach (array_keys($options) as $k) {
            if (!in_array($k, $known, true)) {
                throw new InvalidArgumentException("unknown option '$k' (known: " . implode(', ', $known) . ')');
            }
        }
        $codec = $options['codec'] ?? 'serialize';
        if (!in_array($codec, ['serialize', 'json', 'raw'], true)) {
            throw new InvalidArgumentException("unknown codec '$codec' (serialize, json or raw)");
        }
        $o = $ffi->new('ShmkvOptions');
        $ffi->shmkv_options_init(FFI::addr($o));
        $o->capacity = self::count_option($options, 'capacity');
        $o->arena_size = isset($options['arena']) ? self::bytes($options['arena']) : 0;
        $o->max_size = isset($options['max_size']) ? self::bytes($options['max_size']) : 0;
        $o->mode = self::count_option($options, 'mode');
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
        return new self($out, $name, $codec);
    }

    /** Parses a size ("64mb", "100 KB", 4096) into bytes. */
    public static function bytes(int|string $size): int
    {
        if (is_int($size)) {
            if ($size <= 0) {
                throw new InvalidArgumentException("size must be positive, got $size");
            }
            return $size;
        }
        $out = Library::ffi()->new('uint64_t');
        Library::check(Library::ffi()->shmkv_parse_size($size, FFI::addr($out)));
        return $out->cdata;
    }

    /** @param array<string, mixed> $options */
    private static function count_option(array $options, string $key): int
    {
        $v = $options[$key] ?? 0;
        if (!is_int($v) || $v < 0) {
            throw new InvalidArgumentException("$key must be a non-negative integer");
        }
        return $v;
    }

    /** Removes the map `$name` from the kernel; whether anything was there. */
    public static function destroyByName(string $name): bool
    {
        $ffi = Library::ffi();
        $removed = $ffi->new('char');
        Library::check($ffi->shmkv_destroy_by_name($name, null, FFI::addr($removed)));
        return $removed->cdata !== "\0";
    }

    public function name(): string
    {
        return $this->name;
    }

    private function h(): CData
    {
        return $this->handle ?? throw new ShmkvException("map '{$this->name}' is closed");
    }

    /** The stored bytes of `$key`, or null. One lookup, one copy. */
    public function getRaw(string $key): ?string
    {
        while (true) {
            $rc = $this->ffi->shmkv_get($this->h(), $key, strlen($key), $this->buffer, $this->bufferSize, FFI::addr($this->len));
            if ($rc === 0) {
                return FFI::string($this->buffer, $this->len->cdata);
            }
            if ($rc === 1) {
                return null;
            }
            if ($rc === Library::constant('SHMKV_E_BUFFER_TOO_SMALL')) {
                $this->bufferSize = max($this->len->cdata, 2 * $this->bufferSize);
                $this->buffer = $this->ffi->new("char[{$this->bufferSize}]");
                continue; // the value may have changed meanwhile: look again
            }
            Library::check($rc);
        }
    }

    /** The value of `$key`, or `$default` when absent. */
    public function get(string $key, mixed $default = null): mixed
    {
        $raw = $this->getRaw($key);
        return $raw === null ? $default : self::decode($this->codec, $raw);
    }

    public function has(string $key): bool
    {
        return Library::check($this->ffi->shmkv_contains($this->h(), $key, strlen($key))) === 0;
    }

    /** Stores `$value` under `$key`, atomically (crash-safe). */
    public function set(string $key, mixed $value): void
    {
        $bytes = self::encode($this->codec, $value);
        Library::check($this->ffi->shmkv_insert($this->h(), $key, strlen($key), $bytes, strlen($bytes)));
    }

    /** Removes `$key`; whether it was there. */
    public function delete(string $key): bool
    {
        return Library::check($this->ffi->shmkv_remove($this->h(), $key, strlen($key))) === 0;
    }

    /**
     * Runs `$fn(Batch $b)` with the write lock held; everything it writes
     * through `$b` is applied as one atomic write when it returns, nothing
     * if it throws (the exception is rethrown). Other processes see all of
     * it or none of it, also when this process is killed half-way.
     * Returns what `$fn` returned.
     */
    public function batch(callable $fn): mixed
    {
        $result = null;
        $thrown = null;
        $codec = $this->codec;
        $callback = function ($txn, $ctx) use ($fn, $codec, &$result, &$thrown): int {
            $batch = new Batch($this->ffi, $txn, $codec);
            try {
                $result = $fn($batch);
                return 0;
            } catch (\Throwable $e) {
                $thrown = $e;
                return 1;
            } finally {
                $batch->close();
            }
        };
        $rc = $this->ffi->shmkv_write($this->h(), $callback, null);
        if ($thrown !== null) {
            throw $thrown;
        }
        Library::check($rc);
        return $result;
    }

    /** Number of entries. */
    public function count(): int
    {
        Library::check($this->ffi->shmkv_len($this->h(), FFI::addr($this->u64)));
        return $this->u64->cdata;
    }

    /** The number of writes committed so far (changes with every write). */
    public function version(): int
    {
        Library::check($this->ffi->shmkv_version($this->h(), FFI::addr($this->u64)));
        return $this->u64->cdata;
    }

    /**
     * Sleeps until the version differs from `$since` (returns the new
     * one) or `$timeout` seconds pass (returns null).
     */
    public function waitForChange(int $since, float $timeout): ?int
    {
        $ms = max(0, (int) ceil($timeout * 1000));
        $rc = Library::check($this->ffi->shmkv_wait_for_change($this->h(), $since, $ms, FFI::addr($this->u64)));
        return $rc === 0 ? $this->u64->cdata : null;
    }

    /** Every key, from one consistent snapshot. @return list<string> */
    public function keys(): array
    {
        return array_keys($this->toArray(false));
    }

    /**
     * Every entry, from one consistent snapshot.
     *
     * @return array<string, mixed>
     */
    public function toArray(bool $decode = true): array
    {
        $snap = $this->ffi->new('ShmkvSnapshot *');
        $n = $this->ffi->new('uint64_t');
        Library::check($this->ffi->shmkv_snapshot($this->h(), FFI::addr($snap), FFI::addr($n)));
        $k = $this->ffi->new('const char *');
        $v = $this->ffi->new('const char *');
        $kl = $this->ffi->new('size_t');
        $vl = $this->ffi->new('size_t');
        $out = [];
        try {
            for ($i = 0; $i < $n->cdata; $i++) {
                Library::check($this->ffi->shmkv_snapshot_entry($snap, $i, FFI::addr($k), FFI::addr($kl), FFI::addr($v), FFI::addr($vl)));
                $key = $kl->cdata === 0 ? '' : FFI::string($k, $kl->cdata);
                $raw = $vl->cdata === 0 ? '' : FFI::string($v, $vl->cdata);
                $out[$key] = $decode ? self::decode($this->codec, $raw) : true;
            }
        } finally {
            $this->ffi->shmkv_snapshot_free($snap);
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
        Library::check($this->ffi->shmkv_stats_json($this->h(), FFI::addr($json)));
        try {
            return json_decode(FFI::string($json), true, 8, JSON_THROW_ON_ERROR);
        } finally {
            $this->ffi->shmkv_string_free($json);
        }
    }

    /** A full consistency check; throws CorruptedException with the problems. */
    public function verify(): void
    {
        Library::check($this->ffi->shmkv_verify($this->h()));
    }

    /** Rewrites the live entries without garbage; readers keep working. */
    public function compact(): void
    {
        Library::check($this->ffi->shmkv_compact($this->h()));
    }

    /** Removes the map from the kernel and closes this handle. */
    public function destroy(): void
    {
        $h = $this->h();
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

    public function __destruct()
    {
        $this->close();
    }

    public function offsetExists(mixed $offset): bool
    {
        return $this->has((string) $offset);
    }

    public function offsetGet(mixed $offset): mixed
    {
        return $this->get((string) $offset);
    }

    public function offsetSet(mixed $offset, mixed $value): void
    {
        if ($offset === null) {
            throw new InvalidArgumentException('a map needs a key: $map[] = ... is not supported');
        }
        $this->set((string) $offset, $value);
    }

    public function offsetUnset(mixed $offset): void
    {
        $this->delete((string) $offset);
    }

    /** @internal */
    public static function encode(string $codec, mixed $value): string
    {
        return match ($codec) {
            'serialize' => serialize($value),
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
            default:
                if ($bytes === serialize(false)) {
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
