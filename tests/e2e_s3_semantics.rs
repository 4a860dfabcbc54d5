//! Issue 21 items 1-2 with the real clients: boto3 and the aws CLI run
//! tests/py/test_s3_semantics.py (SSE-S3 by default, conditional requests, SSE-C, a
//! retried CompleteMultipartUpload, SSE-KMS header validation) against
//! `atrest s3 serve`; this file then checks the server's side: no object file holds
//! plaintext or the customer's key, the AWS managed key `alias/aws/s3` exists, and
//! every SSE-S3 upload is a GenerateDataKey under it in the trail, by the signer.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{
    assert_success, contains, files_under, require_test_venv, require_tools, trail_records,
    venv_bin, Home,
};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const USER: &str = "arn:aws:iam::000000000000:user/S3User";
const MARKER: &[u8] = b"SSE-C-PLAINTEXT-MARKER-";

/// A signing identity made with `atrest iam create-access-key`: (id, secret).
fn access_key(home: &Home, principal: &str) -> (String, String) {
    let out = home.run(&["iam", "create-access-key", "--principal", principal]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &answer["AccessKey"];
    (
        key["AccessKeyId"].as_str().unwrap().to_owned(),
        key["SecretAccessKey"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn boto3_and_the_aws_cli_get_s3_data_protection_semantics() {
    if !(require_tools(&["openssl"]) && require_test_venv(&["python", "aws"])) {
        return;
    }
    let home = Home::new();
    home.run(&["kms", "list-keys"]);
    let out = home.run(&["iam", "create-access-key", "--principal", USER]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &answer["AccessKey"];
    // Over TLS: SSE-C is refused in the clear (see
    // sse_c_is_refused_over_plain_http).
    let (cert, tls_key) = home.self_signed_cert();
    let server = home.serve_env(
        // Debug logging: every refused request's error is logged, so the check
        // below that the SSE-C key never appears in the log means something.
        &[("ATREST_REGION", REGION), ("RUST_LOG", "debug")],
        &[
            "s3",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            tls_key.to_str().unwrap(),
        ],
    );
    let work = home.file("work");
    std::fs::create_dir(&work).unwrap();
    let credentials = json!({"user": {
        "AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"], "Arn": USER,
    }});
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/test_s3_semantics.py");
    let mut python = Command::new(venv_bin("python"));
    python
        .arg(&script)
        .env("ATREST_S3_ENDPOINT", format!("https://{}", server.addr))
        .env("AWS_CA_BUNDLE", &cert)
        .env("ATREST_S3_REGION", REGION)
        .env("ATREST_CREDENTIALS", credentials.to_string())
        .env("ATREST_AWS_CLI", venv_bin("aws"))
        .env("ATREST_WORKDIR", &work)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let out = python.output().expect("running python");
    assert_success(
        &format!("{} (server log:\n{})", script.display(), server.log()),
        &out,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: issue 21 items 1-2"));
    // The customer key never reaches the server's log, in any spelling.
    let customer_key = std::fs::read(work.join("sse-c.key")).unwrap();
    let log = server.log();
    assert!(
        log.contains("SSE-C key provided is not the key"),
        "the refused SSE-C reads are in the debug log: {log}"
    );
    for spelling in common::spellings(&customer_key) {
        assert!(
            !contains(log.as_bytes(), &spelling),
            "the SSE-C key is in the log"
        );
    }
    server.stop();

    // At rest: the SSE-C objects hold neither their plaintext nor the customer key
    // (nor its MD5), and no other object file holds plaintext either.
    let key_md5 = std::fs::read(work.join("sse-c.key.md5")).unwrap();
    assert_eq!((customer_key.len(), key_md5.len()), (32, 16));
    let files = files_under(&home.path().join("s3"));
    assert!(files.len() > 5, "{files:?}");
    // Noncurrent versions are among them, encrypted like any object.
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().contains("/versions/")
                && contains(&std::fs::read(p).unwrap(), b"ATRS3OBJ")),
        "no noncurrent version file in {files:?}"
    );
    for path in &files {
        let stored = std::fs::read(path).unwrap();
        assert!(
            !contains(&stored, MARKER),
            "{} holds plaintext",
            path.display()
        );
        assert!(
            !contains(&stored, &customer_key),
            "{} holds the key",
            path.display()
        );
        assert!(
            !contains(&stored, &key_md5),
            "{} holds the key's MD5",
            path.display()
        );
    }

    // The managed key: made on first use, and every SSE-S3 upload's data key comes
    // from it, in the trail as the signer's GenerateDataKey.
    let aliases: Value = serde_json::from_str(&home.run(&["kms", "list-aliases"])).unwrap();
    let managed = aliases["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["AliasName"] == "alias/aws/s3")
        .unwrap_or_else(|| panic!("no alias/aws/s3 in {aliases}"))["TargetKeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let plain_arn = "arn:aws:s3:::fresh/plain.txt";
    let generated: Vec<Value> = trail_records(&home, "GenerateDataKey")
        .into_iter()
        .filter(|e| e["requestParameters"]["encryptionContext"]["aws:s3:arn"] == plain_arn)
        .collect();
    assert_eq!(generated.len(), 1, "{generated:?}");
    assert_eq!(generated[0]["userIdentity"]["arn"], USER);
    assert!(
        generated[0].to_string().contains(&managed),
        "{} not under {managed}",
        generated[0]
    );
    // No key-service call ever names an SSE-C object.
    for event in ["GenerateDataKey", "Decrypt"] {
        assert!(trail_records(&home, event)
            .iter()
            .all(|e| !e.to_string().contains("cond/secret")));
    }
}

/// A bucket policy that denies every request not made over TLS (the classic "deny
/// non-TLS"): boto3 over HTTPS still works, the aws:SecureTransport fact comes from the
/// server's TLS listener and not from anything the client sends.
#[test]
fn deny_non_tls_policy_lets_https_through() {
    if !(require_tools(&["openssl"]) && require_test_venv(&["python"])) {
        return;
    }
    let home = Home::new();
    home.run(&["kms", "list-keys"]);
    let out = home.run(&["iam", "create-access-key", "--principal", USER]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &answer["AccessKey"];
    let (cert, tls_key) = home.self_signed_cert();
    let server = home.serve_env(
        &[("ATREST_REGION", REGION)],
        &[
            "s3",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            tls_key.to_str().unwrap(),
        ],
    );
    let script = r#"
import json, os, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=os.environ["EP"], region_name="us-east-1",
    aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"],
    verify=os.environ["CA"], config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="tls-only")
policy = {"Statement": {"Effect": "Deny", "Principal": "*", "Action": "s3:*",
    "Resource": ["arn:aws:s3:::tls-only", "arn:aws:s3:::tls-only/*"],
    "Condition": {"Bool": {"aws:SecureTransport": "false"}}}}
s3.put_bucket_policy(Bucket="tls-only", Policy=json.dumps(policy))
s3.put_object(Bucket="tls-only", Key="k", Body=b"over tls", SSECustomerAlgorithm="AES256",
    SSECustomerKey=b"k" * 32)
got = s3.get_object(Bucket="tls-only", Key="k", SSECustomerAlgorithm="AES256",
    SSECustomerKey=b"k" * 32)
assert got["Body"].read() == b"over tls"
assert [o["Key"] for o in s3.list_objects_v2(Bucket="tls-only")["Contents"]] == ["k"]
print("OK: TLS")
"#;
    let out = Command::new(venv_bin("python"))
        .args(["-c", script])
        .env("EP", format!("https://{}", server.addr))
        .env("AK", key["AccessKeyId"].as_str().unwrap())
        .env("SK", key["SecretAccessKey"].as_str().unwrap())
        .env("CA", &cert)
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("running python");
    assert_success(
        &format!("boto3 over TLS (server log:\n{})", server.log()),
        &out,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: TLS"));
    server.stop();
}

/// SSE-C over plain HTTP: boto3's PUT, GET, copy (with the source's key) and the aws
/// CLI's `s3 cp --sse-c` are refused with S3's 400 InvalidRequest, and nothing is
/// stored; the same PUT without the key goes through.
#[test]
fn sse_c_is_refused_over_plain_http() {
    if !require_test_venv(&["python", "aws"]) {
        return;
    }
    let home = Home::new();
    home.run(&["kms", "list-keys"]);
    let (id, secret) = access_key(&home, USER);
    let server = home.serve_env(
        &[("ATREST_REGION", REGION)],
        &["s3", "serve", "--listen", "127.0.0.1:0"],
    );
    let work = home.file("work");
    std::fs::create_dir(&work).unwrap();
    let script = r#"
import os, subprocess, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=os.environ["EP"], region_name="us-east-1",
    aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"],
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
key = os.urandom(32)
def refused(call, **kwargs):
    try:
        call(**kwargs)
    except ClientError as e:
        err = e.response["Error"]
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400, e.response
        if call == s3.head_object:
            return  # a HEAD answer has no body to name the error
        assert err["Code"] == "InvalidRequest", err
        assert "must be made over a secure connection" in err["Message"], err
        return
    raise AssertionError(f"{call.__name__} over plain HTTP was not refused")
s3.create_bucket(Bucket="clear")
refused(s3.put_object, Bucket="clear", Key="k", Body=b"secret", SSECustomerAlgorithm="AES256",
    SSECustomerKey=key)
s3.put_object(Bucket="clear", Key="plain", Body=b"plain")
refused(s3.get_object, Bucket="clear", Key="plain", SSECustomerAlgorithm="AES256",
    SSECustomerKey=key)
refused(s3.head_object, Bucket="clear", Key="plain", SSECustomerAlgorithm="AES256",
    SSECustomerKey=key)
refused(s3.copy_object, Bucket="clear", Key="copy", CopySource={"Bucket": "clear", "Key": "plain"},
    CopySourceSSECustomerAlgorithm="AES256", CopySourceSSECustomerKey=key)
refused(s3.create_multipart_upload, Bucket="clear", Key="mp", SSECustomerAlgorithm="AES256",
    SSECustomerKey=key)
path = os.path.join(os.environ["WORK"], "f")
open(path, "wb").write(b"by the cli")
env = dict(os.environ, AWS_ACCESS_KEY_ID=os.environ["AK"], AWS_SECRET_ACCESS_KEY=os.environ["SK"],
    AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.path.join(os.environ["WORK"], "none"),
    AWS_SHARED_CREDENTIALS_FILE=os.path.join(os.environ["WORK"], "none"))
out = subprocess.run([os.environ["AWS"], "--endpoint-url", os.environ["EP"], "s3", "cp", path,
    "s3://clear/cli", "--sse-c", "AES256", "--sse-c-key", "k" * 32], env=env,
    capture_output=True, text=True)
assert out.returncode != 0 and "secure connection" in out.stderr, out
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="clear")["Contents"]]
assert keys == ["plain"], keys
print("OK: SSE-C refused in the clear")
"#;
    let out = Command::new(venv_bin("python"))
        .args(["-c", script])
        .env("EP", format!("http://{}", server.addr))
        .env("AK", &id)
        .env("SK", &secret)
        .env("AWS", venv_bin("aws"))
        .env("WORK", &work)
        .env_remove("AWS_PROFILE")
        .output()
        .expect("running python");
    assert_success(
        &format!("SSE-C over plain HTTP (server log:\n{})", server.log()),
        &out,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: SSE-C refused in the clear"));
    server.stop();
}

/// `Expect: 100-continue` with curl (signed with --aws-sigv4): a PUT that will be
/// refused (a bad signature, another account's AccessDenied, a bucket that does not
/// exist) gets its final status and no `100 Continue`, so the client never sends the
/// body; an allowed PUT gets its 100, sends the body, and the object is stored.
#[test]
fn expect_100_continue_is_answered_only_for_requests_that_will_be_read() {
    if !(require_tools(&["curl"]) && require_test_venv(&["python"])) {
        return;
    }
    let home = Home::new();
    home.run(&["kms", "list-keys"]);
    let (id, secret) = access_key(&home, USER);
    let (other_id, other_secret) = access_key(&home, "arn:aws:iam::111111111111:user/Other");
    let server = home.serve_env(
        &[("ATREST_REGION", REGION)],
        &["s3", "serve", "--listen", "127.0.0.1:0"],
    );
    let body = home.file("body");
    std::fs::write(&body, common::pseudo_random(256 * 1024, 21)).unwrap();
    // `wait`: how long curl waits for the 100 before it sends the body anyway ("0":
    // at once, as clients that do not wait do).
    let put_with = |wait: &str, user: &str, url: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", user])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(["-H", "Expect: 100-continue", "--expect100-timeout", wait])
            .arg("-T")
            .arg(&body)
            .arg(format!("http://{}{url}", server.addr))
            .output()
            .expect("running curl");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        (status, stderr.contains("< HTTP/1.1 100"), stderr)
    };
    let put = |user: &str, url: &str| put_with("60", user, url);
    let user = format!("{id}:{secret}");
    let made = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &user])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg(format!("http://{}/expect", server.addr))
        .output()
        .expect("running curl");
    assert_eq!(String::from_utf8_lossy(&made.stdout), "200", "{made:?}");
    let refused = [
        (
            format!("{id}:{}", "x".repeat(40)),
            "/expect/bad-signature",
            "403",
        ),
        (
            format!("{other_id}:{other_secret}"),
            "/expect/other-account",
            "403",
        ),
        (user.clone(), "/no-such-bucket/k", "404"),
    ];
    for (user, url, expected) in &refused {
        let (status, continued, log) = put(user, url);
        assert_eq!(&status, expected, "{url}: {log}");
        assert!(!continued, "{url} was told 100 Continue: {log}");
    }
    // A client that sends its body without waiting still gets its refusal (the
    // unread body does not turn it into a reset).
    for (user, url, expected) in &refused {
        let (status, _, log) = put_with("0", user, url);
        assert_eq!(&status, expected, "{url}, body sent at once: {log}");
    }
    let (status, continued, log) = put(&user, "/expect/allowed");
    assert_eq!(status, "200", "{log}");
    assert!(continued, "the allowed PUT got no 100 Continue: {log}");
    let fetched = home.file("fetched");
    let got = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(&fetched)
        .args(["-w", "%{http_code}"])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &user])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg(format!("http://{}/expect/allowed", server.addr))
        .output()
        .expect("running curl");
    assert_eq!(String::from_utf8_lossy(&got.stdout), "200", "{got:?}");
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&body).unwrap()
    );
    // The server kept serving after the refusals, and only the allowed key exists.
    let (status, _, log) = put(&user, "/expect/again");
    assert_eq!(status, "200", "{log}");

    // boto3 (which sends Expect: 100-continue with PutObject bodies) on one pooled
    // connection: refusals by a bucket policy, whose bodies are never sent, alternate
    // with allowed uploads, and every allowed one arrives whole.
    let script = r#"
