# shellcheck shell=bash
# The guest's half of contrib/bench/rdma-guest.sh: contrib/rdma/guest-rdma.sh sources it (as
# run-case.sh's EXTRA_CHECKS) and runs its check_bench after check_link, with guest-rdma.sh's
# helpers (listening, wait_until, say, why, attr) and contrib/lib/target-cpu.sh's at hand.
# BENCH_REPEATS rounds; each runs nvmf-tgt in every mode of BENCH_MODES in turn (so a slow
# spell of the machine falls on all modes alike): the target started from run-case.sh's TOML
# with that interrupt_mode, the guest's nvme-rdma host connected, fio 4K randread at QD1 and
# QD32 for BENCH_SECONDS each on CPU 1 (the target's reactor is on CPU 0), then the host left
# idle for BENCH_IDLE_SECONDS (default: 30 s interrupt, 5 s poll), then disconnect and stop.
# Each figure is one line of W/bench.jsonl in contrib/bench/bench.py's "run" / "idle" shape.
# env: BENCH_SECONDS (10) BENCH_REPEATS (3) BENCH_MODES ("interrupt poll") BENCH_IDLE_SECONDS

BENCH_RAW=$W/bench.jsonl
BENCH_DEV=""

# bench_start MODE REP: nvmf-tgt with run-case.sh's declaration in MODE, listening.
bench_start() {
  local mode=$1 rep=$2 im
  case "$mode" in interrupt) im=true;; poll) im=false;; *) why "bench: unknown mode $mode"; return 1;; esac
  mkdir -p /tmp/tgt && sed "s/^interrupt_mode = .*/interrupt_mode = $im/" "$W/target.toml" > "$TOML" || return 1
  RUST_LOG=warn "$W/nvmf-tgt" run -c "$TOML" > "$W/bench-target-$mode-$rep.log" 2>&1 &
  TGT_PID=$!
  wait_until 60 listening_or_exit
  listening || { why "bench: nvmf-tgt ($mode) does not listen: $(tail -1 "$W/bench-target-$mode-$rep.log")"; return 1; }
}

bench_stop() {
  local rc=0
  [ -n "$TGT_PID" ] || return 0
  kill -TERM "$TGT_PID"; wait "$TGT_PID" || rc=$?
  TGT_PID=""
  [ $rc = 0 ] || { why "bench: nvmf-tgt exited $rc after SIGTERM"; return 1; }
}

bench_connect() {
  timeout 30 nvme connect -t "$TRANSPORT" -a "$ADDR" -s "$PORT" -n "$NQN" --keep-alive-tmo=5 > "$W/bench-connect.txt" 2>&1 ||
    { why "bench: nvme connect failed: $(tail -1 "$W/bench-connect.txt")"; return 1; }
  wait_until 10 eval 'BENCH_DEV=$(ls /dev/nvme*n1 2>/dev/null | head -1); [ -b "$BENCH_DEV" ]' ||
    { why "bench: connected, but no namespace block device"; return 1; }
  sleep 1
}

bench_disconnect() {
  timeout 30 nvme disconnect -n "$NQN" > /dev/null || { why "bench: nvme disconnect failed"; return 1; }
  wait_until 10 eval '! ls /dev/nvme*n1 > /dev/null 2>&1'
}

