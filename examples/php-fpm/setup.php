<?php
// Writes the header that `ffi.preload` loads (the C header's declarations
// with FFI_SCOPE "SHMKV" and FFI_LIB) and a php.ini for php-fpm
// (ffi.preload + opcache.preload) into this directory's run/. Run it once after building the
// library (and again if the library moves):
//   SHMKV_FFI_LIB=/path/to/libshmkv_ffi.so php examples/php-fpm/setup.php

declare(strict_types=1);

require __DIR__ . '/../../bindings/php/src/ShmkvException.php';
require __DIR__ . '/../../bindings/php/src/Library.php';

$dir = __DIR__ . '/run';
if (!is_dir($dir) && !mkdir($dir, 0755)) {
    fwrite(STDERR, "cannot create $dir\n");
    exit(1);
}
$header = Shmkv\Library::writePreloadHeader(null, $dir);
chmod($header, 0644);
$ini = "; written by setup.php: php.ini for the example's php-fpm (php-fpm -c this file)\n"
    . "ffi.enable = preload\n"
    . "ffi.preload = $header\n"
    . "opcache.enable = 1\n"
    . 'opcache.preload = ' . __DIR__ . "/preload.php\n"
    . "; the master runs as root: preloading then needs a user (and PHP refuses FFI::load: hence ffi.preload)\n"
    . "opcache.preload_user = nobody\n";
file_put_contents("$dir/php.ini", $ini);
echo "wrote $dir/php.ini:\n$ini";
