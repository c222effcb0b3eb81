<?php
// opcache.preload script for php-fpm (or the CLI with opcache.enable_cli=1):
// compiles the Shmkv classes once in the master and declares
// libshmkv_ffi as the FFI scope "SHMKV" (FFI::load of a cleaned copy of
// the C header), so that every request uses it with ffi.enable=preload
// (PHP's default), without loading or parsing anything.
//
// The library: SHMKV_FFI_LIB in the master's environment, else the
// package's search order (see bindings/php/src/Library.php).

declare(strict_types=1);

$src = getenv('SHMKV_PHP_SRC') ?: dirname(__DIR__, 2) . '/bindings/php/src';
// Exceptions and the trait first (classes extend or use them), then the
// rest: preloading links a class only when its parent is already there.
require_once $src . '/ShmkvException.php';
require_once $src . '/NotFoundException.php';
require_once $src . '/KeyedAccess.php';
foreach (glob($src . '/*.php') as $file) {
    require_once $file;
}

Shmkv\Library::preload();
