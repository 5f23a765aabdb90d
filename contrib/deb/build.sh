#!/bin/bash
# Builds the Debian package: the release binaries (with NVMe/RDMA), their man pages and shell
# completions (generated from the command lines), then cargo-deb with Cargo.toml's
# [package.metadata.deb]. Prints the package's path last.
# usage: contrib/deb/build.sh            (installs cargo-deb first when missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
cargo build --release --features rdma --quiet
rm -rf target/assets
target/release/nvmf-tgt generate-assets target/assets
target/release/nvmf-perf --generate-assets target/assets
# --no-build: the binaries above, with the feature; cargo-deb strips them and computes the
# shared-library dependencies (libibverbs1, librdmacm1, libc6, libgcc-s1).
cargo deb --no-build --quiet --features rdma | tail -1
