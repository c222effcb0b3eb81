<?php

declare(strict_types=1);

use PHPUnit\Framework\TestCase;
use Shmkv\Map;

/**
 * Unique map names per test, destroyed in tearDown (also when the test
 * fails), and helpers to run PHP children and the Rust `shmkv` command.
 */
abstract class ShmkvTestCase extends TestCase
{
    /** @var list<string> */
    private array $made = [];

    /** A fresh map name for this test; destroyed after the test. */
    protected function freshName(string $tag): string
    {
        $name = "php-test-$tag-" . getmypid() . '-' . bin2hex(random_bytes(4));
        $this->made[] = $name;
        return $name;
    }

    protected function tearDown(): void
    {
        // Handles still referenced by the test's locals are closed by
        // their destructors; destroying by name does not need them closed.
        gc_collect_cycles();
        foreach ($this->made as $name) {
            Map::destroyByName($name);
        }
        $this->made = [];
    }

    /** Runs `$fn` and checks it throws `$class` whose message contains `$text`. */
    protected function assertThrows(string $class, callable $fn, string $text = ''): Throwable
    {
        try {
            $fn();
        } catch (Throwable $e) {
            $this->assertInstanceOf($class, $e, get_class($e) . ': ' . $e->getMessage());
            if ($text !== '') {
                $this->assertStringContainsString($text, $e->getMessage());
            }
            return $e;
        }
        $this->fail("expected $class, nothing was thrown");
    }

    /** The code prepended to child scripts: the autoloader. */
    protected static function prelude(): string
    {
        return '<?php declare(strict_types=1); require ' . var_export(__DIR__ . '/bootstrap_child.php', true) . ";\n";
    }

    /**
     * Starts PHP code in a child process with the library loaded.
     *
     * @param list<string> $phpArgs extra `php` arguments (e.g. -d settings)
     * @return array{0: resource, 1: array<int, resource>, 2: string}
     */
    protected static function startPhp(string $code, array $phpArgs = [], ?array $env = null): array
    {
        $file = tempnam(sys_get_temp_dir(), 'shmkv-php-child');
        file_put_contents($file, self::prelude() . $code);
        $p = proc_open(array_merge([PHP_BINARY, '-d', 'ffi.enable=1'], $phpArgs, [$file]),
            [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env);
        return [$p, $pipes, $file];
    }

    /**
     * Waits for a child of startPhp; returns [exit code or -signal, stdout, stderr].
     *
     * @param array{0: resource, 1: array<int, resource>, 2: string} $child
     * @return array{0: int, 1: string, 2: string}
     */
    protected static function finishPhp(array $child): array
    {
        [$p, $pipes, $file] = $child;
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
        return [$status, $out, $err];
    }

    /** Runs PHP code in a child; returns [exit code or -signal, stdout, stderr]. */
    protected static function runPhp(string $code, array $phpArgs = [], ?array $env = null): array
    {
        return self::finishPhp(self::startPhp($code, $phpArgs, $env));
    }

    /** The `shmkv` command (SHMKV_CLI). */
    protected function cli(): string
    {
        $cli = getenv('SHMKV_CLI');
        $this->assertTrue($cli !== false && is_executable($cli),
            'SHMKV_CLI names the shmkv command (cargo build --features cli --bin shmkv; scripts/test-ffi.sh sets it)');
        return $cli;
    }

    /**
     * Runs the `shmkv` command with `$args`; returns [exit code, stdout, stderr].
     *
     * @param list<string> $args
     * @return array{0: int, 1: string, 2: string}
     */
    protected function runCli(array $args): array
    {
        $p = proc_open(array_merge([$this->cli()], $args), [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        return [proc_close($p), $out, $err];
    }
}
