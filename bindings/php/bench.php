<?php
// Shmkv\Map::get and ::set from PHP against the original class's primitives
// (sem_acquire + shm_get_var/shm_put_var + sem_release, as its atomGet /
// atomAdd did, and shm_get_var alone, as its get did), APCu and a PHP
// array, at 1,000 and 100,000 entries, in one run; then the issue's targets
// with verdicts computed from the numbers. Not part of CI.
//
// Usage (from the repository's root, after
// `cargo build --release -p shmkv-ffi`):
//   php -d ffi.enable=1 -d apc.enable_cli=1 -d apc.shm_size=256M bindings/php/bench.php [entries...]
//
// Method: 16-byte keys, 64-byte string values; a replayed set of 4,096
// uniform random keys (warm: what a hot worker sees); each contender runs
// its own loop with direct calls (no closure per call); ns per operation =
// median of 7 rounds (rounds of 200,000 gets / 20,000 sets; the `sysvshm`/`sysvsem`
// primitives do fewer at 100,000 entries: they scan a list). Sets overwrite
// existing keys. The `serialize` codec is Map's default (values are PHP
// values, as with shm_put_var); `raw` stores strings as they are. APCu runs
// with its defaults but for apc.shm_size: apc.entries_hint=4096 hash slots,
// so at 100,000 entries its chains are ~25 long (add
// `-d apc.entries_hint=131072` to compare with a sized APCu).

declare(strict_types=1);

spl_autoload_register(function (string $c): void {
    if (str_starts_with($c, 'Shmkv\\')) {
        require __DIR__ . '/src/' . str_replace('\\', '/', substr($c, 6)) . '.php';
    }
});

use Shmkv\Map;

$sizes = array_map('intval', array_slice($argv, 1)) ?: [1000, 100000];
const VALUE_LEN = 64;
const ROUNDS = 7;
const KEYS = 4096; // a power of two: $i & (KEYS - 1)

function key_of(int $i): string
{
    return str_pad("k$i", 16, '.');
}

/** ns per operation of `$round($n)` doing $n operations: median of ROUNDS rounds. */
function measure(callable $round, int $n): float
{
    $round(min($n, 1000)); // warm up
    $times = [];
    for ($r = 0; $r < ROUNDS; $r++) {
        $t = hrtime(true);
        $round($n);
        $times[] = (hrtime(true) - $t) / $n;
    }
    sort($times);
    return $times[intdiv(ROUNDS, 2)];
}

$results = []; // [entries][op][contender] => ns
$value = str_repeat('v', VALUE_LEN);
foreach ($sizes as $entries) {
    mt_srand(42);
    $keys = [];
    for ($i = 0; $i < KEYS; $i++) {
        $keys[] = key_of(mt_rand(0, $entries - 1));
    }
    $mask = KEYS - 1;
    $gets = 200_000;
    $sets = 20_000;
    $seedOps = $entries > 10_000 ? 2_000 : 50_000;
    $r = ['get' => [], 'set' => []];

    $rawName = 'php-bench-raw-' . getmypid() . "-$entries";
    $serName = 'php-bench-ser-' . getmypid() . "-$entries";
    $opts = ['capacity' => $entries, 'arena' => max(1 << 20, $entries * 256)];
    $raw = new Map($rawName, $opts + ['codec' => 'raw']);
    $ser = new Map($serName, $opts);
    try {
        foreach ([$raw, $ser] as $m) {
            $m->atomic(function ($b) use ($entries, $value) {
                for ($i = 0; $i < $entries; $i++) {
                    $b->set(key_of($i), $value);
                }
            });
        }
        $r['get']['shmkv Map::get (serialize codec)'] = measure(function (int $n) use ($ser, $keys, $mask) {
            for ($i = 0; $i < $n; $i++) {
                $ser->get($keys[$i & $mask]);
            }
        }, $gets);
        $r['get']['shmkv Map::get (raw codec)'] = measure(function (int $n) use ($raw, $keys, $mask) {
            for ($i = 0; $i < $n; $i++) {
                $raw->get($keys[$i & $mask]);
            }
        }, $gets);
        $r['set']['shmkv Map::set (serialize codec)'] = measure(function (int $n) use ($ser, $keys, $mask, $value) {
            for ($i = 0; $i < $n; $i++) {
                $ser->set($keys[$i & $mask], $value);
            }
        }, $sets);
        $r['set']['shmkv Map::set (raw codec)'] = measure(function (int $n) use ($raw, $keys, $mask, $value) {
            for ($i = 0; $i < $n; $i++) {
                $raw->set($keys[$i & $mask], $value);
            }
        }, $sets);
    } finally {
        $raw->destroy();
        $ser->destroy();
    }

    if (function_exists('apcu_store') && apcu_enabled()) {
        apcu_clear_cache();
        for ($i = 0; $i < $entries; $i++) {
            apcu_store(key_of($i), $value);
        }
        $r['get']['APCu apcu_fetch'] = measure(function (int $n) use ($keys, $mask) {
            for ($i = 0; $i < $n; $i++) {
                apcu_fetch($keys[$i & $mask]);
            }
        }, $gets);
        $r['set']['APCu apcu_store'] = measure(function (int $n) use ($keys, $mask, $value) {
            for ($i = 0; $i < $n; $i++) {
                apcu_store($keys[$i & $mask], $value);
            }
        }, $sets);
        apcu_clear_cache();
    } else {
        fwrite(STDERR, "APCu not enabled (php8.2-apcu, -d apc.enable_cli=1): not measured\n");
        $r['get']['APCu apcu_fetch'] = null;
        $r['set']['APCu apcu_store'] = null;
    }

    // The original class's primitives: one segment, crc32 keys, a semaphore.
    $shm = shm_attach(0 /* IPC_PRIVATE */, max(1 << 20, $entries * 200));
    $sem = sem_get(0 /* IPC_PRIVATE */);
    try {
        for ($i = 0; $i < $entries; $i++) {
            shm_put_var($shm, crc32(key_of($i)), $value);
        }
        $r['get']['sysvshm: sem_acquire + shm_get_var + sem_release'] = measure(function (int $n) use ($shm, $sem, $keys, $mask) {
            for ($i = 0; $i < $n; $i++) {
                sem_acquire($sem);
                shm_get_var($shm, crc32($keys[$i & $mask]));
                sem_release($sem);
            }
        }, $seedOps);
        $r['get']['sysvshm: shm_get_var (unlocked)'] = measure(function (int $n) use ($shm, $keys, $mask) {
            for ($i = 0; $i < $n; $i++) {
                shm_get_var($shm, crc32($keys[$i & $mask]));
            }
        }, $seedOps);
        $r['set']['sysvshm: sem_acquire + shm_put_var + sem_release'] = measure(function (int $n) use ($shm, $sem, $keys, $mask, $value) {
            for ($i = 0; $i < $n; $i++) {
                sem_acquire($sem);
                shm_put_var($shm, crc32($keys[$i & $mask]), $value);
                sem_release($sem);
            }
        }, min($seedOps, $sets));
    } finally {
        shm_remove($shm);
        sem_remove($sem);
    }

    $arr = [];
    for ($i = 0; $i < $entries; $i++) {
        $arr[key_of($i)] = $value;
    }
    $r['get']['PHP array (in-process)'] = measure(function (int $n) use ($arr, $keys, $mask) {
        for ($i = 0; $i < $n; $i++) {
            $v = $arr[$keys[$i & $mask]];
        }
    }, $gets);
    $r['set']['PHP array (in-process)'] = measure(function (int $n) use (&$arr, $keys, $mask, $value) {
        for ($i = 0; $i < $n; $i++) {
            $arr[$keys[$i & $mask]] = $value;
        }
    }, $gets);
    unset($arr);

    $ffi = FFI::cdef('size_t strlen(const char *s);');
    $r['get']['floor: one bare FFI call (strlen)'] = measure(function (int $n) use ($ffi, $keys, $mask) {
        for ($i = 0; $i < $n; $i++) {
            $ffi->strlen($keys[$i & $mask]);
        }
    }, $gets);
    $r['get']['floor: the loop alone'] = measure(function (int $n) use ($keys, $mask) {
        for ($i = 0; $i < $n; $i++) {
            $k = $keys[$i & $mask];
        }
    }, $gets);
    $results[$entries] = $r;
}

