#!/bin/bash
# Linux's own NVMe-oF target (nvmet) through configfs, inside the guest: the reference that
# contrib/rdma's checks must pass against.
# usage: nvmet.sh start TRTYPE ADDR PORT NQN DEVICE   subsystem NQN, namespace 1 on DEVICE, port 1
#        nvmet.sh ns-add NQN NSID DEVICE               another namespace (the host gets an AEN)
#        nvmet.sh ns-remove NQN NSID
#        nvmet.sh stop NQN                             port, namespaces and subsystem removed
# DEVICE is a block device or a file; a file on tmpfs is opened buffered (tmpfs has no O_DIRECT).
set -eu
C=/sys/kernel/config/nvmet

ns_add() {
  local nqn=$1 nsid=$2 dev=$3 ns=$C/subsystems/$1/namespaces/$2
  mkdir "$ns"
  echo -n "$dev" > "$ns/device_path"
  if [ -f "$dev" ] && [ "$(stat -f -c %T "$dev")" = tmpfs ]; then echo 1 > "$ns/buffered_io"; fi
  echo 1 > "$ns/enable"
  echo "nvmet: $nqn namespace $nsid -> $dev"
}
ns_remove() {
  local ns=$C/subsystems/$1/namespaces/$2
  echo 0 > "$ns/enable"
  rmdir "$ns"
  echo "nvmet: $1 namespace $2 removed"
}

case "${1:-}" in
start)
  TR=$2 ADDR=$3 PORT=$4 NQN=$5 DEV=$6
  mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
  modprobe nvmet
  modprobe "nvmet-$TR"
  mkdir "$C/subsystems/$NQN"
  echo 1 > "$C/subsystems/$NQN/attr_allow_any_host"
  ns_add "$NQN" 1 "$DEV"
  mkdir "$C/ports/1"
  echo "$TR" > "$C/ports/1/addr_trtype"
  echo ipv4 > "$C/ports/1/addr_adrfam"
  echo "$ADDR" > "$C/ports/1/addr_traddr"
  echo "$PORT" > "$C/ports/1/addr_trsvcid"
  ln -s "$C/subsystems/$NQN" "$C/ports/1/subsystems/$NQN"
  echo "nvmet: $TR $ADDR:$PORT $NQN";;
ns-add) ns_add "$2" "$3" "$4";;
ns-remove) ns_remove "$2" "$3";;
stop)
  NQN=$2
  rm -f "$C/ports/1/subsystems/$NQN"
  rmdir "$C/ports/1"
  for ns in "$C/subsystems/$NQN/namespaces/"*; do [ -d "$ns" ] && ns_remove "$NQN" "${ns##*/}"; done
  rmdir "$C/subsystems/$NQN"
  echo "nvmet: $NQN stopped";;
*) echo "usage: nvmet.sh start|ns-add|ns-remove|stop ..." >&2; exit 2;;
esac
