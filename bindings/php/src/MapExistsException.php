<?php

declare(strict_types=1);

namespace Shmkv;

/** Creating a map that must not exist found one (SHMKV_E_EXISTS). */
class MapExistsException extends ShmkvException
{
}
