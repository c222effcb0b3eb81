<?php

declare(strict_types=1);

namespace Shmkv;

use FFI;

/**
 * Loads libshmkv_ffi through PHP's FFI, once per process.
 *
 * The declarations come from the C header (ffi/include/shmkv.h) with its
 * preprocessor lines removed (PHP's FFI parser takes declarations only);
 * the status codes come from its #define lines, so the PHP side never
 * keeps a copy of them.
 *
 * Where the library is: the `SHMKV_FFI_LIB` environment variable, else
 * `libshmkv_ffi.so` through the system's search path. Where the header is:
 * `SHMKV_HEADER`, else the copy next to this package in the repository
 * (`ffi/include/shmkv.h`).
 */
final class Library
{
    private static ?FFI $ffi = null;

    /** @var array<string, int> */
    private static array $constants = [];

    public static function ffi(): FFI
    {
        if (self::$ffi === null) {
            self::load(getenv('SHMKV_FFI_LIB') ?: 'libshmkv_ffi.so', getenv('SHMKV_HEADER') ?: null);
        }
        return self::$ffi;
    }

    /** A status code or flag by its C name, e.g. `SHMKV_E_FULL`. */
    public static function constant(string $name): int
    {
        self::ffi();
        if (!array_key_exists($name, self::$constants)) {
            throw new \LogicException("no constant $name in shmkv.h");
        }
        return self::$constants[$name];
    }

    /** Loads the library explicitly (otherwise the first use does). */
    public static function load(string $library, ?string $header = null): void
    {
        $header ??= dirname(__DIR__, 3) . '/ffi/include/shmkv.h';
        $text = @file_get_contents($header);
        if ($text === false) {
            throw new ShmkvException("cannot read the shmkv C header at $header (set SHMKV_HEADER)", 0);
        }
        $decls = [];
        $cplusplus = false;
        foreach (preg_split('/\R/', $text) as $line) {
            // C++ only: `extern "C" {` and its `}`.
            if (preg_match('/^#if(def)?\s.*__cplusplus/', $line)) {
                $cplusplus = true;
                continue;
            }
            if ($cplusplus) {
                $cplusplus = !str_starts_with($line, '#endif');
                continue;
            }
            if (preg_match('/^#define\s+(SHMKV_\w+)\s+(\(?-?\d+\)?)\s*$/', $line, $m)) {
                self::$constants[$m[1]] = (int) trim($m[2], '()');
                continue;
            }
            if (str_starts_with(ltrim($line), '#')) {
                continue;
            }
            $decls[] = $line;
        }
        // Bytes cross as `char *` (PHP strings convert to `const char *`;
        // the ABI is the same as `uint8_t *`).
        $cdef = str_replace('uint8_t *', 'char *', implode("\n", $decls));
        try {
            self::$ffi = FFI::cdef($cdef, $library);
        } catch (FFI\Exception $e) {
            throw new ShmkvException(
                "cannot load $library: {$e->getMessage()} (build it with "
                . "`cargo build --release -p shmkv-ffi` and set SHMKV_FFI_LIB to target/release/libshmkv_ffi.so)",
                0,
                $e,
            );
        }
    }

    /** The message of the last failure on this thread. */
    public static function lastError(): string
    {
        // FFI converts a returned `const char *` to a PHP string.
        $m = self::ffi()->shmkv_last_error();
        return is_string($m) ? $m : FFI::string($m);
    }

    /**
     * Throws the exception for a negative status; returns other statuses.
     */
    public static function check(int $status): int
    {
        if ($status >= 0) {
            return $status;
        }
        $message = self::lastError();
        $c = fn (string $n) => self::constant($n);
        throw match ($status) {
            $c('SHMKV_E_NOT_FOUND') => new MapNotFoundException($message, $status),
            $c('SHMKV_E_EXISTS') => new MapExistsException($message, $status),
            $c('SHMKV_E_PERMISSION') => new PermissionException($message, $status),
            $c('SHMKV_E_INVALID'), $c('SHMKV_E_KEY_TOO_LARGE'), $c('SHMKV_E_VALUE_TOO_LARGE')
                => new InvalidArgumentException($message, $status),
            $c('SHMKV_E_FULL') => new FullException($message, $status),
            $c('SHMKV_E_LOCK_TIMEOUT') => new LockTimeoutException($message, $status),
            $c('SHMKV_E_INCOMPATIBLE') => new IncompatibleException($message, $status),
            $c('SHMKV_E_CORRUPTED') => new CorruptedException($message, $status),
            $c('SHMKV_E_READ_ONLY') => new ReadOnlyException($message, $status),
            default => new ShmkvException($message, $status),
        };
    }
}
