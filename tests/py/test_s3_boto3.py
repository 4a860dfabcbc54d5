"""LAB steps 2-5 and 7 for objects against `atrest s3 serve`, driven by boto3, the aws
CLI and curl, unmodified. Run by tests/e2e_s3.rs, which starts the server and passes:

  ATREST_S3_ENDPOINT    http://127.0.0.1:PORT
  ATREST_S3_REGION      the server's region
  ATREST_CREDENTIALS    JSON {"user": {"AccessKeyId", "SecretAccessKey", "Arn"}}
  ATREST_AWS_CLI        path of the aws CLI
  ATREST_CURL           path of curl
  ATREST_BIN            path of atrest (key state changes, as the key's administrator)
  ATREST_HOME           the server's home
  ATREST_WORKDIR        scratch directory

Exits non-zero (with the failing check) on the first failure.
"""

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ATREST_S3_ENDPOINT"]
REGION = os.environ["ATREST_S3_REGION"]
CREDS = json.loads(os.environ["ATREST_CREDENTIALS"])["user"]
AWS_CLI = os.environ["ATREST_AWS_CLI"]
CURL = os.environ["ATREST_CURL"]
ATREST = os.environ["ATREST_BIN"]
WORK = os.environ["ATREST_WORKDIR"]
BUCKET = "lab-bucket"

# The aws CLI and boto3 as a user would configure them for a path-style endpoint.
AWS_CONFIG = os.path.join(WORK, "aws-config")
with open(AWS_CONFIG, "w") as f:
    f.write(
        "[default]\n"
        f"region = {REGION}\n"
        "s3 =\n"
        "    addressing_style = path\n"
        "    signature_version = s3v4\n"
    )


def step(text):
    print(f"== {text}", flush=True)


def s3_client():
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=CREDS["AccessKeyId"],
        aws_secret_access_key=CREDS["SecretAccessKey"],
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


def aws(*args, check=True):
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=CREDS["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=CREDS["SecretAccessKey"],
        AWS_CONFIG_FILE=AWS_CONFIG,
        AWS_SHARED_CREDENTIALS_FILE=os.path.join(WORK, "no-credentials"),
    )
    env.pop("AWS_PROFILE", None)
    out = subprocess.run(
        [AWS_CLI, "--endpoint-url", ENDPOINT, *args],
        env=env, capture_output=True, text=True,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} failed: {out.stderr}")
    return out


