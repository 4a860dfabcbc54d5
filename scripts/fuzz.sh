#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs them. Three modes:
#
#   scripts/fuzz.sh [TARGET...]            # bounded: FUZZ_SECONDS per target (default
#                                          # 30), one core; what the test command runs
#   scripts/fuzz.sh campaign [TARGET...]   # FUZZ_CAMPAIGN_SECONDS per target (default
#                                          # 600) on FUZZ_JOBS cores (default: all);
#                                          # corpus kept and minimized in FUZZ_DIR
#   scripts/fuzz.sh coverage [TARGET...]   # line coverage of each target's own modules
#                                          # over FUZZ_DIR's corpus: text table + HTML
#
# FUZZ_DIR (default ~/.cache/atrest-fuzz) is outside the repository: corpus/<target>,
# artifacts/<target> (crashing inputs), logs/, campaign.tsv (one line per target and
# session), coverage/ (coverage.txt and html/<target>/index.html). A campaign is
# resumable: a target whose time is done for the current campaign (campaign.state)
# is skipped when the script is run again; an interrupted target starts again from
# its corpus. FUZZ_CAMPAIGN_RESTART=1 starts a new campaign over the same corpus.
#
# Seed corpora are made here from real artefacts (a keystore, a trail, ciphertext
# blobs and a volume header made by the atrest binary; NBD sessions written below),
# never committed as binary blobs. In the bounded run a crash, a hang (over 30 s on
# one input) or a failed assertion makes the script fail; libFuzzer leaves the input
# under fuzz/artifacts/<target>/ to turn into a regression test. A campaign keeps
# going past findings and lists them at the end (artifacts/<target>/crash-*).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=bounded
case "${1:-}" in
campaign | coverage)
    mode="$1"
    shift
    ;;
esac
# The toolchain is stable; cargo-fuzz needs nightly flags (-Zsanitizer).
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

mapfile -t all_targets < <(cd fuzz && cargo fuzz list)
targets=("$@")
if ((${#targets[@]} == 0)); then targets=("${all_targets[@]}"); fi
# The bounded run's budget is 480 s in all (what 16 targets x 30 s took): with more
# targets each gets its share, at most 30 s.
budget=480
seconds="${FUZZ_SECONDS:-$((budget / ${#targets[@]} < 30 ? budget / ${#targets[@]} : 30))}"
fuzz_dir="${FUZZ_DIR:-$HOME/.cache/atrest-fuzz}"

cargo build --profile ci --quiet --bin atrest
atrest="$PWD/target/ci/atrest"
if [ "$mode" != coverage ]; then
    (cd fuzz && cargo fuzz build --release --debug-assertions)
fi

# ---- seed corpora ----------------------------------------------------------------
# The bounded run keeps its corpus in fuzz/corpus (ignored by git); a campaign's and
# the coverage report's live in FUZZ_DIR, outside the repository.
corpus="$PWD/fuzz/corpus"
if [ "$mode" != bounded ]; then corpus="$fuzz_dir/corpus"; fi
work="$(mktemp -d)"
# The targets' scratch files (tmpfs when there is one, so they do not measure the disk).
scratch_base=/dev/shm
[ -d "$scratch_base" ] || scratch_base="${TMPDIR:-/tmp}"
ATREST_FUZZ_SCRATCH="$(mktemp -d "$scratch_base/atrest-fuzz.XXXXXX")"
export ATREST_FUZZ_SCRATCH
trap 'rm -rf "$work" "$ATREST_FUZZ_SCRATCH"' EXIT
seed() { # seed TARGET NAME < bytes
    mkdir -p "$corpus/$1"
    cat >"$corpus/$1/seed-$2"
}

# A home with keys in every state, under the fixed root key of fuzz/src/lib.rs.
home="$work/home"
printf '%s' 'atrest-fuzz-keystore-root-key-32' >"$work/root.key"
chmod 600 "$work/root.key"
kms() { ATREST_HOME="$home" ATREST_ROOT_KEY_FILE="$work/root.key" "$atrest" kms "$@"; }
key=$(kms create-key --alias alias/fuzz --description seed | python3 -c 'import json,sys; print(json.load(sys.stdin)["KeyMetadata"]["KeyId"])')
other=$(kms create-key | python3 -c 'import json,sys; print(json.load(sys.stdin)["KeyMetadata"]["KeyId"])')
doomed=$(kms create-key | python3 -c 'import json,sys; print(json.load(sys.stdin)["KeyMetadata"]["KeyId"])')
kms enable-key-rotation --key-id "$key" >/dev/null
kms rotate-key-on-demand --key-id "$key" >/dev/null
kms disable-key --key-id "$other" >/dev/null
kms schedule-key-deletion --key-id "$doomed" --pending-window-in-days 7 >/dev/null
printf 'seed plaintext' >"$work/plain"
kms encrypt --key-id alias/fuzz --plaintext "fileb://$work/plain" --encryption-context a=b |
    python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["CiphertextBlob"]))' |
    seed envelope_blob encrypt
kms generate-data-key-without-plaintext --key-id "$key" --number-of-bytes 64 |
    python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["CiphertextBlob"]))' |
    seed envelope_blob data-key
