<?php

declare(strict_types=1);

namespace Shmkv;

/**
 * No map exists under this name or key (SHMKV_E_NOT_FOUND): opened with
 * `'create' => false`, or destroyed by another process meanwhile.
 */
class NotFoundException extends ShmkvException
{
}