def curl(url, *extra):
    """GET `url` with curl; returns (status, body bytes)."""
    body_file = os.path.join(WORK, "curl-body")
    out = subprocess.run(
        [CURL, "-sS", "-o", body_file, "-w", "%{http_code}", *extra, url],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, f"curl failed: {out.stderr}"
    with open(body_file, "rb") as f:
        return int(out.stdout), f.read()


def atrest(*args):
    out = subprocess.run([ATREST, *args], capture_output=True, text=True)
    assert out.returncode == 0, f"atrest {' '.join(args)}: {out.stderr}"
    return out.stdout


def expect_error(code, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as err:
        got = err.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {err}"
        return err
    raise AssertionError(f"expected {code}, the call succeeded")


def error_code(body):
    text = body.decode()
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0], text


def clock_png(size=256):
    """A real PNG: a clock face (circle, hour marks, two hands) in RGB."""
    import math

    cx = cy = size / 2
    radius = size * 0.45
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter type: none
        for x in range(size):
            dx, dy = x - cx, y - cy
            d = math.hypot(dx, dy)
            colour = (250, 250, 245)
            if abs(d - radius) < 2.5:
                colour = (20, 20, 20)
            angle = math.atan2(dy, dx)
            for h in range(12):
                a = h * math.pi / 6
                if radius * 0.85 < d < radius and abs(math.remainder(angle - a, 2 * math.pi)) < 0.03:
                    colour = (40, 40, 40)
            hour = -math.pi / 2 + math.pi / 3  # 2 o'clock
            minute = -math.pi / 2 + 2 * math.pi * 50 / 60
            for a, length, width, c in ((hour, 0.5, 0.06, (10, 10, 60)),
                                        (minute, 0.8, 0.03, (160, 20, 20))):
                if d < radius * length and abs(math.remainder(angle - a, 2 * math.pi)) < width:
                    colour = c
            row.extend(colour)
        rows.append(bytes(row))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


def main():
    s3 = s3_client()
    key_arn = atrest("kms", "describe-key", "--key-id", "alias/MyKMSKey")
    key_arn = json.loads(key_arn)["KeyMetadata"]["Arn"]

    step("LAB 2: a bucket with default SSE-KMS (boto3)")
    s3.create_bucket(Bucket=BUCKET)
    expect_error("BucketAlreadyOwnedByYou", s3.create_bucket, Bucket=BUCKET)
    s3.put_bucket_encryption(
        Bucket=BUCKET,
        ServerSideEncryptionConfiguration={"Rules": [{
            "ApplyServerSideEncryptionByDefault": {
                "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/MyKMSKey"},
        }]},
    )
    rule = s3.get_bucket_encryption(Bucket=BUCKET)[
        "ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/MyKMSKey"}, rule
    assert BUCKET in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert BUCKET in aws("s3", "ls").stdout

    step("LAB 2: upload clock.png with --sse aws:kms --sse-kms-key-id (aws s3 cp)")
    png = clock_png()
    assert png.startswith(b"\x89PNG")
    png_path = os.path.join(WORK, "clock.png")
    with open(png_path, "wb") as f:
        f.write(png)
    with open(os.path.join(WORK, "clock.png.sha256"), "w") as f:
        f.write(hashlib.sha256(png).hexdigest())
    aws("s3", "cp", png_path, f"s3://{BUCKET}/clock.png",
        "--sse", "aws:kms", "--sse-kms-key-id", "alias/MyKMSKey")
    head = json.loads(aws("s3api", "head-object", "--bucket", BUCKET, "--key", "clock.png").stdout)
    assert head["ServerSideEncryption"] == "aws:kms", head
    assert head["SSEKMSKeyId"] == key_arn, head
    assert head["ContentLength"] == len(png), head
    assert head["ETag"] == '"%s"' % hashlib.md5(png).hexdigest(), head

    step("aws s3api put-object --server-side-encryption aws:kms --ssekms-key-id")
    put = json.loads(aws("s3api", "put-object", "--bucket", BUCKET, "--key", "copies/clock.png",
                         "--body", png_path, "--server-side-encryption", "aws:kms",
                         "--ssekms-key-id", "alias/MyKMSKey").stdout)
    assert put["ServerSideEncryption"] == "aws:kms" and put["SSEKMSKeyId"] == key_arn, put
    context = json.loads(base64.b64decode(put["SSEKMSEncryptionContext"]))
    assert context == {"aws:s3:arn": f"arn:aws:s3:::{BUCKET}/copies/clock.png"}, context

    step("boto3 put_object under the bucket default, with an encryption context")
    body = os.urandom(300_000)
    extra_context = base64.b64encode(json.dumps({"project": "lab"}).encode()).decode()
    put = s3.put_object(Bucket=BUCKET, Key="notes/random.bin", Body=body,
                        ServerSideEncryption="aws:kms", SSEKMSEncryptionContext=extra_context,
                        Metadata={"owner": "lab"})
    assert put["SSEKMSKeyId"] == key_arn, put
    got = s3.get_object(Bucket=BUCKET, Key="notes/random.bin")
    assert got["Body"].read() == body
    assert got["Metadata"] == {"owner": "lab"}, got["Metadata"]
    assert got["ServerSideEncryption"] == "aws:kms" and got["SSEKMSKeyId"] == key_arn
    listed = s3.list_objects_v2(Bucket=BUCKET, Delimiter="/")
    assert [o["Key"] for o in listed["Contents"]] == ["clock.png"], listed
    assert sorted(p["Prefix"] for p in listed["CommonPrefixes"]) == ["copies/", "notes/"], listed
    paged = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, MaxKeys=1)
    keys = [o["Key"] for page in paged for o in page.get("Contents", [])]
    assert keys == ["clock.png", "copies/clock.png", "notes/random.bin"], keys
    assert "copies/clock.png" in aws("s3", "ls", "--recursive", f"s3://{BUCKET}/").stdout

    step("a 20 MiB file: aws s3 cp uses a multipart upload and ranged downloads")
    big = os.urandom(20 << 20)
    big_path = os.path.join(WORK, "big.bin")
    with open(big_path, "wb") as f:
        f.write(big)
    aws("s3", "cp", big_path, f"s3://{BUCKET}/big/big.bin",
        "--sse", "aws:kms", "--sse-kms-key-id", "alias/MyKMSKey")
    head = s3.head_object(Bucket=BUCKET, Key="big/big.bin")
    assert head["ContentLength"] == len(big) and head["SSEKMSKeyId"] == key_arn, head
    aws("s3", "cp", f"s3://{BUCKET}/big/big.bin", big_path + ".back")
    with open(big_path + ".back", "rb") as f:
        assert f.read() == big
    s3.delete_object(Bucket=BUCKET, Key="big/big.bin")

    step("download identical (aws s3 cp, boto3), range GET")
    out_path = os.path.join(WORK, "clock.out.png")
    aws("s3", "cp", f"s3://{BUCKET}/clock.png", out_path)
    with open(out_path, "rb") as f:
        assert f.read() == png
    got = s3.get_object(Bucket=BUCKET, Key="clock.png")
    assert got["Body"].read() == png
    ranged = s3.get_object(Bucket=BUCKET, Key="clock.png", Range="bytes=8-23")
    assert ranged["Body"].read() == png[8:24]
    assert ranged["ContentRange"] == f"bytes 8-23/{len(png)}", ranged["ContentRange"]
    tail = s3.get_object(Bucket=BUCKET, Key="clock.png", Range="bytes=-12")["Body"].read()
    assert tail == png[-12:]
    expect_error("InvalidRange", s3.get_object, Bucket=BUCKET, Key="clock.png",
                 Range=f"bytes={len(png)}-")

    step("LAB 3: anonymous GET (curl): private -> 403 AccessDenied")
    url = f"{ENDPOINT}/{BUCKET}/clock.png"
    status, body = curl(url)
    code, text = error_code(body)
    assert (status, code) == (403, "AccessDenied"), text

    step("LAB 3: public-read SSE-KMS object -> 400 InvalidArgument (needs SigV4)")
    s3.put_object_acl(Bucket=BUCKET, Key="clock.png", ACL="public-read")
    grants = s3.get_object_acl(Bucket=BUCKET, Key="clock.png")["Grants"]
    assert any(g["Grantee"].get("URI") == "http://acs.amazonaws.com/groups/global/AllUsers"
               and g["Permission"] == "READ" for g in grants), grants
    status, body = curl(url)
    code, text = error_code(body)
    assert (status, code) == (400, "InvalidArgument"), text
    assert ("Requests specifying Server Side Encryption with AWS KMS managed keys require "
            "AWS Signature Version 4") in text, text
    s3.put_object_acl(Bucket=BUCKET, Key="clock.png", ACL="private")

    step("LAB 4: presigned GET (boto3 and aws s3 presign) fetched with curl")
    presigned = s3.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "clock.png"}, ExpiresIn=600)
    assert "X-Amz-Signature=" in presigned, presigned
    status, body = curl(presigned)
    assert status == 200 and body == png, (status, body[:200])
    cli_url = aws("s3", "presign", f"s3://{BUCKET}/clock.png", "--expires-in", "600").stdout.strip()
    status, body = curl(cli_url)
    assert status == 200 and body == png, (status, body[:200])
    status, body = curl(presigned, "-H", "Range: bytes=0-7")
    assert status == 206 and body == png[:8], (status, body[:200])

    step("LAB 4: an expired URL is refused")
    short = s3.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "clock.png"}, ExpiresIn=1)
    time.sleep(2.5)
    status, body = curl(short)
    code, text = error_code(body)
    assert (status, code) == (403, "AccessDenied"), text
    assert "Request has expired" in text, text
    tampered = presigned.replace("clock.png", "copies/clock.png", 1)
    status, body = curl(tampered)
    assert (status, error_code(body)[0]) == (403, "SignatureDoesNotMatch"), body

    step("LAB 7: disable the CMK -> GET and PUT fail as S3 reports KMS failures")
    atrest("kms", "disable-key", "--key-id", "alias/MyKMSKey")
    err = expect_error("KMS.DisabledException", s3.get_object, Bucket=BUCKET, Key="clock.png")
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    expect_error("KMS.DisabledException", s3.put_object, Bucket=BUCKET, Key="new", Body=b"x")
    failed = aws("s3", "cp", f"s3://{BUCKET}/clock.png", os.path.join(WORK, "nope"), check=False)
    assert failed.returncode != 0 and "KMS.DisabledException" in failed.stderr, failed.stderr
    status, body = curl(presigned)
    assert (status, error_code(body)[0]) == (400, "KMS.DisabledException"), body
    # Metadata needs no key.
    assert s3.head_object(Bucket=BUCKET, Key="clock.png")["ContentLength"] == len(png)

    step("LAB 7: enable it again -> access is back")
    atrest("kms", "enable-key", "--key-id", "alias/MyKMSKey")
    assert s3.get_object(Bucket=BUCKET, Key="clock.png")["Body"].read() == png
    status, body = curl(presigned)
    assert status == 200 and body == png

    step("pending deletion -> KMS.KMSInvalidStateException; cancel and enable")
    atrest("kms", "schedule-key-deletion", "--key-id", "alias/MyKMSKey",
           "--pending-window-in-days", "7")
    expect_error("KMS.KMSInvalidStateException", s3.get_object, Bucket=BUCKET, Key="clock.png")
    atrest("kms", "cancel-key-deletion", "--key-id", "alias/MyKMSKey")
    atrest("kms", "enable-key", "--key-id", "alias/MyKMSKey")
    assert s3.get_object(Bucket=BUCKET, Key="clock.png")["Body"].read() == png

    step("delete: object, then bucket emptiness rules")
    expect_error("BucketNotEmpty", s3.delete_bucket, Bucket=BUCKET)
    s3.delete_object(Bucket=BUCKET, Key="notes/random.bin")
    expect_error("NoSuchKey", s3.get_object, Bucket=BUCKET, Key="notes/random.bin")
    step("aws s3 cp --recursive, then aws s3 rb --force (DeleteObjects)")
    s3.create_bucket(Bucket="scratch-bucket")
    s3.put_bucket_encryption(
        Bucket="scratch-bucket",
        ServerSideEncryptionConfiguration={"Rules": [{
            "ApplyServerSideEncryptionByDefault": {
                "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/MyKMSKey"},
        }]},
    )
    tree = os.path.join(WORK, "tree")
    os.makedirs(os.path.join(tree, "sub"))
    for name in ("a.txt", "b.txt", "sub/c & d.txt"):
        with open(os.path.join(tree, name), "w") as f:
            f.write(name * 100)
    aws("s3", "cp", "--recursive", "--quiet", tree, "s3://scratch-bucket/tree")
    listed = aws("s3", "ls", "--recursive", "s3://scratch-bucket/").stdout
    assert "tree/sub/c & d.txt" in listed, listed
    aws("s3", "rb", "--force", "s3://scratch-bucket")
    expect_error("NoSuchBucket", s3.list_objects_v2, Bucket="scratch-bucket")

    print("OK: LAB steps 2-5 and 7 for objects")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        sys.exit(1)
