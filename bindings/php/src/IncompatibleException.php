<?php

declare(strict_types=1);

namespace Shmkv;

/** The map was made by an incompatible build of shmkv (SHMKV_E_INCOMPATIBLE). */
class IncompatibleException extends ShmkvException
{
}
