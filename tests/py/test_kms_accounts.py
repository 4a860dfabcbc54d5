"""Accounts, refused-request auditing and AWS fidelity (issue 16, items 1, 2 and 4)
against `atrest kms serve`, driven by boto3 and the aws CLI, unmodified. Run by
tests/e2e_kms_accounts.rs, which starts the server and passes:

  ATREST_KMS_ENDPOINT   http://127.0.0.1:PORT
  ATREST_KMS_REGION     the server's region
  ATREST_CREDENTIALS    JSON {"root"|"alice"|"eve"|"eve_root": {"AccessKeyId",
                        "SecretAccessKey", "Arn"}}: root and alice are of account
                        000000000000, eve and eve_root of account 111111111111
  ATREST_AWS_CLI        path of the aws CLI

Prints one JSON line `FACTS {...}` (ARNs the Rust side checks in the trail) and exits
non-zero (with the failing check) on the first failure.
"""

import base64
import json
import os
import subprocess
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ATREST_KMS_ENDPOINT"]
REGION = os.environ["ATREST_KMS_REGION"]
CREDS = json.loads(os.environ["ATREST_CREDENTIALS"])
AWS_CLI = os.environ["ATREST_AWS_CLI"]
HOME_ACCOUNT = "000000000000"
EVE_ACCOUNT = "111111111111"


def client(who, validate=True):
    c = CREDS[who]
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        # validate=False sends what botocore would refuse itself (a missing
        # required member, a number out of range), so the server's answer is tested.
        config=Config(retries={"max_attempts": 1}, parameter_validation=validate),
    )


