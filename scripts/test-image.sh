#!/usr/bin/env bash
# Builds the small Debian cloud-init guests the end-to-end tests boot, from Debian packages
# (no cloud image can be downloaded here), every variant from one mmdebstrap rootfs. Cached by a
# hash of this recipe; prints the cache dir, which holds:
#   disk.qcow2, vmlinuz, initrd.img  the root filesystem alone, for direct kernel boot;
#   disk-firmware.qcow2               a disk that boots through firmware like the official cloud
#                                     images: GPT with a BIOS boot partition, an EFI system
#                                     partition and the root filesystem; GRUB for BIOS and UEFI;
#   disk-cloudinit-error.qcow2        disk.qcow2 whose own cloud-init configuration makes one
#                                     module (write-files) fail; for direct kernel boot too.
# `test-image.sh --check [DIR]` checks the images without booting them (every build does).
# Needs root (loop devices, mount) and the host packages scripts/e2e-deps.sh installs.
set -euo pipefail

packages=linux-image-cloud-amd64,cloud-init,openssh-server,python3,sudo,dbus,qemu-guest-agent,systemd-sysv,ifupdown,isc-dhcp-client,netbase
recipe_version=4
cache_root=${VMUP_IMAGE_CACHE:-/var/cache/vmup-test-image}
recipe_hash=$( { echo "$recipe_version $packages"; sed -n '/^# recipe-start/,/^# recipe-end/p' "$0"; } | sha256sum | cut -c1-16)
out=$cache_root/$recipe_hash

