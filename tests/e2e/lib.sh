# Shared by the end-to-end scripts (tests/e2e/lab.sh, and through guest-lib.sh
# boot-vm.sh and attach-vm.sh); sourced, not run. Provides a private $tmp removed on
# exit with every process in $pids (after the commands in $exit_hooks), and
# die/step/need_tool. Callers set `set -euo pipefail` and $e2e_name (their name, for
# $tmp and the FAILED line) before sourcing.

tmp=$(mktemp -d "${TMPDIR:-/tmp}/atrest-$e2e_name.XXXXXX")
pids=()
# Commands run on exit before the processes are stopped (unmounts and the like).
exit_hooks=()
cleanup() {
    local status=$?
    local pid hook
    for hook in "${exit_hooks[@]}"; do
        eval "$hook" || true
    done
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
    if [ "$status" -ne 0 ]; then
        echo "$e2e_name: FAILED" >&2
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
