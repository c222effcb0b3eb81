<?php

declare(strict_types=1);

use Shmkv\Batch;
use Shmkv\CorruptedException;
use Shmkv\FullException;
use Shmkv\InvalidArgumentException;
use Shmkv\Library;
use Shmkv\LockTimeoutException;
use Shmkv\Map;
use Shmkv\MapExistsException;
use Shmkv\MapNotFoundException;
use Shmkv\NestedWriteException;
use Shmkv\NotFoundException;
use Shmkv\ReadOnlyException;
use Shmkv\ShmkvException;

final class MapTest extends ShmkvTestCase
{
    public function testSetGetHasRemoveCountAndArrayAccess(): void
    {
        $m = new Map($this->freshName('basic'), ['capacity' => 64, 'arena' => '64kb']);
        $this->assertInstanceOf(Countable::class, $m);
        $this->assertInstanceOf(ArrayAccess::class, $m);
        $this->assertNull($m->get('absent'), 'absent key');
        $this->assertSame('dflt', $m->get('absent', 'dflt'), 'default');
        $m->set('greeting', 'hello');
        $this->assertSame('hello', $m->get('greeting'), 'get after set');
        $m->add('added', 'by add');
        $this->assertSame('by add', $m->get('added'), 'add is set');
        // Values the seed's class could not tell from a failure.
        foreach (['false' => false, 'null' => null, 'zero' => 0, 'empty' => '', 'arr' => [1, 'a' => [true]],
            'float' => 1.5, 'obj' => new ArrayObject([1, 2])] as $k => $v) {
            $m[$k] = $v;
            $this->assertTrue($m->has($k), "has($k)");
            $this->assertEquals($v, $m[$k], "round trip of $k");
            $this->assertSame(gettype($v), gettype($m[$k]), "type of $k");
        }
        $this->assertSame(false, $m->get('false', 'dflt'), 'a stored false is false, not the default');
        $this->assertSame(null, $m->get('null', 'dflt'), 'a stored null is null, not the default');
        $this->assertTrue(isset($m['greeting']) && !isset($m['absent']), 'isset');
        $this->assertSame(9, count($m), 'count');
        $this->assertSame(9, $m->count(), 'count()');
        $this->assertSame(true, $m->remove('greeting'), 'remove present');
        $this->assertSame(false, $m->remove('greeting'), 'remove absent');
        $this->assertSame(true, $m->delete('added'), 'delete (alias)');
        unset($m['zero']);
        $this->assertSame(6, count($m), 'count after removals');
        $keys = $m->keys();
        sort($keys);
        $this->assertSame(['arr', 'empty', 'false', 'float', 'null', 'obj'], $keys, 'keys');
        $this->assertSame([1, 'a' => [true]], $m->toArray()['arr'], 'toArray');
        $seen = 0;
        foreach ($m as $k => $v) {
            $seen++;
        }
        $this->assertSame(6, $seen, 'iteration');
        $this->assertThrows(InvalidArgumentException::class, fn () => $m[] = 1, 'needs a key');
        $same = Map::open($m->name(), ['create' => false]);
        $this->assertSame([1, 'a' => [true]], $same['arr'], 'Map::open is new Map');
    }

    public function testValuesLargerThanTheReadBufferAndBinaryKeys(): void
    {
        $m = new Map($this->freshName('big'), ['codec' => 'raw']);
        $big = random_bytes(300_000);
        $key = "bin\0key\xff";
        $m->set($key, $big);
        $this->assertSame($big, $m->get($key), '300 KB value read whole');
        $this->assertSame($big, $m->get($key), 'again, with the grown buffer');
        $this->assertSame($big, $m->getRaw($key), 'getRaw');
        $m->set($key, 'small');
        $this->assertSame('small', $m->get($key), 'small after big');
        $this->assertThrows(InvalidArgumentException::class, fn () => $m->set('k', 42), 'strings only');
        $this->assertThrows(InvalidArgumentException::class, fn () => $m->set(str_repeat('k', 70_000), 'v'), 'too large');
        // Keys beginning with "\0shmkv:" are shmkv's own (the sync state).
        $this->assertThrows(InvalidArgumentException::class, fn () => $m->set("\0shmkv:sync", 'v'), 'is reserved');
        $this->assertSame(1, count($m), 'nothing stored was lost');
    }

