#!/bin/bash
# Instructions per I/O in the target, counted by callgrind (repeatable, unlike time on a shared
# machine): 4K random reads at QD32 from nvmf-perf against a null namespace, the target on
# CPU 0 under valgrind, nvmf-perf on CPU 1. Two figures per build: the whole target process
# (start-up and shutdown included) per I/O, as profile-qd32.md counts it, and the steady
# state: counters zeroed after a warm-up, dumped after the measured I/Os (callgrind_control),
# so start-up and shutdown are out.
#
# A poll-mode reactor spins while it waits, and its idle turns count too: on a busy machine
# the client is slower, so there are more idle turns per I/O (seen: 1,650 with two builds
# running beside it, ~900 on a quiet machine). Compare builds in the same run, on a quiet
# machine, and repeat them in turn (A B A B) to see the spread. In interrupt mode an idle
# reactor executes nothing, so that figure is the one a loaded machine cannot disturb.
#
#   ./contrib/bench/callgrind.sh [REV-OR-DIR ...]
#
# Each argument is a git revision (built in a scratch worktree, cached under
# /var/tmp/nvmf-bench-builds) or a directory holding nvmf-tgt; none means this working tree.
# The last one's nvmf-perf is the client for all.
# Writes contrib/bench/results/callgrind-MODE-DATE.md. Environment: CALLGRIND_IOS (200000),
# CALLGRIND_WARMUP (50000), CALLGRIND_MODE (poll or interrupt; poll), BENCH_RESULTS_DIR,
# CALLGRIND_KEEP (a path prefix: keep each steady-state profile there, for callgrind_annotate).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HELPER=$ROOT/contrib/bench/bench.py
IOS=${CALLGRIND_IOS:-200000}
WARMUP=${CALLGRIND_WARMUP:-50000}
MODE=${CALLGRIND_MODE:-poll}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/contrib/bench/results}
SUBNQN=nqn.2026-11.io.nvmf-tgt:bench
CLK_TCK=$(getconf CLK_TCK)
BENCH_SECONDS=0
BENCH_PERF_ARGS=

# shellcheck source=contrib/bench/lib.sh
. "$ROOT/contrib/bench/lib.sh"

command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
command -v callgrind_control >/dev/null || die "callgrind_control not found (valgrind)"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (target on 0, nvmf-perf on 1)"

BUILDS=("$@")
if [ ${#BUILDS[@]} -eq 0 ]; then
  say "building the working tree"
  cargo build --release --bins >&2 || die "cargo build --release --bins failed"
  BUILDS=("$ROOT/target/release")
fi

trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nvmf-callgrind.XXXXXX")
[ -d "$WORK" ] || die "no scratch directory"
OUT=$WORK/callgrind.out
mkdir -p "$BUILDS_DIR" "$RESULTS_DIR"

# totals FILE: the instruction count a callgrind profile holds.
totals() {
  sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$1"
}

# perf_count N: N reads at QD32 from nvmf-perf on CPU 1.
perf_count() {
  "$PERF" -r "$(perf_id)" --core 1 --busy-poll -w randread -o 4k -q 32 --count "$1" \
    >"$WORK/perf.log" 2>&1 || { cat "$WORK/perf.log" >&2; die "nvmf-perf failed"; }
}

# The target runs under valgrind; `check` and `status` run as they are.
write_wrapper() {
  {
    echo '#!/bin/sh'
    echo 'if [ "$1" = run ]; then'
    echo "  exec valgrind --tool=callgrind --callgrind-out-file=$OUT \"$1\" \"\$@\""
    echo 'fi'
    echo "exec \"$1\" \"\$@\""
  } >"$WORK/tgt"
  chmod +x "$WORK/tgt"
}

# measure DIR: prints "whole steady", instructions per I/O, for the build in DIR.
measure() {
  local dir=$1 i whole steady rest
  write_wrapper "$dir/nvmf-tgt"
  TGT=$WORK/tgt
  rm -f "$WORK"/callgrind.out*
  start_target "$MODE" null
  perf_count "$WARMUP"
  callgrind_control -z "$TGT_PID" >/dev/null || die "callgrind_control -z failed"
  perf_count "$IOS"
  callgrind_control -d "$TGT_PID" >/dev/null || die "callgrind_control -d failed"
  # callgrind writes the rest as the target exits, which takes a while under valgrind.
  kill -TERM "$TGT_PID"
  for i in $(seq 600); do
    kill -0 "$TGT_PID" 2>/dev/null || break
    sleep 0.1
  done
  wait "$TGT_PID" 2>/dev/null || true
  TGT_PID=
  [ -z "${CALLGRIND_KEEP:-}" ] || cp "$OUT.1" "$CALLGRIND_KEEP.$(basename "$dir")"
  steady=$(totals "$OUT.1")
  rest=$(totals "$OUT")
  [ -n "$steady" ] && [ -n "$rest" ] || die "no totals in $OUT"
  # The whole run is start-up, warm-up, the measured I/Os and shutdown; the zeroed warm-up is
  # counted at the steady rate.
  python3 -c "w = $WARMUP; n = $IOS; s = $steady; r = $rest
print(round((r + s + s * w / n) / (w + n)), round(s / n))"
}

DATE=$(date -u +%Y-%m-%d)
REPORT=$RESULTS_DIR/callgrind-$MODE-$DATE.md
{
  echo "# Instructions per I/O in the target, $MODE mode ($DATE)"
  echo
  echo "callgrind, null namespace, \`nvmf-perf --busy-poll -w randread -o 4k -q 32\` over"
  echo "loopback: $WARMUP I/Os of warm-up, then $IOS measured (\`contrib/bench/callgrind.sh\`)."
  echo "Whole: the target process from start to exit, per I/O; steady: the measured I/Os only."
  echo
  echo "| build | Ir per I/O, whole | Ir per I/O, steady |"
  echo "|---|---|---|"
} >"$REPORT.tmp"
# One client for every build, the last one's (the candidate), as compare.sh does: how the
# client batches its commands changes how many PDUs the target handles per read.
for what in "${BUILDS[@]}"; do
  PERF=$(binaries_of "$what")/nvmf-perf
done
[ -x "$PERF" ] || die "no nvmf-perf beside the last build"
for what in "${BUILDS[@]}"; do
  dir=$(binaries_of "$what")
  say "measuring $what ($dir)"
  read -r whole steady <<<"$(measure "$dir")"
  desc=$what
  if commit=$(git -C "$ROOT" rev-parse --short --verify "$what^{commit}" 2>/dev/null); then
    desc=$commit
  fi
  say "$desc: $whole instructions per I/O, $steady in steady state"
  echo "| $desc | $whole | $steady |" >>"$REPORT.tmp"
done
mv "$REPORT.tmp" "$REPORT"
say "wrote $REPORT"
