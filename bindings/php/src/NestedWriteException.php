<?php

declare(strict_types=1);

namespace Shmkv;

/**
 * A write on a map inside `atomic()` on the same map that does not go
 * through the batch (SHMKV_E_NESTED_WRITE): refused instead of a deadlock.
 * Write through the batch the callable receives (or a nested `atomic()`,
 * which joins the outer batch).
 */
class NestedWriteException extends ShmkvException
{
}
