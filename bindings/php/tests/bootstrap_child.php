<?php
// Child processes of the tests: the library's autoloader only.

declare(strict_types=1);

spl_autoload_register(function (string $class): void {
    if (str_starts_with($class, 'Shmkv\\')) {
        require __DIR__ . '/../src/' . str_replace('\\', '/', substr($class, 6)) . '.php';
    }
});