say() { echo "test-image: $*" >&2; }
tmp_out=
work=$(mktemp -d)
# Whatever a failure or a signal leaves behind is undone here: the mounts and loop devices
# under $work (found again, not remembered, so one made just before a signal is not missed),
# then $work. A mount that will not go keeps $work, so rm never walks into an image.
cleanup() {
  local rc=$? m loop
  trap - ERR
  for m in $(findmnt -rn -o TARGET | grep -F "$work/" | sort -r); do
    umount "$m" || { say "cannot unmount $m"; rc=1; }
  done
  for loop in $(losetup -n -O NAME,BACK-FILE | awk -v w="$work/" 'index($2, w) == 1 {print $1}'); do
    losetup -d "$loop" || { say "cannot detach $loop"; rc=1; }
  done
  if findmnt -rn -o TARGET | grep -qF "$work/"; then
    say "left $work in place: something is still mounted under it"
  else
    rm -rf --one-file-system "$work"
    [ -z "$tmp_out" ] || rm -rf "$tmp_out"
  fi
  [ "$rc" -eq 0 ] || say "FAILED (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'say "failed at line $LINENO: $BASH_COMMAND"' ERR

# Attaches image file $1, or only its partition $2, to a loop device and prints the device; more
# losetup options may follow. A partition gets a loop device of its own at its offset rather than
# losetup -P's /dev/loopNpM: kernels without CONFIG_EFI_PARTITION (this one) find no partitions
# there, and GRUB resolves a partition device only through udevadm, which hosts without udev lack.
attach() {
  local file=$1 part=${2:-}
  shift; [ $# -eq 0 ] || shift
  [ -z "$part" ] || set -- -o "$(partition "$file" "$part" START)" --sizelimit "$(partition "$file" "$part" SECTORS)" "$@"
  losetup -f --show "$@" "$file"
}

# Prints the START or SECTORS of partition $2 of image file $1, in bytes.
partition() {
  local n
  n=$(partx -g -o "$3" -n "$2" "$1")
  [ -n "$n" ] || { say "$1 has no partition $2"; return 1; }
  echo $((n * 512))
}

# Checks the images in $1 without booting them; fails on the first thing that is not as built.
check_images() {
  local dir=$1 f loop esp esp_img m=$work/check kernel initrd root_uuid esp_uuid n
  expect() { if eval "$1"; then say "ok: $2"; else say "check failed: $2"; return 1; fi; }
  mkdir -p "$m/disk" "$m/error" "$m/firmware"
  for f in disk disk-cloudinit-error disk-firmware; do
    qemu-img convert -O raw "$dir/$f.qcow2" "$m/$f.raw"
  done

  loop=$(attach "$m/disk.raw" "" -r)
  mount -t ext4 -o ro,noload "$loop" "$m/disk"
  kernel=$(readlink "$m/disk/vmlinuz") initrd=$(readlink "$m/disk/initrd.img")
  expect '[ "$(blkid -s LABEL -o value "$loop")" = vmuproot ]' "disk.qcow2: ext4 labelled vmuproot"
  expect 'cmp -s "$dir/vmlinuz" "$m/disk/$kernel" && cmp -s "$dir/initrd.img" "$m/disk/$initrd"' \
    "vmlinuz, initrd.img are the disk's /$kernel, /$initrd"

  loop=$(attach "$m/disk-cloudinit-error.raw" "" -r)
  mount -t ext4 -o ro,noload "$loop" "$m/error"
  f=etc/cloud/cloud.cfg.d/95-vmup-test-error.cfg
  expect '[ "$(diff -rq --no-dereference "$m/disk" "$m/error" 2>&1)" = "Only in $m/error/etc/cloud/cloud.cfg.d: 95-vmup-test-error.cfg" ]' \
    "disk-cloudinit-error.qcow2: disk.qcow2 plus /$f, nothing else"
  say "  /$f: $(grep -v '^#' "$m/error/$f" | tr -s ' \n' ' ')"
  expect '! grep -q "^vmup-no-such-user:" "$m/error/etc/passwd"' "the owner it names does not exist"
  # cloud-init's own validator, in the image: the config is valid, only the module fails.
  expect 'chroot "$m/error" python3 -c "import sys, yaml; from cloudinit.config.schema import get_schema, validate_cloudconfig_schema as v; v(yaml.safe_load(sys.stdin), get_schema(), strict=True)" <"$m/error/$f"' \
    "the image's cloud-init $(chroot "$m/error" cloud-init --version 2>&1 | awk '{print $2}') finds no schema error in it"

  f=$m/disk-firmware.raw
  say "  sgdisk -p: $(sgdisk -p "$f" | awk '$1 ~ /^[0-9]+$/ {printf "%s %s-%s %s %s %s %s; ", $1, $2, $3, $4, $5, $6, $7}')"
  expect '[ "$(sgdisk -p "$f" | awk '\''$1 ~ /^[0-9]+$/ {print $1, $4 $5, $6}'\'' | tr "\n" ,)" = "1 1024.0KiB EF02,2 100.0MiB EF00,3 2.9GiB 8300," ]' \
    "disk-firmware.qcow2: GPT with BIOS boot (1 MiB), EFI system (100 MiB), root"
  expect 'head -c 440 "$f" | grep -qa GRUB' "MBR boot code is GRUB's boot.img"
  n=$(dd if="$f" bs=1M skip=1 count=1 status=none | tr -d '\0' | wc -c)
  expect '[ "$n" -gt 10000 ]' "BIOS boot partition holds core.img ($n non-zero bytes)"
  loop=$(attach "$f" 3 -r) esp=$(attach "$f" 2 -r)
  root_uuid=$(blkid -s UUID -o value "$loop") esp_uuid=$(blkid -s UUID -o value "$esp")
  # mtools reads the FAT itself (a kernel without vfat, like this one may be, cannot mount it),
  # from the file: on a loop device it warns that it finds no geometry.
  esp_img=$f@@$(partition "$f" 2 START)
  mount -t ext4 -o ro,noload "$loop" "$m/firmware"
  n=$( (cmp -l "$m/firmware/boot/grub/i386-pc/core.img" <(dd if="$f" bs=1M skip=1 count=1 status=none) 2>/dev/null || true) | wc -l)
  expect '[ "$(stat -c %s "$m/firmware/boot/grub/i386-pc/core.img")" -gt 10000 ] && [ "$n" -lt 1024 ]' \
    "it is /boot/grub/i386-pc/core.img as grub-bios-setup patched it ($n bytes differ)"
  expect '[ -f "$m/firmware/$kernel" ] && [ -f "$m/firmware/$initrd" ] &&
    grep -q "linux /$kernel root=UUID=$root_uuid rw .*console=ttyS0" "$m/firmware/boot/grub/grub.cfg" &&
    grep -q "initrd /$initrd$" "$m/firmware/boot/grub/grub.cfg"' \
    "grub.cfg boots /$kernel with root=UUID=$root_uuid (the root partition's) and console=ttyS0"
  expect '[ -f "$m/firmware/boot/grub/x86_64-efi/linux.mod" ] && [ -f "$m/firmware/boot/grub/i386-pc/linux.mod" ]' \
    "GRUB modules for both platforms under /boot/grub"
  expect 'grep -qx "LABEL=vmuproot / ext4 defaults 0 1" "$m/firmware/etc/fstab" && grep -qx "UUID=$esp_uuid /boot/efi vfat umask=0077,nofail 0 0" "$m/firmware/etc/fstab"' \
    "fstab: root by label, /boot/efi by the ESP's UUID $esp_uuid"
  expect '[ "$(diff -rq --no-dereference -x boot "$m/disk" "$m/firmware" 2>&1)" = "Files $m/disk/etc/fstab and $m/firmware/etc/fstab differ" ] && [ -d "$m/firmware/boot/efi" ]' \
    "its root is disk.qcow2's plus /boot/efi, /boot/grub and the ESP's fstab line"
  expect 'fsck.fat -n "$esp" >/dev/null' "ESP is a clean FAT"
  mcopy -n -i "$esp_img" ::/EFI/BOOT/BOOTX64.EFI "$m/BOOTX64.EFI"
  expect '[ "$(head -c 2 "$m/BOOTX64.EFI")" = MZ ] && grep -qa "search --no-floppy --fs-uuid --set=root $root_uuid" "$m/BOOTX64.EFI"' \
    "ESP has /EFI/BOOT/BOOTX64.EFI ($(stat -c %s "$m/BOOTX64.EFI") bytes, PE), its config finds root by UUID"
  say "  grub.cfg: $(grep -Ev '^#' "$m/firmware/boot/grub/grub.cfg" | tr -s '\t\n' ' ')"
  for f in "$m/disk" "$m/error" "$m/firmware"; do umount "$f"; done
}

