<?php

declare(strict_types=1);

namespace Shmkv;

/**
 * `ArrayAccess` over a class's `has`/`get`/`set`/`remove` (Map and Batch):
 * `$m[$k]`, `$m[$k] = $v`, `isset($m[$k])`, `unset($m[$k])`. Keys are
 * strings (ints are converted); `$m[] = $v` has no key and is refused.
 */
trait KeyedAccess
{
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
        $this->remove((string) $offset);
    }
}
