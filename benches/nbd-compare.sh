#!/usr/bin/env bash
# Side-by-side NBD benchmark: atrest against nbdkit `file` (unencrypted), nbdkit
# `--filter=luks file` and qemu-nbd with a LUKS image, in one run on one machine; and
# the TLS row: atrest over TLS (`--tls-cert`, TLS 1.3) against nbdkit `file` with
# `--tls=require`, each beside its plaintext self, so the table shows what TLS costs.
#
#   benches/nbd-compare.sh [--size 1G] [--runtime 5] [--rounds 3] [--only PEER]...
#
# Every server gets an image of the same size filled with the same random bytes, then
# fio's nbd engine measures each one the same way (seq read/write 1 MiB QD8, random
# read/write 4 KiB QD32, time based). Rounds interleave the servers so that noise from
# other work on the machine spreads over all of them; the table shows medians and the
# ratios the project's targets are stated in. See benches/README.md.
set -euo pipefail
# shellcheck source=benches/chart.sh
source "$(dirname "$0")/chart.sh"

readonly PEERS_ALL=(nbdkit-raw nbdkit-luks qemu-nbd-luks atrest nbdkit-tls atrest-tls)
readonly WORKLOADS_ALL=(seqread seqwrite randread randwrite)
readonly LUKS_PASSPHRASE=bench-passphrase
readonly ATREST_EXPORT=bench
readonly ATREST_KEY=alias/bench

size=1G
runtime=5
ramp=1
rounds=3
only=()
workloads=()
keep=0
verify=0
build=1
atrest_bin=""
workdir_parent="${TMPDIR:-/tmp}"
out_dir="bench-results"

usage() {
    cat <<EOF
usage: $0 [options]

  --size SIZE        image size for every server (default $size; fio/qemu-img syntax: 512M, 1G)
  --runtime SEC      measured seconds per fio run (default $runtime)
  --ramp SEC         unmeasured warm-up seconds per fio run (default $ramp)
  --rounds N         rounds per server and workload; the table shows medians (default $rounds)
  --only PEER        measure only this server; repeat or comma-separate
                     (${PEERS_ALL[*]})
  --workload W       run only this workload; repeat or comma-separate
                     (${WORKLOADS_ALL[*]})
  --workdir DIR      where the images go, on the filesystem to measure (default $workdir_parent)
  --out DIR          where the report goes: nbd-compare.json (every round of every cell)
                     and its charts nbd-compare-{throughput,tls,cpu}.svg, with every fio
                     JSON result and results.tsv (default: bench-results/ here)
  --atrest-bin PATH  use this atrest binary instead of building target/release/atrest
  --no-build         do not run cargo build --release (use the existing target/release/atrest)
  --verify           after filling, read every export back and compare with the source data
  --keep             keep the work directory (images, server logs) after the run
  -h, --help         this text

Exit status: 0 when every selected server was measured, 1 when one failed.
EOF
}

die() {
    echo "nbd-compare: $*" >&2
    exit 2
}

while (($#)); do
    case "$1" in
        --size) size="${2:?--size needs a value}"; shift 2 ;;
        --runtime) runtime="${2:?--runtime needs a value}"; shift 2 ;;
        --ramp) ramp="${2:?--ramp needs a value}"; shift 2 ;;
        --rounds) rounds="${2:?--rounds needs a value}"; shift 2 ;;
        --only) IFS=, read -r -a more <<<"${2:?--only needs a value}"; only+=("${more[@]}"); shift 2 ;;
        --workload) IFS=, read -r -a more <<<"${2:?--workload needs a value}"; workloads+=("${more[@]}"); shift 2 ;;
        --workdir) workdir_parent="${2:?--workdir needs a value}"; shift 2 ;;
        --out) out_dir="${2:?--out needs a value}"; shift 2 ;;
        --atrest-bin) atrest_bin="${2:?--atrest-bin needs a value}"; build=0; shift 2 ;;
        --no-build) build=0; shift ;;
        --verify) verify=1; shift ;;
        --keep) keep=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ "$runtime" =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive whole number of seconds, got '$runtime'"
