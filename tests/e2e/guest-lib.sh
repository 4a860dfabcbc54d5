# Shared by the qemu guest tests (tests/e2e/boot-vm.sh, tests/e2e/attach-vm.sh);
# sourced, not run. Provides: what tests/e2e/lib.sh does (a private $tmp removed on
# exit with every process in $pids, die/step/need_tool), free_port, process
# bookkeeping, timing, and guest_kernel, which fetches Debian's cloud kernel and busybox once into the cache
# ($ATREST_BOOT_VM_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/atrest-boot-vm) and
# picks out the kernel modules a guest needs. Callers set `set -euo pipefail` and
# $guest_test (their name, for messages) before sourcing.

cache=${ATREST_BOOT_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/atrest-boot-vm}

e2e_name=$guest_test
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
unpack_dir=""
exit_hooks+=('if [ -n "$unpack_dir" ]; then rm -rf "$unpack_dir"; fi')

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Drops a reaped process from the cleanup list, so that cleanup never signals a
# process id the system has since given to someone else.
forget_pid() {
    local pid kept=()
    for pid in "${pids[@]}"; do
        [ "$pid" = "$1" ] || kept+=("$pid")
    done
    pids=("${kept[@]}")
}

stop_process() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

now() {
    date +%s.%N
}

seconds_since() {
    awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f", end - start }'
}

# guest_kernel MODULE...: sets guest to a cache directory holding vmlinuz, busybox,
# modules/NAME.ko for each MODULE and what it depends on, and modules-order (the load
# order); sets kernel_pkg and kernel_version. The downloaded packages stay in the
# cache, so another module set costs no download.
guest_kernel() {
    local wanted="$*" module deb
    kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [ -n "$kernel_pkg" ] || die "apt cannot resolve linux-image-cloud-amd64 (run apt-get update)"
    kernel_version=${kernel_pkg#linux-image-}
    busybox_version=$(apt-cache policy busybox-static | awk '/Candidate:/ { print $2 }')
    [ -n "$busybox_version" ] && [ "$busybox_version" != "(none)" ] ||
        die "apt has no busybox-static (run apt-get update)"
    guest=$cache/$kernel_pkg+busybox-${busybox_version//:/_}
    # boot-vm.sh's original set keeps its original directory name.
    if [ "$wanted" != "virtio_pci virtio_blk" ]; then
        guest=$guest+${wanted// /+}
    fi
    [ -d "$guest" ] && return
    mkdir -p "$cache/debs"
    unpack_dir=$(mktemp -d "$cache/.unpack.XXXXXX")
    if ! ls "$cache/debs/${kernel_pkg}_"*.deb >/dev/null 2>&1 ||
        ! ls "$cache/debs/busybox-static_${busybox_version//:/%3a}_"*.deb >/dev/null 2>&1; then
        # As root, apt downloads as its sandbox user, who cannot write under a private
        # home; the packages are verified against the signed archive either way.
        local sandbox=()
        if [ "$(id -u)" -eq 0 ]; then sandbox=(-o APT::Sandbox::User=root); fi
        (cd "$unpack_dir" && apt-get download -q "${sandbox[@]}" "$kernel_pkg" busybox-static) >/dev/null
        mv "$unpack_dir"/*.deb "$cache/debs/"
    fi
    for deb in "$cache/debs/${kernel_pkg}_"*.deb "$cache/debs/busybox-static_${busybox_version//:/%3a}_"*.deb; do
        dpkg-deb -x "$deb" "$unpack_dir/root"
    done
    grep -q '^CONFIG_EXT4_FS=y' "$unpack_dir/root/boot/config-$kernel_version" ||
        die "$kernel_pkg does not have ext4 built in"
    mkdir -p "$unpack_dir/guest/modules"
    module_order=""
    for module in $wanted; do
        add_module "$module"
    done
    echo "$module_order" | tr ' ' '\n' | sed '/^$/d' >"$unpack_dir/guest/modules-order"
    cp "$unpack_dir/root/boot/vmlinuz-$kernel_version" "$unpack_dir/guest/vmlinuz"
    cp "$unpack_dir/root/bin/busybox" "$unpack_dir/guest/busybox"
    # Another run may have finished first; either copy is the same.
    mv -T "$unpack_dir/guest" "$guest" 2>/dev/null || true
    rm -rf "$unpack_dir"
    unpack_dir=""
}

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

# copy_with_libraries ROOT PROGRAM...: copies each program and its shared libraries
# (the ldd closure, with the dynamic loader) into ROOT at the same paths.
copy_with_libraries() {
    local root=$1 program file
    shift
    for program in "$@"; do
        [ -x "$program" ] || die "$program is missing (run scripts/install-test-deps.sh)"
        for file in "$program" $(ldd "$program" | grep -o '/[^ ]*'); do
            mkdir -p "$root$(dirname "$file")"
            cp -L "$file" "$root$file"
        done
    done
}