printf("PHP %s (%s), %s; 16 B keys, 64 B values, 4,096 uniform random keys replayed; ns per operation, median of %d rounds\n\n",
    PHP_VERSION, PHP_SAPI, php_uname('m'), ROUNDS);
echo "| entries | op | contender | ns | ratio to Map (serialize) |\n|---:|---|---|---:|---:|\n";
foreach ($results as $entries => $r) {
    foreach ($r as $op => $rows) {
        $base = $rows["shmkv Map::$op (serialize codec)"];
        foreach ($rows as $who => $ns) {
            printf("| %s | %s | %s | %s | %s |\n", number_format($entries), $op, $who,
                $ns === null ? 'not measured' : number_format($ns, 1),
                $ns === null ? '-' : number_format($ns / $base, 2) . 'x');
        }
    }
}

// The issue's targets, judged on the default codec (serialize), and on raw.
echo "\nTargets (issue 13):\n";
$verdicts = [];
$target = function (string $what, ?float $measured, float $limit, string $unit, bool $atMost) use (&$verdicts): void {
    if ($measured === null) {
        $verdicts[] = false;
        printf("- %s: not measured -> MISSED\n", $what);
        return;
    }
    $ok = $atMost ? $measured <= $limit : $measured >= $limit;
    $verdicts[] = $ok;
    printf("- %s: %s %s (target %s %s %s) -> %s\n", $what, number_format($measured, 2), $unit,
        $atMost ? '<=' : '>=', number_format($limit, 2), $unit, $ok ? 'met' : 'MISSED');
};
foreach (['serialize', 'raw'] as $codec) {
    if (isset($results[1000])) {
        $target("Map::get at 1,000 entries ($codec codec)", $results[1000]['get']["shmkv Map::get ($codec codec)"], 400, 'ns', true);
    }
    if (isset($results[100000])) {
        $g = $results[100000]['get'];
        $apcu = $g['APCu apcu_fetch'];
        $target("Map::get / apcu_fetch at 100,000 entries ($codec codec)",
            $apcu === null ? null : $g["shmkv Map::get ($codec codec)"] / $apcu, 0.5, 'x', true);
        $target("sysvshm locked get / Map::get at 100,000 entries ($codec codec)",
            $g['sysvshm: sem_acquire + shm_get_var + sem_release'] / $g["shmkv Map::get ($codec codec)"], 100, 'x', false);
    }
}
if (!isset($results[1000], $results[100000])) {
    echo "(run with the default sizes, 1000 and 100000, for every target)\n";
}
printf("%d of %d targets met\n", count(array_filter($verdicts)), count($verdicts));
