#!/usr/bin/env bash
# Encrypting an existing raw image, side by side: `atrest volume import` against
# `qemu-img convert -O luks` and a plain `cp` of the same image on the same filesystem.
#
#   benches/import-compare.sh [--size 1G] [--rounds 3] [--only TOOL]...
#
# Two references without encryption show where the time goes: `dd` (a user-space
# read/write copy through the page cache, what a read-encrypt-write loop does minus the
# cipher) and `dd-direct` (the same writing with O_DIRECT, no page-cache allocation).
#
# The source image is random data (no holes, so nothing can be skipped). Each round
# runs every tool once, rotating the order; the table shows the median wall time of the
# command alone and of the command followed by an fsync of its output (atrest's import
# fsyncs before its rename, `cp` and qemu-img convert's default cache mode do not), and
# the speed ratios issue #5 states its targets in. See benches/README.md.
set -euo pipefail
# shellcheck source=benches/chart.sh
source "$(dirname "$0")/chart.sh"

readonly TOOLS_ALL=(cp qemu-img atrest dd dd-direct)
readonly LUKS_PASSPHRASE=bench-passphrase
readonly ATREST_KEY=alias/bench

size=1G
rounds=3
only=()
keep=0
build=1
atrest_bin=""
workdir_parent="${TMPDIR:-/tmp}"
out_dir=bench-results

usage() {
    cat <<EOF
usage: $0 [options]

  --size SIZE        size of the raw source image (default $size: 512M, 1G, ...)
  --rounds N         runs per tool; the table shows medians (default $rounds)
  --only TOOL        measure only this tool; repeat or comma-separate (${TOOLS_ALL[*]})
  --workdir DIR      where the images go, on the filesystem to measure (default $workdir_parent)
  --atrest-bin PATH  use this atrest binary instead of building target/release/atrest
  --no-build         do not run cargo build --release (use the existing target/release/atrest)
  --keep             keep the work directory after the run
  --out DIR          where the report goes: import-compare.json (every run) and its chart
                     import-compare-throughput.svg (default: bench-results/ here)
  -h, --help         this text

Exit status: 0 when every selected tool was measured, 1 when one failed.
EOF
}

die() {
    echo "import-compare: $*" >&2
    exit 2
}

while (($#)); do
    case "$1" in
        --size) size="${2:?--size needs a value}"; shift 2 ;;
        --rounds) rounds="${2:?--rounds needs a value}"; shift 2 ;;
        --only) IFS=, read -r -a more <<<"${2:?--only needs a value}"; only+=("${more[@]}"); shift 2 ;;
        --workdir) workdir_parent="${2:?--workdir needs a value}"; shift 2 ;;
        --atrest-bin) atrest_bin="${2:?--atrest-bin needs a value}"; build=0; shift 2 ;;
        --no-build) build=0; shift ;;
        --keep) keep=1; shift ;;
        --out) out_dir="${2:?--out needs a value}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive whole number, got '$rounds'"

tools=()
if ((${#only[@]})); then
    for t in "${only[@]}"; do
        found=0
        for known in "${TOOLS_ALL[@]}"; do [[ "$t" == "$known" ]] && found=1; done
        ((found)) || die "unknown tool '$t' for --only; known: ${TOOLS_ALL[*]}"
        tools+=("$t")
    done
else
    tools=("${TOOLS_ALL[@]}")
fi
selected() {
    local t
    for t in "${tools[@]}"; do [[ "$t" == "$1" ]] && return 0; done
    return 1
}

require() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH; install the Debian package '$2' (scripts/install-test-deps.sh installs it)"
}
require python3 python3
require sync coreutils
require dd coreutils
if selected qemu-img; then require qemu-img qemu-utils; fi

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
size_bytes="$(python3 - "$size" <<'EOF'
import re, sys
m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B?)?", sys.argv[1].strip(), re.IGNORECASE)
if not m:
    sys.exit(f"import-compare: --size '{sys.argv[1]}' is not a size like 512M or 1G")
n = int(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())
if n < 1024 * 1024 or n % (1024 * 1024):
    sys.exit("import-compare: --size must be a whole number of MiB")
print(n)
EOF
)" || exit 2

work="$(mktemp -d "$workdir_parent/import-compare.XXXXXX")"
declare -A failed=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((keep)); then
        echo "import-compare: work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "[$(date +%T)] $*" >&2; }
fail_tool() {
    failed[$1]="$2"
    log "$1: FAILED: $2"
}

atrest=""
if selected atrest; then
    atrest="$atrest_bin"
    if [[ -z "$atrest" ]]; then
        atrest="$repo_root/target/release/atrest"
        if ((build)); then
            log "atrest: cargo build --release --bin atrest"
            (cd "$repo_root" && cargo build --release --bin atrest) >"$work/atrest-build.log" 2>&1 ||
                fail_tool atrest "cargo build --release failed: $(grep -m1 -E '^error' "$work/atrest-build.log" || tail -n 1 "$work/atrest-build.log")"
        fi
    fi
    if [[ -z "${failed[atrest]:-}" ]]; then
        export ATREST_HOME="$work/atrest-home"
        mkdir -p "$ATREST_HOME"
        if [[ ! -x "$atrest" ]]; then
            fail_tool atrest "no atrest binary at $atrest"
        elif ! "$atrest" volume import --help >/dev/null 2>&1; then
            fail_tool atrest "'atrest volume import' is not available in this build ($atrest)"
        elif ! out="$("$atrest" kms create-key --alias "$ATREST_KEY" 2>&1)"; then
            fail_tool atrest "atrest kms create-key --alias $ATREST_KEY failed: $out"
        fi
    fi
fi