[[ "$ramp" =~ ^[0-9]+$ ]] || die "--ramp must be a whole number of seconds, got '$ramp'"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive whole number, got '$rounds'"

peers=()
if ((${#only[@]})); then
    for p in "${only[@]}"; do
        found=0
        for known in "${PEERS_ALL[@]}"; do [[ "$p" == "$known" ]] && found=1; done
        ((found)) || die "unknown server '$p' for --only; known: ${PEERS_ALL[*]}"
        peers+=("$p")
    done
else
    peers=("${PEERS_ALL[@]}")
fi
WORKLOADS=()
for wl in "${WORKLOADS_ALL[@]}"; do
    if ((${#workloads[@]} == 0)); then
        WORKLOADS+=("$wl")
        continue
    fi
    for w in "${workloads[@]}"; do [[ "$w" == "$wl" ]] && WORKLOADS+=("$wl") && break; done
done
for w in "${workloads[@]}"; do
    found=0
    for known in "${WORKLOADS_ALL[@]}"; do [[ "$w" == "$known" ]] && found=1; done
    ((found)) || die "unknown workload '$w' for --workload; known: ${WORKLOADS_ALL[*]}"
done
readonly WORKLOADS

selected() {
    local p
    for p in "${peers[@]}"; do [[ "$p" == "$1" ]] && return 0; done
    return 1
}

# The tools, and which Debian package brings each: a missing one stops the run before
# any image is made.
require() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH; install the Debian package '$2' (scripts/install-test-deps.sh installs all of them)"
}
require fio fio
require nbdcopy libnbd-bin
require nbdinfo libnbd-bin
require python3 python3
if selected nbdkit-raw || selected nbdkit-luks || selected nbdkit-tls; then require nbdkit nbdkit; fi
if selected nbdkit-tls || selected atrest-tls; then require openssl openssl; fi
if selected nbdkit-luks || selected qemu-nbd-luks; then require qemu-img qemu-utils; fi
if selected qemu-nbd-luks; then require qemu-nbd qemu-utils; fi
if selected nbdkit-luks; then
    nbdkit --dump-plugin file >/dev/null 2>&1 || die "nbdkit has no 'file' plugin"
    nbdkit --filter=luks file --version >/dev/null 2>&1 || die "nbdkit has no 'luks' filter (nbdkit >= 1.32 ships it)"
fi
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd ioengine (fio >= 3.20 built with libnbd)"

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
size_bytes="$(python3 - "$size" <<'EOF'
import re, sys
m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B?)?", sys.argv[1].strip(), re.IGNORECASE)
if not m:
    sys.exit(f"nbd-compare: --size '{sys.argv[1]}' is not a size like 512M or 1G")
n = int(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())
if n < 64 * 1024 * 1024 or n % (1024 * 1024):
    sys.exit("nbd-compare: --size must be a whole number of MiB, at least 64M")
print(n)
EOF
)" || exit 2

work="$(mktemp -d "$workdir_parent/nbd-compare.XXXXXX")"
declare -A server_pid=() server_uri=() failed=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local name pid
    for name in "${!server_pid[@]}"; do
        pid="${server_pid[$name]}"
        kill "$pid" 2>/dev/null || true
    done
    for name in "${!server_pid[@]}"; do
        wait "${server_pid[$name]}" 2>/dev/null || true
    done
    if ((keep)); then
        echo "nbd-compare: work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

log() { echo "[$(date +%T)] $*" >&2; }

fail_peer() {
    failed[$1]="$2"
    log "$1: FAILED: $2"
}

# Starts a server in the background (its command in "$@"), records its pid, and waits
# until an NBD client can open the export; on failure the peer is marked failed with the
# tail of its log.
start_server() {
    local name="$1" uri="$2"
    shift 2
    local logf="$work/$name.log"
    "$@" >"$logf" 2>&1 &
    server_pid[$name]=$!
    server_uri[$name]="$uri"
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        if ! kill -0 "${server_pid[$name]}" 2>/dev/null; then
            wait "${server_pid[$name]}" 2>/dev/null || true
            unset 'server_pid[$name]'
            fail_peer "$name" "server exited at start: $(tail -n 3 "$logf" | tr '\n' ' ')"
            return 1
        fi
        if nbdinfo --size "$uri" >/dev/null 2>&1; then
            local got
            got="$(nbdinfo --size "$uri")"
            if [[ "$got" != "$size_bytes" ]]; then
                fail_peer "$name" "export size is $got bytes, expected $size_bytes"
                return 1
            fi
            log "$name: serving $uri (pid ${server_pid[$name]})"
            return 0
        fi
        sleep 0.2
    done
    fail_peer "$name" "no NBD answer at $uri within 30 s: $(tail -n 3 "$logf" | tr '\n' ' ')"
    return 1
}

setup_nbdkit_raw() {
    local port img="$work/raw.img"
    truncate -s "$size_bytes" "$img"
    port="$(free_port)"
    start_server nbdkit-raw "nbd://127.0.0.1:$port" \
        nbdkit -f -p "$port" -i 127.0.0.1 file "$img"
}

# qemu-img times PBKDF2 with the thread's CPU clock and gives up with "Unable to get
# accurate CPU usage" when a timing sample reads 0 ms, which happens now and then on a
# fast, busy machine; a new attempt measures again.
make_luks_image() {
    local img="$1" attempt
    for attempt in $(seq 20); do
        rm -f "$img"
        if qemu-img create -q -f luks --object "secret,id=s0,data=$LUKS_PASSPHRASE" \
            -o key-secret=s0,iter-time=10,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64 \
            "$img" "$size_bytes" 2>"$img.err"; then
            return 0
        fi
        [[ $attempt -lt 20 ]] || log "qemu-img create failed 20 times: $(cat "$img.err")"
    done
    return 1
}

setup_nbdkit_luks() {
    local port img="$work/nbdkit-luks.img"
    make_luks_image "$img" || { fail_peer nbdkit-luks "qemu-img create -f luks failed"; return 1; }
    port="$(free_port)"
    start_server nbdkit-luks "nbd://127.0.0.1:$port" \
        nbdkit -f -p "$port" -i 127.0.0.1 --filter=luks file "$img" "passphrase=$LUKS_PASSPHRASE"
}

setup_qemu_nbd_luks() {
    local port img="$work/qemu-luks.img"
    make_luks_image "$img" || { fail_peer qemu-nbd-luks "qemu-img create -f luks failed"; return 1; }
    port="$(free_port)"
    start_server qemu-nbd-luks "nbd://127.0.0.1:$port" \
        qemu-nbd -t -p "$port" -b 127.0.0.1 --object "secret,id=s0,data=$LUKS_PASSPHRASE" \
        --image-opts "driver=luks,key-secret=s0,file.filename=$img"
}

# A CA and a server certificate for 127.0.0.1 in the gnutls layout nbdkit reads
# (ca-cert.pem, server-cert.pem, server-key.pem). Clients skip verification
# (tls-verify-peer=false: fio's URI may not name local files) and present no
# certificate: client authentication costs a handshake, not a request.
make_tls_certs() {
    local dir="$work/tls"
    [[ -e "$dir/server-cert.pem" ]] && return 0
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$dir/ca-key.pem" -out "$dir/ca-cert.pem" -subj /CN=bench-ca \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
        >"$dir/openssl.log" 2>&1 &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$dir/server-key.pem" -out "$dir/server.csr" -subj /CN=localhost \
            >>"$dir/openssl.log" 2>&1 &&
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext" &&
        openssl x509 -req -days 2 -in "$dir/server.csr" -CA "$dir/ca-cert.pem" \
            -CAkey "$dir/ca-key.pem" -CAcreateserial -extfile "$dir/server.ext" \
            -out "$dir/server-cert.pem" >>"$dir/openssl.log" 2>&1
}

setup_nbdkit_tls() {
    local port img="$work/raw-tls.img"
    make_tls_certs || { fail_peer nbdkit-tls "openssl: $(tail -n 2 "$work/tls/openssl.log" | tr '\n' ' ')"; return 1; }
    truncate -s "$size_bytes" "$img"
    port="$(free_port)"
    start_server nbdkit-tls "nbds://127.0.0.1:$port/?tls-verify-peer=false" \
        nbdkit -f -p "$port" -i 127.0.0.1 --tls=require --tls-certificates="$work/tls" file "$img"
}

setup_atrest() {
    setup_atrest_peer atrest
}

setup_atrest_tls() {
    make_tls_certs || { fail_peer atrest-tls "openssl: $(tail -n 2 "$work/tls/openssl.log" | tr '\n' ' ')"; return 1; }
    setup_atrest_peer atrest-tls --tls-cert "$work/tls/server-cert.pem" --tls-key "$work/tls/server-key.pem"
}

# atrest serving a fresh encrypted volume as peer $1; the rest of the arguments go to
# `atrest nbd serve` (TLS options: the URI is then nbds://).
setup_atrest_peer() {
    local peer="$1"
    shift
    local bin="$atrest_bin"
    if [[ -z "$bin" ]]; then
        bin="$repo_root/target/release/atrest"
        if ((build)); then
            log "atrest: cargo build --release --bin atrest"
            if ! (cd "$repo_root" && cargo build --release --bin atrest) >"$work/atrest-build.log" 2>&1; then
                fail_peer "$peer" "cargo build --release failed: $(grep -m1 -E '^error' "$work/atrest-build.log" || tail -n 1 "$work/atrest-build.log")"
                return 1
            fi
        fi
    fi
    [[ -x "$bin" ]] || { fail_peer "$peer" "no atrest binary at $bin"; return 1; }
    if ! "$bin" nbd serve --help >/dev/null 2>&1; then
        fail_peer "$peer" "'atrest nbd serve' is not available in this build ($bin)"
        return 1
    fi
    export ATREST_HOME="$work/atrest-home"
    mkdir -p "$ATREST_HOME"
    local img="$work/$peer.vol" port out scheme=nbd query=""
    if ! "$bin" kms describe-key --key-id "$ATREST_KEY" >/dev/null 2>&1 &&
        ! out="$("$bin" kms create-key --alias "$ATREST_KEY" 2>&1)"; then
        fail_peer "$peer" "atrest kms create-key --alias $ATREST_KEY failed: $out"
        return 1
    fi
    if ! out="$("$bin" volume create "$img" --size "$size_bytes" --key-id "$ATREST_KEY" 2>&1)"; then
        fail_peer "$peer" "atrest volume create failed: $out"
        return 1
    fi
    if (($#)); then
        scheme=nbds
        query="?tls-verify-peer=false"
    fi
    port="$(free_port)"
    start_server "$peer" "$scheme://127.0.0.1:$port/$ATREST_EXPORT$query" \
        "$bin" nbd serve --listen "127.0.0.1:$port" --export "$ATREST_EXPORT=$img" "$@"
}

setup_fn() {
    case "$1" in
        nbdkit-raw) echo setup_nbdkit_raw ;;
        nbdkit-luks) echo setup_nbdkit_luks ;;
        qemu-nbd-luks) echo setup_qemu_nbd_luks ;;
        atrest) echo setup_atrest ;;
        nbdkit-tls) echo setup_nbdkit_tls ;;
        atrest-tls) echo setup_atrest_tls ;;
    esac
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
log "work directory $work; size $size_bytes bytes; ${rounds} rounds of ${runtime}s (+${ramp}s warm-up)"
for p in "${peers[@]}"; do
    "$(setup_fn "$p")" || true
