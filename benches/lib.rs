//! The benchmarks of shmkv (see README.md here): `cold`, `compare`, `live`
//! and `scaling` are bench targets of this package; `scripts/bench.sh` runs
//! them all and regenerates BENCHMARKS.md. The library target is empty: it
//! exists because a package needs one.
