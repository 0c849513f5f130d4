#!/usr/bin/env bash
# Starts virtlogd and libvirtd if none runs (this machine has no systemd), and
# stops what it started: `libvirtd.sh start STATEFILE [NETNS]` / `libvirtd.sh stop STATEFILE`.
# With NETNS, libvirtd runs in that network namespace, so its NAT network and
# guests live there and nothing they send can leave it.
# KVM guests hang here, so libvirtd gets a /dev/kvm it cannot open: without
# that it re-probes QEMU on every define and start, which takes seconds.
set -euo pipefail
cmd=$1 state=$2 netns=${3:-}

# libvirt waits for a stopped QEMU's pid to be gone, and QEMU's parent is
# whoever reaps orphans: this machine's init reaps them 1.1-1.7 s late
# (measured), so every save, destroy and shutdown took that much longer
# than on a host with systemd (a managedsave 2.3 s instead of 0.9). So
# libvirtd runs under a subreaper that reaps at once, and which ends with
# its last child.
reaper='import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
if os.fork() == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
while True:
    try:
        os.wait()
    except ChildProcessError:
        break'
reaped() {
  if command -v python3 >/dev/null; then
    setsid python3 -c "$reaper" "$@" </dev/null >/dev/null 2>&1 &
  else
    "$@"
  fi
}

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
      reaped "${in_netns[@]}" unshare -m --propagation private sh -c "mount --bind $blocker /dev/kvm && exec libvirtd -d"
    else
      reaped "${in_netns[@]}" libvirtd -d
    fi
    started=1
  fi
  for _ in $(seq 100); do
    if virsh -c qemu:///system uri >/dev/null 2>&1; then
      # Once it answers: the reaper starts it in the background.
      [ -z "${started:-}" ] || echo "libvirtd $(pgrep -x -n libvirtd)" >> "$state"
      exit 0
    fi
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
