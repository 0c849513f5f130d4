#!/usr/bin/env bash
# `make demo`: packages, libvirtd, the small Debian guest, and `vmup up demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/e2e-deps.sh
image_dir=$(scripts/test-image.sh)
scripts/libvirtd.sh start "$(mktemp)"   # left running for the demo VM
./vmup up demo --reset -d --image "$image_dir/disk.qcow2" \
  --kernel "$image_dir/vmlinuz" --initrd "$image_dir/initrd.img" \
  --cmdline "root=LABEL=vmuproot rw console=ttyS0" \
  --domain-type qemu --network user --restrict-network --memory 1024 --disk 4 \
  --playbook examples/site.yml
echo "Try: ./vmup ssh demo    ./vmup status    ./vmup down demo    ./vmup destroy demo"
