<?php

declare(strict_types=1);

use Shmkv\Batch;
use Shmkv\CorruptedException;
use Shmkv\InvalidArgumentException;
use Shmkv\Map;
use Shmkv\MapExistsException;
use Shmkv\MapNotFoundException;
use Shmkv\ReadOnlyException;

function test_set_get_has_delete_and_array_access(): void
{
    $m = Map::open(fresh_name('basic'), ['capacity' => 64, 'arena' => '64kb']);
    check_same(null, $m->get('absent'), 'absent key');
    check_same('dflt', $m->get('absent', 'dflt'), 'default');
    $m->set('greeting', 'hello');
    check_same('hello', $m->get('greeting'), 'get after set');
    // Values the seed's class could not tell from a failure.
    foreach (['false' => false, 'null' => null, 'zero' => 0, 'empty' => '', 'arr' => [1, 'a' => [true]],
        'float' => 1.5, 'obj' => new ArrayObject([1, 2])] as $k => $v) {
        $m[$k] = $v;
        check($m->has($k), "has($k)");
        check($m[$k] == $v && gettype($m[$k]) === gettype($v), "round trip of $k");
    }
    check_same(false, $m->get('false', 'dflt'), 'a stored false is false, not the default');
    check_same(null, $m->get('null', 'dflt'), 'a stored null is null, not the default');
    check(isset($m['greeting']) && !isset($m['absent']), 'isset');
    check_same(8, count($m), 'count');
    check_same(true, $m->delete('greeting'), 'delete present');
    check_same(false, $m->delete('greeting'), 'delete absent');
    unset($m['zero']);
    check_same(6, count($m), 'count after deletes');
    $keys = $m->keys();
    sort($keys);
    check_same(['arr', 'empty', 'false', 'float', 'null', 'obj'], $keys, 'keys');
    check_same([1, 'a' => [true]], $m->toArray()['arr'], 'toArray');
    $seen = 0;
    foreach ($m as $k => $v) {
        $seen++;
    }
    check_same(6, $seen, 'iteration');
    check_throws(InvalidArgumentException::class, fn () => $m[] = 1, 'needs a key');
}

function test_values_larger_than_the_read_buffer_and_binary_keys(): void
{
    $m = Map::open(fresh_name('big'), ['codec' => 'raw']);
    $big = random_bytes(300_000);
    $key = "bin\0key\xff";
    $m->set($key, $big);
    check_same($big, $m->get($key), '300 KB value read whole');
    check_same($big, $m->get($key), 'again, with the grown buffer');
    $m->set($key, 'small');
    check_same('small', $m->get($key), 'small after big');
    check_throws(InvalidArgumentException::class, fn () => $m->set('k', 42), 'strings only');
    check_throws(InvalidArgumentException::class, fn () => $m->set(str_repeat('k', 70_000), 'v'), 'too large');
    check_same(1, count($m), 'nothing stored was lost');
}

function test_codecs(): void
{
    $name = fresh_name('codec');
    $json = Map::open($name, ['codec' => 'json']);
    $json->set('cfg', ['a' => 1, 'b' => [1.0, 'x']]);
    check_same(['a' => 1, 'b' => [1.0, 'x']], $json->get('cfg'), 'json round trip');
    $raw = Map::open($name, ['codec' => 'raw']);
    check_same('{"a":1,"b":[1.0,"x"]}', $raw->get('cfg'), 'json bytes as stored');
    $raw->set('garbage', "\x01\x02 not php");
    $ser = Map::open($name);
    check_throws(CorruptedException::class, fn () => $ser->get('garbage'), 'not a serialized PHP value');
    check_throws(CorruptedException::class, fn () => $json->get('garbage'), 'not JSON');
    check_throws(InvalidArgumentException::class, fn () => Map::open($name, ['codec' => 'xml']), 'unknown codec');
}