if [ "${1:-}" = --check ]; then
  check_images "${2:-$out}"
  exit 0
fi
if [ -f "$out/done" ]; then echo "$out"; exit 0; fi
mkdir -p "$cache_root"
root=$work/root
start=$SECONDS

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

cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
kernel=$(readlink "$root/vmlinuz") initrd=$(readlink "$root/initrd.img")
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
say "rootfs ready after $((SECONDS - start)) s"

# disk.qcow2: the root filesystem alone, for direct kernel boot.
truncate -s 3G "$work/disk.raw"
mkfs.ext4 -q -L vmuproot -d "$root" "$work/disk.raw"

# disk-cloudinit-error.qcow2: the same filesystem plus image configuration (not vmup's
# user-data) that makes exactly one module fail after the user, keys and SSH are fine.
# write-files with an owner that does not exist: cloud-init 22.4 writes the file, then chown
# raises OSError("Unknown user or group: ..."), the module fails, the stage goes on (users-groups
# and ssh run after it), and `cloud-init status --format json` lists
# "('write-files', OSError('Unknown user or group: ...'))". It fails in the first (init) stage,
# so on 22.4 status says error while the later stages still run: what vmup must wait out.
# Not runcmd (it would blame scripts-user, not itself), not bootcmd (a failing bootcmd can keep
# old cloud-init from finishing), not bad permissions (22.4 only warns and uses 0644). vmup's
# user-data has no write_files, which would replace this list.
cp --sparse=always "$work/disk.raw" "$work/error.raw"
mkdir "$work/mnt"
loop=$(attach "$work/error.raw")
mount -t ext4 "$loop" "$work/mnt"
cat > "$work/mnt/etc/cloud/cloud.cfg.d/95-vmup-test-error.cfg" <<'CFG'
# vmup e2e: this image's own configuration makes the write-files module fail (unknown owner).
write_files:
  - path: /etc/vmup-test-cloudinit-error
    content: "written by the image's own cloud-init configuration\n"
    owner: vmup-no-such-user:root
CFG
umount "$work/mnt"
losetup -d "$loop"

# disk-firmware.qcow2: GPT as on the official cloud images (BIOS boot for GRUB's core.img,
# FAT32 EFI system partition, ext4 root); GRUB images made here from the host's grub-pc-bin and
# grub-efi-amd64-bin, both told to find the root filesystem by UUID and read its
# /boot/grub/grub.cfg. UEFI boots the removable path EFI/BOOT/BOOTX64.EFI (no NVRAM entry
# needed; unsigned, so Secure Boot must be off).
root_uuid=$(cat /proc/sys/kernel/random/uuid)
truncate -s 3G "$work/firmware.raw"
sgdisk -o \
  -n 1:1M:+1M -t 1:EF02 -c 1:"BIOS boot" \
  -n 2:0:+100M -t 2:EF00 -c 2:"EFI system" \
  -n 3:0:0 -t 3:8300 -c 3:root \
  "$work/firmware.raw" >/dev/null
