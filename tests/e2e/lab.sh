#!/usr/bin/env bash
# The whole lab (docs/LAB.md, "The whole lab with the aws CLI"), steps 1-7, run with
# atrest's CLI, the real aws CLI (from .venv-test), curl and the NBD clients, asserting
# every outcome:
#   1. alias/MyKMSKey with a key policy that splits administrators from users;
#   2. a bucket with default SSE-KMS, clock.png (a real PNG made here) uploaded with
#      --sse aws:kms --sse-kms-key-id alias/MyKMSKey, no plaintext on disk;
#   3. anonymous GET refused: AccessDenied (private), InvalidArgument (public-read);
#   4. a presigned URL returns the same bytes; an expired one is refused;
#   5. the trail: GenerateDataKey for the upload, Decrypt for the signed read, with
#      the caller and the object ARN; trail validate;
#   6. a root volume: snapshot, encrypted copy under alias/MyKMSKey, swap (SIGHUP);
#   7. the administrator disables the key: attach refused, an attached client's reads
#      fail, object reads and writes fail; enable restores all; scheduled deletion
#      that completes leaves nothing readable.
# Every process and file it makes is removed on exit. Needs scripts/install-test-deps.sh
# and an atrest build: ATREST_BIN, else target/ci/atrest (built here if missing).
# Usage: tests/e2e/lab.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${ATREST_TEST_VENV:-$repo/.venv-test}
key_alias=alias/MyKMSKey
bucket=lab-bucket
account=000000000000
admin_arn=arn:aws:iam::$account:user/KeyAdmin
user_arn=arn:aws:iam::$account:user/KeyUser

e2e_name=lab
# shellcheck source=tests/e2e/lib.sh
. "$repo/tests/e2e/lib.sh"

ok() {
    echo "   ok: $*"
}

