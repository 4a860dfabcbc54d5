#!/usr/bin/env bash
# A real Linux NBD device, proven inside a qemu guest (TCG): Debian's cloud kernel with
# nbd.ko, Debian's nbd-client, and atrest itself in a busybox initramfs; user-mode
# networking, where the guest reaches the host's loopback at 10.0.2.2.
#   a. host: `atrest nbd serve` of an encrypted volume; guest: nbd-client, mkfs.ext4,
#      files with checksums, umount, disconnect, reconnect, verify;
#   b. host: disable-key; guest: direct reads of /dev/nbd0 fail with EIO, a new
#      nbd-client attach is refused with the server's reason; enable-key: reads work;
#   c. host: `atrest kms serve`; guest: `atrest --kms-endpoint ... nbd attach` of a
#      volume on its own disk, ext4, files; disable: reads fail; enable: they recover;
#      `atrest nbd detach`; a busy device, the same volume twice, `auto`, SIGTERM,
#      read-only;
#   d. host: both ext4 images read back through `atrest nbd serve` + nbdfuse equal
#      what the guest wrote.
# Each result is asserted from the guest's console. The guest is bounded
# (ATTACH_VM_TIMEOUT, default 600 s); every process and temporary file is removed on
# exit. Downloads are cached as in boot-vm.sh (tests/e2e/guest-lib.sh). Dependencies:
# scripts/install-test-deps.sh. Usage: tests/e2e/attach-vm.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
vm_timeout=${ATTACH_VM_TIMEOUT:-600}
guest_test=attach-vm
# shellcheck source=tests/e2e/guest-lib.sh
. "$repo/tests/e2e/guest-lib.sh"
started=$(now)
region=us-east-1
# The key service, the servers and the CLI all name keys in this region.
export ATREST_REGION=$region

for tool in apt-get apt-cache dpkg-deb ldd mkfs.ext4 debugfs qemu-system-x86_64 nbd-client nbdfuse fusermount3 nbdinfo python3 cargo; do
    need_tool "$tool"
done

# wait_log LOG PATTERN PID: waits (30 s at most) for a line matching PATTERN in LOG,
# written by PID; prints what follows the pattern on the first such line.
wait_log() {
    local log=$1 pattern=$2 pid=$3 tries=0
    until grep -qs -- "$pattern" "$log"; do
        kill -0 "$pid" 2>/dev/null || {
            cat "$log" >&2
            die "the process writing $log exited"
        }
        tries=$((tries + 1))
        ((tries <= 300)) || {
            cat "$log" >&2
            die "no '$pattern' in $log within 30 s"
        }
        sleep 0.1
    done
    grep -m1 -- "$pattern" "$log" | sed "s/.*$pattern//"
}

# wait_console PATTERN: waits for a guest console line matching PATTERN (bounded by
# the guest's deadline); fails on ATREST-FAIL or if the guest stops first.
wait_console() {
    until grep -q -- "$1" "$vm_log"; do
        if grep -q ATREST-FAIL "$vm_log" || ! kill -0 "$vm_pid" 2>/dev/null || ((SECONDS >= vm_deadline)); then
            show_console
            die "the guest did not print '$1'"
        fi
        sleep 0.1
    done
    echo "$(console_at "$1") [at $(seconds_since "$vm_started") s]"
}

# The guest's console line for PATTERN, without the carriage return.
console_at() {
    grep -m1 -- "$1" "$vm_log" | tr -d '\r'
}

show_console() {
    echo "   --- guest console ($vm_log) ---"
    sed 's/^/   | /' "$vm_log"
}

step "0. host: atrest, keys, volume, servers; guest: kernel, nbd-client, atrest, e2fsprogs"
(cd "$repo" && cargo build --quiet --profile ci --bin atrest)
atrest=${CARGO_TARGET_DIR:-$repo/target}/ci/atrest
export ATREST_HOME=$tmp/home
"$atrest" kms create-key --alias alias/attach-host --description "attach-vm: step a, b" >/dev/null
"$atrest" kms create-key --alias alias/attach-guest --description "attach-vm: step c" >/dev/null
"$atrest" volume create "$tmp/host.vol" --size 64M --key-id alias/attach-host >/dev/null
"$atrest" iam create-access-key --principal arn:aws:iam::000000000000:root >"$tmp/access.json"

# The server logs each option the kernel's client negotiates (debug level).
RUST_LOG=info,blockdev::nbd=debug "$atrest" nbd serve --listen 127.0.0.1:0 \
    --export "root=$tmp/host.vol" --key-check-interval 250ms 2>"$tmp/serve.log" &
serve_pid=$!
pids+=("$serve_pid")
nbd_port=$(wait_log "$tmp/serve.log" 'listening on 127.0.0.1:' "$serve_pid")
"$atrest" kms serve --listen 127.0.0.1:0 2>"$tmp/kms.log" &
kms_pid=$!
pids+=("$kms_pid")
kms_port=$(wait_log "$tmp/kms.log" 'listening on 127.0.0.1:' "$kms_pid")
echo "   nbd serve on port $nbd_port, kms serve on port $kms_port"

