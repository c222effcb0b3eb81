#!/usr/bin/env bash
# Fails if any shmkv segment (root magic "SHMKVRT" or data magic "SHMKVDT")
# exists on the machine: tests, demos and benches must remove what they make.
set -euo pipefail
left=0
while read -r key shmid perms size cpid rest; do
  [ "$key" = "key" ] && continue
  # Root segments of shmkv start with "SHMKVRT"; data segments with "SHMKVDT".
  if [ -r /proc/sysvipc/shm ] && python3 - "$shmid" <<'PY' 2>/dev/null; then
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
p = libc.shmat(int(sys.argv[1]), None, 0o10000)  # SHM_RDONLY
if p in (None, ctypes.c_void_p(-1).value):
    sys.exit(1)
magic = ctypes.string_at(p, 7)
libc.shmdt(ctypes.c_void_p(p))
sys.exit(0 if magic in (b"SHMKVRT", b"SHMKVDT") else 1)
PY
    echo "leftover shmkv segment: shmid $shmid size $size cpid $cpid"
    left=1
  fi
done < /proc/sysvipc/shm
if [ "$left" -ne 0 ]; then
  echo "SysV objects were left behind (see above)"; exit 1
fi
echo "no shmkv segments left"
