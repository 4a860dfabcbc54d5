#!/usr/bin/env bash
# Peak memory of `atrest s3 serve` while the aws CLI uploads and downloads one large
# object (default 1 GiB of random bytes, one single-part PUT, SSE-KMS), read from the
# server's VmHWM (/proc/PID/status) after each transfer; the download is compared byte
# for byte. With --max-rss-mib N it exits 1 when the peak exceeds N MiB (the test
# command runs it with 256: PUT and GET must stream, whatever the object size).
#
#   benches/s3-memory.sh [--size-mib M] [--max-rss-mib N] [--no-build] [--atrest-bin PATH]
#
# Needs the aws CLI of the test venv (scripts/install-test-deps.sh; or set
# ATREST_TEST_VENV). Runs on 127.0.0.1 in a fresh temporary directory (about twice the
# object size of disk: the source file, the object, and the download compared as it
# streams); everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=1024
max_rss_mib=
build=1
atrest_bin=target/release/atrest
while (($#)); do
    case "$1" in
        --size-mib) size_mib=$2; shift 2 ;;
        --max-rss-mib) max_rss_mib=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --atrest-bin) atrest_bin=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

venv=${ATREST_TEST_VENV:-.venv-test}
if [ ! -x "$venv/bin/aws" ]; then
    echo "$venv/bin/aws is missing: run scripts/install-test-deps.sh" >&2
    exit 2
fi
aws_cli=$(cd "$(dirname "$venv/bin/aws")" && pwd)/aws
if ((build)); then
    cargo build --release --bin atrest
fi
atrest_bin=$(cd "$(dirname "$atrest_bin")" && pwd)/$(basename "$atrest_bin")

work=$(mktemp -d "${TMPDIR:-/tmp}/s3-memory.XXXXXX")
server=
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
cd "$work"

export ATREST_HOME=$work/home ATREST_REGION=us-east-1
"$atrest_bin" iam create-access-key --principal arn:aws:iam::000000000000:root >key.json
"$atrest_bin" kms create-key --alias alias/bench >/dev/null
# The log exists before the server starts: the loop below reads it at once.
: >server.log
RUST_LOG=warn "$atrest_bin" s3 serve --listen 127.0.0.1:0 2>server.log &
server=$!
addr=
for _ in $(seq 300); do
    addr=$(sed -n 's/^listening on //p' server.log | head -n1)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || {
    cat server.log >&2
    echo "atrest s3 serve did not start" >&2
    exit 1
}

# The CLI's default transfer settings: 8 MB threshold and parts, so the object goes
# up as a multipart upload (128 parts for 1 GiB, 10 at a time).
cat >aws.config <<'EOF'
[default]
EOF
aws() {
    AWS_ACCESS_KEY_ID=$(python3 -c 'import json; print(json.load(open("key.json"))["AccessKey"]["AccessKeyId"])') \
        AWS_SECRET_ACCESS_KEY=$(python3 -c 'import json; print(json.load(open("key.json"))["AccessKey"]["SecretAccessKey"])') \
        AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE=$work/aws.config \
        AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_MAX_ATTEMPTS=1 \
        "$aws_cli" --endpoint-url "http://$addr" "$@"
}
hwm_kib() {
    awk '/^VmHWM:/ {print $2}' "/proc/$server/status"
}

head -c "$((size_mib << 20))" /dev/urandom >object.bin
aws s3api create-bucket --bucket mem >/dev/null
aws s3api put-bucket-encryption --bucket mem --server-side-encryption-configuration \
    '{"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/bench"}}]}'
idle=$(hwm_kib)

start=$(date +%s%N)
aws s3 cp --only-show-errors object.bin s3://mem/object.bin
put_ms=$((($(date +%s%N) - start) / 1000000))
after_put=$(hwm_kib)
stored=$(stat -c %s "$(find home/s3/buckets/mem/objects -name '*.obj')")

start=$(date +%s%N)
aws s3 cp --only-show-errors s3://mem/object.bin - | cmp - object.bin
get_ms=$((($(date +%s%N) - start) / 1000000))
after_get=$(hwm_kib)

mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }
rate() { python3 -c "print(f'{$size_mib * 1.048576 / ($1 / 1000):.1f}')"; }
echo "object: ${size_mib} MiB of random bytes, SSE-KMS (stored file: $stored bytes)"
echo "aws s3 cp upload:   ${put_ms} ms ($(rate "$put_ms") MB/s)"
echo "aws s3 cp download: ${get_ms} ms ($(rate "$get_ms") MB/s), identical bytes"
echo "server peak RSS (VmHWM): idle $(mib "$idle") MiB, after upload $(mib "$after_put") MiB, after download $(mib "$after_get") MiB"
if [ -n "$max_rss_mib" ]; then
    if ((after_get > max_rss_mib * 1024)); then
        echo "FAIL: the server's peak RSS $(mib "$after_get") MiB exceeds $max_rss_mib MiB" >&2
        exit 1
    fi
    echo "ok: peak RSS below $max_rss_mib MiB"
fi
