<?php
// The CLI publisher: creates the map "fpm-demo" (readable by the FPM
// workers' user: mode 0644) and publishes a new config every second,
// each as one atomic write; `--once` publishes once, `--destroy` removes
// the map.
//   php -d ffi.enable=1 examples/php-fpm/publisher.php [--once|--destroy]

declare(strict_types=1);

spl_autoload_register(function (string $class): void {
    if (str_starts_with($class, 'Shmkv\\')) {
        require __DIR__ . '/../../bindings/php/src/' . str_replace('\\', '/', substr($class, 6)) . '.php';
    }
});

if (in_array('--destroy', $argv, true)) {
    echo Shmkv\Map::destroyByName('fpm-demo') ? "removed fpm-demo\n" : "no map fpm-demo\n";
    exit(0);
}
$map = new Shmkv\Map('fpm-demo', ['mode' => 0644, 'capacity' => 1024, 'arena' => '1mb']);
for ($round = 1; ; $round++) {
    $map->atomic(function (Shmkv\Batch $b) use ($round) {
        $b['config'] = ['round' => $round, 'backend' => '10.0.0.' . ($round % 250 + 1) . ':8080', 'at' => date(DATE_ATOM)];
        $b['publisher_pid'] = getmypid();
    });
    echo "published round $round (version {$map->version()})\n";
    if (in_array('--once', $argv, true)) {
        break;
    }
    sleep(1);
}
