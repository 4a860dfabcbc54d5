#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine: the real NBD
# clients and peers (libnbd-bin, nbdkit, fio, qemu-utils, python3-libnbd), FUSE and
# ext4 tools for the mount tests, OpenSSL, and the Python packages of
# requirements-test.txt. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(libnbd-bin nbdkit fio qemu-utils python3-libnbd fuse3 e2fsprogs util-linux openssl python3-pip)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
