#!/bin/bash
# Benchmarks nvmf-tgt's NVMe/RDMA inside one qemu TCG guest (the host kernel has no RDMA):
# contrib/rdma/run-case.sh boots it with soft-RoCE rxe0 and a null namespace of 1 GiB, and
# contrib/bench/rdma-guest-run.sh runs in it: for each of BENCH_REPEATS rounds, nvmf-tgt in
# interrupt then poll mode (reactor on guest CPU 0), the guest's nvme-rdma host connected and
# fio 4K randread at QD1 and QD32 on guest CPU 1, then the host idle. Target CPU per I/O is
# utime+stime of the target process (/proc/PID/stat in the guest) over the fio run divided by
# the I/Os. Writes contrib/bench/results/rdma-guest-DATE.{md,json} (and .raw.jsonl).
# Under TCG every instruction is emulated: the absolute figures mean nothing, only the ratios
# between the modes of one run do.
#
#   ./contrib/bench/rdma-guest.sh            (as root)
#
# Environment:
#   BENCH_SECONDS       seconds per fio run (default 10)
#   BENCH_REPEATS       rounds; the report shows median and min..max (default 3)
#   BENCH_MODES         target modes, in the order each round runs them (default "interrupt poll")
#   BENCH_IDLE_SECONDS  idle window per mode and round (default 30 s interrupt, 5 s poll; 0: none)
#   BENCH_RESULTS_DIR   where results go (default contrib/bench/results)
#   BENCH_NAME          file name prefix (default rdma-guest)
#   BENCH_NOTES         a markdown file appended to the report as its notes (optional)
#   NVMF_TGT            the binary (default: cargo build --release --features rdma, in
#                       CARGO_TARGET_DIR or ./target)
#   SMP MEM             the guest's CPUs (default 2) and MiB (default 1536)
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HELPER=$ROOT/contrib/bench/bench.py
export BENCH_SECONDS=${BENCH_SECONDS:-10}
export BENCH_REPEATS=${BENCH_REPEATS:-3}
export BENCH_MODES=${BENCH_MODES:-interrupt poll}
export BENCH_IDLE_SECONDS=${BENCH_IDLE_SECONDS:-}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/contrib/bench/results}
NAME=${BENCH_NAME:-rdma-guest}

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for v in BENCH_SECONDS BENCH_REPEATS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[ -z "$BENCH_IDLE_SECONDS" ] || [[ $BENCH_IDLE_SECONDS =~ ^[0-9]+$ ]] || die "BENCH_IDLE_SECONDS must be a number"
if [ -n "${BENCH_NOTES:-}" ]; then
  [ -f "$BENCH_NOTES" ] || die "BENCH_NOTES=$BENCH_NOTES is not a file"
  BENCH_NOTES=$(cd "$(dirname "$BENCH_NOTES")" && pwd)/$(basename "$BENCH_NOTES")
  export BENCH_NOTES
fi
[ "$(id -u)" = 0 ] || die "run as root (qemu, the guest's kernel and modules from /boot and /lib/modules)"

"$ROOT/contrib/linux-host/install-deps.sh" >&2 || die "installing the harness packages failed"
if [ -z "${NVMF_TGT:-}" ]; then
  say "building nvmf-tgt (release, --features rdma)"
  cargo build --release --features rdma --bin nvmf-tgt >&2 || die "cargo build --release --features rdma failed"
  NVMF_TGT=${CARGO_TARGET_DIR:-$ROOT/target}/release/nvmf-tgt
fi
[ -x "$NVMF_TGT" ] || die "no nvmf-tgt binary at $NVMF_TGT"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nvmf-bench-rdma-guest.XXXXXX")
RAW=$WORK/raw.jsonl
python3 "$HELPER" load before > "$RAW" || die "sampling the machine's load failed"

# Per round and mode: two fio runs (fio's and nvme connect's start-up is slow under TCG), the
# idle window, the target's start and stop; then the boot.
modes=$(wc -w <<< "$BENCH_MODES")
per_mode=$(( 2 * (BENCH_SECONDS + 30) + ${BENCH_IDLE_SECONDS:-30} + 40 ))
VM_TIMEOUT=$(( 300 + BENCH_REPEATS * modes * per_mode ))
say "one guest, $BENCH_REPEATS rounds of: $BENCH_MODES (timeout ${VM_TIMEOUT}s); logs in $WORK/guest"
rc=0
NVMF_TGT=$NVMF_TGT VM_TIMEOUT=$VM_TIMEOUT CHECKS="link bench" EXTRA_CHECKS=$ROOT/contrib/bench/rdma-guest-run.sh \
  GUEST_ENV="BENCH_SECONDS BENCH_REPEATS BENCH_MODES BENCH_IDLE_SECONDS" RUST_LOG=warn \
  "$ROOT/contrib/rdma/run-case.sh" "${BENCH_MODES%% *}" null "$WORK/guest" >&2 || rc=$?
grep -E '^  BENCH' "$WORK/guest/test.log" >&2 2>/dev/null || true
[ $rc = 0 ] || die "the guest's benchmark failed; see $WORK/guest/test.log"
cat "$WORK/guest/bench.jsonl" >> "$RAW"
python3 "$HELPER" load after >> "$RAW" || die "sampling the machine's load failed"

mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/$NAME-$(date +%Y-%m-%d)
cp "$RAW" "$OUT.raw.jsonl"
python3 "$HELPER" rdma-guest-report "$RAW" "$OUT" || die "writing the report failed"
say "results: $OUT.md $OUT.json (raw: $OUT.raw.jsonl)"
rm -rf "$WORK"
