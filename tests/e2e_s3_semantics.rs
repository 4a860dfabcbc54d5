//! Issue 21 items 1-2 with the real clients: boto3 and the aws CLI run
//! tests/py/test_s3_semantics.py (SSE-S3 by default, conditional requests, SSE-C, a
//! retried CompleteMultipartUpload, SSE-KMS header validation) against
//! `atrest s3 serve`; this file then checks the server's side: no object file holds
//! plaintext or the customer's key, the AWS managed key `alias/aws/s3` exists, and
//! every SSE-S3 upload is a GenerateDataKey under it in the trail, by the signer.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{assert_success, contains, files_under, trail_records, venv_bin, Home};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const USER: &str = "arn:aws:iam::000000000000:user/S3User";
const MARKER: &[u8] = b"SSE-C-PLAINTEXT-MARKER-";

#[test]
fn boto3_and_the_aws_cli_get_s3_data_protection_semantics() {
    let home = Home::new();
    home.run(&["kms", "list-keys"]);
    let out = home.run(&["iam", "create-access-key", "--principal", USER]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &answer["AccessKey"];
    let server = home.serve_env(
        // Debug logging: every refused request's error is logged, so the check
        // below that the SSE-C key never appears in the log means something.
        &[("ATREST_REGION", REGION), ("RUST_LOG", "debug")],
        &["s3", "serve", "--listen", "127.0.0.1:0"],
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
        .env("ATREST_S3_ENDPOINT", format!("http://{}", server.addr))
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
    common::require_tool("openssl");
    let home = Home::new();
    home.run(&["kms", "list-keys"]);
    let out = home.run(&["iam", "create-access-key", "--principal", USER]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &answer["AccessKey"];
    let (cert, tls_key) = (home.file("server-cert.pem"), home.file("server-key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .arg("-keyout")
        .arg(&tls_key)
        .arg("-out")
        .arg(&cert)
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .output()
        .expect("running openssl");
    assert_success("openssl req", &made);
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