import json, os, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=os.environ["EP"], region_name="us-east-1",
    aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"],
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
        max_pool_connections=1))
s3.put_bucket_policy(Bucket="expect", Policy=json.dumps({"Statement": [{"Effect": "Deny",
    "Principal": "*", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::expect/denied/*"}]}))
for i in range(3):
    body = os.urandom(2 * 1024 * 1024)
    try:
        s3.put_object(Bucket="expect", Key=f"denied/{i}", Body=body)
        raise AssertionError("the denied PUT was stored")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "AccessDenied", e.response
    s3.put_object(Bucket="expect", Key=f"allowed/{i}", Body=body)
    assert s3.get_object(Bucket="expect", Key=f"allowed/{i}")["Body"].read() == body
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="expect", Prefix="denied/").get("Contents", [])]
assert keys == [], keys
print("OK: boto3 100-continue")
"#;
    let out = Command::new(venv_bin("python"))
        .args(["-c", script])
        .env("EP", format!("http://{}", server.addr))
        .env("AK", &id)
        .env("SK", &secret)
        .env_remove("AWS_PROFILE")
        .output()
        .expect("running python");
    assert_success(
        &format!("boto3 with refusals (server log:\n{})", server.log()),
        &out,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: boto3 100-continue"));
    server.stop();
}

/// Lifecycle with boto3 and the aws CLI: a rule with Expiration Days and
/// AbortIncompleteMultipartUpload under a prefix is stored and read back, what atrest
/// does not apply is refused (501), and the server's sweep (`--lifecycle-interval 1s`,
/// a lifecycle day shortened to 2 s by the test-only ATREST_TEST_LIFECYCLE_DAY_SECONDS)
/// deletes the expired objects under the prefix only, puts a delete marker over a
/// versioned one (its version kept), and aborts the stale upload: its encrypted part
/// files are gone from the store.
#[test]
fn lifecycle_rules_expire_objects_and_abort_stale_uploads() {
    if !require_test_venv(&["python", "aws"]) {
        return;
    }
    let home = Home::new();
    home.run(&["kms", "list-keys"]);
    let (id, secret) = access_key(&home, USER);
    let server = home.serve_env(
        &[
            ("ATREST_REGION", REGION),
            ("ATREST_TEST_LIFECYCLE_DAY_SECONDS", "2"),
        ],
        &[
            "s3",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--lifecycle-interval",
            "1s",
        ],
    );
    let work = home.file("work");
    std::fs::create_dir(&work).unwrap();
    let script = r#"
import json, os, subprocess, time, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=os.environ["EP"], region_name="us-east-1",
    aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"],
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
def code(call, **kwargs):
    try:
        call(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError(f"{call.__name__} succeeded")
rule = {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
    "Expiration": {"Days": 1}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
for bucket in ["life", "vlife"]:
    s3.create_bucket(Bucket=bucket)
    assert code(s3.get_bucket_lifecycle_configuration, Bucket=bucket) == "NoSuchLifecycleConfiguration"
s3.put_bucket_versioning(Bucket="vlife", VersioningConfiguration={"Status": "Enabled"})
for key in ["logs/a", "logs/b", "keep/c"]:
    s3.put_object(Bucket="life", Key=key, Body=b"lifecycle " + key.encode())
v = s3.put_object(Bucket="vlife", Key="logs/v", Body=b"versioned")["VersionId"]
mp = s3.create_multipart_upload(Bucket="life", Key="logs/mp")["UploadId"]
s3.upload_part(Bucket="life", Key="logs/mp", UploadId=mp, PartNumber=1, Body=b"p" * 1024)
kept = s3.create_multipart_upload(Bucket="life", Key="keep/mp")["UploadId"]
for bad in [
    dict(rule, Transitions=[{"Days": 1, "StorageClass": "GLACIER"}]),
    dict(rule, NoncurrentVersionExpiration={"NoncurrentDays": 1}),
    dict(rule, Filter={"Tag": {"Key": "k", "Value": "v"}}),
]:
    assert code(s3.put_bucket_lifecycle_configuration, Bucket="life",
        LifecycleConfiguration={"Rules": [bad]}) == "NotImplemented", bad
assert code(s3.put_bucket_lifecycle_configuration, Bucket="life",
    LifecycleConfiguration={"Rules": [rule, rule]}) == "InvalidArgument"
for bucket in ["life", "vlife"]:
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})
got = s3.get_bucket_lifecycle_configuration(Bucket="life")["Rules"]
assert got == [rule], got
env = dict(os.environ, AWS_ACCESS_KEY_ID=os.environ["AK"], AWS_SECRET_ACCESS_KEY=os.environ["SK"],
    AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.path.join(os.environ["WORK"], "none"),
    AWS_SHARED_CREDENTIALS_FILE=os.path.join(os.environ["WORK"], "none"))
out = subprocess.run([os.environ["AWS"], "--endpoint-url", os.environ["EP"], "s3api",
    "get-bucket-lifecycle-configuration", "--bucket", "vlife"], env=env, capture_output=True, text=True)
assert out.returncode == 0, out
assert json.loads(out.stdout)["Rules"][0]["Expiration"] == {"Days": 1}, out.stdout
# The sweep runs every second; a lifecycle day is 2 s. Wait for it (bounded).
def swept():
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="life").get("Contents", [])]
    uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket="life").get("Uploads", [])]
    versions = s3.list_object_versions(Bucket="vlife")
    markers = [m["Key"] for m in versions.get("DeleteMarkers", [])]
    return keys, uploads, markers, versions
for _ in range(120):
    keys, uploads, markers, versions = swept()
    if keys == ["keep/c"] and uploads == ["keep/mp"] and markers == ["logs/v"]:
        break
    time.sleep(0.5)
else:
    raise AssertionError(f"not swept: {swept()}")
assert [x["VersionId"] for x in versions["Versions"]] == [v], versions
# Later sweeps leave the marker alone (the key has no current object any more): a few
# sweeps on, there is still exactly one.
time.sleep(3)
later = s3.list_object_versions(Bucket="vlife")
assert len(later.get("DeleteMarkers", [])) == 1 and len(later["Versions"]) == 1, later
assert s3.get_object(Bucket="vlife", Key="logs/v", VersionId=v)["Body"].read() == b"versioned"
assert code(s3.list_parts, Bucket="life", Key="logs/mp", UploadId=mp) == "NoSuchUpload"
assert s3.get_object(Bucket="life", Key="keep/c")["Body"].read() == b"lifecycle keep/c"
s3.delete_bucket_lifecycle(Bucket="life")
assert code(s3.get_bucket_lifecycle_configuration, Bucket="life") == "NoSuchLifecycleConfiguration"
print("OK: lifecycle", mp)
"#;
    let out = Command::new(venv_bin("python"))
        .args(["-c", script])
        .env("EP", format!("http://{}", server.addr))
        .env("AK", &id)
        .env("SK", &secret)
        .env("AWS", venv_bin("aws"))
        .env("WORK", &work)
        .env_remove("AWS_PROFILE")
        .output()
        .expect("running python");
    assert_success(&format!("lifecycle (server log:\n{})", server.log()), &out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let aborted = stdout
        .trim()
        .strip_prefix("OK: lifecycle ")
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_owned();
    let log = server.log();
    assert!(
        log.contains("lifecycle: aborted the multipart upload"),
        "{log}"
    );
    server.stop();
    // The aborted upload's encrypted parts are gone from the store; the kept
    // upload's directory is still there.
    let files = files_under(&home.path().join("s3"));
    assert!(
        files
            .iter()
            .all(|p| !p.to_string_lossy().contains(&aborted)),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().contains("/uploads/")),
        "the upload outside the rule's prefix is gone: {files:?}"
    );
}
