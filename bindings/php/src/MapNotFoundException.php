<?php

declare(strict_types=1);

namespace Shmkv;

/** The name of the first version: the same as NotFoundException (what is thrown). */
class MapNotFoundException extends NotFoundException
{
}
