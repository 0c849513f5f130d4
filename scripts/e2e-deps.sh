#!/usr/bin/env bash
# Installs what the end-to-end suite and `make demo` need, from Debian's packages.
set -euo pipefail
packages=(
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  ansible-core openssh-client dnsmasq-base mmdebstrap libxml2-utils e2fsprogs procps util-linux
  # The firmware-booted test image: its partitions and GRUB (built), its UEFI firmware (booted).
  gnupg gpgv
  gdisk dosfstools mtools grub-pc-bin grub-efi-amd64-bin ovmf
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
