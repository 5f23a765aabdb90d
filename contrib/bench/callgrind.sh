#!/bin/bash
# Instructions per I/O in the target, counted by callgrind (repeatable, unlike time on a shared
# machine): 4K random reads at QD32 from nvmf-perf against a null namespace in poll mode, the
# target on CPU 0 under valgrind, nvmf-perf on CPU 1. Instructions of the whole target
# process (start-up and shutdown included) divided by the I/Os.
#
# A poll-mode reactor spins while it waits, and its idle turns count too: on a busy machine
# the client is slower, so there are more idle turns per I/O (seen: 1,650 with two builds
# running beside it, ~900 on a quiet machine). Compare builds in the same run, on a quiet
# machine, and repeat them in turn (A B A B) to see the spread.
#
#   ./contrib/bench/callgrind.sh [REV-OR-DIR ...]
#
# Each argument is a git revision (built in a scratch worktree, cached under
# /var/tmp/nvmf-bench-builds) or a directory holding nvmf-tgt; none means this working tree.
# Writes contrib/bench/results/callgrind-DATE.md. Environment: CALLGRIND_IOS (200000),
# BENCH_RESULTS_DIR, CALLGRIND_KEEP (a path prefix: keep each callgrind.out there, for
# callgrind_annotate).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HELPER=$ROOT/contrib/bench/bench.py
IOS=${CALLGRIND_IOS:-200000}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/contrib/bench/results}
SUBNQN=nqn.2026-11.io.nvmf-tgt:bench
CLK_TCK=$(getconf CLK_TCK)
BENCH_SECONDS=0
BENCH_PERF_ARGS=

# shellcheck source=contrib/bench/lib.sh
. "$ROOT/contrib/bench/lib.sh"

command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
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
mkdir -p "$BUILDS_DIR" "$RESULTS_DIR"

# measure DIR: prints the target's instructions per I/O for the build in DIR.
measure() {
  local dir=$1 out=$WORK/callgrind.out i total
  TGT=$dir/nvmf-tgt
  PERF=$dir/nvmf-perf
  [ -x "$PERF" ] || PERF=${BUILDS[0]}/nvmf-perf
  # The target runs under valgrind; `check` and `status` run as they are.
  cat >"$WORK/tgt" <<EOF
#!/bin/sh
if [ "\$1" = run ]; then
  exec valgrind --tool=callgrind --callgrind-out-file=$out "$TGT" "\$@"
fi
exec "$TGT" "\$@"
EOF
  chmod +x "$WORK/tgt"
  local real=$TGT
  TGT=$WORK/tgt
  rm -f "$out"
  start_target poll null
  "$PERF" -r "$(perf_id)" --core 1 --busy-poll -w randread -o 4k -q 32 --count "$IOS" \
    >"$WORK/perf.log" 2>&1 || { cat "$WORK/perf.log" >&2; die "nvmf-perf failed"; }
  # callgrind writes its counts as the target exits, which takes a while under valgrind.
  kill -TERM "$TGT_PID"
  for i in $(seq 600); do
    kill -0 "$TGT_PID" 2>/dev/null || break
    sleep 0.1
  done
  wait "$TGT_PID" 2>/dev/null || true
  TGT_PID=
  TGT=$real
  [ -z "${CALLGRIND_KEEP:-}" ] || cp "$out" "$CALLGRIND_KEEP.$(basename "$dir")"
  total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out")
  [ -n "$total" ] || die "no totals in $out"
  python3 -c "print(round($total / $IOS))"
}

DATE=$(date -u +%Y-%m-%d)
REPORT=$RESULTS_DIR/callgrind-$DATE.md
{
  echo "# Instructions per I/O in the target ($DATE)"
  echo
  echo "callgrind, whole target process, poll mode, null namespace, \`nvmf-perf --busy-poll"
  echo "-w randread -o 4k -q 32 --count $IOS\` over loopback (\`contrib/bench/callgrind.sh\`)."
  echo
  echo "| build | Ir per I/O |"
  echo "|---|---|"
} >"$REPORT.tmp"
for what in "${BUILDS[@]}"; do
  dir=$(binaries_of "$what")
  say "measuring $what ($dir)"
  ir=$(measure "$dir")
  desc=$what
  if commit=$(git -C "$ROOT" rev-parse --short --verify "$what^{commit}" 2>/dev/null); then
    desc=$commit
  fi
  say "$desc: $ir instructions per I/O"
  echo "| $desc | $ir |" >>"$REPORT.tmp"
done
mv "$REPORT.tmp" "$REPORT"
say "wrote $REPORT"
