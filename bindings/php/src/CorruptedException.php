<?php

declare(strict_types=1);

namespace Shmkv;

/** The map's shared memory fails validation (SHMKV_E_CORRUPTED). */
class CorruptedException extends ShmkvException
{
}
