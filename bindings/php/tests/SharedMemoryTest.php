<?php

declare(strict_types=1);

use Shmkv\InvalidArgumentException;
use Shmkv\Map;
use Shmkv\ShmkvException;
use Shmkv\SharedMemory;

final class SharedMemoryTest extends ShmkvTestCase
{
    public function testEveryMethod(): void
    {
        $key = $this->freshName('shm');
        $shm = new SharedMemory($key, 'sem-1', '100kb');
        $this->assertSame(true, $shm->add('a', 'one'));
        $this->assertSame(true, $shm->atomAdd('b', ['two']));
        $this->assertSame('one', $shm->get('a'));
        $this->assertSame(['two'], $shm->atomGet('b'));
        $this->assertSame(['two'], $shm->atomGet('b', 1));
        $this->assertNull($shm->get('absent'), 'absent: null');
        $this->assertTrue($shm->has('a'));
        $this->assertFalse($shm->has('absent'));
        $this->assertTrue($shm->remove('a'));
        $this->assertFalse($shm->remove('a'), 'remove of an absent key');
        $this->assertTrue($shm->atomRemove('b'));
        $this->assertFalse($shm->has('b'));
        $r = $shm->ensureAtomicity(function (SharedMemory $s) {
            $s->add('c', 1);
            $s->add('c', $s->get('c') + 1);
            return 'ret';
        });
        $this->assertSame('ret', $r, 'ensureAtomicity returns what the callable returned');
        $this->assertSame(2, $shm->get('c'));
        $this->assertSame(1, $shm->map()->count());
        $shm->add('d', 'x');
        $this->assertSame(true, $shm->cleanSharedMemory());
        $this->assertSame(0, $shm->map()->count(), 'cleanSharedMemory removes every entry');
        $shm->add('e', 'kept');
        $this->assertSame(true, $shm->detachSemaphore());
        $this->assertSame(true, $shm->detachSharedMemory());
        $this->assertThrows(ShmkvException::class, fn () => $shm->get('e'), 'detached');
        $again = new SharedMemory($key);
        $this->assertSame('kept', $again->get('e'), 'detaching keeps the data');
        $this->assertSame(true, $again->removeSharedMemory());
        $this->assertSame(true, $again->removeSemaphore());
        $this->assertFalse(Map::destroyByName($key), 'removeSharedMemory removed the map');
        $this->assertThrows(ShmkvException::class, fn () => $again->add('f', 1), 'removed');
    }

    public function testAnExceptionInEnsureAtomicityAppliesNothing(): void
    {
        $shm = new SharedMemory($this->freshName('shm-abort'));
        $shm->add('a', 1);
        $this->assertThrows(RuntimeException::class, fn () => $shm->ensureAtomicity(function (SharedMemory $s) {
            $s->add('a', 2);
            $s->add('b', 2);
            $s->remove('a');
            throw new RuntimeException('abort');
        }), 'abort');
        $this->assertSame(1, $shm->get('a'));
        $this->assertFalse($shm->has('b'));
        $shm->add('after', true);
        $this->assertTrue($shm->get('after'), 'the lock was released');
    }

    public function testNestedEnsureAtomicityJoinsTheOuterBatch(): void
    {
        $shm = new SharedMemory($this->freshName('shm-nested'));
        $shm->add('n', 0);
        $v = $shm->map()->version();
        $r = $shm->ensureAtomicity(function (SharedMemory $outer) {
            $outer->add('n', $outer->get('n') + 1);
            $inner = $outer->ensureAtomicity(function (SharedMemory $s) {
                $this->assertSame(1, $s->get('n'), 'the inner sees the outer write');
                $s->add('n', $s->get('n') + 1);
                return $s->ensureAtomicity(fn (SharedMemory $t) => 'deepest');
            });
            $this->assertSame(2, $outer->get('n'), 'the outer sees the inner write');
            return $inner;
        });
        $this->assertSame('deepest', $r);
        $this->assertSame(2, $shm->get('n'));
        $this->assertSame($v + 1, $shm->map()->version(), 'one write for the whole nest');
        // The outer aborting undoes the inner's writes.
        $this->assertThrows(LogicException::class, fn () => $shm->ensureAtomicity(function (SharedMemory $s) {
            $s->ensureAtomicity(fn (SharedMemory $t) => $t->add('inner', 1));
            throw new LogicException('outer fails');
        }));
        $this->assertFalse($shm->has('inner'));
    }

