#!/bin/bash
# Benchmarks nvmf-tgt's vfio-user server without a VM: nvmf-perf --vfio-user is the VMM, with a
# guest NVMe driver's queues in a memfd, on CPU 1; the target on CPU 0 serves a null namespace
# of 1 GiB. Writes contrib/bench/results/vfio-user-DATE.{md,json} (and .raw.jsonl).
#
#   ./contrib/bench/vfio-user.sh
#
# Target modes: interrupt (interrupt_mode = true, disable_mappable_bar0 = true: every doorbell
# write is a message that wakes the reactor) and poll (interrupt_mode = false,
# disable_mappable_bar0 = false: the reactor spins; doorbells are mapped when the target offers
# the page, messages otherwise; the report says which). Client reaping: irq (completions found
# after the queue's MSI-X eventfd fires, as Linux's nvme driver does) and busy-poll (polled CQs
# created without interrupts, spun on in guest memory). Cases: 4K randread at QD1 (latency)
# and QD32 (IOPS), each with shadow doorbells (nvmf-perf's default, as Linux: Doorbell Buffer
# Config, a doorbell write only when EventIdx asks) and without (*-noshadow:
# --no-shadow-doorbells, every batch writes its doorbells). A third mode, interrupt-nopoll, is
# interrupt mode with busy_poll_us = 0: the reactor sleeps in epoll as soon as a pass finds
# nothing.
#
# Environment:
#   BENCH_SECONDS       seconds per run (default 10)
#   BENCH_REPEATS       runs per figure; the report shows median and min..max (default 3)
#   BENCH_RESULTS_DIR   where results go (default contrib/bench/results)
#   BENCH_NAME          file name prefix (default vfio-user)
#   BENCH_NOTES         a markdown file appended to the report as its notes (optional)
#   BENCH_MODES         target modes, in the order each repeat runs them (default
#                       "interrupt poll"; also interrupt-nopoll)
#   BENCH_CASES         an extended regex: only the cases whose names match (default all)
#   CARGO_TARGET_DIR    where cargo builds (default ./target)
#
# Needs at least 2 CPUs. Exits non-zero with a message when anything fails; the target it
# started is always stopped.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HELPER=$ROOT/contrib/bench/bench.py

export BENCH_SECONDS=${BENCH_SECONDS:-10}
export BENCH_REPEATS=${BENCH_REPEATS:-3}
# The cases say how the client reaps; nothing is added to them.
export BENCH_PERF_ARGS=
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/contrib/bench/results}
NAME=${BENCH_NAME:-vfio-user}

SUBNQN=nqn.2026-12.io.nvmf-tgt:vfio-bench
BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
TGT=$BIN_DIR/nvmf-tgt
PERF=$BIN_DIR/nvmf-perf
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=contrib/bench/lib.sh
. "$ROOT/contrib/bench/lib.sh"

# The I/O cases: name, then nvmf-perf arguments.
CASES=(
  "randread-4k-qd1-irq|-w randread -o 4k -q 1"
  "randread-4k-qd1-busy-poll|-w randread -o 4k -q 1 --busy-poll"
  "randread-4k-qd32-irq|-w randread -o 4k -q 32"
  "randread-4k-qd32-busy-poll|-w randread -o 4k -q 32 --busy-poll"
  "randread-4k-qd1-irq-noshadow|-w randread -o 4k -q 1 --no-shadow-doorbells"
  "randread-4k-qd1-busy-poll-noshadow|-w randread -o 4k -q 1 --busy-poll --no-shadow-doorbells"
  "randread-4k-qd32-irq-noshadow|-w randread -o 4k -q 32 --no-shadow-doorbells"
  "randread-4k-qd32-busy-poll-noshadow|-w randread -o 4k -q 32 --busy-poll --no-shadow-doorbells"
)

perf_target() {
  PERF_TARGET=(--vfio-user "$WORK/vm/cntrl")
}

vfio_socket_ready() { [ -S "$WORK/vm/cntrl" ]; }

# write_vfio_config MODE -> $WORK/target.toml
write_vfio_config() {
  local mode=$1 interrupt mappable_off busy_poll_us=50
  case $mode in
    interrupt) interrupt=true mappable_off=true ;;
    interrupt-nopoll) interrupt=true mappable_off=true busy_poll_us=0 ;;
    poll) interrupt=false mappable_off=false ;;
    *) die "unknown mode $mode" ;;
  esac
  cat >"$WORK/target.toml" <<EOF
[target]
interrupt_mode = $interrupt
core_mask = "0x1"
control_socket = "$WORK/ctl.sock"
busy_poll_us = $busy_poll_us

[transport.vfiouser]
disable_mappable_bar0 = $mappable_off

[[subsystem]]
nqn = "$SUBNQN"
allow_any_host = true

[[subsystem.listener]]
transport = "vfiouser"
path = "$WORK/vm"

[[subsystem.namespace]]
nsid = 1
null = { size = "1GiB" }
EOF
  "$TGT" check -c "$WORK/target.toml" >"$WORK/check.log" 2>&1 \
    || { cat "$WORK/check.log" >&2; die "generated config does not pass nvmf-tgt check"; }
}

run_io() {
  local mode=$1 rep=$2 entry case args
  write_vfio_config "$mode"
  launch_target "$mode mode, vfio-user, null namespace" vfio_socket_ready
  for entry in "${CASES[@]}"; do
    case=${entry%%|*}
    args=${entry#*|}
    [[ $case =~ ${BENCH_CASES:-.} ]] || continue
    # shellcheck disable=SC2086
    run_case "$mode" "$case" "$rep" $args
  done
  stop_target
}

# What else runs on the machine, sampled over a second, for the report.
record_load() {
  python3 "$HELPER" load "$1" >>"$RAW" || die "sampling the machine's load failed"
}

trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM

for v in BENCH_SECONDS BENCH_REPEATS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (target on 0, nvmf-perf on 1)"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v python3 >/dev/null || die "python3 not found"
if [ -n "${BENCH_NOTES:-}" ]; then
  [ -f "$BENCH_NOTES" ] || die "BENCH_NOTES=$BENCH_NOTES is not a file"
  BENCH_NOTES=$(cd "$(dirname "$BENCH_NOTES")" && pwd)/$(basename "$BENCH_NOTES")
  export BENCH_NOTES
fi

say "building release binaries"
cargo build --release --bins || die "cargo build --release --bins failed"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nvmf-bench-vfio.XXXXXX")
RAW=$WORK/raw.jsonl
: >"$RAW"

record_load before
# Repeats go round both modes in turn, so a slow spell of the machine falls on both alike.
for rep in $(seq "$BENCH_REPEATS"); do
  for mode in ${BENCH_MODES:-interrupt poll}; do
    run_io "$mode" "$rep"
  done
done
record_load after

mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/$NAME-$(date +%Y-%m-%d)
cp "$RAW" "$OUT.raw.jsonl"
python3 "$HELPER" vfio-report "$RAW" "$OUT" || die "writing the report failed"
say "results: $OUT.md $OUT.json (raw: $OUT.raw.jsonl)"
