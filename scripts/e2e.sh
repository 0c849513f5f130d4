#!/usr/bin/env bash
# The end-to-end suite: real libvirtd, QEMU (TCG), a cloud-init guest and
# ansible-playbook. Installs its packages, builds the guest image (cached),
# starts libvirtd if none runs and stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/e2e-deps.sh
image_dir=$(scripts/test-image.sh)
state=$(mktemp)
netns=vmup-e2e-nat
cleanup() {
  scripts/libvirtd.sh stop "$state"
  rm -f "$state"
  ip netns del "$netns" 2>/dev/null || true
}
trap cleanup EXIT
export VMUP_TEST_IMAGE_DIR=$image_dir
scripts/libvirtd.sh start "$state"
go test -tags e2e -run '^TestE2E' -count=1 -v -timeout 60m .

# The NAT network needs a libvirtd of its own inside a network namespace made
# here: guests get private addresses that tests may reach only in there. That
# needs the libvirtd this script started, never one that was running already.
if grep -q '^libvirtd ' "$state"; then
  scripts/libvirtd.sh stop "$state"
  ip netns add "$netns"
  ip -n "$netns" link set lo up
  scripts/libvirtd.sh start "$state" "$netns"
  VMUP_NAT_NETNS=$netns go test -tags e2e -run '^TestNAT' -count=1 -v -timeout 20m .
else
  echo "e2e: libvirtd was already running; the NAT test needs its own (skipped)"
fi
