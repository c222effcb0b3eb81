<?php

declare(strict_types=1);

namespace Shmkv;

/** The kernel refused access: SysV permission bits (SHMKV_E_PERMISSION). */
class PermissionException extends ShmkvException
{
}
