#!/usr/bin/env bash
# The end-to-end suite: real libvirtd, QEMU (TCG), a cloud-init guest and
# ansible-playbook. Installs its packages, builds the guest image (cached),
# starts libvirtd if none runs and stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/e2e-deps.sh
image_dir=$(scripts/test-image.sh)
state=$(mktemp)
scripts/libvirtd.sh start "$state"
trap 'scripts/libvirtd.sh stop "$state"; rm -f "$state"' EXIT
VMUP_TEST_IMAGE_DIR=$image_dir go test -tags e2e -run '^TestE2E' -count=1 -v -timeout 75m .
