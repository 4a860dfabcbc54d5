#!/usr/bin/env bash
# Soak: one `atrest nbd serve` of an encrypted volume and several NBD clients at once
# (fio's nbd engine), each writing its own region with checksummed blocks, reading
# them back to verify, and flushing now and then, for 10 minutes. Then the server's
# health: still serving, every byte of the export readable, resident memory not
# growing, no error in its log. Not part of the test command (it takes minutes).
#
#   benches/soak.sh [--seconds 600] [--clients 4] [--size 1G] ...
#
# SOAK_SECONDS overrides the default duration. Exit status 0 when every check passed,
# 1 when one failed (the summary names it), 2 for a missing tool or a bad option. See
# benches/README.md.
set -euo pipefail

readonly ATREST_KEY=alias/soak
readonly EXPORT=soak
# Block size and pattern of each client, in turn: small random writes, larger random
# writes, sequential streams; all of them verify what they wrote.
readonly CLIENT_BS=(4k 64k 16k 1m)
readonly CLIENT_RW=(randwrite randwrite write randwrite)
# Resident memory may grow this much (KiB) past its level once the clients have
# warmed up (buffer pools, thread stacks) before the soak counts it as a leak.
readonly RSS_SLACK_KIB=$((64 * 1024))

seconds="${SOAK_SECONDS:-600}"
clients=4
size=1G
keep=0
build=1
atrest_bin=""
workdir_parent="${TMPDIR:-/tmp}"

usage() {
    cat <<EOF
usage: $0 [options]

  --seconds N        how long the clients run (default \$SOAK_SECONDS or 600)
  --clients N        NBD clients at once, each on its own region (default $clients)
  --size SIZE        size of the encrypted volume (default $size: 512M, 1G, ...)
  --workdir DIR      where the volume goes (default $workdir_parent)
  --atrest-bin PATH  use this atrest binary instead of building target/release/atrest
  --no-build         do not run cargo build --release (use target/release/atrest)
  --keep             keep the work directory (volume, server log, fio output)
  -h, --help         this text
EOF
}

die() {
    echo "soak: $*" >&2
    exit 2
}

while (($#)); do
    case "$1" in
        --seconds) seconds="${2:?--seconds needs a value}"; shift 2 ;;
        --clients) clients="${2:?--clients needs a value}"; shift 2 ;;
        --size) size="${2:?--size needs a value}"; shift 2 ;;
        --workdir) workdir_parent="${2:?--workdir needs a value}"; shift 2 ;;
        --atrest-bin) atrest_bin="${2:?--atrest-bin needs a value}"; build=0; shift 2 ;;
        --no-build) build=0; shift ;;
        --keep) keep=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "--seconds must be a positive whole number, got '$seconds'"
[[ "$clients" =~ ^[1-9][0-9]*$ ]] || die "--clients must be a positive whole number, got '$clients'"

require() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH; install the Debian package '$2' (scripts/install-test-deps.sh installs it)"
}
require fio fio
require nbdinfo libnbd-bin
require nbdcopy libnbd-bin
require python3 python3
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (Debian's fio package has it)"

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
size_bytes="$(python3 - "$size" "$clients" <<'EOF'
import re, sys
m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B?)?", sys.argv[1].strip(), re.IGNORECASE)
if not m:
    sys.exit(f"soak: --size '{sys.argv[1]}' is not a size like 512M or 1G")
n = int(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())
if n % (int(sys.argv[2]) * 1024 * 1024):
    sys.exit("soak: --size must split into whole MiB per client")
print(n)
EOF
)" || exit 2
region=$((size_bytes / clients))

work="$(mktemp -d "$workdir_parent/soak.XXXXXX")"
server_pid=""
sampler_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$sampler_pid" ]]; then
        kill "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
    fi
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if ((keep)); then
        echo "soak: work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "[$(date +%T)] $*" >&2; }

atrest="$atrest_bin"
if [[ -z "$atrest" ]]; then
    atrest="$repo_root/target/release/atrest"
    if ((build)); then
        log "cargo build --release --bin atrest"
        (cd "$repo_root" && cargo build --release --bin atrest) >"$work/build.log" 2>&1 ||
            die "cargo build --release failed: $(grep -m1 -E '^error' "$work/build.log" || tail -n 1 "$work/build.log")"
    fi
fi
[[ -x "$atrest" ]] || die "no atrest binary at $atrest"

export ATREST_HOME="$work/atrest-home"
mkdir -p "$ATREST_HOME"
vol="$work/soak.vol"
"$atrest" kms create-key --alias "$ATREST_KEY" >/dev/null
"$atrest" volume create "$vol" --size "$size_bytes" --key-id "$ATREST_KEY" >/dev/null

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
uri="nbd://127.0.0.1:$port/$EXPORT"
server_log="$work/server.log"
RUST_LOG="${RUST_LOG:-info}" "$atrest" nbd serve --listen "127.0.0.1:$port" --export "$EXPORT=$vol" >"$server_log" 2>&1 &
server_pid=$!
deadline=$((SECONDS + 30))
until nbdinfo --size "$uri" >/dev/null 2>&1; do
    kill -0 "$server_pid" 2>/dev/null || die "the server exited at start: $(tail -n 3 "$server_log")"
    ((SECONDS < deadline)) || die "no NBD answer at $uri within 30 s: $(tail -n 3 "$server_log")"
    sleep 0.2
done
log "serving $uri (pid $server_pid); $clients clients for $seconds s on $((region / 1048576)) MiB each"