kms decrypt --ciphertext-blob "fileb://$corpus/envelope_blob/seed-encrypt" --encryption-context a=b >/dev/null
# Mode byte 0: the body under a fixed-up header line; 1: the whole file as it is.
{ printf '\0'; tail -n +2 "$home/kms/keystore.json"; } | seed keystore_file body
{ printf '\1'; cat "$home/kms/keystore.json"; } | seed keystore_file file
# Mode 3: re-chained lines and a head that acknowledges the last one; 0: as stored.
# The first two records: short seeds keep the target fast (every record of an input
# is parsed four times over); longer trails are still reached by mutation.
{ printf '\3'; head -n 2 "$home/trail/trail.jsonl"; } | seed trail_log rechained
{ printf '\0'; head -n 2 "$home/trail/trail.jsonl"; } | seed trail_log stored
# trail_file: the head's length, the head, the log.
head_len=$(stat -c %s "$home/trail/trail.head")
{ printf "\\x$(printf %02x "$head_len")"; cat "$home/trail/trail.head" "$home/trail/trail.jsonl"; } |
    seed trail_file stored

ATREST_HOME="$home" ATREST_ROOT_KEY_FILE="$work/root.key" \
    "$atrest" volume create "$work/enc.vol" --size 1M --key-id alias/fuzz >/dev/null
"$atrest" volume create "$work/raw.vol" --size 1M --unencrypted >/dev/null
head -c 4096 "$work/enc.vol" | seed volume_header encrypted
head -c 4096 "$work/raw.vol" | seed volume_header unencrypted

python3 - "$corpus" <<'EOF'
# NBD sessions (fuzz/fuzz_targets/nbd_session.rs) and request headers.
import os, struct, sys
corpus = sys.argv[1]
def seed(target, name, data):
    os.makedirs(f"{corpus}/{target}", exist_ok=True)
    with open(f"{corpus}/{target}/seed-{name}", "wb") as f:
        f.write(data)
IHAVEOPT = 0x49484156454F5054
def option(code, data=b""):
    return struct.pack(">QII", IHAVEOPT, code, len(data)) + data
def request(cmd, offset, length, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, offset, length) + payload
name = b"fuzz"
go = option(7, struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, 3))
meta = option(10, struct.pack(">I", len(name)) + name + struct.pack(">II", 1, 15) + b"base:allocation")
raw = struct.pack(">I", 3) + option(3) + option(8) + meta + option(6, struct.pack(">I", 2) + b"ro" + struct.pack(">H", 0)) + go
raw += request(1, 4096, 512, cookie=1, payload=b"\xa5" * 512) + request(3, 0, 0, cookie=2)
raw += request(0, 4000, 700, cookie=3) + request(7, 0, 1 << 20, cookie=4) + request(4, 0, 8192, cookie=5)
raw += request(6, 100, 5000, flags=2, cookie=6) + request(5, 0, 65536, cookie=7) + request(2, 0, 0)
seed("nbd_session", "raw", b"\x00" + raw)
seed("nbd_session", "handshake-only", b"\x01")
# Compact program: command, flags, offset/16 (u16 LE), length/16 (u16 LE), cookie.
program = b"".join(struct.pack("<BBHHB", *r) for r in [
    (1, 0, 256, 32, 1), (0, 0, 250, 40, 2), (3, 0, 0, 0, 3), (7, 0, 0, 4096, 4),
    (4, 0, 256, 16, 5), (6, 2, 300, 8, 6), (5, 0, 0, 256, 7), (0, 1, 1, 0, 8), (2, 0, 0, 0, 9)])
