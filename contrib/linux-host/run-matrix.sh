#!/bin/bash
# Every harness case: interrupt and poll mode, each with a ram and a file namespace.
# Prints a PASS/FAIL line per case and exits non-zero if any failed.
set -u
HERE=$(dirname "$(readlink -f "$0")")
pass=0 fail=0
for mode in interrupt poll; do
  for backend in ram file; do
    if "$HERE/run-case.sh" "$mode" "$backend"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
  done
done
echo "linux-host: $pass passed, $fail failed"
[ $fail = 0 ]