log "writing a $size_bytes-byte raw image of random data"
src="$work/source.raw"
head -c "$size_bytes" /dev/urandom >"$src"
sync -f "$src"

# Prints the command's own seconds and the seconds including the fsync of its output,
# tab separated; on failure the command's stderr is left in $work/err. qemu-img's PBKDF2 timing fails now and then with "Unable to get
# accurate CPU usage" before any data is written; that attempt is repeated.
timed() {
    local tool="$1" dst="$2" t0 t1 t2 attempt
    for attempt in $(seq 20); do
        rm -f "$dst"
        t0="$(date +%s.%N)"
        case "$tool" in
            cp) cp "$src" "$dst" 2>"$work/err" ;;
            qemu-img) qemu-img convert -f raw -O luks --object "secret,id=s0,data=$LUKS_PASSPHRASE" \
                -o key-secret=s0,iter-time=10 "$src" "$dst" 2>"$work/err" ;;
            atrest) "$atrest" volume import "$src" "$dst" --key-id "$ATREST_KEY" >/dev/null 2>"$work/err" ;;
            dd) dd if="$src" of="$dst" bs=4M status=none 2>"$work/err" ;;
            dd-direct) dd if="$src" of="$dst" bs=4M oflag=direct status=none 2>"$work/err" ;;
        esac && {
            t1="$(date +%s.%N)"
            sync "$dst"
            t2="$(date +%s.%N)"
            python3 -c "import sys; a, b, c = map(float, sys.argv[1:]); print(f'{b - a:.3f}\t{c - a:.3f}')" "$t0" "$t1" "$t2"
            return 0
        }
        [[ "$tool" == qemu-img ]] && grep -q "accurate CPU usage" "$work/err" || break
    done
    return 1
}

results="$work/results.tsv"
: >"$results"
for ((round = 1; round <= rounds; round++)); do
    n=${#tools[@]}
    for ((i = 0; i < n; i++)); do
        t="${tools[$(((i + round - 1) % n))]}"
        [[ -n "${failed[$t]:-}" ]] && continue
        log "round $round/$rounds: $t"
        if times="$(timed "$t" "$work/out.$t")"; then
            printf '%s\t%s\t%s\n' "$round" "$t" "$times" >>"$results"
        else
            fail_tool "$t" "$(tail -n 2 "$work/err" | tr '\n' ' ')"
        fi
        rm -f "$work/out.$t"
    done
done

failed_list=""
for t in "${tools[@]}"; do
    [[ -n "${failed[$t]:-}" ]] && failed_list+="$t"$'\t'"${failed[$t]}"$'\n'
done
mkdir -p "$out_dir"
summary_status=0
python3 - "$results" "$rounds" "$size_bytes" "${tools[*]}" "$failed_list" \
    "$out_dir/import-compare.json" <<'EOF' || summary_status=$?
import datetime, json, os, statistics, sys
from collections import defaultdict

path, rounds, size, tools, failed_text, report = sys.argv[1:]
tools, size = tools.split(), int(size)
failed = dict(line.split("\t", 1) for line in failed_text.splitlines() if line)
own, synced = defaultdict(list), defaultdict(list)
with open(path) as f:
    for line in f:
        _, tool, a, b = line.split("\t")
        own[tool].append(float(a))
        synced[tool].append(float(b))

print(f"\nEncrypting a {size // 2**20} MiB raw image of random data, median of {rounds} runs")
print(f"{'tool':<10} {'seconds':>8} {'MB/s':>7} {'+fsync s':>9} {'MB/s':>7}")
med = {}
for t in tools:
    if not own[t]:
        print(f"{t:<10} {'-':>8}")
        continue
    a, b = statistics.median(own[t]), statistics.median(synced[t])
    med[t] = (a, b)
    print(f"{t:<10} {a:8.2f} {size / a / 1e6:7.0f} {b:9.2f} {size / b / 1e6:7.0f}")

if "atrest" in tools:
    print("\ntargets (issue #5), speed ratio = other's time / atrest's time:")
    for ref, want in (("cp", 0.9), ("qemu-img", 1.5)):
        if ref not in tools:
            continue
        if "atrest" in med and ref in med:
            r0 = med[ref][0] / med["atrest"][0]
            r1 = med[ref][1] / med["atrest"][1]
            verdict = "met" if r1 >= want else "MISSED"
            print(f"  atrest import vs {ref:<9} >= {want:.1f}x  got {r0:.2f}x (command), "
                  f"{r1:.2f}x (with fsync)  {verdict}")
        else:
            print(f"  atrest import vs {ref:<9} >= {want:.1f}x  not measured")

# The report: MB/s of every run (atrest first), for benches/src/chart.rs to draw.
order = sorted((t for t in tools if own[t]), key=lambda t: t != "atrest")
with open(report, "w") as f:
    json.dump({
        "bench": "import-compare",
        "title": f"encrypting a {size // 2**20} MiB raw image of random data, {rounds} runs",
        "machine": f"{os.cpu_count()} CPUs, load {open('/proc/loadavg').read().split()[0]}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "charts": [{"name": "throughput", "title": "image import throughput", "groups": [
            {"label": label, "unit": "MB/s",
             "bars": [{"series": t, "rounds": [size / s / 1e6 for s in runs[t] if s > 0]}
                      for t in order]}
            for label, runs in (("the command", own), ("the command + fsync", synced))]}],
    }, f, indent=1)
print(f"\nreport: {report}")

if failed:
    print()
    for t, why in failed.items():
        print(f"FAILED {t}: {why}")
    sys.exit(1)
EOF
draw_charts "$out_dir/import-compare.json" "$out_dir"
exit "$summary_status"
