<?php

declare(strict_types=1);

namespace Shmkv;

/** No map exists under this name or key (SHMKV_E_NOT_FOUND). */
class MapNotFoundException extends ShmkvException
{
}
