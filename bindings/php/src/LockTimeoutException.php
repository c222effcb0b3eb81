<?php

declare(strict_types=1);

namespace Shmkv;

/** The write lock was not obtained within the lock timeout (SHMKV_E_LOCK_TIMEOUT). */
class LockTimeoutException extends ShmkvException
{
}