seed("nbd_session", "program", b"\x03" + program)
# The same program on the 1 MiB export `big` (mode bit 2), where requests are large.
seed("nbd_session", "program-big", b"\x07" + program)
seed("nbd_request", "write", request(1, 4096, 512))
seed("nbd_request", "block-status", request(7, 0, 1 << 20, flags=8) + struct.pack("<QB", 1 << 20, 7))
seed("nbd_option", "go", struct.pack(">I", 3) + go)
# S3 (fuzz/fuzz_targets/s3_request.rs): an aws-chunked body as botocore sends it, an
# encryption configuration, a presigned GET's route.
import base64, zlib
data = b"hello world"
crc = base64.b64encode(struct.pack(">I", zlib.crc32(data))).decode()
chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:" + crc.encode() + b"\r\n\r\n"
seed("s3_request", "chunked", b"\x00" + struct.pack("<H", len(data)) + chunked)
seed("s3_request", "xml", b"\x03<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault>"
     b"<SSEAlgorithm>aws:kms</SSEAlgorithm><KMSMasterKeyID>alias/a&amp;b</KMSMasterKeyID>"
     b"</ApplyServerSideEncryptionByDefault></Rule></ServerSideEncryptionConfiguration>")
seed("s3_request", "route", b"\x04/bucket/a%20b/c?X-Amz-Signature=00&list-type=2&acl")
# A browser upload form (fuzz/fuzz_targets/s3_post_form.rs): key with ${filename},
# a policy with starts-with and content-length-range, the file.
post_policy = base64.b64encode(b'{"expiration":"2030-01-01T00:00:00Z","conditions":'
                               b'[["starts-with","$key","up/"],["content-length-range",1,64]]}')
post_form = b"".join(b'--B\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"
                     for name, value in [(b"key", b"up/${filename}"), (b"policy", post_policy)])
post_form += b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\r\n--B--\r\n'
seed("s3_post_form", "form", b"multipart/form-data; boundary=B\n" + post_form)
seed("nbd_option", "meta", struct.pack(">I", 3) + meta)
# A certificate subject's RDNs (C=GB, CN=client1), as nbd::common_name reads them.
seed("nbd_client_name", "subject", bytes.fromhex("310b300906035504061302474231103" "00e06035504030c07") + b"client1")
# TLS records (nbd::check_record_opener): mode 1 seals (length, inner bytes) pairs,
# here application data and a KeyUpdate; mode 0 opens the bytes as they are.
seed("nbd_tls_record", "sealed", b"\x01" + struct.pack(">H", 6) + b"hello\x17" + struct.pack(">H", 6) + b"\x18\x00\x00\x01\x00\x16")
seed("nbd_tls_record", "raw", b"\x00\x17\x03\x03\x00\x11" + bytes(17))
# XTS: key halves, a selector, sector size and number selectors, data.
# One 4096-byte sector (xts_openssl's seed has two): what the target costs grows
# with the input, and libFuzzer's default -max_len is the longest seed.
seed("xts_sectors", "4k", bytes(range(32)) + b"\x01" + bytes(range(32, 64)) + b"\x00\x00\x07\x00" + os.urandom(4096))
seed("xts_sectors", "stealing", bytes(range(64)) + b"\x03\x11\x00\x01\xfe" + os.urandom(700))
# XTS against OpenSSL: key half, selector (bit 0: 4096-byte sectors; 0xee: equal
# halves), key half, sector number selector, data.
seed("xts_openssl", "512", bytes(range(32)) + b"\x00" + bytes(range(32, 64)) + b"\x00\x05\x00" + os.urandom(1024))
seed("xts_openssl", "4k-wrap", bytes(range(32)) + b"\x01" + bytes(range(32, 64)) + b"\x01\x03" + os.urandom(8192))
seed("xts_openssl", "equal-halves", bytes(range(32)) + b"\xee\x00\x00\x00" + os.urandom(512))
# The key service against its model (fuzz/fuzz_targets/kms_model.rs): op, key, args.
seed("kms_model", "lifecycle", bytes([
    0, 0, 0, 0,                 # two keys
    8, 0, 1, 5]) + b"hello" + bytes([  # Encrypt under key 0, context 1
    7, 0,                       # on-demand rotation of key 0
    9, 0, 0, 0, 0,              # Decrypt blob 0
    5, 1,                       # automatic rotation of key 1
    2, 0,                       # DisableKey 0
    9, 0, 0, 0, 1,              # Decrypt blob 0 naming key 0: DisabledException
    3, 1, 1,                    # ScheduleKeyDeletion of key 1, 7 days
    11, 0, 0,                   # CreateAlias alias/fuzz-0 -> key 0
    12, 0, 8,                   # 8 days pass: key 1 is gone
    4, 1,                       # CancelKeyDeletion of key 1: NotFoundException
    1, 0,                       # EnableKey 0
    10, 0, 0, 0, 1,             # ReEncrypt blob 0 naming key 0
    8, 0x80, 2, 3]) + b"abc")   # Encrypt through alias/fuzz-0