# json FILE EXPR: evaluates the Python expression EXPR over the JSON document `d`.
json() {
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# Waits until LOG has a line matching PATTERN (sed -n 's/PATTERN//p' is non-empty),
# or the process PID exits, or 20 s pass; prints what the sed printed.
wait_log() {
    local log=$1 pattern=$2 pid=$3 tries=0 found
    until found=$(sed -n "s/$pattern//p" "$log" | tail -n 1) && [ -n "$found" ]; do
        kill -0 "$pid" 2>/dev/null || {
            cat "$log" >&2
            die "the process writing $log exited"
        }
        tries=$((tries + 1))
        ((tries <= 200)) || {
            cat "$log" >&2
            die "no line matching '$pattern' in $log within 20 s"
        }
        sleep 0.1
    done
    echo "$found"
}

# Waits until FILE has a line matching the grep pattern (20 s at most).
wait_grep() {
    local file=$1 pattern=$2 tries=0
    until grep -q -- "$pattern" "$file"; do
        tries=$((tries + 1))
        ((tries <= 200)) || {
            cat "$file" >&2
            die "no '$pattern' in $file within 20 s"
        }
        sleep 0.1
    done
}

for tool in curl nbdcopy nbdinfo qemu-img python3 cmp diff; do
    need_tool "$tool"
done
/usr/bin/python3 -c 'import nbd' 2>/dev/null || die "python3-libnbd is not installed (run scripts/install-test-deps.sh)"
[ -x "$venv/bin/aws" ] || die "$venv/bin/aws is missing: run scripts/install-test-deps.sh (it makes .venv-test)"
if [ -n "${ATREST_BIN:-}" ]; then
    atrest=$ATREST_BIN
else
    (cd "$repo" && cargo build --quiet --profile ci --bin atrest)
    atrest=${CARGO_TARGET_DIR:-$repo/target}/ci/atrest
fi
[ -x "$atrest" ] || die "no atrest binary at $atrest"

export ATREST_HOME=$tmp/home
cd "$tmp"

step "0. the gateway (AWS KMS and S3 on one port) and access keys for the key administrator and user"
"$atrest" iam create-access-key --principal "$admin_arn" >admin-key.json
"$atrest" iam create-access-key --principal "$user_arn" >user-key.json
"$atrest" gateway serve --listen 127.0.0.1:0 2>gateway.log &
gateway_pid=$!
pids+=("$gateway_pid")
address=$(wait_log gateway.log '^listening on ' "$gateway_pid")
region=$(wait_log gateway.log '^S3 endpoint .*, region ' "$gateway_pid")
endpoint=http://$address
echo "   endpoint $endpoint, region $region"

# as WHO aws ARGS...: the aws CLI signed with WHO's access key (admin or user).
as() {
    local who=$1
    shift
    AWS_ACCESS_KEY_ID=$(json "$who-key.json" 'd["AccessKey"]["AccessKeyId"]') \
        AWS_SECRET_ACCESS_KEY=$(json "$who-key.json" 'd["AccessKey"]["SecretAccessKey"]') \
        AWS_DEFAULT_REGION=$region AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent \
        AWS_MAX_ATTEMPTS=1 AWS_EC2_METADATA_DISABLED=true \
        "$venv/bin/aws" --endpoint-url "$endpoint" --output json "$@"
}

# refused CODE WHO aws ARGS...: the call fails and its error names CODE.
refused() {
    local code=$1 who=$2
    shift 2
    if as "$who" "$@" >out.json 2>err.txt; then
        die "aws $* as $who succeeded; expected $code"
    fi
    grep -q -- "$code" err.txt || {
        cat err.txt >&2
        die "aws $* as $who failed without $code"
    }
    ok "aws $1 $2 as $who: $code"
}

# curl_code URL: fetches URL into body.bin; prints the HTTP status.
curl_code() {
    curl -s -o body.bin -w '%{http_code}' "$1"
}

step "1. alias/MyKMSKey: key administrators manage it, key users use it"
cat >policy.json <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
     "Principal": {"AWS": "arn:aws:iam::$account:root"}, "Action": "kms:*", "Resource": "*"},
    {"Sid": "Allow access for Key Administrators", "Effect": "Allow",
     "Principal": {"AWS": "$admin_arn"},
     "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
                "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
                "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand"],
     "Resource": "*"},
    {"Sid": "Allow use of the key", "Effect": "Allow",
     "Principal": {"AWS": "$user_arn"},
     "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                "kms:DescribeKey"],
     "Resource": "*"}
  ]
}
EOF
"$atrest" kms create-key --alias "$key_alias" --description "lab CMK" --policy file://policy.json >key.json
key_arn=$(json key.json 'd["KeyMetadata"]["Arn"]')
[ "$(json key.json 'd["KeyMetadata"]["KeySpec"]')" = SYMMETRIC_DEFAULT ] || die "the CMK is not symmetric"
echo "   $key_alias -> $key_arn"
as user kms describe-key --key-id "$key_alias" >out.json
[ "$(json out.json 'd["KeyMetadata"]["KeyState"]')" = Enabled ] || die "the key is not Enabled"
as user kms generate-data-key --key-id "$key_alias" --key-spec AES_256 >out.json
ok "the key user generates a data key"
refused AccessDeniedException user kms disable-key --key-id "$key_arn"
refused AccessDeniedException admin kms generate-data-key --key-id "$key_alias" --key-spec AES_256
as admin kms get-key-policy --key-id "$key_arn" --policy-name default >out.json
ok "the key administrator reads the key policy"

step "2. a bucket with default SSE-KMS; clock.png uploaded with --sse aws:kms --sse-kms-key-id $key_alias"
python3 - <<'EOF'
# A 96x96 RGB clock face, as a real PNG (signature, IHDR, zlib IDAT, IEND).
import math, struct, zlib
size = 96
def pixel(x, y):
    dx, dy = x - size / 2, y - size / 2
    r = math.hypot(dx, dy)
    angle = math.degrees(math.atan2(dx, -dy)) % 360
    if 40 <= r <= 44:
        return (40, 40, 40)
    if r < 40 and (abs(angle - 90) < 3 and r < 30 or abs(angle - 300) < 4 and r < 22):
        return (200, 30, 30)
    return (250, 250, 240) if r < 40 else (90, 140, 200)