done

live=()
for p in "${peers[@]}"; do
    [[ -n "${failed[$p]:-}" ]] || live+=("$p")
done

# The same bytes everywhere: reads then decrypt real data on every server, and no
# server gets to answer reads from holes.
if ((${#live[@]})); then
    log "generating $size_bytes bytes of random data"
    head -c "$size_bytes" /dev/urandom >"$work/data.bin"
    for p in "${live[@]}"; do
        log "$p: filling with nbdcopy"
        if ! nbdcopy --flush "$work/data.bin" "${server_uri[$p]}" 2>"$work/$p.fill.log"; then
            fail_peer "$p" "nbdcopy fill failed: $(tail -n 2 "$work/$p.fill.log" | tr '\n' ' ')"
        elif ((verify)); then
            if ! nbdcopy "${server_uri[$p]}" - | cmp -s - "$work/data.bin"; then
                fail_peer "$p" "the export does not read back the bytes written to it"
            else
                log "$p: read back equals the data written"
            fi
        fi
    done
    rm -f "$work/data.bin"
fi

live=()
for p in "${peers[@]}"; do
    [[ -n "${failed[$p]:-}" ]] || live+=("$p")
done

clock_ticks="$(getconf CLK_TCK)"
results="$work/results.tsv"
: >"$results"

fio_args() {
    case "$1" in
        seqread) echo "--rw=read --bs=1M --iodepth=8" ;;
        seqwrite) echo "--rw=write --bs=1M --iodepth=8" ;;
        randread) echo "--rw=randread --bs=4k --iodepth=32" ;;
        randwrite) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    esac
}

