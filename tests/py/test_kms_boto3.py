"""LAB step 1 against `atrest kms serve`, driven by boto3 and the aws CLI, unmodified,
plus the authentication failures (wrong secret, tampered body, stale date, unknown
key, no signature). Run by tests/e2e_gateway.rs, which starts the server and passes:

  ATREST_KMS_ENDPOINT   http://127.0.0.1:PORT
  ATREST_KMS_REGION     the server's region
  ATREST_CREDENTIALS    JSON {"root"|"admin"|"user": {"AccessKeyId", "SecretAccessKey", "Arn"}}
  ATREST_AWS_CLI        path of the aws CLI

Exits non-zero (with the failing check) on the first failure.
"""

import base64
import datetime
import json
import os
import subprocess
import sys
from unittest import mock

import boto3
import botocore.auth
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ATREST_KMS_ENDPOINT"]
REGION = os.environ["ATREST_KMS_REGION"]
CREDS = json.loads(os.environ["ATREST_CREDENTIALS"])
AWS_CLI = os.environ["ATREST_AWS_CLI"]


def client(who, secret=None):
    c = CREDS[who]
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=secret or c["SecretAccessKey"],
        config=Config(retries={"max_attempts": 1}),
    )


def expect_error(code, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as err:
        got = err.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {err}"
        return err
    raise AssertionError(f"expected {code}, the call succeeded")


def aws(who, *args, check=True):
    c = CREDS[who]
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=c["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=c["SecretAccessKey"],
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_MAX_ATTEMPTS="1",
    )
    out = subprocess.run(
        [AWS_CLI, "--endpoint-url", ENDPOINT, "--output", "json", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    if check:
        assert out.returncode == 0, f"aws {' '.join(args)} failed: {out.stderr}"
        return json.loads(out.stdout) if out.stdout.strip() else {}
    return out


def step(name):
    print(f"-- {name}", flush=True)


def lab_step_1():
    root, admin, user = client("root"), client("admin"), client("user")
    admin_arn, user_arn, root_arn = (CREDS[w]["Arn"] for w in ("admin", "user", "root"))
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "root", "Effect": "Allow", "Principal": {"AWS": root_arn},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "KeyAdministrators", "Effect": "Allow", "Principal": {"AWS": admin_arn},
             "Action": ["kms:Describe*", "kms:Enable*", "kms:Disable*", "kms:List*",
                        "kms:Get*", "kms:Put*", "kms:ScheduleKeyDeletion",
                        "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand",
                        "kms:CreateAlias", "kms:UpdateAlias"],
             "Resource": "*"},
            {"Sid": "KeyUsers", "Effect": "Allow", "Principal": {"AWS": user_arn},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                        "kms:GenerateDataKey*", "kms:DescribeKey"],
             "Resource": "*"},
        ],
    }

    step("create key and alias/MyKMSKey (aws CLI)")
    created = aws("root", "kms", "create-key", "--description", "LAB CMK",
                  "--policy", json.dumps(policy))
    meta = created["KeyMetadata"]
    key_id, key_arn = meta["KeyId"], meta["Arn"]
    assert meta["KeyState"] == "Enabled" and meta["KeySpec"] == "SYMMETRIC_DEFAULT", meta
    aws("root", "kms", "create-alias", "--alias-name", "alias/MyKMSKey",
        "--target-key-id", key_id)
    described = aws("user", "kms", "describe-key", "--key-id", "alias/MyKMSKey")
    assert described["KeyMetadata"]["Arn"] == key_arn, described
    aliases = root.list_aliases(KeyId=key_id)["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/MyKMSKey"], aliases
    assert any(k["KeyId"] == key_id for k in root.list_keys()["Keys"])

    step("generate data key and decrypt (boto3)")
    ctx = {"atrest:lab": "step-1"}
    dk = user.generate_data_key(KeyId="alias/MyKMSKey", KeySpec="AES_256", EncryptionContext=ctx)
    assert len(dk["Plaintext"]) == 32 and dk["KeyId"] == key_arn, dk["KeyId"]
    back = user.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    assert back["Plaintext"] == dk["Plaintext"] and back["KeyId"] == key_arn

    step("generate data key and decrypt (aws CLI)")
    out = aws("user", "kms", "generate-data-key", "--key-id", "alias/MyKMSKey",
              "--number-of-bytes", "64", "--encryption-context", "purpose=cli")
    blob = base64.b64decode(out["CiphertextBlob"])
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"atrest-blob-{os.getpid()}")
    with open(path, "wb") as f:
        f.write(blob)
    try:
        dec = aws("user", "kms", "decrypt", "--ciphertext-blob", f"fileb://{path}",
                  "--encryption-context", "purpose=cli")
    finally:
        os.unlink(path)
    assert dec["Plaintext"] == out["Plaintext"], "aws CLI round trip differs"

    step("wrong encryption context -> InvalidCiphertextException")
    expect_error("InvalidCiphertextException", user.decrypt,
                 CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"atrest:lab": "other"})

    step("key administrator is denied Decrypt, key user is denied DisableKey")
    err = expect_error("AccessDeniedException", admin.decrypt,
                       CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    assert admin_arn in str(err), err
    expect_error("AccessDeniedException", user.disable_key, KeyId=key_id)
    out = aws("user", "kms", "disable-key", "--key-id", key_id, check=False)
    assert out.returncode != 0 and "AccessDeniedException" in out.stderr, out.stderr

    step("disable -> DisabledException, enable -> works again")
    admin.disable_key(KeyId=key_id)
    assert root.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    expect_error("DisabledException", user.decrypt,
                 CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    expect_error("DisabledException", user.generate_data_key,
                 KeyId="alias/MyKMSKey", KeySpec="AES_256")
    out = aws("user", "kms", "generate-data-key", "--key-id", key_id, "--key-spec", "AES_256",
              check=False)
    assert out.returncode != 0 and "DisabledException" in out.stderr, out.stderr
    admin.enable_key(KeyId=key_id)
    user.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)

    step("schedule deletion, cancel -> Disabled")
    sched = admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert sched["KeyState"] == "PendingDeletion" and sched["PendingWindowInDays"] == 7, sched
    assert isinstance(sched["DeletionDate"], datetime.datetime)
    expect_error("KMSInvalidStateException", user.decrypt,
                 CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    admin.cancel_key_deletion(KeyId=key_id)
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    admin.enable_key(KeyId=key_id)

    step("on-demand rotation; old ciphertexts still decrypt")
    old = user.encrypt(KeyId=key_id, Plaintext=b"clock.png", EncryptionContext=ctx)
    rotated = admin.rotate_key_on_demand(KeyId=key_id)
    assert rotated["KeyId"] == key_arn, rotated
    rotations = root.list_key_rotations(KeyId=key_id)["Rotations"]
    assert len(rotations) == 1 and rotations[0]["RotationType"] == "ON_DEMAND", rotations
    assert user.decrypt(CiphertextBlob=old["CiphertextBlob"],
                        EncryptionContext=ctx)["Plaintext"] == b"clock.png"
    assert user.decrypt(CiphertextBlob=dk["CiphertextBlob"],
                        EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"]
    new = user.encrypt(KeyId=key_id, Plaintext=b"clock.png", EncryptionContext=ctx)
    assert new["CiphertextBlob"] != old["CiphertextBlob"]

    step("tags: CreateKey Tags, TagResource, UntagResource, ListResourceTags")
    tagged = root.create_key(Description="tagged", Tags=[{"TagKey": "lab", "TagValue": "1"}])
    tagged_id = tagged["KeyMetadata"]["KeyId"]
    root.tag_resource(KeyId=tagged_id, Tags=[{"TagKey": "owner", "TagValue": "storage"}])
    root.untag_resource(KeyId=tagged_id, TagKeys=["lab"])
    tags = root.list_resource_tags(KeyId=tagged_id)["Tags"]
    assert tags == [{"TagKey": "owner", "TagValue": "storage"}], tags
    listed = aws("root", "kms", "list-resource-tags", "--key-id", tagged_id)
    assert listed["Tags"] == tags, listed
    expect_error("TagException", root.tag_resource, KeyId=tagged_id,
                 Tags=[{"TagKey": "aws:reserved", "TagValue": "x"}])

    step("key policy over the wire")
    got = json.loads(admin.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    assert got["Statement"][2]["Sid"] == "KeyUsers", got
    expect_error("MalformedPolicyDocumentException", admin.put_key_policy,
                 KeyId=key_id, PolicyName="default", Policy="{not json")
    rotation = root.get_key_rotation_status(KeyId=key_id)
    assert rotation["KeyRotationEnabled"] is False, rotation
    expect_error("NotFoundException", user.describe_key, KeyId="alias/NoSuchKey")
    return dk


def negative_auth(dk):
    root = client("root")

    step("wrong secret -> InvalidSignatureException")
    bad = client("root", secret="x" * 40)
    expect_error("InvalidSignatureException", bad.list_keys)
    out = subprocess.run(
        [AWS_CLI, "--endpoint-url", ENDPOINT, "kms", "list-keys"],
        env=dict(os.environ, AWS_ACCESS_KEY_ID=CREDS["root"]["AccessKeyId"],
                 AWS_SECRET_ACCESS_KEY="y" * 40, AWS_DEFAULT_REGION=REGION,
                 AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                 AWS_MAX_ATTEMPTS="1"),
        capture_output=True, text=True)
    assert out.returncode != 0 and "InvalidSignatureException" in out.stderr, out.stderr

    step("unknown access key -> UnrecognizedClientException")
    stranger = boto3.client("kms", endpoint_url=ENDPOINT, region_name=REGION,
                            aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                            aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                            config=Config(retries={"max_attempts": 1}))
    expect_error("UnrecognizedClientException", stranger.list_keys)

    step("tampered body (signed AES_256, sent AES_128) -> InvalidSignatureException")
    tampering = client("user")

    def tamper(request, **_):
        request.body = request.body.replace(b"AES_256", b"AES_128")

    tampering.meta.events.register("before-send.kms.GenerateDataKey", tamper)
    expect_error("InvalidSignatureException", tampering.generate_data_key,
                 KeyId="alias/MyKMSKey", KeySpec="AES_256")

    step("stale date (20 minutes old) -> InvalidSignatureException")
    stale = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) \
        - datetime.timedelta(minutes=20)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=stale):
        err = expect_error("InvalidSignatureException", root.list_keys)
    assert "Signature expired" in str(err), err

    step("wrong region in the credential scope -> InvalidSignatureException")
    other = boto3.client("kms", endpoint_url=ENDPOINT, region_name="eu-north-1",
                         aws_access_key_id=CREDS["root"]["AccessKeyId"],
                         aws_secret_access_key=CREDS["root"]["SecretAccessKey"],
                         config=Config(retries={"max_attempts": 1}))
    expect_error("InvalidSignatureException", other.list_keys)

    step("no signature at all -> MissingAuthenticationTokenException")
    from botocore import UNSIGNED
    anonymous = boto3.client("kms", endpoint_url=ENDPOINT, region_name=REGION,
                             config=Config(signature_version=UNSIGNED,
                                           retries={"max_attempts": 1}))
    expect_error("MissingAuthenticationTokenException", anonymous.decrypt,
                 CiphertextBlob=dk["CiphertextBlob"])


if __name__ == "__main__":
    data_key = lab_step_1()
    negative_auth(data_key)
    print("OK: LAB step 1 and the authentication checks passed")
    sys.exit(0)
