<?php

declare(strict_types=1);

namespace Shmkv;

/** A write through a read-only handle (SHMKV_E_READ_ONLY). */
class ReadOnlyException extends ShmkvException
{
}