# CPU time (user + system, all threads, in clock ticks) a process has used so far.
cpu_ticks() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
    # Fields after the command name, which sits in parentheses and may hold spaces:
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ")".
    read -r -a rest <<<"${stat##*) }"
    echo $((rest[11] + rest[12]))
}

run_fio() {
    local p="$1" wl="$2" round="$3"
    local json="$work/fio-$p-$wl-$round.json"
    local pid="${server_pid[$p]}" ticks0 ticks1 t0 t1
    ticks0="$(cpu_ticks "$pid")"
    t0="$(date +%s.%N)"
    # shellcheck disable=SC2046 # fio_args is a fixed list of words
    if ! fio --name="$wl" --ioengine=nbd --uri="${server_uri[$p]}" --size="$size_bytes" \
        $(fio_args "$wl") --numjobs=1 --time_based --runtime="$runtime" --ramp_time="$ramp" \
        --norandommap --randrepeat=1 --output-format=json --output="$json" \
        >"$work/fio-$p-$wl-$round.log" 2>&1; then
        fail_peer "$p" "fio $wl failed in round $round: $(tail -n 2 "$work/fio-$p-$wl-$round.log" | tr '\n' ' ')"
        return 1
    fi
    t1="$(date +%s.%N)"
    ticks1="$(cpu_ticks "$pid")"
    if ! kill -0 "$pid" 2>/dev/null; then
        fail_peer "$p" "the server exited during fio $wl in round $round: $(tail -n 3 "$work/$p.log" | tr '\n' ' ')"
        return 1
    fi
    local row
    if ! row="$(python3 - "$json" "$p" "$wl" "$round" "$((ticks1 - ticks0))" "$clock_ticks" "$t0" "$t1" 2>&1 <<'EOF'
import json, sys
path, peer, wl, rnd, ticks, hz, t0, t1 = sys.argv[1:]
# The server's CPU over the whole fio run (warm-up included) per second of it.
cores = int(ticks) / int(hz) / (float(t1) - float(t0))
with open(path) as f:
    text = f.read()
# fio may print notes before the JSON document.
doc = json.loads(text[text.index("{"):])
job = doc["jobs"][0]
if job.get("error"):
    sys.exit(f"fio reported error {job['error']} for {peer} {wl}")
side = job["write" if "write" in wl else "read"]
if not side["total_ios"]:
    sys.exit(f"fio completed no I/O against {peer} ({wl})")
print(f"{rnd}\t{peer}\t{wl}\t{side['bw_bytes']}\t{side['iops']}\t{side['total_ios']}\t{cores:.4f}")
EOF
)"; then
        fail_peer "$p" "$row"
        return 1
    fi
    echo "$row" >>"$results"
}

