<?php

declare(strict_types=1);

namespace Shmkv;

use FFI;

/**
 * Loads libshmkv_ffi through PHP's FFI, once per process (or once per
 * php-fpm master, with preloading).
 *
 * The declarations come from the C header (ffi/include/shmkv.h) with its
 * preprocessor lines removed (PHP's FFI parser takes declarations only);
 * the status codes come from its #define lines, so the PHP side never
 * keeps a copy of them.
 *
 * Where the library is, first found wins:
 * 1. the `library` option of the first map opened (or `Library::load()`);
 * 2. the `SHMKV_FFI_LIB` environment variable;
 * 3. next to this package: `lib/libshmkv_ffi.so` or `libshmkv_ffi.so` in
 *    the package's directory, then the repository's
 *    `target/release/libshmkv_ffi.so` when the package sits in it;
 * 4. `libshmkv_ffi.so` through the system's library path (ldconfig,
 *    LD_LIBRARY_PATH).
 *
 * Where the header is: `SHMKV_HEADER`, else `include/shmkv.h` in the
 * package, else the repository's `ffi/include/shmkv.h`.
 *
 * Preloading (php-fpm): `Library::preload()` in an `opcache.preload`
 * script writes a cleaned copy of the header with `FFI_SCOPE "SHMKV"` and
 * `FFI_LIB` and loads it with `FFI::load`; every request then finds the
 * library through `FFI::scope('SHMKV')`, which works with
 * `ffi.enable=preload` (the default) and costs no parsing.
 */
final class Library
{
    /** The FFI scope preloading declares. */
    public const SCOPE = 'SHMKV';

    private static ?FFI $ffi = null;

    /** @var array<string, int> */
    private static array $constants = [];

    private static string $source = '';

    /**
     * The loaded library: the preloaded scope if there is one, else the
     * library found as the class comment says (`$library` first).
     */
    public static function ffi(?string $library = null): FFI
    {
        if (self::$ffi === null) {
            try {
                self::$ffi = FFI::scope(self::SCOPE);
                self::$source = 'preloaded scope ' . self::SCOPE;
                self::$constants = self::parseConstants(self::headerText(self::headerPath()));
            } catch (FFI\Exception) {
                self::load($library ?? self::findLibrary());
            }
        }
        return self::$ffi;
    }

    /** How the library was loaded: "preloaded scope SHMKV" or its path. */
    public static function source(): string
    {
        self::ffi();
        return self::$source;
    }

    /** The library's path by the search order of the class comment. */
    public static function findLibrary(): string
    {
        $env = getenv('SHMKV_FFI_LIB');
        if (is_string($env) && $env !== '') {
            return $env;
        }
        $package = dirname(__DIR__);
        foreach ([$package . '/lib/libshmkv_ffi.so', $package . '/libshmkv_ffi.so',
            dirname($package, 2) . '/target/release/libshmkv_ffi.so'] as $candidate) {
            if (is_file($candidate)) {
                return $candidate;
            }
        }
        return 'libshmkv_ffi.so';
    }