guest_kernel virtio_pci virtio_blk virtio_net nbd
initramfs=$tmp/initramfs
mkdir -p "$initramfs"/{bin,sbin,dev,proc,sys,tmp,etc,mnt,lib/modules}
cp "$guest/busybox" "$initramfs/bin/busybox"
cp "$guest"/modules/*.ko "$initramfs/lib/modules/"
cp "$guest/modules-order" "$initramfs/etc/modules-order"
cp "$repo/tests/e2e/attach-vm/init" "$initramfs/init"
copy_with_libraries "$initramfs" "$(command -v nbd-client)" "$(command -v mkfs.ext4)" "$atrest"
ln -s "$(command -v mkfs.ext4)" "$initramfs/bin/mkfs.ext4"
# At /bin, not at its host path: the guest mounts a tmpfs on /tmp, which would hide a
# checkout under /tmp.
mv "$initramfs$atrest" "$initramfs/bin/atrest"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$initramfs/etc/"
python3 - "$tmp/access.json" "$nbd_port" "$kms_port" "$region" >"$initramfs/etc/attach.env" <<'PY'
import json, sys
key = json.load(open(sys.argv[1]))["AccessKey"]
print(f"NBD_PORT={sys.argv[2]}")
print(f"KMS_ENDPOINT=http://10.0.2.2:{sys.argv[3]}")
print(f"AWS_ACCESS_KEY_ID={key['AccessKeyId']}")
print(f"AWS_SECRET_ACCESS_KEY={key['SecretAccessKey']}")
print(f"AWS_REGION={sys.argv[4]}")
print("GUEST_KEY=alias/attach-guest")
PY
(cd "$initramfs" && find . | "$guest/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$tmp/initrd.img"
# The guest's own disk: an empty ext4 filesystem it creates its volume on.
mkfs.ext4 -q -F -L attach-data "$tmp/data.img" 128M >/dev/null
echo "   kernel $kernel_version, modules: $(tr '\n' ' ' <"$guest/modules-order")"
echo "   initramfs $(stat -c %s "$tmp/initrd.img") bytes: busybox, nbd-client $(dpkg-query -W -f='${Version}' nbd-client), mkfs.ext4, atrest"

step "a. guest: nbd-client /dev/nbd0 -N root, mkfs.ext4, files, reconnect, verify"
vm_log=$tmp/console.log
vm_started=$(now)
vm_deadline=$((SECONDS + vm_timeout))
qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 -nodefaults -no-user-config \
    -display none -monitor none -serial stdio -no-reboot \
    -kernel "$guest/vmlinuz" -initrd "$tmp/initrd.img" \
    -append "console=ttyS0 panic=-1 quiet" \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
    -drive "file=$tmp/data.img,format=raw,if=virtio" \
    </dev/null >"$vm_log" 2>&1 &
vm_pid=$!
pids+=("$vm_pid")
wait_console ATREST-UP | sed 's/^/   /'
echo "   guest up after $(seconds_since "$vm_started") s"
wait_console ATREST-A-ATTACHED | sed 's/^/   /'
wait_console ATREST-A-VERIFIED | sed 's/^/   /'
echo "   the kernel client's negotiation, as atrest nbd serve saw it:"
grep -E 'option [0-9]+' "$tmp/serve.log" | sed 's/^.*DEBUG /     /' | sort | uniq -c | sed 's/^/   /'

step "b. key disabled: direct reads fail, a new attach is refused; enabled: reads work"
wait_console ATREST-B-DISABLE-NOW >/dev/null
disabled_at=$(now)
"$atrest" kms disable-key --key-id alias/attach-host
wait_console ATREST-B-READ-FAILED | sed 's/^/   /'
echo "   first failed read seen $(seconds_since "$disabled_at") s after disable-key"
console_at ATREST-B-READ-FAILED | grep -q 'Input/output error\|I/O error' ||
    die "the failed read was not an I/O error (EIO)"
wait_console ATREST-B-ENABLE-NOW >/dev/null
grep -a ATREST-B-ATTACH-REFUSED "$vm_log" | tr -d '\r' | sed 's/^/   /'
grep -a ATREST-B-ATTACH-REFUSED "$vm_log" | grep -q 'Disabled' ||
    die "the refused nbd-client did not print the server's reason (the key is Disabled)"
"$atrest" kms enable-key --key-id alias/attach-host
wait_console ATREST-B-READ-RECOVERED | sed 's/^/   /'

step "c. guest: atrest --kms-endpoint http://10.0.2.2:$kms_port nbd attach guest.vol /dev/nbd1"
wait_console ATREST-C-ATTACHED | sed 's/^/   /'
wait_console ATREST-C-LIST: | cut -c1-300 | sed 's/^/   /'
console_at ATREST-C-LIST: | grep -q '"Device":"/dev/nbd1".*"KeyState":"Enabled"' ||
    die "atrest nbd list does not show /dev/nbd1 with its key Enabled"
wait_console ATREST-C-DISABLE-NOW >/dev/null
disabled_at=$(now)
"$atrest" kms disable-key --key-id alias/attach-guest
wait_console ATREST-C-READ-FAILED | sed 's/^/   /'
echo "   first failed read seen $(seconds_since "$disabled_at") s after disable-key (key check every 1 s)"
console_at ATREST-C-READ-FAILED | grep -q 'Input/output error\|I/O error' ||
    die "the failed read was not an I/O error (EIO)"
wait_console ATREST-C-LIST-DISABLED | cut -c1-300 | sed 's/^/   /'
console_at ATREST-C-LIST-DISABLED | grep -q '"KeyState":"Disabled"' ||
    die "atrest nbd list does not show the key Disabled"
wait_console ATREST-C-ENABLE-NOW >/dev/null
"$atrest" kms enable-key --key-id alias/attach-guest
wait_console ATREST-C-READ-RECOVERED | sed 's/^/   /'
for line in ATREST-C2-BUSY ATREST-C2-TWICE ATREST-C2-NOT-CONNECTED ATREST-C2-AUTO ATREST-C2-SIGTERM ATREST-C2-READ-ONLY; do
    wait_console "$line" | cut -c1-250 | sed 's/^/   /'
done
console_at ATREST-C2-BUSY | grep -q '/dev/nbd1 is already connected' ||
    die "attaching to a busy device did not say it is already connected"
console_at ATREST-C2-TWICE | grep -q 'already open for writing' ||
    die "attaching the same volume twice did not say it is in use"
console_at ATREST-C2-NOT-CONNECTED | grep -q '/dev/nbd5 is not connected' ||
    die "detaching a device that is not connected did not say so"
wait_console ATREST-C-DETACHED | sed 's/^/   /'
grep -a 'ATREST-C-DETACH:\|ATREST-C-ATTACH-LOG' "$vm_log" | tr -d '\r' | sed 's/^/   /'
wait_console ATREST-DONE >/dev/null
while kill -0 "$vm_pid" 2>/dev/null && ((SECONDS < vm_deadline)); do
    sleep 0.1
done
kill -0 "$vm_pid" 2>/dev/null && die "the guest did not power off"
wait "$vm_pid" || true
forget_pid "$vm_pid"
echo "   guest powered off $(seconds_since "$vm_started") s after start"
echo "   the guest kernel's messages about nbd devices:"
grep -a '\] \(block \)\?nbd' "$vm_log" | tr -d '\r' | sed 's/^\[ *[0-9.]*\] //' | sort | uniq -c | sed 's/^/   /' || true

step "d. host: both images through atrest nbd serve + nbdfuse equal what the guest wrote"
stop_process "$serve_pid"
stop_process "$kms_pid"
debugfs -R "dump /guest.vol $tmp/guest.vol" "$tmp/data.img" 2>/dev/null
[ -s "$tmp/guest.vol" ] || die "the guest's disk has no /guest.vol"
"$atrest" volume info "$tmp/guest.vol" | python3 -c '
import json, sys
info = json.load(sys.stdin)
assert info["Encrypted"] is True, info
print("   guest.vol: %s, key %s" % (info["Cipher"], info["KeyId"]))'
for tag in a c; do
    case $tag in a) volume=$tmp/host.vol ;; c) volume=$tmp/guest.vol ;; esac
    "$atrest" nbd serve --listen 127.0.0.1:0 --export "disk=$volume" 2>"$tmp/serve-$tag.log" &
    pid=$!
    pids+=("$pid")
    address=$(wait_log "$tmp/serve-$tag.log" 'listening on ' "$pid")
    mkdir -p "$tmp/fuse-$tag"
    nbdfuse -s -P "$tmp/nbdfuse-$tag.pid" "$tmp/fuse-$tag/disk" "nbd://$address/disk" </dev/null &
    fuse_pid=$!
    pids+=("$fuse_pid")
    exit_hooks+=("fusermount3 -u '$tmp/fuse-$tag' 2>/dev/null")
    tries=0
    until [ -s "$tmp/nbdfuse-$tag.pid" ]; do
        kill -0 "$fuse_pid" 2>/dev/null || die "nbdfuse exited"
        tries=$((tries + 1))
        ((tries <= 300)) || die "nbdfuse did not start within 30 s"
        sleep 0.1
    done
    for file in big odd small; do
        want=$(grep -a "ATREST-SUM-$tag: .* $file" "$vm_log" | tr -d '\r' | awk '{ print $2 }')
        [ -n "$want" ] || die "the guest printed no checksum of $file in step $tag"
        got=$(debugfs -R "cat /$file" "$tmp/fuse-$tag/disk" 2>/dev/null | sha256sum | cut -d' ' -f1)
        [ "$got" = "$want" ] || die "step $tag: $file reads back as $got on the host, the guest wrote $want"
    done
    echo "   $(basename "$volume"): big, odd, small equal the guest's checksums"
    fusermount3 -u "$tmp/fuse-$tag"
    stop_process "$fuse_pid"
    stop_process "$pid"
done

step "attach-vm: all steps passed in $(seconds_since "$started") s"