    public function testCodecs(): void
    {
        $name = $this->freshName('codec');
        $json = new Map($name, ['codec' => 'json']);
        $json->set('cfg', ['a' => 1, 'b' => [1.0, 'x']]);
        $this->assertSame(['a' => 1, 'b' => [1.0, 'x']], $json->get('cfg'), 'json round trip');
        $raw = new Map($name, ['codec' => 'raw']);
        $this->assertSame('{"a":1,"b":[1.0,"x"]}', $raw->get('cfg'), 'json bytes as stored');
        $raw->set('garbage', "\x01\x02 not php");
        $ser = new Map($name);
        $this->assertSame('serialize', $ser->codec(), 'the default codec');
        $this->assertThrows(CorruptedException::class, fn () => $ser->get('garbage'), 'not a serialized PHP value');
        $this->assertThrows(CorruptedException::class, fn () => $json->get('garbage'), 'not JSON');
        $this->assertThrows(InvalidArgumentException::class, fn () => new Map($name, ['codec' => 'xml']), 'unknown codec');
        $ser->set('s', ['x' => new ArrayObject([1])]);
        $this->assertSame(serialize(['x' => new ArrayObject([1])]), $raw->get('s'), 'serialize bytes as stored');
    }

    public function testIgbinaryCodecWhenLoaded(): void
    {
        if (!extension_loaded('igbinary')) {
            $name = $this->freshName('igb');
            $this->assertThrows(InvalidArgumentException::class, fn () => new Map($name, ['codec' => 'igbinary']), 'igbinary');
            $this->markTestSkipped('igbinary is not loaded (php8.2-igbinary): checked that the codec is refused');
        }
        $name = $this->freshName('igb');
        $m = new Map($name, ['codec' => 'igbinary']);
        $m->set('v', ['a' => 1, 'f' => false, 'o' => new ArrayObject([2])]);
        $m->set('false', false);
        $m->set('null', null);
        $this->assertEquals(['a' => 1, 'f' => false, 'o' => new ArrayObject([2])], $m->get('v'));
        $this->assertSame(false, $m->get('false', 'dflt'));
        $this->assertSame(null, $m->get('null', 'dflt'));
        $raw = new Map($name, ['codec' => 'raw']);
        $this->assertSame(igbinary_serialize(false), $raw->get('false'), 'igbinary bytes as stored');
        $raw->set('garbage', 'b:0;');
        $this->assertThrows(CorruptedException::class, fn () => $m->get('garbage'), 'not igbinary');
    }

    public function testFalseIsStoredAsFalseInEveryCodec(): void
    {
        $name = $this->freshName('false');
        foreach (['serialize', 'json'] + (extension_loaded('igbinary') ? [2 => 'igbinary'] : []) as $codec) {
            $m = new Map($name, ['codec' => $codec]);
            $m->set("f-$codec", false);
            $this->assertSame(false, $m->get("f-$codec", 'dflt'), "$codec: false");
            $this->assertTrue($m->has("f-$codec"), "$codec: has");
            $m->atomic(fn (Batch $b) => $b->set("fb-$codec", false));
            $this->assertSame(false, $m->get("fb-$codec", 'dflt'), "$codec: false through a batch");
            $this->assertSame(false, $m->atomic(fn (Batch $b) => $b->get("fb-$codec", 'dflt')), "$codec: batch get");
        }
    }

