<?php
// The FPM script: every request reads the map "fpm-demo" (written by
// publisher.php) lock-free and answers with what it saw, as JSON.
// The Shmkv classes and the FFI scope come from preloading; without
// preloading, the autoloader below and ffi.enable=1 do the same.

declare(strict_types=1);

if (!class_exists(Shmkv\Map::class)) {
    spl_autoload_register(function (string $class): void {
        if (str_starts_with($class, 'Shmkv\\')) {
            require __DIR__ . '/../../bindings/php/src/' . str_replace('\\', '/', substr($class, 6)) . '.php';
        }
    });
}

header('Content-Type: application/json');
try {
    // Workers only read: read_only needs only the r bits of the map's mode.
    $map = new Shmkv\Map('fpm-demo', ['create' => false, 'read_only' => true]);
    echo json_encode([
        'worker_pid' => getmypid(),
        'ffi' => Shmkv\Library::source(),
        'version' => $map->version(),
        'config' => $map->get('config'),
        'published_by' => $map->get('publisher_pid'),
    ]), "\n";
} catch (Shmkv\NotFoundException) {
    http_response_code(503);
    echo json_encode(['error' => 'no map yet: run publisher.php']), "\n";
}
