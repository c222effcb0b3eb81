<?php
// PHPUnit bootstrap: the library's PSR-4 autoloader (Shmkv\ -> src/) and
// the shared test case.

declare(strict_types=1);

spl_autoload_register(function (string $class): void {
    $prefix = 'Shmkv\\';
    if (str_starts_with($class, $prefix)) {
        $file = __DIR__ . '/../src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});

require __DIR__ . '/ShmkvTestCase.php';
