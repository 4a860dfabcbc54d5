#!/usr/bin/env bash
# PUT and GET MB/s of 64 MiB objects through boto3 against `atrest s3 serve` (SSE-KMS:
# every object encrypted under its own data key) and moto's server mode (which keeps
# plaintext in memory), side by side in one run (benches/s3-compare.py); prints the
# medians and the ratio atrest/moto.
#
#   benches/s3-compare.sh [--size-mib M] [--rounds N] [--no-build] [--atrest-bin PATH]
#                         [--out DIR]
#
# The rounds also go to DIR/s3-compare.json (default bench-results/), drawn as
# DIR/s3-compare-throughput.svg (benches/src/chart.rs).
#
# Needs the test venv (scripts/install-test-deps.sh makes .venv-test with boto3 and
# moto[server]; or set ATREST_TEST_VENV). Everything runs on 127.0.0.1 in a fresh
# temporary ATREST_HOME; both servers are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/chart.sh
source benches/chart.sh

size_mib=64
rounds=5
out_dir=bench-results
build=1
atrest_bin=target/release/atrest
while (($#)); do
    case "$1" in
        --size-mib) size_mib=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --atrest-bin) atrest_bin=$2; shift 2 ;;
        --out) out_dir=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

venv=${ATREST_TEST_VENV:-.venv-test}
python=$venv/bin/python
for tool in "$python" "$venv/bin/moto_server"; do
    if [ ! -x "$tool" ]; then
        echo "$tool is missing: run scripts/install-test-deps.sh" >&2
        exit 2
    fi
done
if ((build)); then
    cargo build --release --bin atrest
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/s3-compare.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

export ATREST_HOME=$work/home ATREST_REGION=us-east-1
key_json=$("$atrest_bin" iam create-access-key --principal arn:aws:iam::000000000000:root)
key_id=$(printf '%s' "$key_json" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["AccessKey"]["AccessKeyId"])')
secret=$(printf '%s' "$key_json" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["AccessKey"]["SecretAccessKey"])')
"$atrest_bin" kms create-key --alias alias/bench >/dev/null

# The log exists before the server starts: the loop below reads it at once.
: >"$work/atrest.log"
RUST_LOG=warn "$atrest_bin" s3 serve --listen 127.0.0.1:0 2>"$work/atrest.log" &
pids+=($!)
atrest_addr=
for _ in $(seq 300); do
    atrest_addr=$(sed -n 's/^listening on //p' "$work/atrest.log" | head -n1)
    [ -n "$atrest_addr" ] && break
    sleep 0.1
done
if [ -z "$atrest_addr" ]; then
    echo "atrest s3 serve did not start:" >&2
    cat "$work/atrest.log" >&2
    exit 1
fi

moto_port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
    "$python" -c "import socket; socket.create_connection(('127.0.0.1', $moto_port), 1)" 2>/dev/null && break
    sleep 0.2
done

echo "atrest: http://$atrest_addr   moto: http://127.0.0.1:$moto_port" >&2
mkdir -p "$out_dir"
"$python" benches/s3-compare.py \
    --target "atrest=http://$atrest_addr=$key_id=$secret=alias/bench" \
    --target "moto=http://127.0.0.1:$moto_port=AKIAMOTOBENCH=moto-accepts-any-secret" \
    --size-mib "$size_mib" --rounds "$rounds" \
    --report "$out_dir/s3-compare.json"
draw_charts "$out_dir/s3-compare.json" "$out_dir"
