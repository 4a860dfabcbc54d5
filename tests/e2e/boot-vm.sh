#!/usr/bin/env bash
# Boots a real Linux guest with qemu from atrest's NBD export `root` and walks LAB
# steps 6 and 7 on it (docs/LAB.md, "Boot a VM from the encrypted root volume"):
#   1. build a guest from Debian packages: the cloud kernel, a busybox initramfs that
#      loads the virtio disk drivers, and an ext4 root filesystem holding a marker;
#   2. boot it from nbdkit serving the raw image (the reference: the guest works);
#   3. boot it from an unencrypted atrest volume served as `root`;
# The remaining steps (the encrypted copy swapped in, the key disabled and
# enabled under the guest) join as their atrest commands land.
# Each boot is bounded (BOOT_VM_TIMEOUT, default 90 s); every process and temporary
# file is removed on exit. Downloaded packages are cached in ATREST_BOOT_VM_CACHE
# (default ${XDG_CACHE_HOME:-~/.cache}/atrest-boot-vm). Dependencies:
# scripts/install-test-deps.sh. Usage: tests/e2e/boot-vm.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
guest_files=$repo/tests/e2e/boot-vm
cache=${ATREST_BOOT_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/atrest-boot-vm}
boot_timeout=${BOOT_VM_TIMEOUT:-90}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/atrest-boot-vm.XXXXXX")
pids=()
unpack_dir=""
cleanup() {
    local status=$?
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
    if [ -n "$unpack_dir" ]; then
        rm -rf "$unpack_dir"
    fi
    if [ "$status" -ne 0 ]; then
        echo "boot-vm: FAILED" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
    echo "FAIL: $*" >&2
    exit 1
}

step() {
    echo
    echo "== $*"
}

need_tool() {
    command -v "$1" >/dev/null || die "$1 is not installed (run scripts/install-test-deps.sh)"
}

# Fails the step, never skips it, when this build of atrest lacks a command it needs.
need_atrest() {
    "$atrest" "$@" --help >/dev/null 2>&1 ||
        die "this build of atrest has no \`atrest $*\`, which this step needs"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
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

stop_process() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

now() {
    date +%s.%N
}

seconds_since() {
    awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f", end - start }'
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
    grep -E 'ATREST-|I/O error|qemu-system-x86_64:' "$vm_log" | tr -d '\r' | sed 's/^/   /' || true
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
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$kernel_pkg" ] || die "apt cannot resolve linux-image-cloud-amd64 (run apt-get update)"
kernel_version=${kernel_pkg#linux-image-}
busybox_version=$(apt-cache policy busybox-static | awk '/Candidate:/ { print $2 }')
[ -n "$busybox_version" ] && [ "$busybox_version" != "(none)" ] ||
    die "apt has no busybox-static (run apt-get update)"
guest=$cache/$kernel_pkg+busybox-${busybox_version//:/_}
# The virtio PCI disk driver; the cloud kernel has ext4 built in.
root_modules="virtio_pci virtio_blk"

# Appends MODULE and, first, what it depends on (the `depends=` field of its
# .modinfo section, the data modinfo and depmod read) to module_order.
add_module() {
    local name=$1 file dep
    case " $module_order " in *" $name "*) return ;; esac
    file=$(find "$unpack_dir/root/lib/modules/$kernel_version" \( -name "$name.ko" -o -name "${name//_/-}.ko" \) -print -quit)
    [ -n "$file" ] || die "$kernel_pkg has no module $name"
    for dep in $(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$dep"
    done
    module_order="$module_order $name"
    cp "$file" "$unpack_dir/guest/modules/$name.ko"
}

if [ ! -d "$guest" ]; then
    mkdir -p "$cache"
    unpack_dir=$(mktemp -d "$cache/.unpack.XXXXXX")
    # As root, apt downloads as its sandbox user, who cannot write under a private
    # home; the packages are verified against the signed archive either way.
    sandbox=()
    if [ "$(id -u)" -eq 0 ]; then sandbox=(-o APT::Sandbox::User=root); fi
    (cd "$unpack_dir" && apt-get download -q "${sandbox[@]}" "$kernel_pkg" busybox-static) >/dev/null
    for deb in "$unpack_dir"/*.deb; do
        dpkg-deb -x "$deb" "$unpack_dir/root"
    done
    grep -q '^CONFIG_EXT4_FS=y' "$unpack_dir/root/boot/config-$kernel_version" ||
        die "$kernel_pkg does not have ext4 built in"
    mkdir -p "$unpack_dir/guest/modules"
    module_order=""
    for module in $root_modules; do
        add_module "$module"
    done
    echo "$module_order" | tr ' ' '\n' | sed '/^$/d' >"$unpack_dir/guest/modules-order"
    cp "$unpack_dir/root/boot/vmlinuz-$kernel_version" "$unpack_dir/guest/vmlinuz"
    cp "$unpack_dir/root/bin/busybox" "$unpack_dir/guest/busybox"
    # Another run may have finished first; either copy is the same.
    mv -T "$unpack_dir/guest" "$guest" 2>/dev/null || true
    rm -rf "$unpack_dir"
    unpack_dir=""
fi
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
"$atrest" nbd serve --listen 127.0.0.1:0 --export "root=$tmp/root.vol" 2>"$tmp/server.log" &
server_pid=$!
pids+=("$server_pid")
wait_for_listening "$tmp/server.log" "$server_pid"
url=nbd://$listening/root
wait_for_nbd "$url" "$server_pid"
nbdcopy "$tmp/root.img" "$url"
grep -q "$marker" "$tmp/root.vol" || die "the unencrypted volume file does not hold the marker in the clear"
echo "   copied the root filesystem into $url; the volume file holds the marker in the clear"
boot_expect_marker atrest-unencrypted "$url"

step "boot-vm: all steps passed"