rows = b"".join(b"\x00" + bytes(c for x in range(size) for c in pixel(x, y)) for y in range(size))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
open("clock.png", "wb").write(png)
EOF
echo "   made clock.png: $(stat -c %s clock.png) bytes, $(file -b clock.png 2>/dev/null || echo PNG)"
as user s3api create-bucket --bucket "$bucket" >/dev/null
as user s3api put-bucket-encryption --bucket "$bucket" --server-side-encryption-configuration \
    "{\"Rules\": [{\"ApplyServerSideEncryptionByDefault\": {\"SSEAlgorithm\": \"aws:kms\", \"KMSMasterKeyID\": \"$key_alias\"}}]}"
as user s3api get-bucket-encryption --bucket "$bucket" >out.json
[ "$(json out.json 'd["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]')" = aws:kms ] ||
    die "the bucket's default encryption is not SSE-KMS"
ok "default encryption of $bucket: SSE-KMS with $key_alias"
as user s3 cp clock.png "s3://$bucket/clock.png" --sse aws:kms --sse-kms-key-id "$key_alias" >/dev/null
as user s3api head-object --bucket "$bucket" --key clock.png >head.json
[ "$(json head.json 'd["ServerSideEncryption"]')" = aws:kms ] || die "clock.png is not SSE-KMS"
[ "$(json head.json 'd["SSEKMSKeyId"]')" = "$key_arn" ] || die "clock.png is not under $key_arn"
ok "head-object: ServerSideEncryption aws:kms, SSEKMSKeyId $key_arn"
echo "a note under the bucket's default encryption" >note.txt
as user s3 cp note.txt "s3://$bucket/note.txt" >/dev/null
as user s3api head-object --bucket "$bucket" --key note.txt >out.json
[ "$(json out.json 'd.get("SSEKMSKeyId")')" = "$key_arn" ] || die "the default encryption was not applied"
ok "an upload naming no key gets the bucket default ($key_alias)"
python3 - "$ATREST_HOME/s3/buckets/$bucket/objects" <<'EOF'
import os, sys
png = open("clock.png", "rb").read()
files = [open(os.path.join(sys.argv[1], f), "rb").read() for f in os.listdir(sys.argv[1]) if f.endswith(".obj")]
assert len(files) == 2, f"expected 2 object files, found {len(files)}"
for data in files:
    for i in range(0, len(png) - 16, 16):
        if png[i:i + 16] in data:
            sys.exit(f"FAIL: 16 plaintext bytes of clock.png (offset {i}) are on disk in the clear")
print("   ok: no 16-byte run of clock.png is in the object files on disk")
EOF

step "2b. bucket keys: many objects, one GenerateDataKey"
as user s3api create-bucket --bucket lab-bucket-keys >/dev/null
as user s3api put-bucket-encryption --bucket lab-bucket-keys --server-side-encryption-configuration \
    "{\"Rules\": [{\"ApplyServerSideEncryptionByDefault\": {\"SSEAlgorithm\": \"aws:kms\", \"KMSMasterKeyID\": \"$key_alias\"}, \"BucketKeyEnabled\": true}]}"
