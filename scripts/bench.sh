#!/usr/bin/env bash
# The benchmark: vmup's operations next to the same ones run by hand with
# virsh, ssh and ansible-playbook, on the end-to-end suite's image and
# libvirtd; prints a Markdown table of medians. VMUP_BENCH_RUNS runs each
# (default 4: even, so each side goes first as often), and within each the
# suspend, resume and reset VMUP_BENCH_REPEATS times (default 3);
# VMUP_BENCH_OUT=FILE also writes the table there. Installs its packages, builds the guest image
# (cached), starts libvirtd if none runs and stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/e2e-deps.sh
image_dir=$(scripts/test-image.sh)
state=$(mktemp)
cleanup() {
  scripts/libvirtd.sh stop "$state"
  rm -f "$state"
}
trap cleanup EXIT
export VMUP_TEST_IMAGE_DIR=$image_dir
scripts/libvirtd.sh start "$state"
go test -tags 'e2e bench' -run '^TestBench(Environment|Run|Template)?$' -count=1 -v -timeout 90m .
