# shellcheck shell=bash
# The target's CPU figures the harnesses and benchmarks share (sourced by bash): what a process
# has run from /proc/PID/stat, what that is in % of a core over a window, the idle verdict, and
# the reactors' wake-ups from `nvmf-tgt status`. Used on the host (contrib/vfio-user's
# run-case.sh, contrib/bench/lib.sh) and inside the RDMA guest (contrib/rdma/guest-rdma.sh and
# contrib/bench/rdma-guest-run.sh, which get a copy in the guest's work share), so it uses
# nothing beyond bash, awk and python3.

# An idle target in interrupt mode must cost less than this % of one core. Poll mode spins
# (~100%): its figure is shown, never judged.
IDLE_LIMIT_PCT=0.5

# idle_seconds MODE: how long an idle window lasts: 30 s in interrupt mode (a tick of
# CLK_TCK=100 is then 0.03% of a core, well under the limit), 5 s in poll mode.
idle_seconds() { if [ "$1" = interrupt ]; then echo 30; else echo 5; fi; }

# proc_ticks PID: utime + stime of a process in clock ticks (fields 14 and 15 of
# /proc/PID/stat; the name in field 2 may hold spaces, so count from the last ')').
# Fails when the process is gone.
proc_ticks() {
  local stat
  stat=$(<"/proc/$1/stat") || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo $((${12} + ${13}))
}

# now_ns: the monotonic-enough wall clock the windows are timed with.
now_ns() { date +%s%N; }

# cpu_pct TICKS NANOSECONDS: those ticks in % of one core over that window, two decimals.
cpu_pct() {
  awk -v c="$1" -v hz="$(getconf CLK_TCK)" -v ns="$2" \
    'BEGIN { if (ns <= 0) { print "none"; exit } printf "%.2f\n", 100 * (c / hz) / (ns / 1e9) }'
}

# idle_ok MODE PCT: false when an interrupt-mode target cost PCT >= IDLE_LIMIT_PCT (or no
# figure at all); poll mode always passes.
idle_ok() {
  [ "$1" = interrupt ] || return 0
  awk -v p="$2" -v l="$IDLE_LIMIT_PCT" 'BEGIN { exit !(p != "none" && p != "" && p + 0 < l) }'
}

# status_sums NVMF_TGT SOCKET: "busy_ns idle_ns wakeups connections" summed over the target's
# reactors, from `nvmf-tgt status --json` (wake-ups are returns from a blocking wait: 0 in poll
# mode, which never blocks). Fails when the target cannot be asked.
status_sums() {
  "$1" status --socket "$2" --json 2>/dev/null | python3 -c '
import json, sys
rs = json.load(sys.stdin)["reactors"]
print(*(sum(r[k] for r in rs) for k in ("busy_ns", "idle_ns", "wakeups", "connections")))'
}

# status_wakeups NVMF_TGT SOCKET: the reactors' wake-ups so far.
status_wakeups() {
  local sums
  sums=$(status_sums "$1" "$2") || return 1
  # shellcheck disable=SC2086
  set -- $sums
  echo "$3"
}

# per_second COUNT NANOSECONDS: COUNT per second over that window, one decimal.
per_second() {
  awk -v n="$1" -v ns="$2" 'BEGIN { if (ns <= 0 || n == "") { print "none"; exit } printf "%.1f\n", n / (ns / 1e9) }'
}
