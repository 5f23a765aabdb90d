#!/bin/bash
# Compares two builds of nvmf-tgt with the same client: interleaved runs of 4K random reads at
# QD1 and QD32 (and 4K random writes at QD32) against each, in interrupt and poll mode.
# Writes contrib/bench/results/NAME-compare-DATE.{md,json,raw.jsonl}.
#
#   ./contrib/bench/compare.sh BASELINE [CANDIDATE]
#
# BASELINE and CANDIDATE are git revisions (built in a scratch worktree, cached under
# /var/tmp/nvmf-bench-builds) or directories that hold an nvmf-tgt binary. CANDIDATE defaults
# to this working tree. nvmf-perf is always the candidate's (one client for both).
#
# Environment: BENCH_SECONDS (10), BENCH_REPEATS (5), BENCH_PERF_ARGS (--busy-poll),
# BENCH_RESULTS_DIR, BENCH_NAME, as for run.sh. The target runs on CPU 0, nvmf-perf on CPU 1.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HELPER=$ROOT/contrib/bench/bench.py

export BENCH_SECONDS=${BENCH_SECONDS:-10}
export BENCH_REPEATS=${BENCH_REPEATS:-5}
export BENCH_PERF_ARGS=${BENCH_PERF_ARGS:---busy-poll}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/contrib/bench/results}
NAME=${BENCH_NAME:-$(hostname -s 2>/dev/null || true)}
NAME=${NAME:-machine}
SUBNQN=nqn.2026-11.io.nvmf-tgt:bench
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=contrib/bench/lib.sh
. "$ROOT/contrib/bench/lib.sh"

[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
BASELINE=$1
CANDIDATE=${2:-}


for v in BENCH_SECONDS BENCH_REPEATS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (target on 0, nvmf-perf on 1)"
command -v taskset >/dev/null || die "taskset not found (util-linux)"

mkdir -p "$BUILDS_DIR"
OLD_DIR=$(binaries_of "$BASELINE")
if [ -n "$CANDIDATE" ]; then
  NEW_DIR=$(binaries_of "$CANDIDATE")
else
  say "building the working tree"
  cargo build --release --bins >&2 || die "cargo build --release --bins failed"
  NEW_DIR=$ROOT/target/release
fi
PERF=$NEW_DIR/nvmf-perf
export BENCH_BASELINE_DESC="$BASELINE ($OLD_DIR)"
export BENCH_CANDIDATE_DESC="${CANDIDATE:-working tree} ($NEW_DIR)"

CASES=(
  "randread-4k-qd1|-w randread -o 4k -q 1"
  "randread-4k-qd32|-w randread -o 4k -q 32"
  "randwrite-4k-qd32|-w randwrite -o 4k -q 32"
)

trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nvmf-compare.XXXXXX")
RAW=$WORK/raw.jsonl
: >"$RAW"

# Each repeat runs both builds in both modes; the build that goes first alternates, so a slow
# spell of the machine falls on both builds alike.
for rep in $(seq "$BENCH_REPEATS"); do
  if [ $((rep % 2)) -eq 1 ]; then order="baseline candidate"; else order="candidate baseline"; fi
  for BUILD in $order; do
    if [ "$BUILD" = baseline ]; then TGT=$OLD_DIR/nvmf-tgt; else TGT=$NEW_DIR/nvmf-tgt; fi
    for mode in interrupt poll; do
      start_target "$mode" null
      for entry in "${CASES[@]}"; do
        # shellcheck disable=SC2086
        run_case "$mode" "${entry%%|*}" "$rep" ${entry#*|}
      done
      stop_target
    done
  done
done

mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/$NAME-compare-$(date +%Y-%m-%d)
cp "$RAW" "$OUT.raw.jsonl"
python3 "$HELPER" compare "$RAW" "$OUT" || die "writing the report failed"
say "results: $OUT.md $OUT.json (raw: $OUT.raw.jsonl)"
