//! S3 multipart uploads with the real clients (tests/py/test_s3_multipart.py: the aws
//! CLI's default multipart `cp` of a 40 MiB file up and down, boto3's explicit parts
//! and errors); this file then checks the server's side: no file under the store
//! holds plaintext of the big file, no upload is left, and the trail shows the
//! signer's GenerateDataKey and Decrypt calls under the object's ARN.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

use common::{assert_success, files_under, require_test_venv, trail_records, venv_bin, Home};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const USER: &str = "arn:aws:iam::000000000000:user/KeyUser";

#[test]
fn aws_cli_and_boto3_multipart_uploads() {
    if !require_test_venv(&["python", "aws"]) {
        return;
    }
    let home = Home::new();
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "root", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::000000000000:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "KeyUsers", "Effect": "Allow", "Principal": {"AWS": USER},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
             "Resource": "*"},
        ],
    });
    home.run(&[
        "kms",
        "create-key",
        "--alias",
        "alias/MyKMSKey",
        "--policy",
        &policy.to_string(),
    ]);
    let out = home.run(&["iam", "create-access-key", "--principal", USER]);
    let key: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &key["AccessKey"];
    let server = home.serve_env(
        &[("ATREST_REGION", REGION)],
        &["s3", "serve", "--listen", "127.0.0.1:0"],
    );
    let work = home.file("work");
    std::fs::create_dir(&work).unwrap();
    let credentials = json!({"user": {
        "AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"], "Arn": USER}});
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/test_s3_multipart.py");
    let out = Command::new(venv_bin("python"))
        .arg(&script)
        .env("ATREST_S3_ENDPOINT", format!("http://{}", server.addr))
        .env("ATREST_S3_REGION", REGION)
        .env("ATREST_CREDENTIALS", credentials.to_string())
        .env("ATREST_AWS_CLI", venv_bin("aws"))
        .env("ATREST_WORKDIR", &work)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("running python");
    assert_success(
        &format!("{} (server log:\n{})", script.display(), server.log()),
        &out,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: multipart uploads"));

    // At rest: samples of the big file appear in no file of the store, and no
    // upload directory is left.
    let big = std::fs::read(work.join("big.bin")).unwrap();
    let samples: HashSet<&[u8]> = (0..64)
        .map(|i| &big[i * (big.len() / 64)..][..32])
        .collect();
    let files = files_under(&home.path().join("s3"));
    assert!(files
        .iter()
        .any(|p| p.metadata().unwrap().len() > big.len() as u64));
    for path in &files {
        assert!(
            !path.to_string_lossy().contains("/uploads/") || path.ends_with("uploads"),
            "upload file left: {}",
            path.display()
        );
        let stored = std::fs::read(path).unwrap();
        assert!(
            !stored.windows(32).any(|w| samples.contains(w)),
            "{} holds plaintext",
            path.display()
        );
    }

    // The trail: the signer's GenerateDataKey (upload key, then the object's key on
    // Complete) and Decrypts (each UploadPart, Complete, the GET), all under the
    // object's ARN.
    let arn = "arn:aws:s3:::mpu-bucket/big.bin";
    for (event, at_least) in [("GenerateDataKey", 2), ("Decrypt", 3)] {
        let events: Vec<Value> = trail_records(&home, event)
            .into_iter()
            .filter(|e| e.to_string().contains(arn))
            .collect();
        assert!(events.len() >= at_least, "{event} for {arn}: {events:?}");
        for e in &events {
            assert_eq!(e["userIdentity"]["arn"], USER, "{e}");
            assert_eq!(
                e["requestParameters"]["encryptionContext"]["aws:s3:arn"], arn,
                "{e}"
            );
        }
    }
    server.stop();
}