def expect_error(code, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as err:
        got = err.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {err}"
        return err.response["Error"].get("Message", "")
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


def all_pages(kms, operation, field, **kwargs):
    items = []
    for page in kms.get_paginator(operation).paginate(**kwargs):
        items.extend(page[field])
    return items


def accounts(facts):
    root, eve, eve_root = client("root"), client("eve"), client("eve_root")
    eve_arn = CREDS["eve"]["Arn"]

    step("Eve (account 111111111111) takes alias/payments first, with an open policy")
    open_policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "owner", "Effect": "Allow", "Principal": {"AWS": eve_arn},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "anyone", "Effect": "Allow", "Principal": "*",
             "Action": ["kms:GenerateDataKey*", "kms:Encrypt", "kms:DescribeKey"],
             "Resource": "*"},
        ],
    }
    trap = eve.create_key(Policy=json.dumps(open_policy))["KeyMetadata"]
    assert trap["Arn"].startswith(f"arn:aws:kms:{REGION}:{EVE_ACCOUNT}:key/"), trap["Arn"]
    assert trap["AWSAccountId"] == EVE_ACCOUNT, trap
    eve.create_alias(AliasName="alias/payments", TargetKeyId=trap["KeyId"])

    step("account 000000000000 still owns its own alias/payments namespace")
    home = root.create_key(Description="payments")["KeyMetadata"]
    assert home["AWSAccountId"] == HOME_ACCOUNT, home
    root.create_alias(AliasName="alias/payments", TargetKeyId=home["KeyId"])
    dk = root.generate_data_key(KeyId="alias/payments", KeySpec="AES_256")
    assert dk["KeyId"] == home["Arn"], f"alias/payments resolved to {dk['KeyId']}"
    # The home account's data key is not Eve's to open, by any name.
    expect_error("AccessDeniedException", eve.decrypt, CiphertextBlob=dk["CiphertextBlob"])
    eve_dk = eve.generate_data_key(KeyId="alias/payments", KeySpec="AES_256")
    assert eve_dk["KeyId"] == trap["Arn"], eve_dk["KeyId"]

    step("ListKeys and ListAliases show the caller's account only (boto3 paginators)")
    eve_keys = {k["KeyArn"] for k in all_pages(eve, "list_keys", "Keys")}
    home_keys = {k["KeyArn"] for k in all_pages(root, "list_keys", "Keys")}
    assert eve_keys == {trap["Arn"]}, eve_keys
    assert home["Arn"] in home_keys and trap["Arn"] not in home_keys, home_keys
    eve_aliases = all_pages(eve, "list_aliases", "Aliases")
    assert [a["AliasArn"] for a in eve_aliases] == [
        f"arn:aws:kms:{REGION}:{EVE_ACCOUNT}:alias/payments"], eve_aliases
    assert eve_aliases[0]["TargetKeyId"] == trap["KeyId"], eve_aliases
    home_aliases = all_pages(root, "list_aliases", "Aliases")
    assert [a["TargetKeyId"] for a in home_aliases] == [home["KeyId"]], home_aliases
    cli_keys = aws("eve", "kms", "list-keys")["Keys"]
    assert [k["KeyArn"] for k in cli_keys] == [trap["Arn"]], cli_keys

    step("another account's key: not by key id, not by alias ARN, and not without policy")
    expect_error("NotFoundException", eve.describe_key, KeyId=home["KeyId"])
    expect_error("NotFoundException", eve.describe_key,
                 KeyId=f"arn:aws:kms:{REGION}:{HOME_ACCOUNT}:alias/payments")
    expect_error("AccessDeniedException", eve.describe_key, KeyId=home["Arn"])
    expect_error("AccessDeniedException", eve.generate_data_key,
                 KeyId=home["Arn"], KeySpec="AES_256")
    expect_error("AccessDeniedException", eve.encrypt, KeyId=home["Arn"], Plaintext=b"x")

    step("another account's key cannot be administered, aliased or listed from outside")
    for call, kwargs in [
        (eve.disable_key, {}),
        (eve.enable_key, {}),
        (eve.schedule_key_deletion, {"PendingWindowInDays": 7}),
        (eve.cancel_key_deletion, {}),
        (eve.get_key_policy, {"PolicyName": "default"}),
        (eve.put_key_policy, {"PolicyName": "default", "Policy": json.dumps(open_policy)}),
        (eve.update_key_description, {"Description": "mine now"}),
        (eve.tag_resource, {"Tags": [{"TagKey": "owner", "TagValue": "eve"}]}),
        (eve.enable_key_rotation, {}),
        (eve.rotate_key_on_demand, {}),
        (eve.list_resource_tags, {}),
        (eve.list_key_rotations, {}),
        (eve.list_key_policies, {}),
    ]:
        expect_error("NotFoundException", call, KeyId=home["Arn"], **kwargs)
    expect_error("NotFoundException", eve.create_alias,
                 AliasName="alias/stolen", TargetKeyId=home["Arn"])
    expect_error("NotFoundException", eve.update_alias,
                 AliasName="alias/payments", TargetKeyId=home["Arn"])
    expect_error("NotFoundException", eve.list_aliases, KeyId=home["Arn"])
    # Eve deleting "alias/payments" deletes her own; the home account's stays.
    eve.delete_alias(AliasName="alias/payments")
    assert root.describe_key(KeyId="alias/payments")["KeyMetadata"]["Arn"] == home["Arn"]
    expect_error("NotFoundException", eve.describe_key, KeyId="alias/payments")
    assert root.describe_key(KeyId=home["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"

    step("cross-account use where the key policy allows it: by key ARN only")
    shared_policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "owner", "Effect": "Allow",
             "Principal": {"AWS": f"arn:aws:iam::{HOME_ACCOUNT}:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "eve", "Effect": "Allow", "Principal": {"AWS": eve_arn},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*",
                        "kms:DescribeKey", "kms:ReEncrypt*"],
             "Resource": "*"},
            {"Sid": "account-111", "Effect": "Allow",
             "Principal": {"AWS": f"arn:aws:iam::{EVE_ACCOUNT}:root"},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
             "Resource": "*"},
        ],
    }
    shared = root.create_key(Policy=json.dumps(shared_policy))["KeyMetadata"]
    root.create_alias(AliasName="alias/shared", TargetKeyId=shared["KeyId"])
    got = eve.describe_key(KeyId=shared["Arn"])["KeyMetadata"]
    assert got["AWSAccountId"] == HOME_ACCOUNT and got["Arn"] == shared["Arn"], got
    crossed = eve.generate_data_key(KeyId=shared["Arn"], KeySpec="AES_256")
    assert crossed["KeyId"] == shared["Arn"], crossed
    back = eve.decrypt(CiphertextBlob=crossed["CiphertextBlob"])
    assert back["Plaintext"] == crossed["Plaintext"] and back["KeyId"] == shared["Arn"]
    back = root.decrypt(CiphertextBlob=crossed["CiphertextBlob"])
    assert back["Plaintext"] == crossed["Plaintext"]
    moved = eve.re_encrypt(CiphertextBlob=crossed["CiphertextBlob"],
                           DestinationKeyId=trap["Arn"])
    assert moved["SourceKeyId"] == shared["Arn"] and moved["KeyId"] == trap["Arn"], moved
    expect_error("NotFoundException", eve.generate_data_key,
                 KeyId=shared["KeyId"], KeySpec="AES_256")
    expect_error("NotFoundException", eve.generate_data_key, KeyId="alias/shared",
                 KeySpec="AES_256")
    expect_error("NotFoundException", eve.disable_key, KeyId=shared["Arn"])
    # The account principal names account 111's root user: atrest has no IAM to
    # delegate further, so Eve (a user of 111) is not let in by it.
    enc = eve_root.encrypt(KeyId=shared["Arn"], Plaintext=b"from 111 root")
    assert eve_root.decrypt(CiphertextBlob=enc["CiphertextBlob"])["Plaintext"] == b"from 111 root"
    expect_error("AccessDeniedException", eve_root.generate_data_key,
                 KeyId=shared["Arn"], KeySpec="AES_256")
    cli = aws("eve", "kms", "encrypt", "--key-id", shared["Arn"],
              "--plaintext", base64.b64encode(b"via the aws CLI").decode())
    assert cli["KeyId"] == shared["Arn"], cli

    facts.update(home_key=home["Arn"], trap_key=trap["Arn"], shared_key=shared["Arn"])


