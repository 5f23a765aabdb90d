#!/bin/bash
# Side by side with SPDK: nvmf-tgt's `file` namespace (uring engine) and SPDK's nvmf_tgt with
# an AIO bdev on the same 1 GiB tmpfs file, both driven by SPDK's own spdk_nvme_perf, in
# interrupt and poll mode, 4K randread at QD1, QD32 and QD128, repeats going round every
# target and mode. Two files: random data, and a sparse one (never written). Writes
# contrib/bench/results/NAME-spdk-file-DATE.{md,json,raw.jsonl}.
#
#   SPDK_DIR=/path/to/spdk ./contrib/bench/spdk-file.sh
#
# SPDK_DIR is a built SPDK tree (build/bin/nvmf_tgt and build/bin/spdk_nvme_perf; its
# build/lib is put on LD_LIBRARY_PATH for shared builds). SPDK needs hugepages: as root the
# script reserves 1 GiB of 2 MiB pages for the run (and mounts hugetlbfs on /dev/hugepages)
# when there are none. BENCH_SECONDS (5), BENCH_REPEATS (3), BENCH_RESULTS_DIR, BENCH_NAME as for run.sh;
# BENCH_STORAGES ("tmpfs sparse"). The targets run on CPU 0 (SPDK: -m 0x1), the client on
# CPU 1 (-c 0x2); both targets get max_queue_depth 256.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HELPER=$ROOT/contrib/bench/bench.py

export BENCH_SECONDS=${BENCH_SECONDS:-5}
export BENCH_REPEATS=${BENCH_REPEATS:-3}
export BENCH_PERF_ARGS="spdk_nvme_perf"
STORAGES=${BENCH_STORAGES:-tmpfs sparse}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/contrib/bench/results}
NAME=${BENCH_NAME:-$(hostname -s 2>/dev/null || true)}
NAME=${NAME:-machine}
SUBNQN=nqn.2026-11.io.nvmf-tgt:bench
TGT=$ROOT/target/release/nvmf-tgt
PERF=$ROOT/target/release/nvmf-perf
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=contrib/bench/lib.sh
. "$ROOT/contrib/bench/lib.sh"

SPDK_DIR=${SPDK_DIR:?set SPDK_DIR to a built SPDK tree}
SPDK_TGT=$SPDK_DIR/build/bin/nvmf_tgt
SPDK_PERF=$SPDK_DIR/build/bin/spdk_nvme_perf
[ -x "$SPDK_TGT" ] && [ -x "$SPDK_PERF" ] || die "no build/bin/nvmf_tgt and spdk_nvme_perf in $SPDK_DIR"
export LD_LIBRARY_PATH=$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
QDS="1 32 128"

hugepages() {
  local total
  total=$(awk '/^HugePages_Total/ {print $2}' /proc/meminfo)
  if [ "${total:-0}" -lt 512 ]; then
    [ "$(id -u)" = 0 ] || die "SPDK needs hugepages: run as root or reserve 512 or more 2 MiB pages"
    echo 512 >/proc/sys/vm/nr_hugepages
    RESERVED_HUGEPAGES=$total
  fi
  if ! grep -q hugetlbfs /proc/mounts; then
    [ "$(id -u)" = 0 ] || die "SPDK needs hugetlbfs mounted"
    mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages
  fi
}

