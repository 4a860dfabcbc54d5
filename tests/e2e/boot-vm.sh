#!/usr/bin/env bash
# Boots a real Linux guest with qemu from atrest's NBD export `root` and walks LAB
# steps 6 and 7 on it (docs/LAB.md, "Boot a VM from the encrypted root volume"):
#   1. build a guest from Debian packages: the cloud kernel, a busybox initramfs that
#      loads the virtio disk drivers, and an ext4 root filesystem holding a marker;
#   2. boot it from nbdkit serving the raw image (the reference: the guest works);
#   3. boot it from an unencrypted atrest volume served as `root`;
#   4. snapshot, encrypted copy under alias/MyKMSKey, swap it in (SIGHUP), boot again;
#   5. key disabled: the guest cannot attach its disk, the user sees why; enabled: boots;
#   6. key disabled under a running guest: its reads fail; enabled: a later read works.
# Each boot is bounded (BOOT_VM_TIMEOUT, default 90 s); every process and temporary
# file is removed on exit. Downloaded packages are cached in ATREST_BOOT_VM_CACHE
# (default ${XDG_CACHE_HOME:-~/.cache}/atrest-boot-vm). Dependencies:
# scripts/install-test-deps.sh. Usage: tests/e2e/boot-vm.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
guest_files=$repo/tests/e2e/boot-vm
boot_timeout=${BOOT_VM_TIMEOUT:-90}
key_alias=alias/MyKMSKey
guest_test=boot-vm
# shellcheck source=tests/e2e/guest-lib.sh
. "$repo/tests/e2e/guest-lib.sh"

# Fails the step, never skips it, when this build of atrest lacks a command it needs.
need_atrest() {
    "$atrest" "$@" --help >/dev/null 2>&1 ||
        die "this build of atrest has no \`atrest $*\`, which this step needs"
}

# Waits until an NBD server answers for URL, or fails after 10 s.
wait_for_nbd() {
    local url=$1 pid=$2 tries=0
    until nbdinfo --size "$url" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "the NBD server for $url exited"
        tries=$((tries + 1))
        ((tries <= 100)) || die "no NBD server answered at $url within 10 s"
        sleep 0.1
    done
}

# Waits for atrest's `listening on ADDR` line in LOG; sets listening to ADDR.
wait_for_listening() {
    local log=$1 pid=$2 tries=0
    until listening=$(sed -n 's/^listening on //p' "$log") && [ -n "$listening" ]; do
        kill -0 "$pid" 2>/dev/null || {
            cat "$log" >&2
            die "atrest nbd serve exited"
        }
        tries=$((tries + 1))
        ((tries <= 100)) || die "atrest nbd serve did not start listening within 10 s"
        sleep 0.1
    done
}

# Waits for a line matching PATTERN in the server's log (10 s at most).
wait_for_server_log() {
    local tries=0
    until grep -q -- "$1" "$tmp/server.log"; do
        kill -0 "$2" 2>/dev/null || {
            cat "$tmp/server.log" >&2
            die "atrest nbd serve exited"
        }
        tries=$((tries + 1))
        ((tries <= 100)) || {
            cat "$tmp/server.log" >&2
            die "atrest nbd serve did not log '$1' within 10 s"
        }
        sleep 0.1
    done
}

# trail_decrypts VOLUME_ID: the Decrypt events of the trail for that volume's data
# key (matched by the encryption context), as "N ok, M refused (error codes)".
trail_decrypts() {
    "$atrest" trail lookup --event-name Decrypt | python3 -c '
import collections, json, sys
volume_id = sys.argv[1]
ok, refused = 0, collections.Counter()
for item in json.load(sys.stdin)["Events"]:
    event = json.loads(item["CloudTrailEvent"])
    context = (event.get("requestParameters") or {}).get("encryptionContext") or {}
    if context.get("atrest:volume-id") != volume_id:
        continue
    if event.get("errorCode"):
        refused[event["errorCode"]] += 1
    else:
        ok += 1
codes = ", ".join(f"{code} x{count}" for code, count in sorted(refused.items()))
print(f"{ok} ok, {sum(refused.values())} refused" + (f" ({codes})" if codes else ""))
' "$1"
}

# start_vm NAME URL MODE: boots the guest in the background from the NBD disk URL;
# its serial console and qemu's own errors go to $tmp/NAME.log.
start_vm() {
    vm_log=$tmp/$1.log
    : >"$vm_log"
    vm_started=$(now)
    qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nodefaults -no-user-config \
        -display none -monitor none -serial stdio -net none -no-reboot \
        -kernel "$kernel" -initrd "$tmp/initrd.img" \
        -append "console=ttyS0 panic=-1 quiet atrest.mode=$3" \
        -drive "file=$2,format=raw,if=virtio" \
        </dev/null >"$vm_log" 2>&1 &
    vm_pid=$!
    pids+=("$vm_pid")
}

