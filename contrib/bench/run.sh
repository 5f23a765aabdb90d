#!/bin/bash
# Benchmarks nvmf-tgt over loopback NVMe/TCP with nvmf-perf, in interrupt and poll mode, and
# measures what the target costs while idle. Writes contrib/bench/results/HOST-DATE.{md,json}.
#
#   ./contrib/bench/run.sh
#
# Environment:
#   BENCH_SECONDS       seconds per run (default 10)
#   BENCH_REPEATS       runs per figure; the report shows median and min..max (default 3)
#   BENCH_IDLE_SECONDS  length of each idle measurement (default 30)
#   BENCH_IDLE_HOSTS    idle controllers connected during it (default 16)
#   BENCH_RESULTS_DIR   where results go (default contrib/bench/results)
#   BENCH_NAME          file name prefix (default: short hostname, or "machine")
#
# The target runs on CPU 0 (taskset -c 0, core_mask 0x1), nvmf-perf on CPU 1 (--core 1).
# Needs at least 2 CPUs. Exits non-zero with a message when anything fails; the target it
# started is always stopped.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HELPER=$ROOT/contrib/bench/bench.py

export BENCH_SECONDS=${BENCH_SECONDS:-10}
export BENCH_REPEATS=${BENCH_REPEATS:-3}
export BENCH_IDLE_SECONDS=${BENCH_IDLE_SECONDS:-30}
export BENCH_IDLE_HOSTS=${BENCH_IDLE_HOSTS:-16}
# nvmf-perf spins on its sockets by default, as SPDK's spdk_nvme_perf (a polling initiator)
# does, so the figures compare with SPDK's; the *-epoll-client cases let it sleep in epoll.
export BENCH_PERF_ARGS=${BENCH_PERF_ARGS:---busy-poll}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/contrib/bench/results}
NAME=${BENCH_NAME:-$(hostname -s 2>/dev/null || true)}
NAME=${NAME:-machine}

SUBNQN=nqn.2026-11.io.nvmf-tgt:bench
TGT=$ROOT/target/release/nvmf-tgt
PERF=$ROOT/target/release/nvmf-perf
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=contrib/bench/lib.sh
. "$ROOT/contrib/bench/lib.sh"

# The I/O cases: name, then nvmf-perf arguments.
CASES=(
  "randread-4k-qd1|-w randread -o 4k -q 1"
  "randread-4k-qd32|-w randread -o 4k -q 32"
  "randread-4k-qd128|-w randread -o 4k -q 128"
  "randwrite-4k-qd32|-w randwrite -o 4k -q 32"
  "read-128k-qd8|-w read -o 128k -q 8"
  "randread-4k-qd32-2conn|-w randread -o 4k -q 32 --connections 2"
  "randread-4k-qd1-epoll-client|-w randread -o 4k -q 1"
  "randread-4k-qd32-epoll-client|-w randread -o 4k -q 32"
)

run_io() {
  local mode=$1 rep=$2 entry case args
  start_target "$mode" null
  for entry in "${CASES[@]}"; do
    case=${entry%%|*}
    args=${entry#*|}
    # shellcheck disable=SC2086
    run_case "$mode" "$case" "$rep" $args
  done
  stop_target
}

trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM

for v in BENCH_SECONDS BENCH_REPEATS BENCH_IDLE_SECONDS BENCH_IDLE_HOSTS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (target on 0, nvmf-perf on 1)"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v python3 >/dev/null || die "python3 not found"

say "building release binaries"
cargo build --release --bins || die "cargo build --release --bins failed"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nvmf-bench.XXXXXX")
RAW=$WORK/raw.jsonl
: >"$RAW"

# Repeats go round both modes in turn, so a slow spell of the machine (these VMs swing
# between two speeds for seconds at a time) falls on both modes alike rather than on one.
for rep in $(seq "$BENCH_REPEATS"); do
  for mode in interrupt poll; do
    run_io "$mode" "$rep"
  done
done
for mode in interrupt poll; do
  for ns in null ram file; do
    run_idle "$mode" "$ns"
  done
done

mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/$NAME-$(date +%Y-%m-%d)
cp "$RAW" "$OUT.raw.jsonl"
python3 "$HELPER" report "$RAW" "$OUT" || die "writing the report failed"
say "results: $OUT.md $OUT.json (raw: $OUT.raw.jsonl)"
