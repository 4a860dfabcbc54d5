#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine: the real NBD
# clients and peers (libnbd-bin, nbdkit, fio, qemu-utils, python3-libnbd; Debian's
# nbd-client, copied into the guest of tests/e2e/attach-vm.sh), FUSE and
# ext4 tools for the mount tests, OpenSSL, curl (the plain HTTP client of the S3
# tests), rclone (a generic S3 client with its default settings), Debian's chromium and
# chromium-driver (the console's browser tests drive them headless through Selenium;
# nothing downloads a browser), qemu-system-x86 for the VM boot test, and the Python packages of
# requirements-test.txt. Safe to run again: it
# installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# libssl-dev and pkg-config: the xts_openssl fuzz target links OpenSSL (openssl-sys).
apt_packages=(libnbd-bin nbd-client nbdkit fio qemu-utils python3-libnbd fuse3 e2fsprogs util-linux openssl python3-pip python3-venv curl rclone libssl-dev pkg-config chromium chromium-driver)
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

# qemu-system-x86 (tests/e2e/boot-vm.sh) must come from the same archive as qemu-utils:
# qemu-system-common breaks a newer qemu-utils (such as a backport), and apt would
# resolve that by removing qemu-utils. Pinning qemu-utils to qemu-system-x86's version
# keeps both (a downgrade where a newer qemu-utils was installed).
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    echo "installing: qemu-system-x86 qemu-utils=$qemu_version"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades \
        qemu-system-x86 "qemu-utils=$qemu_version"
fi

python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

# The AWS clients and peers the gateway tests drive (boto3, the aws CLI, moto's
# server mode) live in their own venv, .venv-test, which the tests find (or
# $ATREST_TEST_VENV): pip-installed CLIs must not fight the system's Python packages.
if [ ! -x .venv-test/bin/python ]; then
    python3 -m venv .venv-test
fi
.venv-test/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