# Found by kms_model: Decrypt under a wrong context with a disabled key answers
# DisabledException (the key's state is checked before the blob is opened).
seed("kms_model", "disabled-wrong-context", bytes([
    0, 0, 8, 0, 1, 5]) + b"hello" + bytes([  # a key; Encrypt under context 1
    2, 0,                       # DisableKey
    9, 0, 0, 0x82, 0]))         # Decrypt under context 2
# Found by kms_model: ReEncrypt naming, and Decrypt of a blob of, a key whose deletion
# completed answer NotFoundException (the key is looked up before the blob is opened).
seed("kms_model", "deleted-key", bytes.fromhex(
    "000000000800010568656c6c6f0700090000000005012e0009000000010300fd0b00000c0008040101000a0000000100010903"))
# Volume ops: write, read, trim, zero, flush+reopen, with sector-edge positions.
# KMS JSON: 255 = the X-Amz-Target as text, a newline, the body.
def kms(name, target, body):
    seed("kms_json", name, b"\xff" + b"TrentService." + target + b"\n" + body)
kms("encrypt", b"Encrypt", b'{"KeyId": "alias/fuzz", "Plaintext": "aGVsbG8=", "EncryptionContext": {"a": "b"}}')
kms("data-key", b"GenerateDataKey", b'{"KeyId": "alias/fuzz", "KeySpec": "AES_256"}')
kms("create-key", b"CreateKey", b'{"Description": "d", "Tags": [{"TagKey": "k", "TagValue": "v"}]}')
kms("policy", b"PutKeyPolicy", b'{"KeyId": "alias/fuzz", "PolicyName": "default", "Policy": "{\\"Version\\": \\"2012-10-17\\", \\"Statement\\": []}"}')
# SigV4: 0 = a request as text; 1 = a request the gateway's signer signs.
seed("sigv4_verify", "header", b"\x00" + b"PUT\n/bucket/key?x-id=PutObject\nhost: 127.0.0.1:4598\n"
     b"x-amz-date: 20260102T030405Z\nx-amz-content-sha256: UNSIGNED-PAYLOAD\n"
     b"authorization: AWS4-HMAC-SHA256 Credential=AKIAFUZZFUZZFUZZFUZZ/20260102/local/s3/aws4_request, "
     b"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + b"0" * 64 + b"\n\nbody")
seed("sigv4_verify", "presigned", b"\x00" + b"GET\n/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAFUZZFUZZFUZZFUZZ%2F20260102%2Flocal%2Fs3%2Faws4_request"
     b"&X-Amz-Date=20260102T030405Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=" + b"1" * 64 + b"\nhost: h\n\n")
seed("sigv4_verify", "signed", b"\x01\x01\x08bucket/k\x04a=b&\x02\x03abc\x05value\x02xy\x00payload")
# Trail digests: mode, digest, position (u32 LE), mask.
seed("trail_digest", "flip", bytes([0, 0, 10, 0, 0, 0, 1]))
seed("trail_digest", "digest", bytes([3, 1, 40, 0, 0, 0, 4]))
# The one input the 2-hour campaign of 2026-12-06 saved (a libFuzzer "deadly signal" in
# fork mode, mode 1: truncate trail.jsonl). It never failed again when replayed, on that
# code or later (docs/FUZZING.md); replayed by every run from here on.
seed("trail_digest", "campaign-crash-cf2a2dca", bytes([0x01, 0x00, 0x13, 0x00, 0x08, 0xfb, 0xff, 0xff, 0xff, 0xf1]))
seed("volume_ops", "mix", bytes([0, 1, 10, 1, 200, 0, 7, 2, 1, 9, 7, 1, 4, 0, 3, 0, 16, 5, 1, 2, 0, 9, 1, 6, 1, 130, 1, 0, 0, 17, 2, 1, 0, 0, 16]))
EOF

# ---- campaign and coverage -------------------------------------------------------
campaign_seconds="${FUZZ_CAMPAIGN_SECONDS:-600}"
jobs="${FUZZ_JOBS:-$(nproc)}"

# The code each target is meant to reach (what its coverage is the coverage of).
own_sources() { # own_sources TARGET: prints source paths
    case "$1" in
    xts_sectors | xts_openssl) echo crypto-core/src/xts ;;
    envelope_blob) echo crypto-core/src/envelope.rs ;;
    keystore_file) echo crypto-core/src/kms/keystore.rs crypto-core/src/kms/local ;;
    kms_model) echo crypto-core/src/kms/local crypto-core/src/kms/keystore.rs crypto-core/src/envelope.rs ;;
    kms_json) echo gateway/src/kms_api.rs ;;
    trail_log | trail_file) echo crypto-core/src/trail/{mod,append,validate,lookup,error,record,head}.rs ;;
    trail_digest) echo crypto-core/src/trail/digest.rs ;;
    volume_header) echo blockdev/src/format.rs ;;
    volume_ops) echo blockdev/src/volume ;;
    nbd_request | nbd_option) echo blockdev/src/nbd/proto.rs ;;
    nbd_session) echo blockdev/src/nbd/{server,negotiation,transmission,proto}.rs ;;
    nbd_client_name) echo blockdev/src/nbd/tls.rs ;;
    nbd_tls_record) echo blockdev/src/nbd/tls/record.rs ;;
    object_header) echo objstore/src/format.rs ;;
    s3_request) echo gateway/src/s3 ;;
    s3_post_form) echo gateway/src/s3/post ;;
    sigv4_verify) echo gateway/src/sigv4 ;;
    *) echo "no source map for fuzz target $1 (add it to own_sources in scripts/fuzz.sh)" >&2 && return 1 ;;
    esac
}

