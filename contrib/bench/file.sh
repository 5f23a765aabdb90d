#!/bin/bash
# Benchmarks `file` namespaces over loopback NVMe/TCP with nvmf-perf: a 1 GiB file on tmpfs
# (buffered; also a sparse one) and on the disk under /var/tmp (direct = true), each on both engines (uring,
# threads), in interrupt and poll mode, 4K random reads at QD1, QD32 and QD128 and 4K random
# writes at QD32; then what the target costs idle with BENCH_IDLE_HOSTS controllers on a file
# namespace in interrupt mode. Repeats go round every combination in turn. The report compares
# the tmpfs figures with SPDK's AIO bdev (issue 14's reference table) and the engines with
# each other. Writes contrib/bench/results/NAME-file-DATE.{md,json,raw.jsonl}.
#
#   ./contrib/bench/file.sh
#
# Environment: BENCH_SECONDS (10), BENCH_REPEATS (3), BENCH_IDLE_SECONDS (30),
# BENCH_IDLE_HOSTS (16), BENCH_PERF_ARGS (--busy-poll), BENCH_RESULTS_DIR, BENCH_NAME as for
# run.sh; BENCH_STORAGES ("tmpfs sparse disk": sparse is a tmpfs file never written, as a
# freshly made image is), BENCH_ENGINES ("uring threads") and BENCH_MODES
# ("interrupt poll") narrow the matrix. The files are filled with random data first: reads
# of holes would cost neither the page cache nor the disk anything.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HELPER=$ROOT/contrib/bench/bench.py

export BENCH_SECONDS=${BENCH_SECONDS:-10}
export BENCH_REPEATS=${BENCH_REPEATS:-3}
export BENCH_IDLE_SECONDS=${BENCH_IDLE_SECONDS:-30}
export BENCH_IDLE_HOSTS=${BENCH_IDLE_HOSTS:-16}
export BENCH_PERF_ARGS=${BENCH_PERF_ARGS:---busy-poll}
STORAGES=${BENCH_STORAGES:-tmpfs sparse disk}
ENGINES=${BENCH_ENGINES:-uring threads}
MODES=${BENCH_MODES:-interrupt poll}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/contrib/bench/results}
NAME=${BENCH_NAME:-$(hostname -s 2>/dev/null || true)}
NAME=${NAME:-machine}

SUBNQN=nqn.2026-11.io.nvmf-tgt:bench
TGT=$ROOT/target/release/nvmf-tgt
PERF=$ROOT/target/release/nvmf-perf
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=contrib/bench/lib.sh
. "$ROOT/contrib/bench/lib.sh"

CASES=(
  "randread-4k-qd1|-w randread -o 4k -q 1"
  "randread-4k-qd32|-w randread -o 4k -q 32"
  "randread-4k-qd128|-w randread -o 4k -q 128"
  "randwrite-4k-qd32|-w randwrite -o 4k -q 32"
)

TMPFS_FILE=
SPARSE_FILE=
# use_storage STORAGE ENGINE: the NS_* settings write_config reads.
use_storage() {
  case $1 in
    tmpfs) NS_FILE=$TMPFS_FILE NS_DIRECT=false ;;
    sparse)
      # Made again for each target: the random writes fill it.
      NS_FILE=$SPARSE_FILE NS_DIRECT=false
      truncate -s 0 "$SPARSE_FILE" && truncate -s 1G "$SPARSE_FILE"
      ;;
    disk) NS_FILE=$WORK/disk.img NS_DIRECT=true ;;
    *) die "unknown storage $1 (tmpfs, sparse, disk)" ;;
  esac
  NS_ENGINE=$2
  export NS_FILE NS_DIRECT NS_ENGINE
}

# fill PATH: 1 GiB of random data, on the device (not only in the page cache).
fill() {
  say "writing 1 GiB of random data to $1"
  dd if=/dev/urandom of="$1" bs=1M count=1024 conv=fsync status=none \
    || die "cannot write $1"
}


remove_tmpfs_file() { rm -f ${TMPFS_FILE:+"$TMPFS_FILE"} ${SPARSE_FILE:+"$SPARSE_FILE"}; }
trap 'remove_tmpfs_file; cleanup' EXIT
trap 'say interrupted; exit 130' INT TERM

for v in BENCH_SECONDS BENCH_REPEATS BENCH_IDLE_SECONDS BENCH_IDLE_HOSTS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (target on 0, nvmf-perf on 1)"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
[ -d /dev/shm ] || die "no tmpfs at /dev/shm"

say "building release binaries"
cargo build --release --bins || die "cargo build --release --bins failed"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nvmf-bench.XXXXXX")
RAW=$WORK/raw.jsonl
: >"$RAW"
for storage in $STORAGES; do
  case $storage in
    tmpfs)
      TMPFS_FILE=$(mktemp /dev/shm/nvmf-bench.XXXXXX.img)
      fill "$TMPFS_FILE"
      ;;
    sparse)
      SPARSE_FILE=$(mktemp /dev/shm/nvmf-bench-sparse.XXXXXX.img)
      truncate -s 1G "$SPARSE_FILE"
      ;;
    disk) fill "$WORK/disk.img" ;;
    *) die "unknown storage $storage (tmpfs, sparse, disk)" ;;
  esac
done
python3 "$HELPER" load before >>"$RAW"

for rep in $(seq "$BENCH_REPEATS"); do
  for storage in $STORAGES; do
    for engine in $ENGINES; do
      for mode in $MODES; do
        use_storage "$storage" "$engine"
        start_target "$mode" file
        for entry in "${CASES[@]}"; do
          # shellcheck disable=SC2086
          run_case "$mode" "$storage/$engine/${entry%%|*}" "$rep" ${entry#*|}
        done
        stop_target
      done
    done
  done
done
for storage in $STORAGES; do
  case "$storage: $ENGINES " in
    sparse:*) ;;
    *" uring "*)
      use_storage "$storage" uring
      run_idle interrupt file "file-$storage-uring"
      ;;
  esac
done
python3 "$HELPER" load after >>"$RAW"

mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/$NAME-file-$(date +%Y-%m-%d)
cp "$RAW" "$OUT.raw.jsonl"
python3 "$HELPER" file-report "$RAW" "$OUT" || die "writing the report failed"
say "results: $OUT.md $OUT.json (raw: $OUT.raw.jsonl)"