mkdir photos
for i in $(seq 10); do head -c $((1000 * i)) /dev/urandom >"photos/p$i.bin"; done
as user s3 cp --recursive --quiet photos s3://lab-bucket-keys/photos
as user s3 cp --recursive --quiet s3://lab-bucket-keys/photos photos-back
diff -r photos photos-back >/dev/null || die "the bucket-key objects read back differently"
"$atrest" trail lookup --event-name GenerateDataKey >trail.json
gdk=$(python3 -c '
import json
events = [json.loads(e["CloudTrailEvent"]) for e in json.load(open("trail.json"))["Events"]]
print(sum(1 for e in events if (e.get("requestParameters") or {}).get("encryptionContext", {}).get("aws:s3:arn", "").startswith("arn:aws:s3:::lab-bucket-keys")))')
[ "$gdk" = 1 ] || die "10 uploads with a bucket key made $gdk GenerateDataKey calls, not 1"
as user s3api head-object --bucket lab-bucket-keys --key photos/p3.bin >out.json
[ "$(json out.json 'd.get("BucketKeyEnabled")')" = True ] || die "head-object does not report BucketKeyEnabled: $(cat out.json)"
as user s3api head-object --bucket "$bucket" --key clock.png >out.json
[ "$(json out.json 'd.get("BucketKeyEnabled", False)')" = False ] || die "clock.png reports a bucket key"
ok "10 objects uploaded and read back; the trail has 1 GenerateDataKey for the bucket (context arn:aws:s3:::lab-bucket-keys); head-object: BucketKeyEnabled true (clock.png: its own data key)"

step "3. anonymous GET: refused when private, and when public-read (SSE-KMS needs SigV4)"
code=$(curl_code "$endpoint/$bucket/clock.png")
[ "$code" = 403 ] && grep -q '<Code>AccessDenied</Code>' body.bin || {
    cat body.bin >&2
    die "anonymous GET of a private object: HTTP $code, expected 403 AccessDenied"
}
ok "private: HTTP 403 AccessDenied"
as user s3api put-object-acl --bucket "$bucket" --key clock.png --acl public-read
as user s3api get-object-acl --bucket "$bucket" --key clock.png >out.json
grep -q AllUsers out.json || die "clock.png is not public-read"
code=$(curl_code "$endpoint/$bucket/clock.png")
[ "$code" = 400 ] && grep -q '<Code>InvalidArgument</Code>' body.bin &&
    grep -q 'require AWS Signature Version 4' body.bin || {
    cat body.bin >&2
    die "anonymous GET of a public-read SSE-KMS object: HTTP $code, expected 400 InvalidArgument"
}
ok "public-read: HTTP 400 InvalidArgument: $(sed -n 's:.*<Message>\(.*\)</Message>.*:\1:p' body.bin)"
as user s3api put-object-acl --bucket "$bucket" --key clock.png --acl private

step "4. a presigned URL (SigV4, made by the key user) returns the decrypted object"
url=$(as user s3 presign "s3://$bucket/clock.png" --expires-in 300)
case $url in *X-Amz-Algorithm=AWS4-HMAC-SHA256*) ;; *) die "not a SigV4 presigned URL: $url" ;; esac
code=$(curl_code "$url")
[ "$code" = 200 ] || die "presigned GET: HTTP $code"
cmp -s body.bin clock.png || die "the presigned GET returned other bytes than clock.png"
ok "curl of the presigned URL: HTTP 200, identical to clock.png"
curl -s -o range.bin -H 'Range: bytes=8-23' "$url"
cmp -s range.bin <(tail -c +9 clock.png | head -c 16) || die "a range GET returned the wrong bytes"
ok "a range GET through it returns bytes 8-23"
expired=$(as user s3 presign "s3://$bucket/clock.png" --expires-in 1)
sleep 2
code=$(curl_code "$expired")
[ "$code" = 403 ] && grep -q '<Code>AccessDenied</Code>' body.bin || {
    cat body.bin >&2
    die "an expired presigned URL: HTTP $code, expected 403"
}
ok "an expired presigned URL: HTTP 403 $(sed -n 's:.*<Message>\(.*\)</Message>.*:\1:p' body.bin)"

step "5. the trail: GenerateDataKey for the upload, Decrypt for the signed read; validate"
"$atrest" trail lookup --max-results 1000 >trail.json
python3 - "$bucket" "$user_arn" "$key_arn" <<'EOF'
import json, sys
bucket, user, key_arn = sys.argv[1:]
arn = f"arn:aws:s3:::{bucket}/clock.png"
events = [json.loads(e["CloudTrailEvent"]) for e in json.load(open("trail.json"))["Events"]]
def matching(name):
    return [e for e in events if e["eventName"] == name and not e.get("errorCode")
            and (e.get("requestParameters") or {}).get("encryptionContext", {}).get("aws:s3:arn") == arn]
