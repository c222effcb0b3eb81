<?php

declare(strict_types=1);

namespace Shmkv;

/**
 * Every failure of shmkv. The code is the C API's status
 * (`SHMKV_E_*`, negative); the message says what happened.
 */
class ShmkvException extends \RuntimeException
{
}