# wait_for_console PATTERN: waits until the running guest prints a line matching
# PATTERN; fails if the guest stops first or the boot time limit passes.
wait_for_console() {
    local deadline=$((SECONDS + boot_timeout))
    until grep -q -- "$1" "$vm_log"; do
        kill -0 "$vm_pid" 2>/dev/null || {
            show_console
            die "the guest stopped before printing '$1'"
        }
        ((SECONDS < deadline)) || {
            show_console
            die "the guest did not print '$1' within ${boot_timeout} s"
        }
        sleep 0.1
    done
}

# wait_vm: waits for the guest to power off (bounded); sets vm_status, vm_seconds
# and marker_seconds (when the marker line appeared, empty if it did not).
wait_vm() {
    local deadline=$((SECONDS + boot_timeout))
    marker_seconds=""
    while kill -0 "$vm_pid" 2>/dev/null; do
        if [ -z "$marker_seconds" ] && grep -q "ATREST-MARKER:" "$vm_log"; then
            marker_seconds=$(seconds_since "$vm_started")
        fi
        if ((SECONDS >= deadline)); then
            stop_process "$vm_pid"
            show_console
            die "the guest did not power off within ${boot_timeout} s"
        fi
        sleep 0.1
    done
    vm_status=0
    wait "$vm_pid" || vm_status=$?
    forget_pid "$vm_pid"
    vm_seconds=$(seconds_since "$vm_started")
    if [ -z "$marker_seconds" ] && grep -q "ATREST-MARKER:" "$vm_log"; then
        marker_seconds=$vm_seconds
    fi
}

show_console() {
    echo "   --- guest console ($vm_log) ---"
    sed 's/^/   | /' "$vm_log"
}

# Lines of the console that tell what happened: the guest's own report, kernel I/O
# errors, and qemu's errors (such as a refused attach).
console_summary() {
    grep -E 'ATREST-|I/O error|qemu-system-x86_64:|server reported:' "$vm_log" | tr -d '\r' | sed 's/^/   /' || true
}

# boot_expect_marker NAME URL: boots, and requires the marker of this run's root
# filesystem and an intact read of the volume.
boot_expect_marker() {
    start_vm "$1" "$2" boot
    wait_vm
    console_summary
    grep -q "ATREST-MARKER: $marker" "$vm_log" || {
        show_console
        die "the guest did not print the marker $marker"
    }
    grep -q "ATREST-READ: busybox checksum ok" "$vm_log" || {
        show_console
        die "the guest's read test failed"
    }
    [ "$vm_status" -eq 0 ] || die "qemu exited with status $vm_status"
    echo "   boot: marker after ${marker_seconds} s, powered off after ${vm_seconds} s"
}

for tool in apt-get apt-cache dpkg-deb mkfs.ext4 qemu-system-x86_64 nbdkit nbdinfo nbdcopy python3 cargo; do
    need_tool "$tool"
done

step "1. guest from Debian packages (kernel, busybox initramfs, ext4 root filesystem)"
# The virtio PCI disk driver; the cloud kernel has ext4 built in.
guest_kernel virtio_pci virtio_blk
kernel=$guest/vmlinuz
busybox=$guest/busybox