for name in ("GenerateDataKey", "Decrypt"):
    found = matching(name)
    assert found, f"FAIL: no {name} with aws:s3:arn = {arn} in the trail"
    e = found[0]
    assert e["userIdentity"]["arn"] == user, f"FAIL: {name} by {e['userIdentity']['arn']}, not {user}"
    assert key_arn in json.dumps(e.get("resources", [])) + json.dumps(e["requestParameters"]), \
        f"FAIL: {name} does not name {key_arn}"
    print(f"   ok: {name} at {e['eventTime']} by {user}, key {key_arn}, context {{aws:s3:arn: {arn}}}")
EOF
"$atrest" trail validate >validate.json
[ "$(json validate.json 'd["Valid"]')" = True ] || die "trail validate: $(cat validate.json)"
ok "trail validate: Valid, $(json validate.json 'd["LastSequence"]') records"

step "6. the root volume: snapshot, encrypted copy under $key_alias, swap it in (SIGHUP)"
python3 - <<'EOF'
import os
marker = b"ATREST-LAB-ROOT-MARKER " * 20
img = bytearray(os.urandom(16 << 20))
for off in range(0, len(img), 1 << 20):
    img[off:off + len(marker)] = marker
open("root.img", "wb").write(img)
EOF
"$atrest" volume create root.vol --size 16M --unencrypted >/dev/null
cat >exports.toml <<EOF
[[export]]
name = "root"
path = "$tmp/root.vol"
description = "boot disk"
EOF
"$atrest" nbd serve --listen 127.0.0.1:0 --exports exports.toml 2>nbd.log &
nbd_pid=$!
pids+=("$nbd_pid")
nbd_url=nbd://$(wait_log nbd.log '^listening on ' "$nbd_pid")/root
nbdcopy root.img "$nbd_url"
grep -q ATREST-LAB-ROOT-MARKER root.vol || die "the unencrypted volume does not hold the marker in the clear"
ok "wrote the root image through $nbd_url; root.vol holds it in the clear"
"$atrest" volume snapshot root.vol root-snap.vol >/dev/null
"$atrest" volume copy root-snap.vol root-enc.vol --key-id "$key_alias" >/dev/null
"$atrest" volume info root-enc.vol >info.json
[ "$(json info.json 'd["Encrypted"]')" = True ] || die "the copy is not encrypted"
if grep -q ATREST-LAB-ROOT-MARKER root-enc.vol; then die "the encrypted copy holds the marker in the clear"; fi
ok "root-enc.vol: encrypted ($(json info.json 'd["Cipher"]')) under $(json info.json 'd["KeyId"]'), no marker in the clear"
sed -i "s|^path = .*|path = \"$tmp/root-enc.vol\"|" exports.toml
kill -HUP "$nbd_pid"
wait_log nbd.log 'exports reloaded:.*swapped \["root"\].*' "$nbd_pid" >/dev/null
nbdcopy "$nbd_url" back.img
cmp -s back.img root.img || die "the swapped-in encrypted export does not read back the root image"
ok "after SIGHUP, export root is root-enc.vol and reads back the same image"

step "7. the key administrator disables the key: everything fails closed; enable restores it"
# An attached client that keeps reading (python3-libnbd), printing each change.
cat >reader.py <<'EOF'
import sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
state = "ok"
print("ATTACHED", flush=True)
deadline = time.time() + 120
while time.time() < deadline:
    try:
        data = h.pread(4096, 1 << 20)
        now = "ok" if b"ATREST-LAB-ROOT-MARKER" in data else "wrong-data"
    except nbd.Error as e:
        now = "failed"
    if now != state:
        print({"failed": "READ-FAILED", "ok": "READ-RECOVERED"}.get(now, "READ-WRONG-DATA"), flush=True)
        state = now
        if now == "ok":
            break
    time.sleep(0.05)