function test_open_errors_and_options(): void
{
    $name = fresh_name('open');
    check_throws(MapNotFoundException::class, fn () => Map::open($name, ['create' => false]), 'not found');
    $m = Map::open($name, ['exclusive' => true, 'mode' => 0640, 'max_size' => '8mb', 'lock_timeout' => 0.5]);
    check_throws(MapExistsException::class, fn () => Map::open($name, ['exclusive' => true]), 'already exists');
    check_throws(InvalidArgumentException::class, fn () => Map::open($name, ['arena' => '12 parsecs']), 'unit');
    check_throws(InvalidArgumentException::class, fn () => Map::open($name, ['arena' => 0]), 'positive');
    check_throws(InvalidArgumentException::class, fn () => Map::open($name, ['mode' => 644]), 'mode');
    check_throws(InvalidArgumentException::class, fn () => Map::open($name, ['capacty' => 1]), "unknown option 'capacty'");
    check_throws(InvalidArgumentException::class, fn () => Map::open(''), 'name');
    check_same(64 << 20, Map::bytes('64MB'), 'size parsing');
    $ro = Map::open($name, ['read_only' => true, 'create' => false]);
    $m->set('k', 'v');
    check_same('v', $ro->get('k'), 'read-only handle reads');
    check_throws(ReadOnlyException::class, fn () => $ro->set('k', 'w'), 'read-only');
    check_same('v', $m->get('k'), 'nothing changed');
    $stats = $m->stats();
    check_same($name, $stats['name'], 'stats name');
    check_same(1, $stats['live'], 'stats live');
    $m->verify();
    // ftok keys: the same path and id find the same map under another name.
    // (Not at the name's key: destroyed here, not by the runner.)
    $fname = fresh_name('ftok');
    $a = Map::open($fname, ['ftok' => [__FILE__, 7]]);
    try {
        $a->set('x', 1);
        $b = Map::open($fname, ['ftok' => [__FILE__, 7], 'create' => false]);
        check_same(1, $b->get('x'), 'ftok map');
        check_throws(MapNotFoundException::class, fn () => Map::open($fname, ['create' => false]), 'not found');
    } finally {
        $a->destroy();
    }
    check_throws(InvalidArgumentException::class, fn () => Map::open('p', ['ftok' => ['/no/such/file', 1]]), 'ftok');
}

function test_batch_is_all_or_nothing_and_sees_its_own_writes(): void
{
    $m = Map::open(fresh_name('batch'));
    $m->set('a', 1);
    $r = $m->batch(function (Batch $b) {
        $b['a'] = $b['a'] + 1;
        $b->set('b', 'two');
        check_same('two', $b->get('b'), 'the batch sees its own write');
        check_same(true, $b->delete('b'), 'delete staged');
        check(!$b->has('b'), 'deleted in the batch');
        $b['c'] = false;
        return 'done';
    });
    check_same('done', $r, 'batch result');
    check_same(2, $m['a'], 'committed');
    check_same(false, $m->get('c', 'dflt'), 'committed false');
    $v = $m->version();
    check_throws(RuntimeException::class, function () use ($m) {
        $m->batch(function (Batch $b) {
            $b['a'] = 100;
            $b['d'] = 'x';
            throw new RuntimeException('changed my mind');
        });
    }, 'changed my mind');
    check_same($v, $m->version(), 'an aborted batch commits nothing');
    check_same(2, $m['a'], 'a unchanged');
    check(!$m->has('d'), 'd not stored');
    $leaked = null;
    $m->batch(function (Batch $b) use (&$leaked) {
        $leaked = $b;
    });
    check_throws(Shmkv\ShmkvException::class, fn () => $leaked->get('a'), 'the batch is over');
    // A write inside a batch on the same map is refused, not a deadlock.
    check_throws(Shmkv\ShmkvException::class, fn () => $m->batch(fn () => $m->set('x', 1)), 'nested');
}

