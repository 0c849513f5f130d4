#!/usr/bin/env bash
# Starts virtlogd and libvirtd if none runs (this machine has no systemd), and
# stops what it started: `libvirtd.sh start STATEFILE [NETNS]` / `libvirtd.sh stop STATEFILE`.
# With NETNS, libvirtd runs in that network namespace, so its NAT network and
# guests live there and nothing they send can leave it.
# KVM guests hang here, so libvirtd gets a /dev/kvm it cannot open: without
# that it re-probes QEMU on every define and start, which takes seconds.
set -euo pipefail
cmd=$1 state=$2 netns=${3:-}

running() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

case $cmd in
start)
  : > "$state"
  if ! pgrep -x virtlogd >/dev/null; then
    virtlogd -d
    echo "virtlogd $(pgrep -x -n virtlogd)" >> "$state"
  fi
  if ! pgrep -x libvirtd >/dev/null; then
    conf=/etc/libvirt/qemu.conf
    grep -q '^namespaces = \[\]' "$conf" || echo 'namespaces = []' >> "$conf"
    blocker=/run/vmup-no-kvm
    [ -e "$blocker" ] || { touch "$blocker"; chmod 000 "$blocker"; }
    in_netns=()
    [ -n "$netns" ] && in_netns=(ip netns exec "$netns")
    if [ -e /dev/kvm ]; then
      "${in_netns[@]}" unshare -m --propagation private sh -c "mount --bind $blocker /dev/kvm && exec libvirtd -d"
    else
      "${in_netns[@]}" libvirtd -d
    fi
    echo "libvirtd $(pgrep -x -n libvirtd)" >> "$state"
  fi
  for _ in $(seq 100); do
    virsh -c qemu:///system uri >/dev/null 2>&1 && exit 0
    sleep 0.1
  done
  echo "libvirtd did not answer" >&2; exit 1
  ;;
stop)
  [ -f "$state" ] || exit 0
  # Stop libvirtd before virtlogd; only the pids this script started.
  tac "$state" | while read -r name pid; do
    running "$pid" && kill "$pid"
    for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
  done
  rm -f "$state"
  ;;
esac
