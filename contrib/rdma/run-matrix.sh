#!/bin/bash
# Every NVMe/RDMA harness case: interrupt and poll mode, each with a ram and a file namespace,
# one guest each (TARGET=nvmet runs the same four against Linux's nvmet-rdma). nvmf-tgt's
# poll-mode ram case runs with `no_srq = true` (a receive queue per QP), the others on the
# device's shared receive queue.
# Prints a PASS/FAIL line per case and exits non-zero if any failed. Run as root.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
"$HERE/../linux-host/install-deps.sh" || { echo "rdma: installing the host packages failed"; exit 1; }
pass=0 fail=0
for mode in interrupt poll; do
  for backend in ram file; do
    no_srq=0
    [ "$mode-$backend" != poll-ram ] || no_srq=1
    if NO_SRQ=$no_srq "$HERE/run-case.sh" "$mode" "$backend"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
  done
done
echo "rdma: $pass passed, $fail failed"
[ $fail = 0 ]