# Fork mode keeps nothing of a crashed child's log but its lines with "ERROR:" (the
# targets' panic hook puts the panic message on one: atrest_fuzz::report_panics_in_fork_mode).
# Each input saved during this target's time is run again alone, and that run's whole
# log (message, stack) is kept beside the campaign's: logs/<campaign>-<target>-<input>.log.
# An input that passes alone failed because of what else was happening (the process's
# state from earlier inputs, the machine), which the log of the replay says is so.
replay_findings() { # replay_findings TARGET ARTIFACTS_DIR CAMPAIGN_LOG
    local artifact name replay
    while IFS= read -r artifact; do
        name=$(basename "$artifact")
        replay="$fuzz_dir/logs/$id-$1-$name.log"
        [ -e "$replay" ] && continue
        if (cd fuzz && ASAN_OPTIONS="$asan_options" cargo fuzz run --release --debug-assertions \
            "$1" "$artifact" -- -timeout=30 "${extra[@]}") >"$replay" 2>&1; then
            echo "== $1: $name passes when run alone (log: $replay)" | tee -a "$3"
        else
            echo "== $1: $name fails when run alone (log: $replay)" | tee -a "$3"
        fi
    done < <(find "$2" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \))
}

# One line per target and session in FUZZ_DIR/campaign.tsv; the corpus minimized
# after each target's time; a state file so that a second run resumes.
campaign_run() {
    mkdir -p "$fuzz_dir/logs"
    local state="$fuzz_dir/campaign.state" table="$fuzz_dir/campaign.tsv"
    if [ "${FUZZ_CAMPAIGN_RESTART:-0}" = 1 ] || [ ! -s "$state" ]; then
        echo "campaign $(date -u +%Y%m%dT%H%M%SZ)" >"$state"
    fi
    local id
    id=$(sed -n '1s/^campaign //p' "$state")
    [ -s "$table" ] ||
        printf 'campaign\ttarget\tseconds\tjobs\texecutions\texec/s\tcorpus\tcov\tfindings\n' >"$table"
    for target in "${targets[@]}"; do
        if grep -qx "done $target" "$state"; then
            echo "== $target: done in campaign $id, skipped (FUZZ_CAMPAIGN_RESTART=1 for a new one)"
            continue
        fi
        echo "== campaign $id: $target for ${campaign_seconds}s on $jobs jobs"
        local artifacts="$fuzz_dir/artifacts/$target" log="$fuzz_dir/logs/$id-$target.log"
        mkdir -p "$corpus/$target" "$artifacts"
        local before
        before=$(find "$artifacts" -type f | wc -l)
        target_flags "$target"
        # Fork mode: one process per job, crashes and timeouts noted and gone past;
        # new inputs land in the corpus as they are found, so an interrupted run
        # loses nothing but the time it was interrupted in.
        (cd fuzz && ASAN_OPTIONS="$asan_options" cargo fuzz run --release --debug-assertions \
            "$target" "$corpus/$target" -- -fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 \
            -ignore_ooms=1 -max_total_time="$campaign_seconds" -timeout=30 \
            -artifact_prefix="$artifacts/" "${extra[@]}") >"$log" 2>&1 || {
            tail -n 20 "$log"
            echo "fuzz target $target did not run (log: $log)"
            exit 1
        }
        # Fork mode's status lines: "#RUNS: cov: C ft: F corp: N exec/s: R ...".
        local last runs rate cov
        last=$(grep -E '^#[0-9]+: cov: ' "$log" | tail -n 1)
        runs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
        rate=$(sed -E 's/.* exec\/s: ([0-9]+).*/\1/' <<<"$last")
        cov=$(sed -E 's/.* cov: ([0-9]+) ft: ([0-9]+).*/\1\/\2/' <<<"$last")
        (cd fuzz && ASAN_OPTIONS="$asan_options" cargo fuzz cmin --release --debug-assertions \
            "$target" "$corpus/$target" -- "${extra[@]}") >>"$log" 2>&1 || {
            tail -n 20 "$log"
            echo "minimizing the corpus of $target failed (log: $log)"
            exit 1
        }
        local files findings
        files=$(find "$corpus/$target" -type f | wc -l)
        findings=$(($(find "$artifacts" -type f | wc -l) - before))
        replay_findings "$target" "$artifacts" "$log"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$target" "$campaign_seconds" "$jobs" \
            "${runs:-0}" "${rate:-0}" "$files" "${cov:-?}" "$findings" >>"$table"
        echo "done $target" >>"$state"
    done
    echo "== campaign $id ($table; the last line per target is this session's)"
    awk -F'\t' -v id="$id" 'NR == 1 || $1 == id' "$table" | column -t -s $'\t'
    if [ -n "$(find "$fuzz_dir/artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) -print -quit)" ]; then
        echo "== findings (inputs to turn into regression tests):"
        find "$fuzz_dir/artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \)
    fi
}