for ((round = 1; round <= rounds; round++)); do
    for wl in "${WORKLOADS[@]}"; do
        # Rotate the order every round so no server always runs first (or right after
        # the heaviest writer).
        n=${#live[@]}
        for ((i = 0; i < n; i++)); do
            p="${live[$(((i + round - 1) % n))]}"
            [[ -n "${failed[$p]:-}" ]] && continue
            log "round $round/$rounds: $p $wl"
            run_fio "$p" "$wl" "$round" || true
        done
    done
done

mkdir -p "$out_dir"
cp "$work"/fio-*.json "$results" "$out_dir"/ 2>/dev/null || true

failed_list=""
for p in "${peers[@]}"; do
    [[ -n "${failed[$p]:-}" ]] && failed_list+="$p"$'\t'"${failed[$p]}"$'\n'
done

load_end="$(cut -d' ' -f1-3 /proc/loadavg)"
summary_status=0
python3 - "$results" "$rounds" "$runtime" "$size_bytes" "${peers[*]}" "$failed_list" \
    "$load_start" "$load_end" "$(nproc)" "$out_dir/nbd-compare.json" <<'EOF' || summary_status=$?
import datetime, json, statistics, sys
from collections import defaultdict

path, rounds, runtime, size, peers, failed_text, load_start, load_end, cpus, report = sys.argv[1:]
peers = peers.split()
failed = dict(line.split("\t", 1) for line in failed_text.splitlines() if line)
# (peer, workload) -> [(bytes/s, IOPS, server cores busy)]
samples = defaultdict(list)
with open(path) as f:
    for line in f:
        rnd, peer, wl, bw, iops, ios, cores = line.rstrip("\n").split("\t")
        samples[(peer, wl)].append((float(bw), float(iops), float(cores)))

workloads = [
    ("seqread", "seq read 1M QD8", "MB/s"),
    ("seqwrite", "seq write 1M QD8", "MB/s"),
    ("randread", "rand read 4k QD32", "IOPS"),
    ("randwrite", "rand write 4k QD32", "IOPS"),
]
# Only the workloads this run measured (--workload).
workloads = [w for w in workloads if any(k[1] == w[0] for k in samples)]
unit_of = {w: u for w, _, u in workloads}
label_of = {w: l for w, l, _ in workloads}
# (workload, reference server, minimum ratio atrest/reference) from issue #4.
targets = [
    ("seqread", "nbdkit-luks", 3.0),
    ("seqread", "nbdkit-raw", 0.9),
    ("randread", "nbdkit-luks", 1.5),
    ("randwrite", "nbdkit-luks", 1.5),
]
ratio_refs = [("nbdkit-luks", "/nbdkit+luks"), ("nbdkit-raw", "/nbdkit-raw"), ("qemu-nbd-luks", "/qemu-nbd+luks")]
show_ratios = "atrest" in peers


def speed(wl, bw, iops):
    return bw / 1e6 if unit_of[wl] == "MB/s" else iops


def median(peer, wl):
    vals = samples.get((peer, wl))
    return statistics.median(speed(wl, bw, iops) for bw, iops, _ in vals) if vals else None


def cpu_per_io(peer, wl):
    # Median server CPU microseconds per request (1 MiB or 4 KiB).
    vals = [cores / iops * 1e6 for _, iops, cores in samples.get((peer, wl), []) if iops]
    return statistics.median(vals) if vals else None


def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


def with_ratios(row, value, wl):
    if show_ratios:
        a = value("atrest", wl)
        for ref, _ in ratio_refs:
            if ref in peers:
                r = value(ref, wl)
                row.append(f"{a / r:.2f}x" if a is not None and r else "-")
    return row


ratio_headers = ["atrest" + label for ref, label in ratio_refs if ref in peers] if show_ratios else []
print()
print(f"NBD side by side: {int(size) // 2**20} MiB images, fio nbd engine (1 job), "
      f"median of {rounds} x {runtime}s runs per cell; {cpus} CPUs, "
      f"load average {load_start} at start, {load_end} at end")
# Loopback throughput depends on it (BBR paces; see blockdev's Wire::write_parts).
try:
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        print(f"TCP congestion control: {f.read().strip()} (atrest's side of a loopback "
              "connection: cubic, see blockdev::nbd::server::unpaced_on_loopback)")
except OSError:
    pass
table(["workload", "unit"] + peers + ratio_headers,
      [with_ratios([label, unit] + [fmt(median(p, wl)) for p in peers], median, wl)
       for wl, label, unit in workloads])

print("\nserver CPU per request (user + system, all threads; lower is better)")
table(["workload", "unit"] + peers + ratio_headers,
      [with_ratios([label, "us/req"] + [fmt(cpu_per_io(p, wl)) for p in peers], cpu_per_io, wl)
       for wl, label, _ in workloads])

tls_pairs = [(tls, plain) for tls, plain in [("atrest-tls", "atrest"), ("nbdkit-tls", "nbdkit-raw")]
             if tls in peers and plain in peers]
if tls_pairs:
    print("\nthe cost of TLS: throughput over TLS / plaintext, and server CPU per request added")
    rows = []
    for wl, label, _ in workloads:
        row = [label, "ratio, +us/req"]
        for tls, plain in tls_pairs:
            t, p = median(tls, wl), median(plain, wl)
            row.append(f"{t / p:.2f}x" if t is not None and p else "-")
            ct, cp = cpu_per_io(tls, wl), cpu_per_io(plain, wl)
            row.append(f"{ct - cp:+.1f}" if ct is not None and cp is not None else "-")
        rows.append(row)
    headers = ["workload", "unit"]
    for tls, plain in tls_pairs:
        headers += [f"{tls}/{plain}", f"{tls} CPU"]
    table(headers, rows)

spread = []
for wl, _, unit in workloads:
    for p in peers:
        xs = [speed(wl, bw, iops) for bw, iops, _ in samples.get((p, wl), [])]
        if len(xs) > 1 and statistics.median(xs):
            lo, hi = min(xs), max(xs)
            if (hi - lo) / statistics.median(xs) > 0.25:
                spread.append(f"{p} {wl}: {fmt(lo)}..{fmt(hi)}")
if spread:
    print("\nnoisy cells (min..max more than 25% of the median): " + "; ".join(spread))
if max(float(load_start.split()[0]), float(load_end.split()[0])) > int(cpus):
    print(f"\nnote: the load average exceeded the {cpus} CPUs: other work competed with the "
          "servers and the client, so the throughput ratios are less reliable than the "
          "CPU-per-request table.")

if show_ratios:
    print("\ntargets (issue #4):")
    for wl, ref, want in targets:
        if ref not in peers or wl not in label_of:
            continue
        a, r = median("atrest", wl), median(ref, wl)
        if a is None or not r:
            verdict, got = "not measured", "-"
        else:
            got = f"{a / r:.2f}x"
            verdict = "met" if a / r >= want else "MISSED"
        print(f"  {label_of[wl]:<20} atrest/{ref:<12} >= {want:.1f}x  got {got:>7}  {verdict}")

# The report: every round of every cell, for benches/src/chart.rs to draw.
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def chart(name, title, servers, value, higher=True):
    groups = []
    for wl, label, unit in workloads:
        bars = [{"series": p, "rounds": value(p, wl)} for p in servers if samples.get((p, wl))]
        if bars:
            groups.append({"label": label, "unit": unit if higher else "us/req", "bars": bars})
    return {"name": name, "title": title, "higher_is_better": higher, "groups": groups}


plain = [p for p in peers if not p.endswith("-tls")]
tls = [p for p in ["atrest-tls", "nbdkit-tls", "atrest"] if p in peers]
speeds = lambda p, wl: [speed(wl, bw, iops) for bw, iops, _ in samples[(p, wl)]]
cpu = lambda p, wl: [cores / iops * 1e6 for _, iops, cores in samples[(p, wl)] if iops]
charts = [chart("throughput", "NBD throughput, plaintext servers", plain, speeds)]
if "atrest-tls" in peers or "nbdkit-tls" in peers:
    charts.append(chart("tls", "NBD throughput over TLS 1.3 (atrest plaintext for scale)", tls, speeds))
charts.append(chart("cpu", "server CPU per request (user + system)", peers, cpu, higher=False))
with open(report, "w") as f:
    json.dump({
        "bench": "nbd-compare",
        "title": f"{int(size) // 2**20} MiB images, fio nbd engine, {rounds} rounds x {runtime} s",
        "machine": f"{cpu_model()}, {cpus} CPUs, load {load_start.split()[0]}..{load_end.split()[0]}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "charts": [c for c in charts if c["groups"]],
    }, f, indent=1)
print(f"\nreport: {report}")

if failed:
    print()
    for p, why in failed.items():
        print(f"FAILED {p}: {why}")
    sys.exit(1)
EOF
draw_charts "$out_dir/nbd-compare.json" "$out_dir"
exit "$summary_status"
