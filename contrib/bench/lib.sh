# Shared by contrib/bench/run.sh, compare.sh, file.sh and vfio-user.sh: starting and stopping a target
# on CPU 0, one nvmf-perf run on CPU 1, and the target's CPU and reactor figures.
#
# The sourcing script sets ROOT, HELPER, TGT (the nvmf-tgt binary under test), PERF,
# SUBNQN, CLK_TCK, BENCH_SECONDS, BENCH_PERF_ARGS, and WORK and RAW before starting targets.
# BUILD, when set, labels each run record (compare.sh runs two builds). A script whose target
# is not NVMe/TCP writes its own $WORK/target.toml, starts it with launch_target and redefines
# perf_target (what nvmf-perf is pointed at).

BUILDS_DIR=${BUILDS_DIR:-/var/tmp/nvmf-bench-builds}

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

# shellcheck source=contrib/lib/target-cpu.sh
. "$ROOT/contrib/lib/target-cpu.sh"

# utime + stime of a process in clock ticks (/proc/PID/stat).
cpu_ticks() {
  proc_ticks "$1" || die "process $1 is gone"
}

# "busy steal" clock ticks of all CPUs together since boot, from the first line of /proc/stat:
# busy is user, nice, system, irq and softirq; steal is what the hypervisor took.
machine_ticks() {
  local _cpu user nice system _idle _iowait irq softirq steal _rest
  read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
  echo "$((user + nice + system + irq + softirq)) $steal"
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
      # NS_FILE names a file the caller made (and keeps); otherwise a fresh sparse 1 GiB
      # file. NS_DIRECT and NS_ENGINE choose O_DIRECT and the engine (defaults: the
      # declaration's).
      local path=${NS_FILE:-$WORK/ns.img}
      if [ -z "${NS_FILE:-}" ]; then
        rm -f "$path"
        truncate -s 1G "$path"
      fi
      backend="file = { path = \"$path\""
      [ -z "${NS_DIRECT:-}" ] || backend+=", direct = $NS_DIRECT"
      [ -z "${NS_ENGINE:-}" ] || backend+=", engine = \"$NS_ENGINE\""
      backend+=" }"
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

# launch_target LABEL READY: runs nvmf-tgt on CPU 0 with $WORK/target.toml and waits until
# the command READY succeeds and the control socket is there.
launch_target() {
  local label=$1 ready=$2 i
  RUST_LOG=warn taskset -c 0 "$TGT" run -c "$WORK/target.toml" >"$WORK/target.log" 2>&1 &
  TGT_PID=$!
  for i in $(seq 200); do
    kill -0 "$TGT_PID" 2>/dev/null || die "nvmf-tgt ($label) exited during startup"
    if "$ready" && [ -S "$WORK/ctl.sock" ]; then
      say "target up: $label, pid $TGT_PID"
      return 0
    fi
    sleep 0.1
  done
  die "nvmf-tgt ($label) was not ready within 20 s"
}

tcp_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_target() {
  local mode=$1 ns=$2
  write_config "$mode" "$ns"
  launch_target "$mode mode, $ns namespace, port $PORT" tcp_listening
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

# Sets PERF_TARGET to the nvmf-perf arguments that name the target.
perf_target() {
  PERF_TARGET=(-r "$(perf_id)")
}

# run_case MODE CASE REPEAT PERF-ARGS...: one nvmf-perf run, appended to $RAW.
run_case() {
  local mode=$1 case=$2 rep=$3 rc=0 t0 t1 r0 r1 m0 m1
  shift 3
  r0=$(reactor_ns)
  m0=$(machine_ticks)
  t0=$(cpu_ticks "$TGT_PID")
  local extra=$BENCH_PERF_ARGS
  case "$case" in *-epoll-client) extra= ;; esac
  perf_target
  # In the background so that a signal to this script is handled at once.
  # shellcheck disable=SC2086
  "$PERF" "${PERF_TARGET[@]}" --core 1 --json -t "$BENCH_SECONDS" $extra "$@" \
    >"$WORK/perf.json" 2>"$WORK/perf.err" &
  PERF_PID=$!
  wait "$PERF_PID" || rc=$?
  PERF_PID=
  t1=$(cpu_ticks "$TGT_PID")
  m1=$(machine_ticks)
  if [ "$rc" -ne 0 ]; then
    cat "$WORK/perf.err" >&2
    die "nvmf-perf failed (exit $rc) in $mode mode, $case, repeat $rep: nvmf-perf $*"
  fi
  r1=$(reactor_ns)
  read -r b0 i0 _ <<<"$r0"
  read -r b1 i1 _ <<<"$r1"
  read -r mb0 ms0 <<<"$m0"
  read -r mb1 ms1 <<<"$m1"
  printf '{"kind":"run","build":"%s","mode":"%s","case":"%s","repeat":%d,"clk_tck":%d,"target_ticks":%d,"machine_busy_ticks":%d,"steal_ticks":%d,"reactor_busy_ns":%d,"reactor_idle_ns":%d,"perf":%s}\n' \
    "${BUILD:-}" "$mode" "$case" "$rep" "$CLK_TCK" $((t1 - t0)) $((mb1 - mb0)) $((ms1 - ms0)) \
    $((b1 - b0)) $((i1 - i0)) "$(<"$WORK/perf.json")" >>"$RAW"
  python3 - "$WORK/perf.json" "$mode" "$case" "$rep" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
print(f"bench:   {sys.argv[2]:9} {sys.argv[3]:22} #{sys.argv[4]} {r['iops']:>10.0f} IOPS "
      f"{r['mib_s']:>8.1f} MiB/s avg {r['latency_us']['avg']:>7.1f} us "
      f"perf CPU {r['cpu_percent']:.0f}%")
EOF
}

# run_idle MODE NAMESPACE [LABEL]: BENCH_IDLE_HOSTS controllers connected, keep-alives only;
# one "idle" record in $RAW, whose namespace is LABEL (default NAMESPACE).
run_idle() {
  local mode=$1 ns=$2 label=${3:-$2} settle=2 t0 t1 r0 r1 rc=0 conns i
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
    "$mode" "$label" "$BENCH_IDLE_SECONDS" "$CLK_TCK" $((t1 - t0)) $((b1 - b0)) $((i1 - i0)) \
    "$conns" "$(<"$WORK/idle.json")" >>"$RAW"
  say "  idle $mode $label: $((t1 - t0)) ticks in $BENCH_IDLE_SECONDS s"
  stop_target
}

# binaries_of REV-OR-DIR: prints the directory holding its nvmf-tgt (building a revision).
binaries_of() {
  local what=$1 commit dir
  if [ -x "$what/nvmf-tgt" ]; then
    (cd "$what" && pwd)
    return
  fi
  commit=$(git -C "$ROOT" rev-parse --verify "$what^{commit}" 2>/dev/null) \
    || die "$what is neither a directory with nvmf-tgt nor a git revision"
  dir=$BUILDS_DIR/$commit
  if [ ! -x "$dir/nvmf-tgt" ]; then
    say "building $what ($commit) in a scratch worktree"
    local tree=$BUILDS_DIR/tree-$commit
    rm -rf "$tree"
    git -C "$ROOT" worktree add --detach "$tree" "$commit" >&2 \
      || die "cannot check out $what"
    (cd "$tree" && CARGO_TARGET_DIR=$BUILDS_DIR/target cargo build --release --bins >&2) \
      || die "building $what failed"
    mkdir -p "$dir"
    cp "$BUILDS_DIR/target/release/nvmf-tgt" "$BUILDS_DIR/target/release/nvmf-perf" "$dir/"
    git -C "$ROOT" worktree remove --force "$tree" >&2 || true
  fi
  echo "$dir"
}
