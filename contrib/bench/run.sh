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

TGT_PID=
PERF_PID=
WORK=

say() { printf 'bench: %s\n' "$*" >&2; }

die() {
  say "error: $*"
  if [ -n "$TGT_PID" ] && [ -f "$WORK/target.log" ]; then
    say "last lines of the target log ($WORK/target.log):"
    tail -n 20 "$WORK/target.log" >&2 || true
  fi
  exit 1
}

cleanup() {
  local rc=$?
  if [ -n "$PERF_PID" ]; then kill "$PERF_PID" 2>/dev/null || true; fi
  stop_target
  if [ -n "$WORK" ] && [ "$rc" -eq 0 ]; then rm -rf "$WORK"; fi
  if [ -n "$WORK" ] && [ "$rc" -ne 0 ]; then say "kept $WORK for inspection"; fi
}

# utime + stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat; the name in
# field 2 may hold spaces, so count from the last ')').
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat") || die "process $1 is gone"
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo $((${12} + ${13}))
}

# "busy_ns idle_ns connections" of the target's reactors, from its control socket.
reactor_ns() {
  "$TGT" status --socket "$WORK/ctl.sock" --json >"$WORK/status.json" \
    || die "nvmf-tgt status failed"
  python3 "$HELPER" reactors "$WORK/status.json"
}

# write_config MODE NAMESPACE -> $WORK/target.toml, sets PORT.
write_config() {
  local mode=$1 ns=$2 interrupt backend
  case $mode in
    interrupt) interrupt=true ;;
    poll) interrupt=false ;;
    *) die "unknown mode $mode" ;;
  esac
  case $ns in
    null) backend='null = { size = "1GiB" }' ;;
    ram) backend='ram = { size = "1GiB" }' ;;
    file)
      rm -f "$WORK/ns.img"
      truncate -s 1G "$WORK/ns.img"
      backend="file = { path = \"$WORK/ns.img\" }"
      ;;
    *) die "unknown namespace kind $ns" ;;
  esac
  PORT=$(python3 "$HELPER" free-port)
  cat >"$WORK/target.toml" <<EOF
[target]
interrupt_mode = $interrupt
core_mask = "0x1"
control_socket = "$WORK/ctl.sock"

[transport.tcp]
# 128 entries leave 127 usable slots; QD128 needs more.
max_queue_depth = 256

[[subsystem]]
nqn = "$SUBNQN"
allow_any_host = true

[[subsystem.listener]]
transport = "tcp"
address = "127.0.0.1"
port = $PORT

[[subsystem.namespace]]
nsid = 1
$backend
EOF
  "$TGT" check -c "$WORK/target.toml" >"$WORK/check.log" 2>&1 \
    || { cat "$WORK/check.log" >&2; die "generated config does not pass nvmf-tgt check"; }
}

start_target() {
  local mode=$1 ns=$2 i
  write_config "$mode" "$ns"
  RUST_LOG=warn taskset -c 0 "$TGT" run -c "$WORK/target.toml" >"$WORK/target.log" 2>&1 &
  TGT_PID=$!
  for i in $(seq 200); do
    kill -0 "$TGT_PID" 2>/dev/null || die "nvmf-tgt ($mode, $ns) exited during startup"
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && [ -S "$WORK/ctl.sock" ]; then
      say "target up: $mode mode, $ns namespace, port $PORT, pid $TGT_PID"
      return 0
    fi
    sleep 0.1
  done
  die "nvmf-tgt ($mode, $ns) did not listen on 127.0.0.1:$PORT within 20 s"
}

