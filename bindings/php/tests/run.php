<?php
// The PHP library's tests: `php -d ffi.enable=1 bindings/php/tests/run.php`
// (scripts/test-ffi.sh runs it with SHMKV_FFI_LIB pointing at the built
// library). Every function named test_* in tests/*Test.php runs; each
// failed check prints where and why; the exit code is the number of failed
// tests (0 = all passed). Maps made by a test are destroyed afterwards,
// also when it fails.

declare(strict_types=1);

spl_autoload_register(function (string $class): void {
    $prefix = 'Shmkv\\';
    if (str_starts_with($class, $prefix)) {
        require __DIR__ . '/../src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    }
});

final class CheckFailed extends Exception
{
}

/** @var list<string> */
$GLOBALS['made'] = [];
$GLOBALS['checks'] = 0;

/** A fresh map name for this test; destroyed after the test. */
function fresh_name(string $tag): string
{
    $name = "php-test-$tag-" . getmypid() . '-' . bin2hex(random_bytes(4));
    $GLOBALS['made'][] = $name;
    return $name;
}

function check(bool $cond, string $what): void
{
    $GLOBALS['checks']++;
    if (!$cond) {
        $t = debug_backtrace(DEBUG_BACKTRACE_IGNORE_ARGS, 1)[0];
        throw new CheckFailed("{$t['file']}:{$t['line']}: $what");
    }
}

function check_same(mixed $expected, mixed $actual, string $what): void
{
    check($expected === $actual, "$what: expected " . var_export($expected, true) . ', got ' . var_export($actual, true));
}

/** Runs `$fn` and checks it throws `$class` (whose message contains `$text`). */
function check_throws(string $class, callable $fn, string $text = ''): Throwable
{
    try {
        $fn();
    } catch (Throwable $e) {
        check($e instanceof $class, "expected $class, got " . get_class($e) . ': ' . $e->getMessage());
        check($text === '' || str_contains($e->getMessage(), $text), "message '{$e->getMessage()}' lacks '$text'");
        return $e;
    }
    check(false, "expected $class, nothing was thrown");
    throw new LogicException('unreachable');
}

/** Runs PHP code in a child process with the library loaded; returns [exit code or -signal, stdout]. */
function php_child(string $code): array
{
    $prelude = '<?php declare(strict_types=1); spl_autoload_register(function ($c) { '
        . 'if (str_starts_with($c, "Shmkv\\\\")) require ' . var_export(__DIR__ . '/../src/', true)
        . ' . str_replace("\\\\", "/", substr($c, 6)) . ".php"; });' . "\n";
    $file = tempnam(sys_get_temp_dir(), 'shmkv-php-child');
    file_put_contents($file, $prelude . $code);
    $p = proc_open([PHP_BINARY, '-d', 'ffi.enable=1', $file], [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
    $out = stream_get_contents($pipes[1]);
    $err = stream_get_contents($pipes[2]);
    fclose($pipes[1]);
    fclose($pipes[2]);
    // proc_close hides a death by signal: ask proc_get_status (once the
    // process is gone, it reports the signal).
    do {
        $st = proc_get_status($p);
        if ($st['running']) {
            usleep(1000);
        }
    } while ($st['running']);
    $status = $st['signaled'] ? -$st['termsig'] : $st['exitcode'];
    proc_close($p);
    unlink($file);
    if ($err !== '') {
        fwrite(STDERR, "child stderr: $err\n");
    }
    return [$status, $out];
}

foreach (glob(__DIR__ . '/*Test.php') as $file) {
    require $file;
}

$failed = 0;
$ran = 0;
foreach (get_defined_functions()['user'] as $fn) {
    if (!str_starts_with($fn, 'test_')) {
        continue;
    }
    $ran++;
    $GLOBALS['made'] = [];
    try {
        $fn();
        echo "ok   $fn\n";
    } catch (Throwable $e) {
        $failed++;
        echo "FAIL $fn: " . get_class($e) . ': ' . $e->getMessage() . "\n";
        if (!$e instanceof CheckFailed) {
            echo $e->getTraceAsString() . "\n";
        }
    } finally {
        gc_collect_cycles();
        foreach ($GLOBALS['made'] as $name) {
            try {
                \Shmkv\Map::destroyByName($name);
            } catch (Throwable $e) {
                echo "cleanup of $name: {$e->getMessage()}\n";
            }
        }
    }
}
echo "php tests: $ran run, $failed failed, {$GLOBALS['checks']} checks\n";
if ($ran === 0) {
    echo "no tests found\n";
    exit(1);
}
exit(min($failed, 255));
