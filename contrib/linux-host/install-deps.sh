#!/bin/bash
# Installs the Debian packages the harness needs, only those missing.
set -euo pipefail
need=()
# strace and prlimit (util-linux) are for cargo test: the flush at SIGTERM and the fd limit.
# debootstrap builds the Debian 12 root the package test installs into (contrib/deb).
for p in qemu-system-x86 linux-image-amd64 busybox-static cpio kmod iproute2 nvme-cli fio python3 strace util-linux debootstrap; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# Building at all: rdma-sys generates its bindings (bindgen, libclang) from the verbs and
# RDMA CM headers and links libibverbs and librdmacm; pkg-config finds them.
for p in libibverbs-dev librdmacm-dev libclang-dev pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# contrib/rdma: the guest runs the host's verbs libraries, rxe provider and tools over 9p
# (rping, ibv_rc_pingpong, the rdma tool is iproute2's); e2fsprogs makes its file namespace's disk.
for p in rdma-core libibverbs1 librdmacm1 ibverbs-providers ibverbs-utils rdmacm-utils e2fsprogs; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
