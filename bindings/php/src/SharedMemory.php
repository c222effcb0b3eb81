<?php

declare(strict_types=1);

namespace Shmkv;

/**
 * A drop-in for the original class's `SharedMemory` class (`sysvshm` + `sysvsem`):
 * the same public API, on top of Map. Switch by changing one `use` line.
 *
 * What is the same: the constructor's signature, the method names and
 * arguments, `getBytes`, the boolean helper's accessors, keys `string|int`,
 * values any serializable PHP value. Another process constructing the same
 * `$masterKey` sees the same data.
 *
 * What differs (the original class's defects, gone):
 * - the map is named by the whole `$masterKey` (the original used
 *   `crc32($masterKey)` as the SysV key) and every key is stored whole (the
 *   original stored `crc32($key)`: two keys with the same CRC overwrote each
 *   other, e.g. "plumless" and "buckeroo");
 * - `$size` is the initial arena: a full map grows (up to the kernel's
 *   limits) instead of failing;
 * - every write is atomic and crash-safe, and reads take no lock, so
 *   `add`/`atomAdd`, `get`/`atomGet`, `remove`/`atomRemove` behave alike
 *   (the atom* names are kept);
 * - `ensureAtomicity()` inside `ensureAtomicity()`, and any atom* call
 *   inside it, join the outer batch instead of deadlocking on the
 *   semaphore; an exception inside applies nothing, and the lock is always
 *   released (also when the process dies);
 * - a stored `false` reads back as `false` whatever the boolean helper is
 *   (the helper is kept for the API; it changes nothing);
 * - `getBytes()` throws on a unit it does not know instead of returning 0;
 * - failures are exceptions (Shmkv\ShmkvException and subclasses), not
 *   warnings and `false`.
 */
class SharedMemory
{
    private Map $map;
    private ?Batch $batch = null;
    private string $booleanHelper = '__SHMKV_BOOLEAN_FALSE__';
    private bool $detached = false;

    /**
     * @param string      $masterKey   the map's name: every process using the same
     *                                 masterKey shares the data
     * @param string|null $semaphoreID no role: the lock belongs to the map (kept for
     *                                 the original class's signature; ignored)
     * @param string      $size        the initial arena, e.g. "100kb" (the map grows
     *                                 past it when it fills)
     * @param bool        $naked       no role here (kept for the original class's signature;
     *                                 ignored): values are always stored whole and
     *                                 serialized, keys always whole
     */
    public function __construct(string $masterKey, ?string $semaphoreID = null, string $size = '100kb', bool $naked = false)
    {
        $this->map = new Map($masterKey, ['arena' => self::getBytes($size)]);
    }

    /** The Map underneath, for what the original class's API lacks. */
    public function map(): Map
    {
        return $this->map;
    }

    /**
     * Converts a size with a unit into bytes: "100kb", "2 MB", "1g", "512b",
     * or a plain number of bytes ("4096").
     *
     * @throws InvalidArgumentException on a unit it does not know (e.g.
     *         "5 parsecs"), on zero or on overflow; the original class's version
     *         returned 0 there
     */
    public static function getBytes(string $size): int
    {
        $s = trim($size);
        if (preg_match('/^\d+$/', $s)) {
            return Map::bytes((int) $s);
        }
        return Map::bytes($s);
    }

    private function m(): Map
    {
        if ($this->detached) {
            throw new ShmkvException('the shared memory was detached or removed');
        }
        return $this->map;
    }

    /** Stores `$value` under `$key` (atomic and crash-safe). */
    public function add(string|int $key, mixed $value): bool
    {
        if ($this->batch !== null) {
            $this->batch->set((string) $key, $value);
        } else {
            $this->m()->set((string) $key, $value);
        }
        return true;
    }

    /** The same as `add` (every write is atomic). */
    public function atomAdd(string|int $key, mixed $value): bool
    {
        return $this->add($key, $value);
    }

    /**
     * The value of `$key`, or null when absent (`has()` tells a stored
     * null from an absent key). Inside `ensureAtomicity()`, it sees the
     * batch's own writes.
     */
    public function get(string|int $key): mixed
    {
        return $this->batch !== null ? $this->batch->get((string) $key) : $this->m()->get((string) $key);
    }

    /**
     * The same as `get`: reads never wait for the lock and never see half a
     * write, so `$timeoutSeconds` has no role (kept for the signature).
     */
    public function atomGet(string|int $key, int $timeoutSeconds = 30): mixed
    {
        return $this->get($key);
    }

    public function has(string|int $key): bool
    {
        return $this->batch !== null ? $this->batch->has((string) $key) : $this->m()->has((string) $key);
    }

    /** Removes `$key`; whether it was there. */
    public function remove(string|int $key): bool
    {
        return $this->batch !== null ? $this->batch->remove((string) $key) : $this->m()->remove((string) $key);
    }

    /** The same as `remove`. */
    public function atomRemove(string|int $key): bool
    {
        return $this->remove($key);
    }

    /**
     * Runs `$fn($shm)` with the map's write lock held: every call on `$shm`
     * (this object) joins one batch, applied atomically when `$fn` returns,
     * not at all if it throws (the exception is rethrown). Returns what
     * `$fn` returned. Nested calls (ensureAtomicity, atomAdd, …) join the
     * outer batch.
     */
    public function ensureAtomicity(callable $fn): mixed
    {
        if ($this->batch !== null) {
            return $fn($this);
        }
        return $this->m()->atomic(function (Batch $b) use ($fn) {
            $this->batch = $b;
            try {
                return $fn($this);
            } finally {
                $this->batch = null;
            }
        });
    }

    /** Detaches from the map (it stays for other processes). */
    public function detachSharedMemory(): bool
    {
        if (!$this->detached) {
            $this->map->close();
            $this->detached = true;
        }
        return true;
    }

    /** Nothing to do: the lock belongs to the map (kept for the API). */
    public function detachSemaphore(): bool
    {
        return true;
    }

    /** Removes every entry, in one atomic write (the map stays). */
    public function cleanSharedMemory(): bool
    {
        $map = $this->m();
        $this->ensureAtomicity(function () use ($map) {
            foreach ($map->keys() as $key) {
                $this->batch->remove($key);
            }
        });
        return true;
    }

    /**
     * Removes the map from the kernel (its segments and its lock) for every
     * process; this object is detached afterwards.
     */
    public function removeSharedMemory(): bool
    {
        if ($this->detached) {
            throw new ShmkvException('the shared memory was detached or removed');
        }
        $this->detached = true;
        $this->map->destroy();
        return true;
    }

    /**
     * Nothing to do: the lock is removed with the map by
     * `removeSharedMemory()` (kept for the API).
     */
    public function removeSemaphore(): bool
    {
        return true;
    }

    /**
     * The original class's placeholder for a stored `false`. Kept for the API: here
     * `false` is stored as `false`, so the helper changes nothing (a stored
     * string equal to it reads back as that string).
     */
    public function getBooleanHelper(): string
    {
        return $this->booleanHelper;
    }

    public function setBooleanHelper(string $helper): void
    {
        $this->booleanHelper = $helper;
    }
}