EOF
/usr/bin/python3 reader.py "$nbd_url" >reader.log 2>&1 &
reader_pid=$!
pids+=("$reader_pid")
wait_grep reader.log ATTACHED
as user s3api get-object --bucket "$bucket" --key clock.png got.png >/dev/null
cmp -s got.png clock.png || die "GET before disabling returned other bytes"
as admin kms disable-key --key-id "$key_arn"
ok "admin: disable-key"
wait_grep reader.log READ-FAILED
ok "the attached client's reads fail"
if nbdinfo --size "$nbd_url" >/dev/null 2>nbdinfo.err; then die "a new attach succeeded with the key disabled"; fi
if qemu-img info "$nbd_url" >/dev/null 2>attach.err; then die "qemu-img attached with the key disabled"; fi
grep -q "$key_arn" attach.err && grep -q "Disabled" attach.err || {
    cat attach.err >&2
    die "the refused attach does not name the key and its state"
}
ok "a new attach is refused: $(grep -o 'server reported: .*' attach.err | cut -c1-120)..."
refused KMS.DisabledException user s3api get-object --bucket "$bucket" --key clock.png got.png
refused KMS.DisabledException user s3 cp note.txt "s3://$bucket/note2.txt"
code=$(curl_code "$url")
[ "$code" != 200 ] && grep -q 'KMS.DisabledException' body.bin || die "the presigned URL still works: HTTP $code"
ok "the presigned URL: HTTP $code KMS.DisabledException"
as admin kms enable-key --key-id "$key_arn"
ok "admin: enable-key"
wait_grep reader.log READ-RECOVERED
ok "the attached client reads again on the same connection"
nbdinfo --size "$nbd_url" >/dev/null || die "no attach after enable-key"
code=$(curl_code "$url")
[ "$code" = 200 ] && cmp -s body.bin clock.png || die "the presigned URL after enable-key: HTTP $code"
ok "a new attach works; the presigned URL returns clock.png again"

step "7b. schedule deletion: pending -> refused; once the window has passed the data is gone for good"
as admin kms schedule-key-deletion --key-id "$key_arn" --pending-window-in-days 7 >out.json
[ "$(json out.json 'd["KeyState"]')" = PendingDeletion ] || die "the key is not PendingDeletion"
refused KMS.KMSInvalidStateException user s3api get-object --bucket "$bucket" --key clock.png got.png
kill "$gateway_pid" "$nbd_pid"
wait "$gateway_pid" "$nbd_pid" 2>/dev/null || true
# Eight days later: the 7-day window has passed and the key material is destroyed.
export ATREST_CLOCK_OFFSET=8d
"$atrest" volume info root-enc.vol >info.json
[ "$(json info.json 'd.get("KeyState")')" = Deleted ] || die "after the window: $(cat info.json)"
ok "eight days on, volume info: KeyState Deleted"
"$atrest" gateway serve --listen 127.0.0.1:0 2>gateway2.log &
gateway_pid=$!
pids+=("$gateway_pid")
endpoint=http://$(wait_log gateway2.log '^listening on ' "$gateway_pid")
if as user s3api get-object --bucket "$bucket" --key clock.png got.png >/dev/null 2>err.txt; then
    die "clock.png is still readable after the key was deleted"
fi
ok "clock.png can no longer be read: $(grep -o 'An error occurred ([A-Za-z.]*)' err.txt)"
: >nbd2.log
"$atrest" nbd serve --listen 127.0.0.1:0 --exports exports.toml 2>nbd2.log &
nbd_pid=$!
pids+=("$nbd_pid")
# The server either refuses to start with the volume's key gone or starts and
# refuses every attach; either way nothing can read the volume.
tries=0
until grep -q '^listening on ' nbd2.log || ! kill -0 "$nbd_pid" 2>/dev/null; do
    tries=$((tries + 1))
    ((tries <= 200)) || die "atrest nbd serve neither listened nor exited within 20 s"
    sleep 0.1
done
if grep -q '^listening on ' nbd2.log; then
    if nbdinfo --size "nbd://$(sed -n 's/^listening on //p' nbd2.log)/root" >/dev/null 2>&1; then
        die "the encrypted root volume still attaches after the key was deleted"
    fi
    ok "the encrypted root volume can no longer be attached"
else
    ok "atrest nbd serve refuses to serve the volume: $(grep -m1 -o '[A-Za-z]*Exception.*' nbd2.log | cut -c1-100)"
fi

step "lab: all steps passed"
