"""Browser uploads (S3 POST policy, issue 21) against `atrest s3 serve`: boto3's
generate_presigned_post signs the form, Python's requests posts it as a real
multipart/form-data body (and curl -F once). Run by tests/e2e_s3_post.rs, which
starts the server and passes:

  ATREST_S3_ENDPOINT    http://127.0.0.1:PORT
  ATREST_S3_REGION      the server's region
  ATREST_CREDENTIALS    JSON {"user": {...}, "other": {...}} (AccessKeyId, SecretAccessKey)
  ATREST_WORKDIR        scratch directory

Exits non-zero (with the failing check) on the first failure.
"""

import base64
import json
import os
import subprocess
import sys

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ATREST_S3_ENDPOINT"]
REGION = os.environ["ATREST_S3_REGION"]
CREDS = json.loads(os.environ["ATREST_CREDENTIALS"])
WORK = os.environ["ATREST_WORKDIR"]
MARKER = b"POST-PLAINTEXT-MARKER-"
BUCKET = "forms"


def step(text):
    print(f"== {text}", flush=True)


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)


def client(who="user"):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=CREDS[who]["AccessKeyId"],
        aws_secret_access_key=CREDS[who]["SecretAccessKey"],
        # generate_presigned_post signs with SigV2 unless told s3v4.
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


S3 = client()


def absent(key):
    try:
        S3.head_object(Bucket=BUCKET, Key=key)
    except ClientError as err:
        return err.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    return False


def form(key, who="user", fields=None, conditions=None, expires=600):
    return client(who).generate_presigned_post(
        BUCKET,
        key,
        Fields=dict(fields or {}),
        Conditions=list(conditions or []),
        ExpiresIn=expires,
    )


def post(signed, data, filename="hello.txt", fields=None):
    body = dict(signed["fields"])
    body.update(fields or {})
    return requests.post(
        signed["url"],
        data=body,
        files={"file": (filename, data, "application/octet-stream")},
        allow_redirects=False,
        timeout=60,
    )


def refused(response, status, code, key, what):
    check(
        response.status_code == status and f"<Code>{code}</Code>" in response.text,
        f"{what}: wanted {status} {code}, got {response.status_code} {response.text}",
    )
    check(absent(key), f"{what}: {key} was stored")


S3.create_bucket(Bucket=BUCKET)
RANGE = ["content-length-range", 1, 4096]

step("boto3 form, requests upload, ${filename} in the key: 204, decrypts to the bytes")
data = MARKER + b"browser upload " + os.urandom(64)
signed = form(
    "uploads/${filename}",
    fields={"x-amz-meta-origin": "browser", "Content-Type": "text/plain"},
    conditions=[{"x-amz-meta-origin": "browser"}, ["starts-with", "$Content-Type", "text/"], RANGE],
)
check(signed["url"].rstrip("/").endswith("/" + BUCKET), signed["url"])
r = post(signed, data, filename="hello.txt")
check(r.status_code == 204, f"POST answered {r.status_code} {r.text}")
etag = r.headers.get("ETag")
check(r.headers.get("x-amz-server-side-encryption") == "AES256", str(r.headers))
got = S3.get_object(Bucket=BUCKET, Key="uploads/hello.txt")
check(got["Body"].read() == data, "the object is not the bytes posted")
check(got["ETag"] == etag, f"{got['ETag']} != {etag}")
check(got["Metadata"] == {"origin": "browser"}, str(got["Metadata"]))
check(got["ContentType"] == "text/plain", got["ContentType"])
check(got["ServerSideEncryption"] == "AES256", "not SSE-S3 by default")

step("a 5 MiB file holding boundary-like bytes streams through whole")
big = b"".join(os.urandom(65521) + b"\r\n--" + os.urandom(7) + b"\r\n" for _ in range(80))
signed = form("big.bin", conditions=[["content-length-range", len(big), len(big)]])
r = post(signed, big)
check(r.status_code == 204, f"{r.status_code} {r.text}")
check(S3.get_object(Bucket=BUCKET, Key="big.bin")["Body"].read() == big, "the big file differs")

step("success_action_status 201: the XML PostResponse")
signed = form("status/201.bin", fields={"success_action_status": "201"},
              conditions=[{"success_action_status": "201"}, RANGE])
r = post(signed, MARKER + b"201")
check(r.status_code == 201, f"{r.status_code} {r.text}")
check("<PostResponse>" in r.text and "<Key>status/201.bin</Key>" in r.text
      and "<Bucket>forms</Bucket>" in r.text and "<ETag>" in r.text, r.text)
signed = form("status/200.bin", fields={"success_action_status": "200"},
              conditions=[{"success_action_status": "200"}])
r = post(signed, MARKER + b"200")
check(r.status_code == 200 and r.text == "", f"{r.status_code} {r.text}")

step("success_action_redirect: 303 to the URL with bucket, key and etag")
redirect = "https://example.invalid/done?from=form"
signed = form("redirected.bin", fields={"success_action_redirect": redirect},
              conditions=[{"success_action_redirect": redirect}])
r = post(signed, MARKER + b"redirect")
check(r.status_code == 303, f"{r.status_code} {r.text}")
location = r.headers["Location"]
check(location.startswith(redirect + "&bucket=forms&key=redirected.bin&etag=%22"), location)

