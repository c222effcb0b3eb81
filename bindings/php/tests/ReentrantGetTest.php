<?php

declare(strict_types=1);

/**
 * A get that runs inside another get: with pcntl_async_signals, a signal
 * handler runs at the interrupt check right after an FFI call returns, so
 * between `shmkv_get_copy` and the read of the thread's copy buffer. Such a
 * handler's get must neither overwrite the value the interrupted get is
 * about to read (every Map shares the one buffer) nor read through the
 * buffer's old address when the interrupted get just made it grow (and
 * move): that read is of freed memory.
 */
final class ReentrantGetTest extends ShmkvTestCase
{
    public function testGetsInsideASignalHandlerDuringAGet(): void
    {
        if (!function_exists('pcntl_async_signals') || !function_exists('posix_kill')) {
            $this->markTestSkipped('needs pcntl and posix');
        }
        $name = $this->freshName('reentrant');
        [$status, $out, $err] = self::runPhp('$name = ' . var_export($name, true) . ";\n" . <<<'PHP'
            use Shmkv\Map;
            $m = new Map($name, ['codec' => 'raw', 'arena' => '160mb', 'capacity' => 64]);
            $other = new Map($name, ['codec' => 'raw']);
            $small = 'a small value, read by the handler';
            $m->set('s', $small);
            $big = fn (int $i) => str_repeat(chr(65 + $i), 1 << $i);
            for ($i = 17; $i <= 25; $i++) {
                $m->set("big$i", $big($i));
            }
            $m->getRaw('s');
            $handlerWrong = 0;
            $runs = 0;
            pcntl_async_signals(true);
            pcntl_signal(SIGUSR1, function () use ($other, $small, &$handlerWrong, &$runs) {
                $runs++;
                if ($other->getRaw('s') !== $small || $other->get('s') !== $small) {
                    $handlerWrong++;
                }
            });
            $parent = getmypid();
            $pid = pcntl_fork();
            if ($pid === 0) {
                while (true) {
                    posix_kill($parent, SIGUSR1);
                    usleep(50);
                }
            }
            $outerWrong = 0;
            // Each of these gets makes the copy buffer grow (and move).
            for ($i = 17; $i <= 25; $i++) {
                $outerWrong += (int) ($m->getRaw("big$i") !== $big($i));
            }
            $want = $big(20);
            $deadline = microtime(true) + 20;
            for ($r = 0; $r < 3000 && microtime(true) < $deadline; $r++) {
                $outerWrong += (int) ($m->getRaw('big20') !== $want);
                $outerWrong += (int) ($m->get('big20') !== $want);
            }
            posix_kill($pid, SIGKILL);
            pcntl_waitpid($pid, $st);
            pcntl_signal(SIGUSR1, SIG_DFL);
            echo json_encode(['runs' => $runs, 'handler_wrong' => $handlerWrong, 'outer_wrong' => $outerWrong]);
            PHP, ['-d', 'memory_limit=-1']);
        $this->assertSame(0, $status, $err);
        $r = json_decode($out, true);
        $this->assertIsArray($r, $out . $err);
        $this->assertGreaterThan(100, $r['runs'], 'the handler ran too rarely to tell');
        $this->assertSame(0, $r['outer_wrong'], 'gets interrupted by a handler\'s get returned its value: ' . $out);
        $this->assertSame(0, $r['handler_wrong'], 'gets in the handler read a wrong (or freed) buffer: ' . $out);
    }
}