# `cargo fuzz coverage` over each target's corpus, then llvm-cov (from rustup's
# llvm-tools, the LLVM the toolchain was built with): lines of the target's own
# modules covered, as a table (FUZZ_DIR/coverage/coverage.txt) and HTML.
coverage_report() {
    local host tools out table
    host=$(rustc -vV | sed -n 's/^host: //p')
    tools="$(rustc --print sysroot)/lib/rustlib/$host/bin"
    if [ ! -x "$tools/llvm-cov" ]; then
        echo "llvm-cov not found in $tools: rustup component add llvm-tools"
        exit 1
    fi
    out="$fuzz_dir/coverage"
    table="$out/coverage.txt"
    mkdir -p "$out/html" "$fuzz_dir/logs"
    printf '%-15s %7s %13s %9s  %s\n' target inputs lines "functions" "own modules" >"$table.new"
    for target in "${targets[@]}"; do
        echo "== coverage of $target"
        local log="$fuzz_dir/logs/coverage-$target.log" own sources binary profdata
        mkdir -p "$corpus/$target"
        own=$(own_sources "$target")
        read -r -a sources <<<"$own"
        # (-print -quit, not `| grep -q`: under pipefail grep's early exit fails find.)
        if [ -z "$(find "$corpus/$target" -type f -print -quit)" ]; then
            printf '%-15s %7s  no corpus yet (run a campaign first)\n' "$target" 0 >>"$table.new"
            continue
        fi
        (cd fuzz && cargo fuzz coverage "$target" "$corpus/$target") >"$log" 2>&1 || {
            tail -n 20 "$log"
            echo "cargo fuzz coverage $target failed (log: $log)"
            exit 1
        }
        profdata="fuzz/coverage/$target/coverage.profdata"
        binary="fuzz/target/$host/coverage/$host/release/$target"
        "$tools/llvm-cov" export -summary-only -instr-profile="$profdata" "$binary" \
            "${sources[@]}" >"$out/$target.json"
        python3 - "$out/$target.json" "$target" "$(find "$corpus/$target" -type f | wc -l)" \
            "${sources[*]}" >>"$table.new" <<'PY'
import json, sys
path, target, inputs, sources = sys.argv[1:]
totals = json.load(open(path))["data"][0]["totals"]
lines, funcs = totals["lines"], totals["functions"]
print(f"{target:<15} {inputs:>7} {lines['covered']:>5}/{lines['count']:<5} {lines['percent']:5.1f}% "
      f"{funcs['percent']:5.1f}%  {sources}")
PY
        "$tools/llvm-cov" show -format=html -output-dir="$out/html/$target" \
            -instr-profile="$profdata" "$binary" "${sources[@]}" >/dev/null
    done
    mv "$table.new" "$table"
    echo "== coverage (lines and functions of each target's own modules; HTML: $out/html/<target>/index.html)"
    cat "$table"
}

