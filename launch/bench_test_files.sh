#!/usr/bin/env bash
# Time of test files, each in a pytest process of its own with every test (slow ones included), as CI selects
# them: wall clock, CPU time of pytest and the subprocesses it waited for (user + system), the load average
# before and after (on a shared machine the CPU time is the steadier number), pytest's summary with the JAX
# compilation-cache line, and the slowest tests. Each file starts with an empty compilation cache.
#   bash launch/bench_test_files.sh tests/test_train.py tests/test_health.py   # repository root, venv active
set -uo pipefail
cd "$(dirname "$0")/.."
TIMEFORMAT="wall: %R s; cpu: %U s user, %S s system (pytest and the processes it waited for)"
for file in "$@"; do
  echo "== $file (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
  out=$(mktemp)
  time nice -n 5 python -m pytest -q -p no:cacheprovider -p no:xdist -m 'slow or not slow' "$file" \
    --durations=10 >"$out" 2>&1
  grep -E "passed|failed|error|JAX compilation cache|^[0-9.]+s (call|setup|teardown)" "$out"
  echo "(load after: $(cut -d' ' -f1-3 /proc/loadavg))"
  rm -f "$out"
done
