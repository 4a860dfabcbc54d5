"""Refused requests and connection abuse against `atrest gateway serve`, with boto3
(unmodified) for the signed clients and raw sockets for what no SDK sends. Run by
tests/e2e_gateway_refusals.rs, which starts the server, reads the trail and the log,
and passes:

  ATREST_ENDPOINT     http://127.0.0.1:PORT (KMS and S3 on one listener)
  ATREST_REGION       the server's region
  ATREST_KEY_ID       an access key of arn:aws:iam::000000000000:root
  ATREST_SECRET       its secret
  ATREST_OTHER_KEY_ID, ATREST_OTHER_SECRET   (refusals) a key of another account

Usage: test_gateway_refusals.py refusals|burst|attack [ARGS]. Each mode prints one
JSON object on stdout and exits non-zero (with the failing check) on a failure.
"""

import datetime
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from unittest import mock

import boto3
import botocore.auth
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ATREST_ENDPOINT"]
REGION = os.environ["ATREST_REGION"]
KEY_ID = os.environ["ATREST_KEY_ID"]
SECRET = os.environ["ATREST_SECRET"]
HOST, PORT = ENDPOINT.removeprefix("http://").rsplit(":", 1)
PORT = int(PORT)


def client(service, marker, key_id=KEY_ID, secret=SECRET, unsigned=False, region=REGION):
    config = Config(retries={"max_attempts": 1}, user_agent_extra=marker,
                    s3={"addressing_style": "path"},
                    signature_version=UNSIGNED if unsigned
                    else ("s3v4" if service == "s3" else None))
    return boto3.client(service, endpoint_url=ENDPOINT, region_name=region,
                        aws_access_key_id=key_id, aws_secret_access_key=secret,
                        config=config)


def expect_error(code, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as err:
        got = err.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {err}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


def shifted(minutes):
    at = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) \
        + datetime.timedelta(minutes=minutes)
    return mock.patch.object(botocore.auth, "get_current_datetime", return_value=at)


REQUEST_IDS = {}


def raw(method, path, headers, body=b""):
    """One HTTP request with exactly these headers; (status, body). Keeps the
    request id it was answered with, by User-Agent."""
    request = urllib.request.Request(ENDPOINT + path, data=body or None, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            status, answer_headers, body = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as err:
        status, answer_headers, body = err.code, err.headers, err.read()
    REQUEST_IDS[headers["User-Agent"]] = answer_headers.get("x-amzn-requestid") \
        or answer_headers.get("x-amz-request-id")
    return status, body


def refusals():
    """One refused request of each kind, each with its own User-Agent marker, and one
    allowed call of each service; prints {marker: expected errorCode or "OK"}."""
    done = {}

    marker = "atrest-test/allowed-kms"
    key = client("kms", marker).create_key(Description="refusals")["KeyMetadata"]["KeyId"]
    client("kms", marker).generate_data_key(KeyId=key, KeySpec="AES_256")
    done[marker] = "OK"

    marker = "atrest-test/wrong-secret"
    expect_error("InvalidSignatureException", client("kms", marker, secret="x" * 40).list_keys)
    done[marker] = "InvalidSignatureException"

    marker = "atrest-test/unknown-key"
    expect_error("UnrecognizedClientException",
                 client("kms", marker, key_id="AKIAUNKNOWNEXAMPLE01").list_keys)
    done[marker] = "UnrecognizedClientException"

    marker = "atrest-test/expired-date"
    with shifted(-20):
        expect_error("InvalidSignatureException", client("kms", marker).list_keys)
    done[marker] = "InvalidSignatureException"

    marker = "atrest-test/future-date"
    with shifted(+20):
        expect_error("InvalidSignatureException", client("kms", marker).list_keys)
    done[marker] = "InvalidSignatureException"

    marker = "atrest-test/wrong-region"
    expect_error("InvalidSignatureException",
                 client("kms", marker, region="eu-north-1").list_keys)
    done[marker] = "InvalidSignatureException"

    marker = "atrest-test/no-signature"
    expect_error("MissingAuthenticationTokenException",
                 client("kms", marker, unsigned=True).list_keys)
    done[marker] = "MissingAuthenticationTokenException"

    marker = "atrest-test/malformed-authorization"
    status, body = raw("POST", "/", {
        "X-Amz-Target": "TrentService.ListKeys",
        "Content-Type": "application/x-amz-json-1.1",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAMALFORMED01/nonsense",
        "User-Agent": marker,
    }, b"{}")
    assert status == 400 and b"IncompleteSignatureException" in body, (status, body)
    done[marker] = "IncompleteSignatureException"

    marker = "atrest-test/unknown-operation"
    status, body = raw("POST", "/", {
        "X-Amz-Target": "TrentService.StealKeys",
        "Content-Type": "application/x-amz-json-1.1",
        "User-Agent": marker,
    }, b"{}")
    assert status == 400 and b"UnknownOperationException" in body, (status, body)
    done[marker] = "UnknownOperationException"

    marker = "atrest-test/allowed-s3"
    s3 = client("s3", marker)
    s3.create_bucket(Bucket="refusals")
    s3.put_object(Bucket="refusals", Key="doc.txt", Body=b"hello",
                  ServerSideEncryption="aws:kms", SSEKMSKeyId=key)
    done[marker] = "OK"

    marker = "atrest-test/s3-wrong-secret"
    expect_error("SignatureDoesNotMatch",
                 client("s3", marker, secret="y" * 40).get_object, Bucket="refusals",
                 Key="doc.txt")
    done[marker] = "SignatureDoesNotMatch"

    marker = "atrest-test/s3-anonymous"
    expect_error("AccessDenied", client("s3", marker, unsigned=True).put_object,
                 Bucket="refusals", Key="planted.txt", Body=b"x")
    done[marker] = "AccessDenied"

    marker = "atrest-test/s3-other-account"
    eve = client("s3", marker, key_id=os.environ["ATREST_OTHER_KEY_ID"],
                 secret=os.environ["ATREST_OTHER_SECRET"])
    expect_error("AccessDenied", eve.get_object, Bucket="refusals", Key="doc.txt")
    done[marker] = "AccessDenied"

    marker = "atrest-test/s3-tampered-presigned"
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "refusals",
                                                          "Key": "doc.txt"}, ExpiresIn=600)
    last = url[-1]
    tampered = url[:-1] + ("0" if last != "0" else "1")
    status, body = raw("GET", tampered.removeprefix(ENDPOINT), {"User-Agent": marker})
    assert status == 403 and b"SignatureDoesNotMatch" in body, (status, body)
    done[marker] = "SignatureDoesNotMatch"

    marker = "atrest-test/s3-expired-presigned"
    with shifted(-30):
        url = s3.generate_presigned_url("get_object", Params={"Bucket": "refusals",
                                                              "Key": "doc.txt"}, ExpiresIn=60)
    status, body = raw("GET", url.removeprefix(ENDPOINT), {"User-Agent": marker})
    assert status == 403 and b"AccessDenied" in body, (status, body)
    done[marker] = "AccessDenied"

    print(json.dumps({"refusals": done, "request_ids": REQUEST_IDS}))