# Anonymous resident memory of the server (KiB), once every 5 s, as "seconds<TAB>KiB".
# Not VmRSS: that also counts the page-cache pages of the volume file the server has
# read through its mapping (RssFile), which grow with the data read, not with leaks.
rss_log="$work/rss.tsv"
(
    start=$SECONDS
    while kill -0 "$server_pid" 2>/dev/null; do
        rss="$(awk '/^RssAnon:/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null || true)"
        [[ -n "$rss" ]] && printf '%s\t%s\n' "$((SECONDS - start))" "$rss" >>"$rss_log"
        sleep 5
    done
) &
sampler_pid=$!

fio_pids=()
for ((i = 0; i < clients; i++)); do
    k=$((i % ${#CLIENT_BS[@]}))
    # verify_backlog: every block is read back and checked soon after it is written
    # (a time-based run would otherwise skip the final verify pass); fsync=N sends an
    # NBD FLUSH every N writes; verify_fatal stops the client at the first mismatch.
    fio --name="client$i" --ioengine=nbd --uri="$uri" \
        --rw="${CLIENT_RW[$k]}" --bs="${CLIENT_BS[$k]}" --iodepth=8 \
        --offset="$((i * region))" --size="$region" \
        --time_based --runtime="$seconds" \
        --verify=crc32c --verify_backlog=64 --verify_fatal=1 --do_verify=1 \
        --fsync=32 --randseed="$((1000 + i))" --verify_state_save=0 \
        --output-format=json --output="$work/fio.$i.json" >"$work/fio.$i.log" 2>&1 &
    fio_pids+=($!)
done

fio_status=()
for ((i = 0; i < clients; i++)); do
    if wait "${fio_pids[$i]}"; then fio_status+=(0); else fio_status+=($?); fi
done
log "clients done"

server_alive=0
kill -0 "$server_pid" 2>/dev/null && server_alive=1
# Every byte of the export must still read (decrypt) cleanly.
readback="failed"
if ((server_alive)) && nbdcopy "$uri" null: 2>"$work/readback.err"; then
    readback="ok"
fi
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""

python3 - "$work" "$clients" "$seconds" "$server_alive" "$readback" "$RSS_SLACK_KIB" "${fio_status[@]}" <<'EOF'
import json, os, re, sys

work, clients, seconds, alive, readback, slack = sys.argv[1:7]
clients, seconds, alive, slack = int(clients), int(seconds), alive == "1", int(slack)
statuses = [int(s) for s in sys.argv[7:]]
problems = []

print(f"\nSoak: {clients} NBD clients for {seconds} s against one atrest nbd serve")
print(f"{'client':<8} {'pattern':<16} {'written MiB':>12} {'verified MiB':>13} {'flushes':>8} {'errors':>7}")
total_w = total_r = 0
for i in range(clients):
    path = os.path.join(work, f"fio.{i}.json")
    try:
        with open(path) as f:
            text = f.read()
        # fio may print notes before the JSON document.
        job = json.loads(text[text.index("{"):])["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError) as err:
        tail = open(os.path.join(work, f"fio.{i}.log")).read().strip().splitlines()[-3:]
        problems.append(f"client {i}: no fio result ({err}); exit {statuses[i]}: {' | '.join(tail)}")
        continue
    opts = job.get("job options", {})
    w = job["write"]["io_bytes"] / 2**20
    r = job["read"]["io_bytes"] / 2**20
    flushes = job.get("sync", {}).get("total_ios", 0)
    errors = job.get("error", 0) + job.get("total_err", 0)
    total_w += w
    total_r += r
    print(f"client{i:<2} {opts.get('rw', '?') + ' ' + opts.get('bs', '?'):<16} {w:12.0f} {r:13.0f} {flushes:8} {errors:7}")
    if statuses[i] != 0 or errors:
        tail = open(os.path.join(work, f"fio.{i}.log")).read().strip().splitlines()[-3:]
        problems.append(f"client {i}: fio exit {statuses[i]}, error {errors}: {' | '.join(tail)}")
    if r == 0:
        problems.append(f"client {i}: verified nothing")
print(f"total    {'':<16} {total_w:12.0f} {total_r:13.0f}   ({total_w / seconds:.1f} MiB/s written)")

samples = []
try:
    with open(os.path.join(work, "rss.tsv")) as f:
        samples = [tuple(map(int, line.split())) for line in f if line.strip()]
except OSError:
    pass
if samples:
    # The level once the clients have warmed up: the first sample after a tenth of the run.
    warm = next((kib for t, kib in samples if t >= max(seconds // 10, 5)), samples[0][1])
    last, peak = samples[-1][1], max(kib for _, kib in samples)
    print(f"server anonymous RSS: {samples[0][1] / 1024:.0f} MiB at start, {warm / 1024:.0f} MiB warmed up, "
          f"{peak / 1024:.0f} MiB peak, {last / 1024:.0f} MiB at the end ({len(samples)} samples)")
    if last > warm + slack:
        problems.append(f"server anonymous RSS grew from {warm} KiB to {last} KiB (more than {slack} KiB)")
else:
    problems.append("no RSS samples of the server")

with open(os.path.join(work, "server.log"), errors="replace") as f:
    lines = f.read().splitlines()
bad = [l for l in lines if re.search(r"\b(ERROR|WARN)\b|panicked", l)]
print(f"server log: {len(lines)} lines, {len(bad)} warnings or errors")
for l in bad[:5]:
    print(f"  {l}")
if bad:
    problems.append(f"{len(bad)} warnings or errors in the server log")
print(f"server still serving: {'yes' if alive else 'NO'}; full read-back of the export: {readback}")
if not alive:
    problems.append("the server is gone")
if readback != "ok":
    problems.append("reading the whole export back failed: " + open(os.path.join(work, "readback.err")).read().strip())

if problems:
    print("\nSOAK FAILED:")
    for p in problems:
        print(f"  {p}")
    sys.exit(1)
print("\nSOAK PASSED: 0 errors")
EOF