initramfs=$tmp/initramfs
mkdir -p "$initramfs"/{bin,dev,proc,sys,etc,lib/modules,newroot}
cp "$busybox" "$initramfs/bin/busybox"
cp "$guest"/modules/*.ko "$initramfs/lib/modules/"
cp "$guest/modules-order" "$initramfs/etc/modules-order"
cp "$guest_files/initramfs-init" "$initramfs/init"
(cd "$initramfs" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$tmp/initrd.img"

marker=atrest-root-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
rootfs=$tmp/rootfs
mkdir -p "$rootfs"/{bin,sbin,etc,dev,proc,sys}
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
cp "$guest_files/root-init" "$rootfs/sbin/init"
echo "$marker" >"$rootfs/etc/atrest-marker"
echo "$(md5sum <"$busybox" | cut -d' ' -f1)  /bin/busybox" >"$rootfs/etc/atrest-busybox.md5"
mkfs.ext4 -q -F -L atrest-root -d "$rootfs" "$tmp/root.img" 64M >/dev/null
echo "   kernel $kernel_version, modules (load order): $(tr '\n' ' ' <"$guest/modules-order")"
echo "   busybox $busybox_version; initramfs $(stat -c %s "$tmp/initrd.img") bytes"
echo "   root filesystem: ext4, 64 MiB, /etc/atrest-marker = $marker"

step "2. boot from nbdkit serving the raw image (reference)"
port=$(free_port)
nbdkit --exit-with-parent -f -i 127.0.0.1 -p "$port" file "$tmp/root.img" 2>"$tmp/nbdkit.log" &
nbdkit_pid=$!
pids+=("$nbdkit_pid")
wait_for_nbd "nbd://127.0.0.1:$port/root" "$nbdkit_pid"
boot_expect_marker nbdkit "nbd://127.0.0.1:$port/root"
stop_process "$nbdkit_pid"

step "3. boot from an unencrypted atrest volume served as export root"
(cd "$repo" && cargo build --quiet --profile ci --bin atrest)
atrest=${CARGO_TARGET_DIR:-$repo/target}/ci/atrest
export ATREST_HOME=$tmp/home
need_atrest volume create
need_atrest nbd serve
"$atrest" volume create "$tmp/root.vol" --size 64M --unencrypted >/dev/null
"$atrest" nbd serve --help | grep -q -- '--exports' ||
    die "this build of atrest has no \`atrest nbd serve --exports FILE\`, which this step needs"
cat >"$tmp/exports.toml" <<EOF
[[export]]
name = "root"
path = "$tmp/root.vol"
description = "boot disk"
EOF
"$atrest" nbd serve --listen 127.0.0.1:0 --exports "$tmp/exports.toml" 2>"$tmp/server.log" &
server_pid=$!
pids+=("$server_pid")
wait_for_listening "$tmp/server.log" "$server_pid"
url=nbd://$listening/root
wait_for_nbd "$url" "$server_pid"
nbdcopy "$tmp/root.img" "$url"
grep -q "$marker" "$tmp/root.vol" || die "the unencrypted volume file does not hold the marker in the clear"
echo "   copied the root filesystem into $url; the volume file holds the marker in the clear"
boot_expect_marker atrest-unencrypted "$url"

step "4. snapshot, encrypted copy under $key_alias, swap it in as root (SIGHUP), boot"
need_atrest kms create-key
need_atrest volume snapshot
need_atrest volume copy
"$atrest" kms create-key --alias "$key_alias" --description "atrest boot-vm test" >"$tmp/key.json"
key_arn=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["KeyMetadata"]["Arn"])' <"$tmp/key.json")
echo "   created $key_alias: $key_arn"
"$atrest" volume snapshot "$tmp/root.vol" "$tmp/root-snap.vol" >/dev/null
"$atrest" volume copy "$tmp/root-snap.vol" "$tmp/root-enc.vol" --key-id "$key_alias" >/dev/null
if grep -q "$marker" "$tmp/root-enc.vol"; then
    die "the encrypted volume file contains the marker in the clear"
fi
"$atrest" volume info "$tmp/root-enc.vol" >"$tmp/root-enc.json"
enc_volume_id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["VolumeId"])' <"$tmp/root-enc.json")
python3 -c '
import json, sys
info = json.load(sys.stdin)
if info["Encrypted"] is not True:
    sys.exit("FAIL: the copy is not encrypted: %s" % info)
print("   encrypted copy: volume %s, %s, key %s" % (info["VolumeId"], info["Cipher"], info["KeyId"]))
' <"$tmp/root-enc.json"
echo "   the encrypted volume file does not contain the marker"
sed -i "s|^path = .*|path = \"$tmp/root-enc.vol\"|" "$tmp/exports.toml"
kill -HUP "$server_pid"
wait_for_server_log 'exports reloaded:.*swapped \["root"\]' "$server_pid"
echo "   server: $(grep -o 'exports reloaded:.*' "$tmp/server.log" | tail -n 1)"
boot_expect_marker atrest-encrypted "$url"
decrypts=$(trail_decrypts "$enc_volume_id")
echo "   trail, Decrypt of this volume's data key: $decrypts"
[[ $decrypts =~ ^[1-9][0-9]*\ ok ]] || die "the trail has no Decrypt of the encrypted volume's data key"

step "5. key disabled: the guest cannot attach its root volume; enabled: it boots"
"$atrest" kms disable-key --key-id "$key_alias"
start_vm atrest-key-disabled "$url" boot
wait_vm
console_summary
if grep -q "ATREST-MARKER:" "$vm_log"; then
    die "the guest booted from its root volume with the key disabled"
fi
grep -q "server reported: .*Disabled.*$key_arn" "$vm_log" || {
    show_console
    die "the failed boot does not show the server's refusal naming $key_arn and its state Disabled"
}
echo "   boot failed after ${vm_seconds} s (qemu exit status $vm_status)"
decrypts=$(trail_decrypts "$enc_volume_id")
echo "   trail, Decrypt of this volume's data key: $decrypts"
[[ $decrypts =~ [1-9][0-9]*\ refused\ \(DisabledException ]] ||
    die "the trail does not show the refused attach as a Decrypt failing with DisabledException"
"$atrest" kms enable-key --key-id "$key_alias"
boot_expect_marker atrest-key-enabled "$url"

step "6. key disabled under a running guest: reads fail; enabled: a later read succeeds"
start_vm atrest-running "$url" watch
wait_for_console ATREST-WATCH-READY
echo "   guest up, reading the disk every 200 ms after $(seconds_since "$vm_started") s"
disabled_at=$(now)
"$atrest" kms disable-key --key-id "$key_alias"
wait_for_console ATREST-READ-FAILED
echo "   first failed guest read $(seconds_since "$disabled_at") s after disable-key"
enabled_at=$(now)
"$atrest" kms enable-key --key-id "$key_alias"
wait_for_console ATREST-READ-RECOVERED
echo "   first good guest read $(seconds_since "$enabled_at") s after enable-key"
wait_vm
console_summary
grep -q "ATREST-READ-RECOVERED: $marker" "$vm_log" || die "the read after enable-key did not return the marker"
grep -q "I/O error" "$vm_log" || die "the guest kernel reported no I/O error while the key was disabled"
echo "   guest powered off ${vm_seconds} s after start"

step "boot-vm: all steps passed"
