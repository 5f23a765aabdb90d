#!/bin/bash
# The target's side of guest-checks.sh's reload step: when MARKER_DIR/reload-add appears,
# namespace 2 is added; when MARKER_DIR/reload-remove appears, it goes again. With a TOML
# file, the declaration gains a 16 MiB RAM namespace 2 and then is put back as it was (each by
# rename, which nvmf-tgt's watch follows); with --run, ADD_CMD and REMOVE_CMD (sh -c) do it
# instead (another target, e.g. Linux nvmet). Runs where the target runs: on the host for
# contrib/linux-host, inside the guest for contrib/rdma (the target's file watch only sees
# changes made by its own kernel).
# usage: ns-reload.sh MARKER_DIR TOML | ns-reload.sh MARKER_DIR --run ADD_CMD REMOVE_CMD
#   env: RELOAD_WAIT (s to wait for each marker, default 600)
set -u
DIR=${1:?usage: ns-reload.sh MARKER_DIR TOML | MARKER_DIR --run ADD_CMD REMOVE_CMD}
marker() {
  local i
  for (( i = 0; i < ${RELOAD_WAIT:-600} * 10; i++ )); do [ -e "$DIR/$1" ] && return 0; sleep 0.1; done
  echo "ns-reload: no $DIR/$1 after ${RELOAD_WAIT:-600}s"
  return 1
}
if [ "${2:-}" = --run ]; then
  ADD=${3:?ADD_CMD}; REMOVE=${4:?REMOVE_CMD}
  marker reload-add || exit 0
  sh -c "$ADD" && echo "ns-reload: namespace 2 added ($ADD)" || echo "ns-reload: '$ADD' failed"
  marker reload-remove || exit 0
  sh -c "$REMOVE" && echo "ns-reload: namespace 2 removed ($REMOVE)" || echo "ns-reload: '$REMOVE' failed"
else
  TOML=${2:?TOML}
  marker reload-add || exit 0
  cp "$TOML" "$TOML.orig"
  { cat "$TOML.orig"; printf '\n[[subsystem.namespace]]\nnsid = 2\nram = { size = "16MiB" }\n'; } > "$TOML.new"
  mv "$TOML.new" "$TOML"
  echo "ns-reload: namespace 2 declared in $TOML"
  marker reload-remove || exit 0
  cp "$TOML.orig" "$TOML.new"
  mv "$TOML.new" "$TOML"
  echo "ns-reload: namespace 2 removed from $TOML"
fi
