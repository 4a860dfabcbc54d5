#!/usr/bin/env bash
# GenerateDataKey + Decrypt pairs per second against `atrest kms serve` and moto's
# server mode, side by side in one run, through two clients: boto3
# (benches/kms-compare.py) and atrest's Rust client gateway::RemoteKms
# (benches/src/bin/kms_compare.rs). Prints the medians and the ratio atrest/moto for
# each (target: >= 20x, issue #7). boto3 spends milliseconds of its own per call,
# which caps what it can show of either server; the Rust client measures the servers.
#
#   benches/kms-compare.sh [--seconds S] [--rounds N] [--threads T]
#                          [--client boto3|rust|both] [--no-build] [--atrest-bin PATH]
#                          [--out DIR]
#
# The rounds also go to DIR/kms-compare.json (default bench-results/), drawn as
# DIR/kms-compare-pairs.svg (benches/src/chart.rs).
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

seconds=5
rounds=3
threads=1
client=both
out_dir=bench-results
build=1
atrest_bin=target/release/atrest
compare_bin=target/release/kms_compare
while (($#)); do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --client) client=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --atrest-bin) atrest_bin=$2; shift 2 ;;
        --out) out_dir=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

bench_venv
case "$client" in
    boto3|rust|both) ;;
    *) echo "--client takes boto3, rust or both" >&2; exit 2 ;;
esac
if ((build)); then
    cargo build --release --bin atrest
    cargo build --release -p atrest-benches --bin kms_compare
fi

bench_workdir kms-compare
bench_root_key

bench_serve_atrest kms
bench_serve_moto

echo "atrest: http://$atrest_addr   moto: http://127.0.0.1:$moto_port" >&2
targets=(
    --target "atrest=http://$atrest_addr=$key_id=$secret"
    --target "moto=http://127.0.0.1:$moto_port=AKIAMOTOBENCH=moto-accepts-any-secret"
)
mkdir -p "$out_dir"
if [ "$client" != rust ]; then
    "$python" benches/kms-compare.py "${targets[@]}" \
        --seconds "$seconds" --rounds "$rounds" --threads "$threads" --report "$work/boto3.json"
fi
if [ "$client" != boto3 ]; then
    "$compare_bin" "${targets[@]}" --seconds "$seconds" --rounds "$rounds" --threads "$threads" \
        --report "$work/rust.json"
fi
# One report, a panel per client.
python3 - "$out_dir/kms-compare.json" "$work"/boto3.json "$work"/rust.json <<'EOF'
import datetime, json, os, sys
parts = [json.load(open(p)) for p in sys.argv[2:] if os.path.exists(p)]
report = parts[0]
report["charts"][0]["groups"] = [g for p in parts for g in p["charts"][0]["groups"]]
report["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
report["machine"] = f"{os.cpu_count()} CPUs, load {open('/proc/loadavg').read().split()[0]}"
json.dump(report, open(sys.argv[1], "w"), indent=1)
print(f"report: {sys.argv[1]}")
EOF
draw_charts "$out_dir/kms-compare.json" "$out_dir"
