#!/bin/bash
# Installs what the tests need and runs all of them: format, lints, unit and integration
# tests against the real binary, the Debian package installed into a Debian 12 root, the real
# Linux NVMe/TCP host in a qemu guest, the Linux
# nvme PCI driver in a QEMU guest on the target's vfio-user controller, and the Linux
# nvme-rdma host against the target over soft-RoCE inside a qemu guest. Everything is built
# with `--features rdma` (the default build, without RDMA, is linted too).
# Run as root on Debian 12 (the harness installs packages and boots a guest).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
stage() { printf '\n=== %s ===\n' "$*"; }
failed=()
run() { local name=$1; shift; stage "$name"; if "$@"; then echo "--- $name: ok"; else echo "--- $name: FAILED"; failed+=("$name"); fi; }

stage "install"
contrib/linux-host/install-deps.sh || failed+=(install)
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

run "cargo fmt" cargo fmt --all -- --check
run "cargo clippy (default features: no RDMA)" cargo clippy --all-targets -- -D warnings
run "cargo clippy" cargo clippy --all-targets --features rdma -- -D warnings
run "cargo build --release" cargo build --release --features rdma
run "cargo test" cargo test --features rdma
# The Debian package (cargo-deb), installed into a fresh Debian 12 root, checking its
# declaration, unit, man pages and completions.
run "debian package" contrib/deb/test-package.sh
# The in-tree fuzzers (queue pair, declaration) again, for longer: the debug build the stage
# above made (no rebuild; overflow checks on), in parallel, NVMF_FUZZ_SECONDS each. A finding
# fails the stage and prints the seed that replays it (NVMF_FUZZ_REPLAY=...).
run "fuzz" env NVMF_FUZZ_SECONDS="${NVMF_FUZZ_SECONDS:-120}" cargo test --features rdma --lib fuzz -- --nocapture
run "linux host" contrib/linux-host/run-matrix.sh
# The real VMM: QEMU 11 (from a Debian trixie chroot it builds once) with a Linux guest whose
# nvme driver uses the vfio-user controller, in interrupt and poll mode, ram and file.
run "vfio-user" contrib/vfio-user/run-matrix.sh
# NVMe/RDMA: one qemu guest per case with soft-RoCE on its eth0, the target (the release
# build above) and the guest's nvme-rdma host in it; interrupt and poll mode, ram and file.
run "rdma" contrib/rdma/run-matrix.sh

stage "summary"
if [ ${#failed[@]} -eq 0 ]; then
  echo "all stages passed"
else
  echo "failed stages: ${failed[*]}"
  exit 1
fi