# ---- run -----------------------------------------------------------------------
# ASAN_OPTIONS and extra libFuzzer flags for one target.
# nbd_session drives a live, long-running server whose connection threads outlive
# each input; LeakSanitizer's between-input checks report their thread handles as
# leaks (false positives), so leak detection is off for that target only: both
# libFuzzer's checks (-detect_leaks=0) and the one at exit (ASAN_OPTIONS), which
# reported the thread-local destructor list of a connection thread still serving
# when the time was up (32 bytes from __cxa_thread_atexit_impl, seen once in CI).
target_flags() { # target_flags TARGET: sets extra=() and asan_options
    extra=()
    asan_options="${ASAN_OPTIONS:-}"
    if [ "$1" = nbd_session ]; then
        extra+=(-detect_leaks=0)
        asan_options="${asan_options:+$asan_options:}detect_leaks=0"
    fi
}

if [ "$mode" = campaign ]; then
    campaign_run
    exit 0
fi
if [ "$mode" = coverage ]; then
    coverage_report
    exit 0
fi

summary="$work/summary"
for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds}s"
    log="$work/$target.log"
    mkdir -p "$corpus/$target"
    target_flags "$target"
    if ! (cd fuzz && ASAN_OPTIONS="$asan_options" cargo fuzz run --release --debug-assertions "$target" "$corpus/$target" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 "${extra[@]}") >"$log" 2>&1; then
        # The cause (a panic message, ASan's report) comes first; the stack after it.
        grep -m 3 -A 12 -E "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|==[0-9]+==" "$log" | head -n 60
        tail -n 30 "$log"
        echo "fuzz target $target FAILED (input saved under fuzz/artifacts/$target/)"
        exit 1
    fi
    runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log")
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
    printf '%-15s %10s runs %8s exec/s  %s\n' "$target" "$runs" "$rate" "$cov" | tee -a "$summary"
done
echo "== fuzz summary (${seconds}s per target)"
cat "$summary"
