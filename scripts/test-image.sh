#!/usr/bin/env bash
# Builds the small Debian cloud-init guest the end-to-end tests boot, from Debian packages
# (no cloud image can be downloaded here). Cached by a hash of this recipe; prints the cache dir,
# which holds disk.qcow2, vmlinuz and initrd.img.
set -euo pipefail

packages=linux-image-cloud-amd64,cloud-init,openssh-server,python3,sudo,dbus,qemu-guest-agent,systemd-sysv,ifupdown,isc-dhcp-client,netbase
recipe_version=3
cache_root=${VMUP_IMAGE_CACHE:-/var/cache/vmup-test-image}
recipe_hash=$( { echo "$recipe_version $packages"; sed -n '/^# recipe-start/,/^# recipe-end/p' "$0"; } | sha256sum | cut -c1-16)
out=$cache_root/$recipe_hash

if [ -f "$out/done" ]; then echo "$out"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache_root"
root=$work/root

# recipe-start
mmdebstrap --quiet --variant=minbase --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/{doc,man,locale}/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  bookworm "$root" "deb http://deb.debian.org/debian bookworm main" >&2

cat > "$root/etc/cloud/cloud.cfg.d/90-vmup-test.cfg" <<'CFG'
datasource_list: [NoCloud]
# minbase has no locales package, so update-locale would fail the boot.
locale: false
CFG
echo 'LABEL=vmuproot / ext4 defaults 0 1' > "$root/etc/fstab"
echo vmup-test > "$root/etc/hostname"
# The cloud kernel's initramfs must find the root disk by label (the seed is a second virtio disk).
rm -f "$root/etc/machine-id"; touch "$root/etc/machine-id"
rm -f "$root"/etc/ssh/ssh_host_*
# recipe-end

cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
truncate -s 3G "$work/disk.raw"
mkfs.ext4 -q -L vmuproot -d "$root" "$work/disk.raw"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
mkdir -p "$out.tmp"
mv "$work/disk.qcow2" "$work/vmlinuz" "$work/initrd.img" "$out.tmp/"
chmod 0644 "$out.tmp"/*
touch "$out.tmp/done"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
