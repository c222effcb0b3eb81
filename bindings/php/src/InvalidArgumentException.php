<?php

declare(strict_types=1);

namespace Shmkv;

/** A bad argument: name, size, option, or a key or value too large (SHMKV_E_INVALID, SHMKV_E_KEY_TOO_LARGE, SHMKV_E_VALUE_TOO_LARGE). */
class InvalidArgumentException extends ShmkvException
{
}
