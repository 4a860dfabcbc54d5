"""S3 multipart uploads against `atrest s3 serve`: the aws CLI's own multipart `cp`
(default settings: 8 MB threshold and parts) up and down, and boto3's explicit
multipart calls with S3's errors. Run by tests/e2e_s3_multipart.rs, which starts the
server and passes:

  ATREST_S3_ENDPOINT    http://127.0.0.1:PORT
  ATREST_S3_REGION      the server's region
  ATREST_CREDENTIALS    JSON {"user": {"AccessKeyId", "SecretAccessKey", "Arn"}}
  ATREST_AWS_CLI        path of the aws CLI
  ATREST_WORKDIR        scratch directory (big.bin, the uploaded file, is left there)

Exits non-zero (with the failing check) on the first failure.
"""

import hashlib
import json
import os
import subprocess

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ATREST_S3_ENDPOINT"]
REGION = os.environ["ATREST_S3_REGION"]
CREDS = json.loads(os.environ["ATREST_CREDENTIALS"])["user"]
AWS_CLI = os.environ["ATREST_AWS_CLI"]
WORK = os.environ["ATREST_WORKDIR"]
BUCKET = "mpu-bucket"
MIB = 1 << 20

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


def aws(*args):
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
    assert out.returncode == 0, f"aws {' '.join(args)} failed: {out.stderr}"
    return out.stdout


def expect_error(code, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


s3 = boto3.client(
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

step("bucket with SSE-KMS default encryption (alias/MyKMSKey)")
s3.create_bucket(Bucket=BUCKET)
s3.put_bucket_encryption(
    Bucket=BUCKET,
    ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/MyKMSKey"}}]},
)

step("aws s3 cp of a 40 MiB file, default settings: multipart up and down")
big = os.path.join(WORK, "big.bin")
data = os.urandom(40 * MIB + 12345)
with open(big, "wb") as f:
    f.write(data)
aws("s3", "cp", big, f"s3://{BUCKET}/big.bin")
head = s3.head_object(Bucket=BUCKET, Key="big.bin")
assert head["ContentLength"] == len(data), head
etag = head["ETag"].strip('"')
assert "-" in etag, f"not a multipart ETag: {etag}"
parts = int(etag.split("-")[1])
size = 8 * MIB  # the CLI's default multipart_chunksize
assert parts == -(-len(data) // size), etag
digests = b"".join(
    hashlib.md5(data[i:i + size]).digest() for i in range(0, len(data), size))
assert etag == f"{hashlib.md5(digests).hexdigest()}-{parts}", (etag, parts)
assert head["ServerSideEncryption"] == "aws:kms", head
back = os.path.join(WORK, "big.back")
aws("s3", "cp", f"s3://{BUCKET}/big.bin", back)
with open(back, "rb") as f:
    assert f.read() == data, "downloaded bytes differ"
os.remove(back)
print(f"aws s3 cp: {len(data)} bytes, ETag {etag}")

step("boto3: explicit parts, S3's errors")
key = "explicit.bin"
up = s3.create_multipart_upload(
    Bucket=BUCKET, Key=key, ContentType="application/x-test",
    Metadata={"origin": "boto3"})
uid = up["UploadId"]
assert up["ServerSideEncryption"] == "aws:kms", up
p1 = os.urandom(5 * MIB)
p2 = os.urandom(5 * MIB + 1)
p3 = os.urandom(1000)
e = {}
for n, body in [(3, p3), (1, p1), (2, p2)]:
    e[n] = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=n, Body=body)["ETag"]
    assert e[n] == f'"{hashlib.md5(body).hexdigest()}"', (n, e[n])
listed = s3.list_parts(Bucket=BUCKET, Key=key, UploadId=uid)
assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3], listed
assert [p["Size"] for p in listed["Parts"]] == [len(p1), len(p2), len(p3)], listed
uploads = s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
assert [(u["Key"], u["UploadId"]) for u in uploads] == [(key, uid)], uploads


def complete(parts):
    return s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": t} for n, t in parts]})


expect_error("InvalidPartOrder", complete, [(2, e[2]), (1, e[1])])
expect_error("InvalidPart", complete, [(1, e[1]), (4, e[3])])
expect_error("InvalidPart", complete, [(1, e[1]), (2, e[3])])
p4 = os.urandom(5 * MIB)
e[4] = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=4, Body=p4)["ETag"]
expect_error("EntityTooSmall", complete, [(3, e[3]), (4, e[4])])
done = complete([(1, e[1]), (2, e[2]), (3, e[3])])
digests = b"".join(hashlib.md5(p).digest() for p in (p1, p2, p3))
assert done["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-3"', done
got = s3.get_object(Bucket=BUCKET, Key=key)
assert got["Body"].read() == p1 + p2 + p3, "assembled bytes differ"
assert got["ContentType"] == "application/x-test", got
assert got["Metadata"] == {"origin": "boto3"}, got
assert got["ETag"] == done["ETag"], got
expect_error("NoSuchUpload", s3.list_parts, Bucket=BUCKET, Key=key, UploadId=uid)

step("boto3: abort, then NoSuchUpload")
uid = s3.create_multipart_upload(Bucket=BUCKET, Key="aborted.bin")["UploadId"]
s3.upload_part(Bucket=BUCKET, Key="aborted.bin", UploadId=uid, PartNumber=1, Body=p3)
s3.abort_multipart_upload(Bucket=BUCKET, Key="aborted.bin", UploadId=uid)
expect_error("NoSuchUpload", s3.upload_part, Bucket=BUCKET, Key="aborted.bin",
             UploadId=uid, PartNumber=2, Body=p3)
expect_error("NoSuchUpload", s3.abort_multipart_upload, Bucket=BUCKET,
             Key="aborted.bin", UploadId=uid)
expect_error("NoSuchUpload", s3.complete_multipart_upload, Bucket=BUCKET,
             Key="aborted.bin", UploadId=uid,
             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e[3]}]})
assert "Uploads" not in s3.list_multipart_uploads(Bucket=BUCKET), "uploads left"
try:
    s3.head_object(Bucket=BUCKET, Key="aborted.bin")
    raise AssertionError("an aborted upload made an object")
except ClientError as err:
    assert err.response["Error"]["Code"] in ("404", "NoSuchKey"), err

print("OK: multipart uploads")