    public function testAtomAddInsideEnsureAtomicityJoinsTheBatch(): void
    {
        $shm = new SharedMemory($this->freshName('shm-atomadd'));
        $v = $shm->map()->version();
        $shm->ensureAtomicity(function (SharedMemory $s) use ($shm) {
            $s->atomAdd('x', 1);
            $shm->atomAdd('y', 2); // the same object, captured: joins too
            $this->assertSame(1, $s->atomGet('x'), 'atomGet sees the batch');
            $this->assertTrue($s->atomRemove('x'));
            $s->atomAdd('x', 3);
        });
        $this->assertSame([3, 2], [$shm->get('x'), $shm->get('y')]);
        $this->assertSame($v + 1, $shm->map()->version(), 'one write');
    }

    public function testTwoProcessesWithTheSameMasterKeyShareTheData(): void
    {
        $key = $this->freshName('shm-two');
        $shm = new SharedMemory($key);
        $shm->add('from-parent', ['p' => 1]);
        [$status, $out, $err] = self::runPhp('$s = new Shmkv\SharedMemory(' . var_export($key, true) . ');'
            . 'echo json_encode($s->get("from-parent"));'
            . '$s->ensureAtomicity(function ($t) { $t->add("from-child", getmypid()); $t->add(7, false); });');
        $this->assertSame(0, $status, $err);
        $this->assertSame('{"p":1}', $out, 'the child reads what the parent wrote');
        $this->assertIsInt($shm->get('from-child'), 'the parent reads what the child wrote');
        $this->assertSame(false, $shm->get(7));
        $this->assertTrue($shm->has(7));
    }

    public function testGetBytes(): void
    {
        $this->assertSame(100 * 1024, SharedMemory::getBytes('100kb'));
        $this->assertSame(2 << 20, SharedMemory::getBytes('2 MB'));
        $this->assertSame(1 << 30, SharedMemory::getBytes('1g'));
        $this->assertSame(512, SharedMemory::getBytes('512b'));
        $this->assertSame(4096, SharedMemory::getBytes('4096'));
        $this->assertThrows(InvalidArgumentException::class, fn () => SharedMemory::getBytes('5 parsecs'));
        $this->assertThrows(InvalidArgumentException::class, fn () => SharedMemory::getBytes(''));
        $this->assertThrows(InvalidArgumentException::class, fn () => SharedMemory::getBytes('0kb'));
        $this->assertThrows(InvalidArgumentException::class, fn () => new SharedMemory('never-made', null, '5 parsecs'));
    }

    public function testAStoredFalseWithAndWithoutTheBooleanHelper(): void
    {
        $shm = new SharedMemory($this->freshName('shm-bool'));
        $default = $shm->getBooleanHelper();
        $this->assertIsString($default);
        $shm->add('f', false);
        $this->assertSame(false, $shm->get('f'), 'false without touching the helper');
        $this->assertTrue($shm->has('f'));
        $shm->add('looks-like-helper', $default);
        $this->assertSame($default, $shm->get('looks-like-helper'), 'a string equal to the helper stays a string');
        $shm->setBooleanHelper('##false##');
        $this->assertSame('##false##', $shm->getBooleanHelper());
        $this->assertSame(false, $shm->get('f'), 'false with another helper');
        $shm->add('f2', false);
        $this->assertSame(false, $shm->get('f2'));
        $this->assertSame(false, $shm->ensureAtomicity(fn (SharedMemory $s) => $s->get('f2')), 'false in a batch');
        $this->assertSame(false, (new Map($shm->map()->name()))->get('f2', 'dflt'), 'false for Map readers too');
    }

    public function testIntKeysAndFullKeys(): void
    {
        $shm = new SharedMemory($this->freshName('shm-keys'));
        $shm->add(1, 'int one');
        $this->assertSame('int one', $shm->get(1));
        $this->assertSame('int one', $shm->get('1'), 'int 1 and "1" are the same key');
        $this->assertTrue($shm->has(1));
        // The seed keyed entries by crc32($key): these two collided.
        $this->assertSame(crc32('plumless'), crc32('buckeroo'));
        $shm->add('plumless', 'p');
        $shm->add('buckeroo', 'b');
        $this->assertSame(['p', 'b'], [$shm->get('plumless'), $shm->get('buckeroo')], 'no crc32 collision');
        $this->assertTrue($shm->remove(1));
        $this->assertFalse($shm->has(1));
    }

    public function testAFullMapGrowsInsteadOfFailing(): void
    {
        $shm = new SharedMemory($this->freshName('shm-grow'), null, '4kb');
        for ($i = 0; $i < 2000; $i++) {
            $shm->add("k$i", str_repeat('v', 100));
        }
        $this->assertSame(2000, $shm->map()->count());
        $this->assertSame(str_repeat('v', 100), $shm->get('k1999'));
        $this->assertGreaterThan(1, $shm->map()->stats()['generation'], 'the map grew');
    }
}
