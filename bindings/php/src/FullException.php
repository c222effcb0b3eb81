<?php

declare(strict_types=1);

namespace Shmkv;

/** No room left within the map's max_size or the kernel's limits; nothing stored was changed (SHMKV_E_FULL). */
class FullException extends ShmkvException
{
}
