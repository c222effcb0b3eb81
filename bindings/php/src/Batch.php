<?php

declare(strict_types=1);

namespace Shmkv;

use FFI;
use FFI\CData;

/**
 * The write in progress inside `Map::atomic()`: reads see the batch's own
 * writes; nothing is visible to other processes until the callback
 * returns, and then all of it at once. Valid only inside the callback.
 * The same methods as Map: get, has, set/add, remove/delete, ArrayAccess.
 *
 * @implements \ArrayAccess<string, mixed>
 */
final class Batch implements \ArrayAccess
{
    use KeyedAccess;

    private ?CData $txn;
    private CData $ptr;
    private CData $len;
    private ?\Throwable $poison = null;

    /** @internal created by Map::atomic() */
    public function __construct(private readonly FFI $ffi, CData $txn, private readonly string $codec)
    {
        $this->txn = $txn;
        $this->ptr = $ffi->new('const char *');
        $this->len = $ffi->new('size_t');
    }

    /** @internal */
    public function close(): void
    {
        $this->txn = null;
    }

    /** @internal a nested atomic() threw: the whole write aborts. */
    public function poison(\Throwable $e): void
    {
        $this->poison ??= $e;
    }

    /** @internal */
    public function poisoned(): ?\Throwable
    {
        return $this->poison;
    }

    private function t(): CData
    {
        return $this->txn ?? throw new ShmkvException('the batch is over: use it only inside its callback');
    }

    public function getRaw(string $key): ?string
    {
        $rc = Library::check($this->ffi->shmkv_txn_get($this->t(), $key, strlen($key), FFI::addr($this->ptr), FFI::addr($this->len)));
        if ($rc !== 0) {
            return null;
        }
        return $this->len->cdata === 0 ? '' : FFI::string($this->ptr, $this->len->cdata);
    }

    public function get(string $key, mixed $default = null): mixed
    {
        $raw = $this->getRaw($key);
        return $raw === null ? $default : Map::decode($this->codec, $raw);
    }

    public function has(string $key): bool
    {
        return $this->getRaw($key) !== null;
    }

    public function set(string $key, mixed $value): void
    {
        $bytes = Map::encode($this->codec, $value);
        Library::check($this->ffi->shmkv_txn_insert($this->t(), $key, strlen($key), $bytes, strlen($bytes)));
    }

    /** The same as `set`. */
    public function add(string $key, mixed $value): void
    {
        $this->set($key, $value);
    }

    /** Stages the removal of `$key`; whether it was there. */
    public function remove(string $key): bool
    {
        return Library::check($this->ffi->shmkv_txn_remove($this->t(), $key, strlen($key))) === 0;
    }

    /** The same as `remove`. */
    public function delete(string $key): bool
    {
        return $this->remove($key);
    }
}