    public function testOpenErrorsAndOptions(): void
    {
        $name = $this->freshName('open');
        $this->assertThrows(MapNotFoundException::class, fn () => new Map($name, ['create' => false]), 'not found');
        $this->assertThrows(NotFoundException::class, fn () => new Map($name, ['create' => false]), 'not found');
        $m = new Map($name, ['exclusive' => true, 'mode' => 0640, 'max_size' => '8mb', 'lock_timeout' => 0.5]);
        $this->assertThrows(MapExistsException::class, fn () => new Map($name, ['exclusive' => true]), 'already exists');
        $this->assertThrows(InvalidArgumentException::class, fn () => new Map($name, ['arena' => '12 parsecs']), 'unit');
        $this->assertThrows(InvalidArgumentException::class, fn () => new Map($name, ['arena' => 0]), 'positive');
        $this->assertThrows(InvalidArgumentException::class, fn () => new Map($name, ['mode' => 644]), 'mode');
        $this->assertThrows(InvalidArgumentException::class, fn () => new Map($name, ['capacty' => 1]), "unknown option 'capacty'");
        $this->assertThrows(InvalidArgumentException::class, fn () => new Map(''), 'name');
        $this->assertSame(64 << 20, Map::bytes('64MB'), 'size parsing');
        $ro = new Map($name, ['read_only' => true, 'create' => false]);
        $m->set('k', 'v');
        $this->assertSame('v', $ro->get('k'), 'read-only handle reads');
        $this->assertThrows(ReadOnlyException::class, fn () => $ro->set('k', 'w'), 'read-only');
        $this->assertSame('v', $m->get('k'), 'nothing changed');
        $stats = $m->stats();
        $this->assertSame($name, $stats['name'], 'stats name');
        $this->assertSame(1, $stats['live'], 'stats live');
        $m->verify();
        // ftok keys: the same path and id find the same map under another name.
        // (Not at the name's key: destroyed here, not by tearDown.)
        $fname = $this->freshName('ftok');
        $a = new Map($fname, ['ftok' => [__FILE__, 7]]);
        try {
            $a->set('x', 1);
            $b = new Map($fname, ['ftok' => [__FILE__, 7], 'create' => false]);
            $this->assertSame(1, $b->get('x'), 'ftok map');
            $this->assertThrows(MapNotFoundException::class, fn () => new Map($fname, ['create' => false]), 'not found');
        } finally {
            $a->destroy();
        }
        $this->assertThrows(InvalidArgumentException::class, fn () => new Map('p', ['ftok' => ['/no/such/file', 1]]), 'ftok');
        // A raw SysV key.
        $kname = $this->freshName('sysv');
        $key = 0x5a000000 | (getmypid() & 0xffffff);
        $c = new Map($kname, ['sysv_key' => $key]);
        try {
            $c->set('y', 2);
            $this->assertSame(2, (new Map($kname, ['sysv_key' => $key, 'create' => false]))->get('y'), 'sysv_key map');
        } finally {
            $c->destroy();
        }
    }

    public function testAtomicIsAllOrNothingAndSeesItsOwnWrites(): void
    {
        $m = new Map($this->freshName('batch'));
        $m->set('a', 1);
        $r = $m->atomic(function (Batch $b) {
            $b['a'] = $b['a'] + 1;
            $b->set('b', 'two');
            $this->assertSame('two', $b->get('b'), 'the batch sees its own write');
            $this->assertSame(true, $b->remove('b'), 'remove staged');
            $this->assertTrue(!$b->has('b'), 'removed in the batch');
            $b->add('c', false);
            $this->assertSame(false, $b->delete('nothing'), 'delete (alias) of an absent key');
            return 'done';
        });
        $this->assertSame('done', $r, 'atomic result');
        $this->assertSame(2, $m['a'], 'committed');
        $this->assertSame(false, $m->get('c', 'dflt'), 'committed false');
        $this->assertSame(3, $m->batch(fn (Batch $b) => 3), 'batch() is atomic()');
        $v = $m->version();
        $this->assertThrows(RuntimeException::class, function () use ($m) {
            $m->atomic(function (Batch $b) {
                $b['a'] = 100;
                $b['d'] = 'x';
                unset($b['c']);
                throw new RuntimeException('changed my mind');
            });
        }, 'changed my mind');
        $this->assertSame($v, $m->version(), 'an aborted batch commits nothing');
        $this->assertSame(2, $m['a'], 'a unchanged');
        $this->assertFalse($m->has('d'), 'd not stored');
        $this->assertTrue($m->has('c'), 'c not removed');
        $leaked = null;
        $m->atomic(function (Batch $b) use (&$leaked) {
            $leaked = $b;
        });
        $this->assertThrows(ShmkvException::class, fn () => $leaked->get('a'), 'the batch is over');
        // A write through the map inside its own batch is refused, not a deadlock.
        $this->assertThrows(NestedWriteException::class, fn () => $m->atomic(fn () => $m->set('x', 1)), 'nested');
        $this->assertFalse($m->has('x'));
    }

