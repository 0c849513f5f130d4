#!/usr/bin/env bash
# Installs what `go test ./...` uses beyond Go, from Debian's packages: gpg
# makes the test's own signing keys and gpgv checks signatures; busybox's sh
# is one of the shells the run's guest runner is tested under. Without them
# those tests skip, saying so.
set -euo pipefail
missing=()
for p in gnupg gpgv busybox; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