stop_target() {
  [ -n "$TGT_PID" ] || return 0
  local pid=$TGT_PID i
  TGT_PID=
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

perf_id() {
  echo "trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$SUBNQN"
}

# run_case MODE CASE REPEAT PERF-ARGS...: one nvmf-perf run, appended to $RAW.
run_case() {
  local mode=$1 case=$2 rep=$3 rc=0 t0 t1 r0 r1
  shift 3
  r0=$(reactor_ns)
  t0=$(cpu_ticks "$TGT_PID")
  local extra=$BENCH_PERF_ARGS
  case "$case" in *-epoll-client) extra= ;; esac
  # In the background so that a signal to this script is handled at once.
  # shellcheck disable=SC2086
  "$PERF" -r "$(perf_id)" --core 1 --json -t "$BENCH_SECONDS" $extra "$@" \
    >"$WORK/perf.json" 2>"$WORK/perf.err" &
  PERF_PID=$!
  wait "$PERF_PID" || rc=$?
  PERF_PID=
  t1=$(cpu_ticks "$TGT_PID")
  if [ "$rc" -ne 0 ]; then
    cat "$WORK/perf.err" >&2
    die "nvmf-perf failed (exit $rc) in $mode mode, $case, repeat $rep: nvmf-perf $*"
  fi
  r1=$(reactor_ns)
  read -r b0 i0 _ <<<"$r0"
  read -r b1 i1 _ <<<"$r1"
  printf '{"kind":"run","mode":"%s","case":"%s","repeat":%d,"clk_tck":%d,"target_ticks":%d,"reactor_busy_ns":%d,"reactor_idle_ns":%d,"perf":%s}\n' \
    "$mode" "$case" "$rep" "$CLK_TCK" $((t1 - t0)) $((b1 - b0)) $((i1 - i0)) \
    "$(<"$WORK/perf.json")" >>"$RAW"
  python3 - "$WORK/perf.json" "$mode" "$case" "$rep" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
print(f"bench:   {sys.argv[2]:9} {sys.argv[3]:22} #{sys.argv[4]} {r['iops']:>10.0f} IOPS "
      f"{r['mib_s']:>8.1f} MiB/s avg {r['latency_us']['avg']:>7.1f} us "
      f"perf CPU {r['cpu_percent']:.0f}%")
EOF
}

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

# run_idle MODE NAMESPACE: BENCH_IDLE_HOSTS controllers connected, keep-alives only.
run_idle() {
  local mode=$1 ns=$2 settle=2 t0 t1 r0 r1 rc=0 conns i
  start_target "$mode" "$ns"
  local host_seconds=$((settle + BENCH_IDLE_SECONDS + 2))
  "$PERF" -r "$(perf_id)" --core 1 --json --idle --connections "$BENCH_IDLE_HOSTS" \
    -t "$host_seconds" >"$WORK/idle.json" 2>"$WORK/idle.err" &
  PERF_PID=$!
  # Every controller has its admin and I/O queue connected, then the connect burst settles.
  for i in $(seq 100); do
    read -r _ _ conns <<<"$(reactor_ns)"
    [ "$conns" -ge $((2 * BENCH_IDLE_HOSTS)) ] && break
    kill -0 "$PERF_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ "$conns" -ge $((2 * BENCH_IDLE_HOSTS)) ] \
    || die "idle hosts did not connect ($conns of $((2 * BENCH_IDLE_HOSTS)) queues): $(cat "$WORK/idle.err")"
  sleep "$settle"
  r0=$(reactor_ns)
  t0=$(cpu_ticks "$TGT_PID")
  sleep "$BENCH_IDLE_SECONDS"
  t1=$(cpu_ticks "$TGT_PID")
  r1=$(reactor_ns)
  wait "$PERF_PID" || rc=$?
  PERF_PID=
  if [ "$rc" -ne 0 ]; then
    cat "$WORK/idle.err" >&2
    die "idle hosts failed (exit $rc) in $mode mode, $ns namespace"
  fi
  read -r b0 i0 _ <<<"$r0"
  read -r b1 i1 conns <<<"$r1"
  printf '{"kind":"idle","mode":"%s","namespace":"%s","seconds":%d,"clk_tck":%d,"target_ticks":%d,"reactor_busy_ns":%d,"reactor_idle_ns":%d,"connections":%d,"idle_host":%s}\n' \
    "$mode" "$ns" "$BENCH_IDLE_SECONDS" "$CLK_TCK" $((t1 - t0)) $((b1 - b0)) $((i1 - i0)) \
    "$conns" "$(<"$WORK/idle.json")" >>"$RAW"
  say "  idle $mode $ns: $((t1 - t0)) ticks in $BENCH_IDLE_SECONDS s"
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