    public function testNestedAtomicJoinsTheOuterBatch(): void
    {
        $m = new Map($this->freshName('nested'));
        $v = $m->version();
        $r = $m->atomic(function (Batch $outer) use ($m) {
            $outer['a'] = 1;
            $inner = $m->atomic(function (Batch $b) use ($outer) {
                $this->assertSame($outer, $b, 'the inner callable gets the outer batch');
                $this->assertSame(1, $b['a'], 'the inner sees the outer write');
                $b['b'] = 2;
                return 'inner';
            });
            $this->assertSame(2, $outer['b'], 'the outer sees the inner write');
            return $inner;
        });
        $this->assertSame('inner', $r);
        $this->assertSame([1, 2], [$m['a'], $m['b']]);
        $this->assertSame($v + 1, $m->version(), 'one write');
        // An inner exception aborts everything, even when the outer catches it.
        $this->assertThrows(LogicException::class, fn () => $m->atomic(function (Batch $outer) use ($m) {
            $outer['c'] = 3;
            try {
                $m->atomic(function (Batch $b) {
                    $b['d'] = 4;
                    throw new LogicException('inner failed');
                });
            } catch (LogicException) {
                // swallowed by the outer callable
            }
            $outer['e'] = 5;
        }), 'inner failed');
        $this->assertFalse($m->has('c') || $m->has('d') || $m->has('e'), 'nothing applied');
        $this->assertSame($v + 1, $m->version());
    }

    public function testConcurrentIncrementsFromProcessesLoseNothing(): void
    {
        $name = $this->freshName('incr');
        $m = new Map($name);
        $m['n'] = 0;
        $code = '$m = new Shmkv\Map(' . var_export($name, true) . ', ["create" => false]);'
            . 'for ($i = 0; $i < 200; $i++) { $m->atomic(function ($b) { $b["n"] = $b["n"] + 1; }); } echo "ok";';
        $children = [];
        for ($i = 0; $i < 4; $i++) {
            $children[] = self::startPhp($code);
        }
        foreach ($children as $i => $child) {
            [$status, $out, $err] = self::finishPhp($child);
            $this->assertSame('ok', $out, "child $i output ($err)");
            $this->assertSame(0, $status, "child $i exit");
        }
        $this->assertSame(800, $m['n'], '4 processes x 200 locked increments');
    }

    public function testWriterKilledInsideAtomicLeavesTheMapConsistentForRust(): void
    {
        $name = $this->freshName('crash');
        $m = new Map($name);
        $m['before'] = 'kept';
        [$status, , $err] = self::runPhp('$m = new Shmkv\Map(' . var_export($name, true) . ', ["create" => false]);'
            . '$m->atomic(function ($b) { for ($i = 0; $i < 500; $i++) { $b["dead-$i"] = str_repeat("x", 100); }'
            . ' posix_kill(getmypid(), SIGKILL); });');
        $this->assertSame(-SIGKILL, $status, "the child was killed by SIGKILL ($err)");
        // The Rust reader first: it must find the map consistent.
        [$rc, $out, $cliErr] = $this->runCli(['verify', $name]);
        $this->assertSame(0, $rc, "shmkv verify after the kill: $out $cliErr");
        [$rc, $out] = $this->runCli(['keys', $name]);
        $this->assertSame(0, $rc);
        $this->assertSame(['before'], array_values(array_filter(explode("\n", $out))), 'the Rust reader sees no key of the killed batch');
        $this->assertTrue(!$m->has('dead-0') && !$m->has('dead-499'), 'nothing of the killed batch');
        $this->assertSame('kept', $m['before'], 'earlier data kept');
        $m['after'] = 'written';
        $this->assertSame(2, count($m), 'the lock was recovered; count');
        $m->verify();
        [$rc] = $this->runCli(['verify', $name]);
        $this->assertSame(0, $rc, 'shmkv verify after the next write');
    }