step("SSE-KMS and tagging as form fields")
tagging = "<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>"
signed = form("kms.bin", fields={"x-amz-server-side-encryption": "aws:kms", "tagging": tagging},
              conditions=[{"x-amz-server-side-encryption": "aws:kms"}, {"tagging": tagging}])
r = post(signed, MARKER + b"kms")
check(r.status_code == 204, f"{r.status_code} {r.text}")
head = S3.head_object(Bucket=BUCKET, Key="kms.bin")
check(head["ServerSideEncryption"] == "aws:kms", str(head))
tags = S3.get_object_tagging(Bucket=BUCKET, Key="kms.bin")["TagSet"]
check(tags == [{"Key": "k", "Value": "v"}], str(tags))

step("curl -F posts the same kind of form")
signed = form("curl.bin", conditions=[RANGE])
upload = os.path.join(WORK, "curl-upload.bin")
with open(upload, "wb") as f:
    f.write(MARKER + b"curl")
args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"]
for name, value in signed["fields"].items():
    args += ["--form-string", f"{name}={value}"]
args += ["-F", f"file=@{upload}", signed["url"]]
out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
check(out == "204", f"curl got {out}")
check(S3.get_object(Bucket=BUCKET, Key="curl.bin")["Body"].read() == MARKER + b"curl", "curl body")

step("refusals store nothing")
v2 = boto3.client("s3", endpoint_url=ENDPOINT, region_name=REGION,
                  aws_access_key_id=CREDS["user"]["AccessKeyId"],
                  aws_secret_access_key=CREDS["user"]["SecretAccessKey"],
                  config=Config(signature_version="s3", s3={"addressing_style": "path"}))
signed = v2.generate_presigned_post(BUCKET, "refused/v2.bin")
check("AWSAccessKeyId" in signed["fields"], str(signed))
refused(post(signed, MARKER), 501, "NotImplemented", "refused/v2.bin", "a SigV2 form")

signed = form("refused/tampered.bin", conditions=[RANGE])
doc = json.loads(base64.b64decode(signed["fields"]["policy"]))
doc["conditions"] = [c for c in doc["conditions"] if c != RANGE] + [["content-length-range", 1, 1 << 30]]
tampered = base64.b64encode(json.dumps(doc).encode()).decode()
refused(post(signed, MARKER, fields={"policy": tampered}), 403, "SignatureDoesNotMatch",
        "refused/tampered.bin", "tampered policy")

signed = form("refused/expired.bin", expires=-60)
r = post(signed, MARKER)
refused(r, 403, "AccessDenied", "refused/expired.bin", "expired policy")
check("Policy expired" in r.text, r.text)

signed = form("refused/large.bin", conditions=[RANGE])
r = post(signed, MARKER + os.urandom(8192))
refused(r, 400, "EntityTooLarge", "refused/large.bin", "too large")

signed = form("allowed/${filename}", conditions=[RANGE])
r = post(signed, MARKER, fields={"key": "elsewhere/x.bin"})
refused(r, 403, "AccessDenied", "elsewhere/x.bin", "key outside starts-with")
check("starts-with" in r.text, r.text)
r = post(signed, MARKER, filename="../../../other")
check(r.status_code == 204, f"a file name is only the key's last part: {r.status_code} {r.text}")
check(not absent("allowed/other"), "allowed/other was not stored")

signed = form("refused/nosig.bin")
del signed["fields"]["x-amz-signature"]
refused(post(signed, MARKER), 400, "InvalidArgument", "refused/nosig.bin", "missing signature")

signed = form("refused/anonymous.bin")
r = requests.post(signed["url"], data={"key": "refused/anonymous.bin"},
                  files={"file": ("a", MARKER)}, timeout=60)
refused(r, 403, "AccessDenied", "refused/anonymous.bin", "anonymous form")

signed = form("refused/extra.bin")
r = post(signed, MARKER, fields={"x-amz-meta-extra": "1"})
refused(r, 403, "AccessDenied", "refused/extra.bin", "a field outside the policy")
check("Extra input fields: x-amz-meta-extra" in r.text, r.text)

ssec = {"x-amz-server-side-encryption-customer-algorithm": "AES256"}
signed = form("refused/ssec.bin", fields=ssec, conditions=[ssec])
refused(post(signed, MARKER), 501, "NotImplemented", "refused/ssec.bin", "SSE-C in a form")

signed = form("refused/other.bin", who="other")
refused(post(signed, MARKER), 403, "AccessDenied", "refused/other.bin", "another account")

signed = form("refused/cut.bin")
body = dict(signed["fields"])
prepared = requests.Request("POST", signed["url"], data=body,
                            files={"file": ("a", MARKER * 4)}).prepare()
cut = prepared.body[: prepared.body.rindex(b"\r\n--")]
r = requests.post(signed["url"], data=cut, headers={"Content-Type": prepared.headers["Content-Type"]},
                  timeout=60)
refused(r, 400, "IncompleteBody", "refused/cut.bin", "a form without its closing boundary")

r = requests.post(signed["url"], data={"key": "refused/urlencoded.bin"}, timeout=60)
check(r.status_code == 400 and "multipart/form-data" in r.text, f"{r.status_code} {r.text}")

step("the server still serves")
check(S3.get_object(Bucket=BUCKET, Key="uploads/hello.txt")["Body"].read() == data, "after refusals")
print("OK: S3 POST policy uploads", flush=True)
