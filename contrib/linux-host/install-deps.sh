#!/bin/bash
# Installs the Debian packages the harness needs, only those missing.
set -euo pipefail
need=()
# strace and prlimit (util-linux) are for cargo test: the flush at SIGTERM and the fd limit.
for p in qemu-system-x86 linux-image-amd64 busybox-static cpio kmod iproute2 nvme-cli fio python3 strace util-linux; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# Building at all: rdma-sys generates its bindings (bindgen, libclang) from the verbs and
# RDMA CM headers and links libibverbs and librdmacm; pkg-config finds them.
for p in libibverbs-dev librdmacm-dev libclang-dev pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