def burst(bad_threads, bad_each, good_calls):
    """`bad_threads` threads each send `bad_each` requests signed with a wrong secret
    while one client makes `good_calls` GenerateDataKey calls; then the same good
    calls alone. Prints counts and the good calls' latencies (a measurement, not a
    check)."""
    good = client("kms", "atrest-test/burst-good")
    key = good.create_key(Description="burst")["KeyMetadata"]["KeyId"]

    def timed_good_calls():
        times = []
        for _ in range(good_calls):
            start = time.perf_counter()
            good.generate_data_key(KeyId=key, KeySpec="AES_256")
            times.append(time.perf_counter() - start)
        return sorted(times)

    refused = [0] * bad_threads
    errors = []

    def attacker(i):
        bad = client("kms", "atrest-test/burst-bad", secret="z" * 40)
        for _ in range(bad_each):
            try:
                bad.list_keys()
                errors.append("a bad signature was accepted")
            except ClientError as err:
                if err.response["Error"]["Code"] == "InvalidSignatureException":
                    refused[i] += 1
                else:
                    errors.append(str(err))

    def neighbour(i):
        busy = client("kms", "atrest-test/burst-neighbour")
        for _ in range(bad_each):
            busy.list_keys()

    def under(load):
        threads = [threading.Thread(target=load, args=(i,)) for i in range(bad_threads)]
        for t in threads:
            t.start()
        times = timed_good_calls()
        for t in threads:
            t.join()
        return times

    during = under(attacker)
    alone = timed_good_calls()
    # The same number of requests, correctly signed: what any load of this size
    # costs a client on this machine (the attackers share its CPU).
    beside_good_load = under(neighbour)
    assert not errors, errors[:3]

    def median_ms(times):
        return round(times[len(times) // 2] * 1000, 2)

    print(json.dumps({
        "refused": sum(refused),
        "good_calls": 3 * good_calls,
        "good_median_ms_during_burst": median_ms(during),
        "good_median_ms_alone": median_ms(alone),
        "good_median_ms_beside_as_many_good_calls": median_ms(beside_good_load),
    }))


def attack(connections, good_calls, body_timeout):
    """Holds `connections` connections from 127.0.0.2 that send a KMS request's
    headers and part of its body, then stall; meanwhile a signed client on 127.0.0.1 makes
    `good_calls` KMS and S3 calls. Prints how the attack connections were answered
    and that every signed call succeeded."""
    attackers = []
    for i in range(connections):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.2", 0))
        try:
            s.connect((HOST, PORT))
            s.sendall(b"POST / HTTP/1.1\r\nHost: %s\r\nX-Amz-Target: TrentService.Decrypt\r\n"
                      b"Content-Type: application/x-amz-json-1.1\r\nUser-Agent: attacker/%d\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"CiphertextBlob\":" % (HOST.encode(), i))
        except OSError:
            pass
        attackers.append(s)
    time.sleep(0.5)

    kms = client("kms", "atrest-test/attack-good")
    s3 = client("s3", "atrest-test/attack-good")
    key = kms.create_key(Description="attack")["KeyMetadata"]["KeyId"]
    s3.create_bucket(Bucket="during-attack")
    for i in range(good_calls):
        kms.generate_data_key(KeyId=key, KeySpec="AES_256")
        s3.put_object(Bucket="during-attack", Key=f"o{i}", Body=b"v" * 1000,
                      ServerSideEncryption="aws:kms", SSEKMSKeyId=key)
        assert s3.get_object(Bucket="during-attack", Key=f"o{i}")["Body"].read() == b"v" * 1000

    outcome = {"slow_down": 0, "request_timeout": 0, "closed_without_answer": 0,
               "other": []}
    deadline = time.monotonic() + body_timeout + 60
    for s in attackers:
        s.settimeout(max(1.0, deadline - time.monotonic()))
        answer = b""
        try:
            while True:
                piece = s.recv(65536)
                if not piece:
                    break
                answer += piece
        except (ConnectionResetError, BrokenPipeError):
            pass
        except socket.timeout:
            outcome["other"].append("still open long after the body timeout")
            continue
        finally:
            s.close()
        if answer.startswith(b"HTTP/1.1 503") and b"SlowDown" in answer:
            outcome["slow_down"] += 1
        elif answer.startswith(b"HTTP/1.1 400") and b"RequestTimeout" in answer:
            outcome["request_timeout"] += 1
        elif not answer:
            outcome["closed_without_answer"] += 1
        else:
            outcome["other"].append(answer[:200].decode("latin-1"))
    outcome["good_calls"] = good_calls
    print(json.dumps(outcome))


def presign_put():
    """A bucket whose default encryption is a new key, and a presigned PUT URL into
    it (the server reads such a body before answering)."""
    kms = client("kms", "atrest-test/presign")
    s3 = client("s3", "atrest-test/presign")
    key = kms.create_key(Description="stall")["KeyMetadata"]["KeyId"]
    s3.create_bucket(Bucket="stall")
    s3.put_bucket_encryption(Bucket="stall", ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                                "KMSMasterKeyID": key}}]})
    url = s3.generate_presigned_url("put_object", Params={"Bucket": "stall", "Key": "big"},
                                    ExpiresIn=600)
    print(json.dumps({"path_and_query": url.removeprefix(ENDPOINT)}))


