#!/bin/bash
# Every vfio-user harness case: interrupt and poll mode, each with a ram and a file namespace.
# Installs what it needs first (contrib/linux-host's packages, the QEMU chroot). Prints a
# PASS/FAIL line per case and exits non-zero if any failed. Run as root.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
"$HERE/../linux-host/install-deps.sh" || { echo "vfio-user: installing the host packages failed"; exit 1; }
"$HERE/setup-qemu.sh" || { echo "vfio-user: no QEMU with a vfio-user client"; exit 1; }
pass=0 fail=0
for mode in interrupt poll; do
  for backend in ram file; do
    if "$HERE/run-case.sh" "$mode" "$backend"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
  done
done
echo "vfio-user: $pass passed, $fail failed"
[ $fail = 0 ]