    public function testLockTimeoutNamesTheHolder(): void
    {
        $name = $this->freshName('lock');
        $m = new Map($name, ['lock_timeout' => 0.2]);
        $child = self::startPhp('$m = new Shmkv\Map(' . var_export($name, true) . ', ["create" => false]);'
            . '$m->atomic(function ($b) { echo getmypid(), "\n"; usleep(1_500_000); $b["k"] = "child"; });');
        $pid = (int) fgets($child[1][1]);
        try {
            $this->assertGreaterThan(0, $pid, 'the child holds the lock');
            $e = $this->assertThrows(LockTimeoutException::class, fn () => $m->set('k', 'parent'), 'write lock');
            $this->assertSame($pid, $e->holderPid, "holderPid from '{$e->getMessage()}'");
        } finally {
            [$status, , $err] = self::finishPhp($child);
        }
        $this->assertSame(0, $status, $err);
        $this->assertSame('child', $m['k']);
        $this->assertNull((new LockTimeoutException('write lock not obtained within 1s (holder unknown)'))->holderPid);
        $this->assertSame(42, (new LockTimeoutException('write lock not obtained within 1s (held by pid 42)'))->holderPid);
    }

    public function testAFullMapThrowsFullExceptionAndKeepsItsData(): void
    {
        $m = new Map($this->freshName('full'), ['capacity' => 16, 'arena' => '16kb', 'max_size' => '256kb']);
        $stored = 0;
        $e = $this->assertThrows(FullException::class, function () use ($m, &$stored) {
            for ($i = 0; $i < 10_000; $i++) {
                $m["k$i"] = str_repeat('v', 1000);
                $stored++;
            }
        });
        $this->assertGreaterThan(16, $stored, 'the map grew before it was full');
        $this->assertSame($stored, count($m), 'nothing stored was lost: ' . $e->getMessage());
        $this->assertThrows(FullException::class, fn () => $m->atomic(function (Batch $b) use ($stored) {
            for ($i = $stored; $i < $stored + 1000; $i++) {
                $b["k$i"] = str_repeat('v', 1000);
            }
        }));
        $this->assertSame($stored, count($m), 'a batch that does not fit applies nothing');
        $m->verify();
    }

    public function testWaitForChangeSeesAnotherProcessWrite(): void
    {
        $name = $this->freshName('wait');
        $m = new Map($name);
        $v = $m->version();
        $this->assertNull($m->waitForChange($v, 0.02), 'timeout');
        $child = self::startPhp('usleep(100000); (new Shmkv\Map(' . var_export($name, true) . '))->set("k", 1);');
        $t = microtime(true);
        $new = $m->waitForChange($v, 10.0);
        $this->assertTrue($new !== null && $new > $v, 'woken with a newer version');
        $this->assertLessThan(5.0, microtime(true) - $t, 'woken promptly');
        [$status, , $err] = self::finishPhp($child);
        $this->assertSame(0, $status, $err);
        $this->assertSame($new, $m->version());
    }

    public function testDestroyAndCompact(): void
    {
        $name = $this->freshName('destroy');
        $m = new Map($name, ['capacity' => 16, 'arena' => '16kb']);
        for ($i = 0; $i < 1000; $i++) {
            $m["k$i"] = str_repeat('v', 50);
        }
        $this->assertGreaterThan(1, $m->stats()['generation'], 'the map grew');
        $m->compact();
        $this->assertSame(1000, count($m), 'all kept through growth and compaction');
        $other = new Map($name, ['create' => false]);
        $m->destroy();
        $this->assertFalse($m->isOpen());
        $this->assertThrows(NotFoundException::class, fn () => $other->get('k1'), 'not found');
        $this->assertThrows(ShmkvException::class, fn () => $m->get('k1'), 'closed');
        $this->assertSame(false, Map::destroyByName($name), 'nothing left to remove');
        $m2 = new Map($name);
        $m2->close();
        $this->assertSame(true, Map::destroyByName($name), 'destroyByName removed it');
    }