esp=$(attach "$work/firmware.raw" 2)
# Its output only when it fails: on a loop device it always warns that it has no geometry.
log=$(mkfs.vfat -F 32 -n EFI "$esp" 2>&1) || { echo "$log" >&2; false; }
esp_uuid=$(blkid -s UUID -o value "$esp")
losetup -d "$esp"
loop=$(attach "$work/firmware.raw" 3)
mkfs.ext4 -q -L vmuproot -U "$root_uuid" -d "$root" "$loop"

grub_modules=(part_gpt ext2 fat search search_fs_uuid normal configfile linux boot echo test serial terminal)
cat > "$work/early.cfg" <<CFG
search --no-floppy --fs-uuid --set=root $root_uuid
set prefix=(\$root)/boot/grub
CFG
mkdir -p "$work/bios"
cp /usr/lib/grub/i386-pc/boot.img "$work/bios/"
grub-mkimage -O i386-pc -d /usr/lib/grub/i386-pc -c "$work/early.cfg" -p /boot/grub \
  -o "$work/bios/core.img" biosdisk "${grub_modules[@]}"
grub-mkimage -O x86_64-efi -d /usr/lib/grub/x86_64-efi -c "$work/early.cfg" -p /boot/grub \
  -o "$work/BOOTX64.EFI" "${grub_modules[@]}"
# mtools on the file: on a loop device it warns that it finds no geometry.
esp_img=$work/firmware.raw@@$(partition "$work/firmware.raw" 2 START)
mmd -i "$esp_img" ::/EFI ::/EFI/BOOT
mcopy -i "$esp_img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

mount -t ext4 "$loop" "$work/mnt"
mkdir -p "$work/mnt/boot/efi" "$work/mnt/boot/grub"
# GRUB's modules where its prefix points, as grub-install leaves them, for what grub.cfg loads.
for platform in i386-pc x86_64-efi; do
  mkdir "$work/mnt/boot/grub/$platform"
  cp /usr/lib/grub/$platform/*.mod /usr/lib/grub/$platform/*.lst "$work/mnt/boot/grub/$platform/"
done
cp "$work/bios/core.img" "$work/bios/boot.img" "$work/mnt/boot/grub/i386-pc/"
cat > "$work/mnt/boot/grub/grub.cfg" <<CFG
# Written by vmup's scripts/test-image.sh (no grub-mkconfig in the guest).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry 'Debian GNU/Linux (vmup test image)' {
	search --no-floppy --fs-uuid --set=root $root_uuid
	linux /$kernel root=UUID=$root_uuid rw console=tty0 console=ttyS0,115200
	initrd /$initrd
}
CFG
cat >> "$work/mnt/etc/fstab" <<FSTAB
UUID=$esp_uuid /boot/efi vfat umask=0077,nofail 0 0
FSTAB
sync
# boot.img into the MBR, core.img into the BIOS boot partition. grub-bios-setup wants block
# devices, a plain file will not do: the disk's loop device, to find the BIOS boot partition in,
# and a directory on a mounted one, to guess a root device from.
disk=$(attach "$work/firmware.raw")
/usr/lib/grub/i386-pc/grub-bios-setup -d "$work/mnt/boot/grub/i386-pc" "$disk"
losetup -d "$disk"
umount "$work/mnt"
losetup -d "$loop"
# recipe-end

for disk in disk error firmware; do
  qemu-img convert -O qcow2 "$work/$disk.raw" "$work/$disk.qcow2"
done
tmp_out=$out.tmp
rm -rf "$tmp_out"
mkdir -p "$out.tmp"
mv "$work/disk.qcow2" "$work/vmlinuz" "$work/initrd.img" "$out.tmp/"
mv "$work/error.qcow2" "$out.tmp/disk-cloudinit-error.qcow2"
mv "$work/firmware.qcow2" "$out.tmp/disk-firmware.qcow2"
chmod 0644 "$out.tmp"/*
check_images "$out.tmp"
touch "$out.tmp/done"
rm -rf "$out"
mv "$out.tmp" "$out"
tmp_out=
say "built in $((SECONDS - start)) s"
echo "$out"
