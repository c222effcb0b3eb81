<?php
// Hot get latency from PHP, in one run: shmkv (PHP library over FFI, raw and
// serialize codecs), the seed's primitives (sem_acquire + shm_get_var +
// sem_release, and shm_get_var alone), APCu (apcu_fetch), a PHP array, and
// one bare FFI call (strlen: the floor of any FFI binding).
//
// Usage: SHMKV_FFI_LIB=target/release/libshmkv_ffi.so \
//        php -d ffi.enable=1 -d apc.enable_cli=1 -d apc.shm_size=256M bindings/php/bench/get.php [entries...]
// Measures: warm throughput (the same keys replayed, in cache), uniform
// random keys, 16-byte keys and 64-byte values; ns per get = median of 7
// rounds of 200,000 gets (fewer for the seed's primitives at 100,000
// entries: they scan a list). Prints a Markdown table with ratios to shmkv.

declare(strict_types=1);

spl_autoload_register(function (string $c): void {
    require __DIR__ . '/../src/' . substr($c, 6) . '.php';
});

use Shmkv\Map;

$sizes = array_map('intval', array_slice($argv, 1)) ?: [1000, 100000];
const VALUE_LEN = 64;
const ROUNDS = 7;

function key_of(int $i): string
{
    return str_pad("k$i", 16, '.');
}

/** ns per call of $fn over $keys (median of ROUNDS rounds). */
function measure(array $keys, callable $fn, int $per_round): float
{
    $n = count($keys);
    $times = [];
    for ($r = 0; $r < ROUNDS; $r++) {
        $t = hrtime(true);
        for ($i = 0; $i < $per_round; $i++) {
            $fn($keys[$i % $n]);
        }
        $times[] = (hrtime(true) - $t) / $per_round;
    }
    sort($times);
    return $times[intdiv(ROUNDS, 2)];
}

$rows = [];
foreach ($sizes as $entries) {
    $value = str_repeat('v', VALUE_LEN);
    $keys = [];
    mt_srand(42);
    for ($i = 0; $i < 4096; $i++) {
        $keys[] = key_of(mt_rand(0, $entries - 1));
    }
    $name = "php-bench-" . getmypid() . "-$entries";
    $raw = Map::open($name, ['codec' => 'raw', 'capacity' => $entries, 'arena' => max(1 << 20, $entries * 256)]);
    $ser = Map::open($name, ['codec' => 'serialize']);
    try {
        $raw->batch(function ($b) use ($entries, $value) {
            for ($i = 0; $i < $entries; $i++) {
                $b->set(key_of($i), $value);
            }
        });
        $sname = "php-bench-ser-" . getmypid() . "-$entries";
        $ser2 = Map::open($sname, ['capacity' => $entries, 'arena' => max(1 << 20, $entries * 256)]);
        $ser2->batch(function ($b) use ($entries, $value) {
            for ($i = 0; $i < $entries; $i++) {
                $b->set(key_of($i), $value);
            }
        });
        $results = [];
        $results['shmkv get (raw codec)'] = measure($keys, fn ($k) => $raw->get($k), 200_000);
        $results['shmkv get (serialize codec)'] = measure($keys, fn ($k) => $ser2->get($k), 200_000);
        $arr = [];
        for ($i = 0; $i < $entries; $i++) {
            $arr[key_of($i)] = $value;
        }
        $results['PHP array (in-process)'] = measure($keys, fn ($k) => $arr[$k], 200_000);
        if (function_exists('apcu_store') && apcu_enabled()) {
            for ($i = 0; $i < $entries; $i++) {
                apcu_store(key_of($i), $value);
            }
            $results['APCu apcu_fetch'] = measure($keys, fn ($k) => apcu_fetch($k), 200_000);
            apcu_clear_cache();
        } else {
            $results['APCu apcu_fetch'] = null;
            fwrite(STDERR, "APCu not enabled (php8.2-apcu, -d apc.enable_cli=1): not measured\n");
        }
        $shm = shm_attach(IPC_PRIVATE, max(1 << 20, $entries * 200));
        $sem = sem_get(IPC_PRIVATE);
        try {
            for ($i = 0; $i < $entries; $i++) {
                shm_put_var($shm, crc32(key_of($i)), $value);
            }
            $per = $entries > 10_000 ? 2_000 : 50_000;
            $results['seed: sem_acquire + shm_get_var'] = measure($keys, function ($k) use ($shm, $sem) {
                sem_acquire($sem);
                $v = shm_get_var($shm, crc32($k));
                sem_release($sem);
                return $v;
            }, $per);
            $results['seed: shm_get_var (unlocked)'] = measure($keys, fn ($k) => shm_get_var($shm, crc32($k)), $per);
        } finally {
            shm_remove($shm);
            sem_remove($sem);
        }
        $ffi = FFI::cdef('size_t strlen(const char *s);');
        $results['one FFI call (strlen)'] = measure($keys, fn ($k) => $ffi->strlen($k), 200_000);
        $rows[$entries] = $results;
    } finally {
        $raw->destroy();
        $ser->close();
        Map::destroyByName("php-bench-ser-" . getmypid() . "-$entries");
    }
}

printf("PHP %s, %s; warm throughput, uniform random keys replayed (4,096), 16 B keys, 64 B values; ns per get, median of %d rounds\n\n",
    PHP_VERSION, php_uname('m'), ROUNDS);
echo "| entries | contender | ns per get | ratio to shmkv (raw) |\n|---|---|---|---|\n";
foreach ($rows as $entries => $results) {
    $base = $results['shmkv get (raw codec)'];
    foreach ($results as $who => $ns) {
        printf("| %s | %s | %s | %s |\n", number_format($entries), $who,
            $ns === null ? 'not measured' : number_format($ns, 1),
            $ns === null ? '-' : number_format($ns / $base, 2) . 'x');
    }
}