# bench_fio MODE CASE REP QD: one fio run and its record; the target's CPU is taken around it.
bench_fio() {
  local mode=$1 case=$2 rep=$3 qd=$4 out=$W/fio-$1-$2-$3.json s0 s1 c0 c1 cpus=()
  [ "$(nproc)" -lt 2 ] || cpus=(taskset -c 1)
  s0=$(status_sums "$W/nvmf-tgt" /tmp/tgt/ctl.sock) || { why "bench: nvmf-tgt status failed"; return 1; }
  c0=$(proc_ticks "$TGT_PID")
  "${cpus[@]}" timeout $((BENCH_SECONDS * 3 + 60)) fio --name="$case" --filename="$BENCH_DEV" --direct=1 \
      --ioengine=libaio --rw=randread --bs=4k --iodepth="$qd" --runtime="$BENCH_SECONDS" --time_based \
      --output-format=json --output="$out" > "$W/fio.err" 2>&1 ||
    { why "bench: fio $case ($mode, repeat $rep) failed: $(tail -1 "$W/fio.err")"; return 1; }
  c1=$(proc_ticks "$TGT_PID")
  s1=$(status_sums "$W/nvmf-tgt" /tmp/tgt/ctl.sock) || { why "bench: nvmf-tgt status failed"; return 1; }
  # shellcheck disable=SC2086
  python3 - "$out" "$mode" "$case" "$rep" "$qd" "$(getconf CLK_TCK)" $((c1 - c0)) $s0 $s1 <<'EOF' >> "$BENCH_RAW" || { why "bench: cannot read $out"; return 1; }
import json, sys
out, mode, case, rep, qd, clk, ticks = sys.argv[1:8]
b0, i0, w0, _, b1, i1, w1, _ = (int(x) for x in sys.argv[8:16])
job = json.load(open(out))["jobs"][0]
rd = job["read"]
pct = rd["clat_ns"].get("percentile", {})
# nvmf-perf's report's shape, so that bench.py's summaries read both.
perf = {
    "client": "fio",
    "iops": rd["iops"],
    "mib_s": rd["bw_bytes"] / 2**20,
    "latency_us": {
        "avg": rd["lat_ns"]["mean"] / 1e3,
        "p50": pct.get("50.000000", 0) / 1e3,
        "p99": pct.get("99.000000", 0) / 1e3,
    },
    "ios": rd["total_ios"],
    "elapsed_s": rd["runtime"] / 1e3,
    "cpu_percent": job["usr_cpu"] + job["sys_cpu"],
    "io_size": 4096,
    "queue_depth": int(qd),
    "connections": 1,
    "pattern": "randread",
}
print(json.dumps({
    "kind": "run", "mode": mode, "case": case, "repeat": int(rep), "clk_tck": int(clk),
    "target_ticks": int(ticks), "reactor_busy_ns": b1 - b0, "reactor_idle_ns": i1 - i0,
    "wakeups": w1 - w0, "perf": perf,
}))
us = int(ticks) / int(clk) * 1e6 / perf["ios"] if perf["ios"] else 0
sys.stderr.write(f"  BENCH {mode:9} {case:16} #{rep} {perf['iops']:>8.0f} IOPS avg "
                 f"{perf['latency_us']['avg']:>8.1f} us, target CPU {us:.1f} us/IO, "
                 f"fio CPU {perf['cpu_percent']:.0f}%\n")
EOF
}

# bench_idle MODE REP: the connected host left alone; the target's CPU and wake-ups over it.
bench_idle() {
  local mode=$1 rep=$2 secs t0 t1 c0 c1 s0 s1
  secs=${BENCH_IDLE_SECONDS:-$(idle_seconds "$mode")}
  [ "$secs" != 0 ] || return 0
  sleep 2
  s0=$(status_sums "$W/nvmf-tgt" /tmp/tgt/ctl.sock) || { why "bench: nvmf-tgt status failed"; return 1; }
  t0=$(now_ns); c0=$(proc_ticks "$TGT_PID")
  sleep "$secs"
  t1=$(now_ns); c1=$(proc_ticks "$TGT_PID")
  s1=$(status_sums "$W/nvmf-tgt" /tmp/tgt/ctl.sock) || { why "bench: nvmf-tgt status failed"; return 1; }
  # shellcheck disable=SC2086
  set -- $s0 $s1
  printf '{"kind":"idle","mode":"%s","repeat":%d,"seconds":%s,"clk_tck":%d,"target_ticks":%d,"reactor_busy_ns":%d,"reactor_idle_ns":%d,"wakeups":%d,"connections":%d}\n' \
    "$mode" "$rep" "$(awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.3f", ns / 1e9 }')" "$(getconf CLK_TCK)" \
    $((c1 - c0)) $(($5 - $1)) $(($6 - $2)) $(($7 - $3)) "$8" >> "$BENCH_RAW"
  say "BENCH $mode idle #$rep: target $(cpu_pct $((c1 - c0)) $((t1 - t0)))% of a core, $(per_second $(($7 - $3)) $((t1 - t0))) wakeups/s over ${secs}s"
}

check_bench() {
  local rep mode
  BENCH_SECONDS=${BENCH_SECONDS:-10} BENCH_REPEATS=${BENCH_REPEATS:-3}
  [ "$TARGET" = nvmf-tgt ] || { why "bench: only nvmf-tgt is benchmarked"; return 1; }
  modprobe "nvme-$TRANSPORT" || { why "modprobe nvme-$TRANSPORT failed"; return 1; }
  printf '{"kind":"guest","kernel":"%s","cpus":%d,"cpu_model":"%s","clk_tck":%d,"fio":"%s","memory_kib":%d}\n' \
    "$(uname -r)" "$(nproc)" "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(getconf CLK_TCK)" \
    "$(fio --version)" "$(awk '/^MemTotal/ { print $2 }' /proc/meminfo)" > "$BENCH_RAW"
  for rep in $(seq "$BENCH_REPEATS"); do
    for mode in ${BENCH_MODES:-interrupt poll}; do
      bench_start "$mode" "$rep" && bench_connect || { bench_stop; return 1; }
      bench_fio "$mode" randread-4k-qd1 "$rep" 1 && bench_fio "$mode" randread-4k-qd32 "$rep" 32 &&
        bench_idle "$mode" "$rep" || { bench_disconnect; bench_stop; return 1; }
      bench_disconnect && bench_stop || return 1
    done
  done
}
