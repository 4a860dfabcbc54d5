# What the side-by-side benchmarks against moto (kms-compare.sh, s3-compare.sh) share:
# the test venv check, a work directory with the servers stopped and removed on exit,
# a root access key, `atrest ... serve` and moto's server on free ports of 127.0.0.1.
# Sourced from the repository root, after `set -euo pipefail`.

# The test venv (scripts/install-test-deps.sh makes .venv-test; or ATREST_TEST_VENV):
# sets `venv` and `python`; exits 2 when python or moto_server is missing.
bench_venv() {
    venv=${ATREST_TEST_VENV:-.venv-test}
    python=$venv/bin/python
    local tool
    for tool in "$python" "$venv/bin/moto_server"; do
        if [ ! -x "$tool" ]; then
            echo "$tool is missing: run scripts/install-test-deps.sh" >&2
            exit 2
        fi
    done
}

# A fresh `work` directory named after $1; every pid added to `pids` is killed and the
# directory removed on exit.
bench_workdir() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# A fresh ATREST_HOME in `work` and an access key for the account root: sets
# `key_id` and `secret`.
bench_root_key() {
    export ATREST_HOME=$work/home ATREST_REGION=us-east-1
    local key_json
    key_json=$("$atrest_bin" iam create-access-key --principal arn:aws:iam::000000000000:root)
    key_id=$(printf '%s' "$key_json" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["AccessKey"]["AccessKeyId"])')
    secret=$(printf '%s' "$key_json" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["AccessKey"]["SecretAccessKey"])')
}

# `atrest $1 serve` on a free port: sets `atrest_addr`; exits 1 with its log when it
# does not start.
bench_serve_atrest() {
    # The log exists before the server starts: the loop below reads it at once.
    : >"$work/atrest.log"
    RUST_LOG=warn "$atrest_bin" "$1" serve --listen 127.0.0.1:0 2>"$work/atrest.log" &
    pids+=($!)
    atrest_addr=
    for _ in $(seq 300); do
        atrest_addr=$(sed -n 's/^listening on //p' "$work/atrest.log" | head -n1)
        [ -n "$atrest_addr" ] && break
        sleep 0.1
    done
    if [ -z "$atrest_addr" ]; then
        echo "atrest $1 serve did not start:" >&2
        cat "$work/atrest.log" >&2
        exit 1
    fi
}

# moto's server mode on a free port: sets `moto_port` once it accepts connections
# (or after 60 s).
bench_serve_moto() {
    moto_port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 300); do
        "$python" -c "import socket; socket.create_connection(('127.0.0.1', $moto_port), 1)" 2>/dev/null && break
        sleep 0.2
    done
}
