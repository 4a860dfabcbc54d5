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
# shellcheck source=benches/lib.sh
. benches/lib.sh

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

bench_venv
if ((build)); then
    cargo build --release --bin atrest
fi

bench_workdir s3-compare
bench_root_key
"$atrest_bin" kms create-key --alias alias/bench >/dev/null

bench_serve_atrest s3
bench_serve_moto

echo "atrest: http://$atrest_addr   moto: http://127.0.0.1:$moto_port" >&2
mkdir -p "$out_dir"
"$python" benches/s3-compare.py \
    --target "atrest=http://$atrest_addr=$key_id=$secret=alias/bench" \
    --target "moto=http://127.0.0.1:$moto_port=AKIAMOTOBENCH=moto-accepts-any-secret" \
    --size-mib "$size_mib" --rounds "$rounds" \
    --report "$out_dir/s3-compare.json"
draw_charts "$out_dir/s3-compare.json" "$out_dir"