# start_spdk MODE FILE: SPDK's nvmf_tgt on CPU 0 with an AIO bdev on FILE.
start_spdk() {
  local mode=$1 file=$2 flags=()
  PORT=$(python3 "$HELPER" free-port)
  cat >"$WORK/spdk.json" <<EOF
{"subsystems": [
 {"subsystem": "bdev", "config": [
   {"method": "bdev_aio_create", "params": {"name": "aio0", "filename": "$file", "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
   {"method": "nvmf_create_transport", "params": {"trtype": "TCP", "max_queue_depth": 256}},
   {"method": "nvmf_create_subsystem", "params": {"nqn": "$SUBNQN", "allow_any_host": true}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$SUBNQN", "namespace": {"bdev_name": "aio0"}}},
   {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$SUBNQN", "listen_address":
     {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "$PORT"}}}]}
]}
EOF
  [ "$mode" = interrupt ] && flags=(--interrupt-mode)
  taskset -c 0 "$SPDK_TGT" -m 0x1 -c "$WORK/spdk.json" "${flags[@]}" -r "$WORK/spdk.sock" \
    >"$WORK/target.log" 2>&1 &
  TGT_PID=$!
  SPDK_PIDS+=("$TGT_PID")
  local i
  for i in $(seq 200); do
    kill -0 "$TGT_PID" 2>/dev/null || die "SPDK's nvmf_tgt exited during startup"
    tcp_listening && { say "target up: SPDK $mode, pid $TGT_PID"; return 0; }
    sleep 0.1
  done
  die "SPDK's nvmf_tgt was not listening within 20 s"
}

# measure TARGET MODE STORAGE QD REPEAT: one spdk_nvme_perf run, appended to $RAW.
measure() {
  local target=$1 mode=$2 storage=$3 qd=$4 rep=$5 t0 t1 line
  t0=$(cpu_ticks "$TGT_PID")
  taskset -c 1 "$SPDK_PERF" -q "$qd" -o 4096 -w randread -t "$BENCH_SECONDS" -c 0x2 \
    -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$SUBNQN" \
    >"$WORK/perf.out" 2>&1 &
  PERF_PID=$!
  SPDK_PIDS+=("$PERF_PID")
  wait "$PERF_PID" || { cat "$WORK/perf.out" >&2; die "spdk_nvme_perf failed"; }
  PERF_PID=
  t1=$(cpu_ticks "$TGT_PID")
  # "Total : IOPS MiB/s average min max" (latencies in us)
  line=$(awk '/^Total/ {print $3, $4, $5}' "$WORK/perf.out")
  [ -n "$line" ] || { cat "$WORK/perf.out" >&2; die "no Total line from spdk_nvme_perf"; }
  read -r iops mib avg <<<"$line"
  printf '{"kind":"run","target":"%s","mode":"%s","storage":"%s","queue_depth":%d,"repeat":%d,"seconds":%d,"clk_tck":%d,"target_ticks":%d,"iops":%s,"mib_s":%s,"lat_avg_us":%s}\n' \
    "$target" "$mode" "$storage" "$qd" "$rep" "$BENCH_SECONDS" "$CLK_TCK" $((t1 - t0)) \
    "$iops" "$mib" "$avg" >>"$RAW"
  say "  $target $mode $storage QD$qd #$rep: $iops IOPS, avg $avg us"
}

TMPFS_FILE=
SPARSE_FILE=
SPDK_PIDS=()
RESERVED_HUGEPAGES=
# SPDK leaves a trace buffer in /dev/shm and DPDK runtime files per process.
remove_files() {
  local pid
  rm -f ${TMPFS_FILE:+"$TMPFS_FILE"} ${SPARSE_FILE:+"$SPARSE_FILE"}
  for pid in "${SPDK_PIDS[@]}"; do
    rm -rf "/dev/shm/nvmf_trace.pid$pid" "/var/run/dpdk/spdk_pid$pid"
  done
  # Hugepages this script reserved go back.
  [ -z "$RESERVED_HUGEPAGES" ] || echo "$RESERVED_HUGEPAGES" >/proc/sys/vm/nr_hugepages
}
trap 'remove_files; cleanup' EXIT
trap 'say interrupted; exit 130' INT TERM

[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (targets on 0, the client on 1)"
hugepages
say "building release binaries"
cargo build --release --bins || die "cargo build --release --bins failed"
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nvmf-bench.XXXXXX")
RAW=$WORK/raw.jsonl
: >"$RAW"
for storage in $STORAGES; do
  case $storage in
    tmpfs)
      TMPFS_FILE=$(mktemp /dev/shm/nvmf-bench.XXXXXX.img)
      say "writing 1 GiB of random data to $TMPFS_FILE"
      dd if=/dev/urandom of="$TMPFS_FILE" bs=1M count=1024 status=none
      ;;
    sparse)
      SPARSE_FILE=$(mktemp /dev/shm/nvmf-bench-sparse.XXXXXX.img)
      truncate -s 1G "$SPARSE_FILE"
      ;;
    *) die "unknown storage $storage (tmpfs, sparse)" ;;
  esac
done
python3 "$HELPER" load before >>"$RAW"

for rep in $(seq "$BENCH_REPEATS"); do
  for storage in $STORAGES; do
    if [ "$storage" = tmpfs ]; then file=$TMPFS_FILE; else file=$SPARSE_FILE; fi
    for target in spdk nvmf-tgt; do
      for mode in interrupt poll; do
        if [ "$target" = spdk ]; then
          start_spdk "$mode" "$file"
        else
          NS_FILE=$file NS_DIRECT=false NS_ENGINE=uring
          export NS_FILE NS_DIRECT NS_ENGINE
          start_target "$mode" file
        fi
        for qd in $QDS; do
          measure "$target" "$mode" "$storage" "$qd" "$rep"
        done
        stop_target
      done
    done
  done
done
python3 "$HELPER" load after >>"$RAW"

mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/$NAME-spdk-file-$(date +%Y-%m-%d)
cp "$RAW" "$OUT.raw.jsonl"
python3 "$HELPER" spdk-file-report "$RAW" "$OUT" || die "writing the report failed"
say "results: $OUT.md $OUT.json (raw: $OUT.raw.jsonl)"