def refusals_before_the_key_service(facts):
    loose = client("alice", validate=False)
    step("refused before the key service: bad tags, missing or out-of-range fields")
    expect_error("TagException", loose.create_key,
                 Tags=[{"TagKey": "aws:owner", "TagValue": "x"}])
    expect_error("ValidationException", loose.generate_data_key, KeyId="alias/payments")
    expect_error("ValidationException", loose.generate_data_key,
                 KeyId="alias/payments", NumberOfBytes=1025)
    expect_error("ValidationException", loose.decrypt)
    expect_error("ValidationException", loose.generate_random, NumberOfBytes=0)
    facts["refused_by"] = CREDS["alice"]["Arn"]


def fidelity(facts):
    root = client("root")
    loose = client("root", validate=False)

    step("GenerateRandom: 1..=1024 bytes; 0, 1025 or none is a ValidationException")
    for n in (1, 32, 1024):
        assert len(root.generate_random(NumberOfBytes=n)["Plaintext"]) == n
    for kwargs in ({"NumberOfBytes": 0}, {"NumberOfBytes": 1025}, {}):
        expect_error("ValidationException", loose.generate_random, **kwargs)
    out = aws("root", "kms", "generate-random", "--number-of-bytes", "16")
    assert len(base64.b64decode(out["Plaintext"])) == 16, out

    key = root.create_key()["KeyMetadata"]
    step("ListKeyPolicies is [\"default\"]")
    policies = root.list_key_policies(KeyId=key["KeyId"])
    assert policies["PolicyNames"] == ["default"] and policies["Truncated"] is False, policies
    assert all_pages(root, "list_key_policies", "PolicyNames", KeyId=key["Arn"]) == ["default"]
    expect_error("NotFoundException", root.list_key_policies,
                 KeyId="00000000-0000-0000-0000-000000000000")

    step("import calls on an AWS_KMS key: UnsupportedOperationException")
    expect_error("UnsupportedOperationException", root.get_parameters_for_import,
                 KeyId=key["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256",
                 WrappingKeySpec="RSA_2048")
    expect_error("UnsupportedOperationException", root.import_key_material,
                 KeyId=key["KeyId"], ImportToken=b"t", EncryptedKeyMaterial=b"m",
                 ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    expect_error("UnsupportedOperationException", root.delete_imported_key_material,
                 KeyId=key["KeyId"])
    expect_error("NotFoundException", root.delete_imported_key_material,
                 KeyId="00000000-0000-0000-0000-000000000000")

    step("key material ids: CurrentKeyMaterialId changes on rotation, Decrypt names it")
    first = root.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["CurrentKeyMaterialId"]
    assert len(first) == 64 and int(first, 16) >= 0, first
    old = root.encrypt(KeyId=key["KeyId"], Plaintext=b"before rotation")["CiphertextBlob"]
    root.rotate_key_on_demand(KeyId=key["KeyId"])
    second = root.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["CurrentKeyMaterialId"]
    assert second != first, "CurrentKeyMaterialId did not change on rotation"
    assert root.decrypt(CiphertextBlob=old)["KeyMaterialId"] == first
    new = root.encrypt(KeyId=key["KeyId"], Plaintext=b"after rotation")["CiphertextBlob"]
    assert root.decrypt(CiphertextBlob=new)["KeyMaterialId"] == second
    moved = root.re_encrypt(CiphertextBlob=old, DestinationKeyId=key["KeyId"])
    assert moved["SourceKeyMaterialId"] == first, moved
    assert moved["DestinationKeyMaterialId"] == second, moved
    rotations = root.list_key_rotations(KeyId=key["KeyId"])["Rotations"]
    assert [r["KeyMaterialId"] for r in rotations] == [second], rotations

    step("OnDemandRotationStartDate is gone once the rotation is done")
    status = root.get_key_rotation_status(KeyId=key["KeyId"])
    assert "OnDemandRotationStartDate" not in status, status
    status = aws("root", "kms", "get-key-rotation-status", "--key-id", key["KeyId"])
    assert "OnDemandRotationStartDate" not in status, status

    step("invalid KeySpec/KeyUsage/Origin -> ValidationException; valid but unmade -> Unsupported")
    msg = expect_error("ValidationException", root.create_key, KeySpec="AES_999")
    assert "Member must satisfy enum value set" in msg, msg
    expect_error("ValidationException", root.create_key, KeyUsage="ENCRYPT_ONLY")
    expect_error("ValidationException", root.create_key, Origin="SOMEWHERE")
    expect_error("UnsupportedOperationException", root.create_key, KeySpec="RSA_2048")
    expect_error("UnsupportedOperationException", root.create_key, KeyUsage="SIGN_VERIFY")

    step("alias name without alias/ -> ValidationException")
    msg = expect_error("ValidationException", root.create_alias,
                       AliasName="payments", TargetKeyId=key["KeyId"])
    assert msg.startswith('Alias must start with the prefix "alias/".'), msg

    step("tags: duplicate keys, aws: in any case, more than 50 -> TagException")
    for tags in (
        [{"TagKey": "a", "TagValue": "1"}, {"TagKey": "a", "TagValue": "2"}],
        [{"TagKey": "aws:x", "TagValue": "1"}],
        [{"TagKey": "AWS:x", "TagValue": "1"}],
        [{"TagKey": f"k{i}", "TagValue": "v"} for i in range(51)],
    ):
        expect_error("TagException", root.tag_resource, KeyId=key["KeyId"], Tags=tags)
        expect_error("TagException", root.create_key, Tags=tags)
    assert root.list_resource_tags(KeyId=key["KeyId"])["Tags"] == []

    step("InvalidCiphertextException and IncorrectKeyException as AWS words them")
    blob = bytearray(root.encrypt(KeyId=key["KeyId"], Plaintext=b"x")["CiphertextBlob"])
    blob[-1] ^= 1
    msg = expect_error("InvalidCiphertextException", root.decrypt, CiphertextBlob=bytes(blob))
    assert msg == "", f"AWS sends no message with InvalidCiphertextException: {msg!r}"
    other = root.create_key()["KeyMetadata"]
    msg = expect_error("IncorrectKeyException", root.decrypt, CiphertextBlob=new,
                       KeyId=other["KeyId"])
    assert msg == ("The key ID in the request does not identify a KMS key that can "
                   "perform this operation."), msg


if __name__ == "__main__":
    facts = {}
    accounts(facts)
    refusals_before_the_key_service(facts)
    fidelity(facts)
    print("FACTS " + json.dumps(facts))
    print("OK: accounts, refusals and AWS fidelity checks passed")
    sys.exit(0)