function test_concurrent_increments_from_processes_lose_nothing(): void
{
    $name = fresh_name('incr');
    $m = Map::open($name);
    $m['n'] = 0;
    $code = '$m = Shmkv\Map::open(' . var_export($name, true) . ', ["create" => false]);'
        . 'for ($i = 0; $i < 200; $i++) { $m->batch(function ($b) { $b["n"] = $b["n"] + 1; }); } echo "ok";';
    $procs = [];
    for ($i = 0; $i < 4; $i++) {
        $procs[] = proc_open([PHP_BINARY, '-d', 'ffi.enable=1', '-r', 'spl_autoload_register(function ($c) { require '
            . var_export(__DIR__ . '/../src/', true) . ' . substr($c, 6) . ".php"; });' . $code],
            [1 => ['pipe', 'w']], $pipes[$i]);
    }
    foreach ($procs as $i => $p) {
        check_same('ok', stream_get_contents($pipes[$i][1]), "child $i output");
        check_same(0, proc_close($p), "child $i exit");
    }
    check_same(800, $m['n'], '4 processes x 200 locked increments');
}

function test_writer_killed_inside_a_batch_leaves_the_map_consistent(): void
{
    $name = fresh_name('crash');
    $m = Map::open($name);
    $m['before'] = 'kept';
    [$status] = php_child('$m = Shmkv\Map::open(' . var_export($name, true) . ', ["create" => false]);'
        . '$m->batch(function ($b) { for ($i = 0; $i < 500; $i++) { $b["dead-$i"] = str_repeat("x", 100); }'
        . ' posix_kill(getmypid(), SIGKILL); });');
    check_same(-SIGKILL, $status, 'the child was killed by SIGKILL');
    check(!$m->has('dead-0') && !$m->has('dead-499'), 'nothing of the killed batch');
    check_same('kept', $m['before'], 'earlier data kept');
    $m['after'] = 'written';
    check_same(2, count($m), 'the lock was recovered; count');
    $m->verify();
}

function test_wait_for_change_sees_another_process_write(): void
{
    $name = fresh_name('wait');
    $m = Map::open($name);
    $v = $m->version();
    check_same(null, $m->waitForChange($v, 0.02), 'timeout');
    $child = proc_open([PHP_BINARY, '-d', 'ffi.enable=1', '-r', 'usleep(100000); spl_autoload_register(function ($c) { require '
        . var_export(__DIR__ . '/../src/', true) . ' . substr($c, 6) . ".php"; });'
        . '(Shmkv\Map::open(' . var_export($name, true) . '))->set("k", 1);'], [], $pipes);
    $t = microtime(true);
    $new = $m->waitForChange($v, 10.0);
    check($new !== null && $new > $v, 'woken with a newer version');
    check(microtime(true) - $t < 5.0, 'woken promptly');
    check_same(0, proc_close($child), 'child exit');
}

function test_destroy_and_compact(): void
{
    $name = fresh_name('destroy');
    $m = Map::open($name, ['capacity' => 16, 'arena' => '16kb']);
    for ($i = 0; $i < 1000; $i++) {
        $m["k$i"] = str_repeat('v', 50);
    }
    check($m->stats()['generation'] > 1, 'the map grew');
    $m->compact();
    check_same(1000, count($m), 'all kept through growth and compaction');
    $other = Map::open($name, ['create' => false]);
    $m->destroy();
    check_throws(MapNotFoundException::class, fn () => $other->get('k1'), 'not found');
    check_throws(Shmkv\ShmkvException::class, fn () => $m->get('k1'), 'closed');
    check_same(false, Map::destroyByName($name), 'nothing left to remove');
}

function test_cross_language_the_rust_cli_reads_what_php_wrote(): void
{
    $cli = getenv('SHMKV_CLI');
    check($cli !== false && is_executable($cli), 'SHMKV_CLI names the shmkv command (scripts/test-ffi.sh sets it)');
    $name = fresh_name('cli');
    $m = Map::open($name, ['codec' => 'raw']);
    $m['from-php'] = 'hello from PHP';
    $out = shell_exec(escapeshellarg($cli) . ' get ' . escapeshellarg($name) . ' from-php');
    check_same('hello from PHP', $out, 'shmkv get');
    shell_exec(escapeshellarg($cli) . ' put ' . escapeshellarg($name) . ' from-cli ' . escapeshellarg('hi PHP'));
    check_same('hi PHP', $m['from-cli'], 'PHP reads what the CLI wrote');
}