    /** The header's path: `SHMKV_HEADER`, the package's copy, the repository's. */
    public static function headerPath(): string
    {
        $env = getenv('SHMKV_HEADER');
        if (is_string($env) && $env !== '') {
            return $env;
        }
        $package = dirname(__DIR__);
        $copy = $package . '/include/shmkv.h';
        return is_file($copy) ? $copy : dirname($package, 2) . '/ffi/include/shmkv.h';
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

    /**
     * Loads the library explicitly (otherwise the first use does). Once a
     * library is loaded, later calls change nothing.
     */
    public static function load(string $library, ?string $header = null): void
    {
        if (self::$ffi !== null) {
            return;
        }
        $text = self::headerText($header ?? self::headerPath());
        try {
            $ffi = FFI::cdef(self::declarations($text), $library);
        } catch (FFI\Exception $e) {
            throw new ShmkvException(
                "cannot load $library: {$e->getMessage()} (build it with "
                . '`cargo build --release -p shmkv-ffi`, then set SHMKV_FFI_LIB or the `library` option '
                . 'to target/release/libshmkv_ffi.so)',
                0,
                $e,
            );
        }
        self::$constants = self::parseConstants($text);
        self::$ffi = $ffi;
        self::$source = $library;
    }

    /**
     * Writes a copy of the header for preloading: declarations only, with
     * `FFI_SCOPE "SHMKV"` and `FFI_LIB` (the library found as the class
     * comment says, or `$library`), into `$dir` (default: the temporary
     * directory); returns its path. Give it to `ffi.preload=` in php.ini
     * (works when the FPM master runs as root), or let `preload()` load it.
     */
    public static function writePreloadHeader(?string $library = null, ?string $dir = null): string
    {
        $library ??= self::findLibrary();
        $decls = self::declarations(self::headerText(self::headerPath()));
        $text = '#define FFI_SCOPE "' . self::SCOPE . "\"\n#define FFI_LIB " . json_encode($library, JSON_UNESCAPED_SLASHES)
            . "\n" . $decls . "\n";
        $dir ??= sys_get_temp_dir();
        $file = $dir . '/shmkv-ffi-' . substr(hash('sha256', $text), 0, 16) . '.h';
        if (!is_file($file) || file_get_contents($file) !== $text) {
            $tmp = $file . '.' . getmypid();
            if (file_put_contents($tmp, $text) === false || !rename($tmp, $file)) {
                throw new ShmkvException("cannot write $file");
            }
        }
        return $file;
    }

    /**
     * For an `opcache.preload` script: declares the library as the FFI
     * scope `SHMKV` with `FFI::load` of `writePreloadHeader()`'s file,
     * unless `ffi.preload` already did. (PHP refuses `FFI::load` together
     * with `opcache.preload_user`, i.e. in an FPM master running as root:
     * use `ffi.preload` there.) Returns how the scope came.
     */
    public static function preload(?string $library = null, ?string $dir = null): string
    {
        try {
            FFI::scope(self::SCOPE);
            return 'ffi.preload';
        } catch (FFI\Exception) {
        }
        $file = self::writePreloadHeader($library, $dir);
        if (FFI::load($file) === null) {
            throw new ShmkvException("FFI::load($file) failed");
        }
        return $file;
    }

    private static function headerText(string $header): string
    {
        $text = @file_get_contents($header);
        if ($text === false) {
            throw new ShmkvException("cannot read the shmkv C header at $header (set SHMKV_HEADER)", 0);
        }
        return $text;
    }

    /** @return array<string, int> */
    private static function parseConstants(string $text): array
    {
        preg_match_all('/^#define\s+(SHMKV_\w+)\s+\(?(-?\d+)\)?\s*$/m', $text, $m, PREG_SET_ORDER);
        $out = [];
        foreach ($m as [, $name, $value]) {
            $out[$name] = (int) $value;
        }
        return $out;
    }

    /** The header without preprocessor lines and C++ guards, for FFI. */
    private static function declarations(string $text): string
    {
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
            if (str_starts_with(ltrim($line), '#')) {
                continue;
            }
            $decls[] = $line;
        }
        // Bytes cross as `char *` (PHP strings convert to `const char *`;
        // the ABI is the same as `uint8_t *`).
        return str_replace('uint8_t *', 'char *', implode("\n", $decls));
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
        throw self::exception($status, self::lastError());
    }

    /** The typed exception of a negative status. */
    public static function exception(int $status, string $message): ShmkvException
    {
        $c = fn (string $n) => self::constant($n);
        return match ($status) {
            $c('SHMKV_E_NOT_FOUND') => new MapNotFoundException($message, $status),
            $c('SHMKV_E_EXISTS') => new MapExistsException($message, $status),
            $c('SHMKV_E_PERMISSION') => new PermissionException($message, $status),
            $c('SHMKV_E_INVALID'), $c('SHMKV_E_KEY_TOO_LARGE'), $c('SHMKV_E_VALUE_TOO_LARGE'),
            $c('SHMKV_E_RESERVED_KEY')
                => new InvalidArgumentException($message, $status),
            $c('SHMKV_E_FULL') => new FullException($message, $status),
            $c('SHMKV_E_LOCK_TIMEOUT') => new LockTimeoutException($message, $status),
            $c('SHMKV_E_INCOMPATIBLE') => new IncompatibleException($message, $status),
            $c('SHMKV_E_CORRUPTED') => new CorruptedException($message, $status),
            $c('SHMKV_E_READ_ONLY') => new ReadOnlyException($message, $status),
            $c('SHMKV_E_NESTED_WRITE') => new NestedWriteException($message, $status),
            default => new ShmkvException($message, $status),
        };
    }
}
