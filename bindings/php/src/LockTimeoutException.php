<?php

declare(strict_types=1);

namespace Shmkv;

/**
 * The write lock was not obtained within the lock timeout
 * (SHMKV_E_LOCK_TIMEOUT). `$holderPid` is the process that last operated
 * the lock (the holder), or null when the C layer did not know it; it is
 * read from the message ("... (held by pid N)").
 */
class LockTimeoutException extends ShmkvException
{
    public readonly ?int $holderPid;

    public function __construct(string $message = '', int $code = 0, ?\Throwable $previous = null)
    {
        parent::__construct($message, $code, $previous);
        $this->holderPid = preg_match('/\bheld by pid (\d+)\b/', $message, $m) ? (int) $m[1] : null;
    }
}