def slow_read(stall_seconds):
    """Uploads a 24 MiB object, then asks for it on a raw connection and reads
    nothing for `stall_seconds`; prints how much arrived before the connection
    ended."""
    kms = client("kms", "atrest-test/slow-read")
    s3 = client("s3", "atrest-test/slow-read")
    key = kms.create_key(Description="slow read")["KeyMetadata"]["KeyId"]
    s3.create_bucket(Bucket="slowread")
    size = 24 * 1024 * 1024
    s3.put_object(Bucket="slowread", Key="big", Body=b"r" * size,
                  ServerSideEncryption="aws:kms", SSEKMSKeyId=key)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "slowread", "Key": "big"},
                                    ExpiresIn=600)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((HOST, PORT))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: atrest-test/slow-read\r\n\r\n"
              % (url.removeprefix(ENDPOINT).encode(), HOST.encode(), PORT))
    time.sleep(stall_seconds)
    s.settimeout(60)
    received = 0
    ended = "eof"
    try:
        while True:
            piece = s.recv(1 << 20)
            if not piece:
                break
            received += len(piece)
    except ConnectionResetError:
        ended = "reset"
    except socket.timeout:
        ended = "still open"
    s.close()
    print(json.dumps({"size": size, "received": received, "ended": ended}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "refusals":
        refusals()
    elif mode == "burst":
        burst(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "slow-read":
        slow_read(float(sys.argv[2]))
    elif mode == "presign-put":
        presign_put()
    elif mode == "attack":
        attack(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(f"unknown mode {mode}")