    public function testTheRustCliReadsWhatPhpWroteAndTheOtherWayRound(): void
    {
        $name = $this->freshName('cli');
        $m = new Map($name, ['codec' => 'raw']);
        $m['from-php'] = 'hello from PHP';
        [$rc, $out, $err] = $this->runCli(['get', $name, 'from-php']);
        $this->assertSame(0, $rc, $err);
        $this->assertSame('hello from PHP', $out, 'shmkv get');
        [$rc, , $err] = $this->runCli(['put', $name, 'from-cli', 'hi PHP']);
        $this->assertSame(0, $rc, $err);
        $this->assertSame('hi PHP', $m['from-cli'], 'PHP reads what the CLI wrote');
        // PHP values through the serialize codec are bytes to Rust.
        $ser = new Map($name);
        $ser['arr'] = ['x' => 1];
        [, $out] = $this->runCli(['get', $name, 'arr']);
        $this->assertSame(serialize(['x' => 1]), $out, 'Rust reads the serialized bytes');
        [$rc, , $err] = $this->runCli(['put', $name, 'php-val', serialize([1, false])]);
        $this->assertSame(0, $rc, $err);
        $this->assertSame([1, false], $ser['php-val'], 'PHP decodes what Rust stored');
        [$rc, , $err] = $this->runCli(['rm', $name, 'from-php']);
        $this->assertSame(0, $rc, $err);
        $this->assertFalse($m->has('from-php'), 'PHP sees the Rust removal');
    }

    public function testLibraryOptionEnvironmentAndSearchOrder(): void
    {
        $name = $this->freshName('lib');
        $lib = Library::findLibrary();
        $this->assertFileExists($lib);
        $env = getenv();
        unset($env['SHMKV_FFI_LIB']);
        $code = 'try { $m = new Shmkv\Map(' . var_export($name, true) . ', %s); $m["x"] = 1; echo Shmkv\Library::source(); }'
            . ' catch (Shmkv\ShmkvException $e) { echo get_class($e), ": ", $e->getMessage(); }';
        // The option wins over the environment.
        [$status, $out] = self::runPhp(sprintf($code, '["library" => ' . var_export($lib, true) . ']'), [],
            ['SHMKV_FFI_LIB' => '/nonexistent/env.so'] + $env);
        $this->assertSame([0, $lib], [$status, $out]);
        // The environment is used without the option.
        [, $out] = self::runPhp(sprintf($code, '[]'), [], ['SHMKV_FFI_LIB' => '/nonexistent/env.so'] + $env);
        $this->assertStringContainsString('Shmkv\ShmkvException: cannot load /nonexistent/env.so', $out);
        [, $out] = self::runPhp(sprintf($code, '["library" => "/nonexistent/opt.so"]'), [], $env);
        $this->assertStringContainsString('cannot load /nonexistent/opt.so', $out);
        // Neither: next to the package (here the repository's target/release).
        [$status, $out] = self::runPhp(sprintf($code, '[]'), [], $env);
        $this->assertSame(0, $status);
        $this->assertStringEndsWith('/libshmkv_ffi.so', $out);
        $this->assertFileExists($out);
    }

    public function testPreloadedScopeIsUsed(): void
    {
        // The php-fpm setup of examples/php-fpm: ffi.preload names the
        // header written by Library::writePreloadHeader, opcache.preload
        // compiles the classes (preload.php; as root it needs
        // opcache.preload_user, and then PHP refuses FFI::load: hence
        // ffi.preload).
        $name = $this->freshName('preload');
        $dir = sys_get_temp_dir() . '/shmkv-preload-test-' . getmypid();
        @mkdir($dir);
        $header = Library::writePreloadHeader(null, $dir);
        try {
            $preload = dirname(__DIR__, 3) . '/examples/php-fpm/preload.php';
            $this->assertFileExists($preload);
            $args = ['-d', 'ffi.enable=preload', '-d', 'ffi.preload=' . $header,
                '-d', 'opcache.enable_cli=1', '-d', 'opcache.preload=' . $preload];
            if (function_exists('posix_geteuid') && posix_geteuid() === 0) {
                $args = array_merge($args, ['-d', 'opcache.preload_user=root']);
            }
            [$status, $out, $err] = self::runPhp('echo class_exists("Shmkv\\Map", false) ? "preloaded|" : "not preloaded|";'
                . '$m = new Shmkv\Map(' . var_export($name, true) . ');'
                . '$m["k"] = [1]; echo Shmkv\Library::source(), "|", json_encode($m["k"]);', $args);
            $this->assertSame(0, $status, $err);
            $this->assertSame('preloaded|preloaded scope SHMKV|[1]', $out);
        } finally {
            unlink($header);
            rmdir($dir);
        }
    }
}
