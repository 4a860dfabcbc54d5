//! `atrest s3 serve` with the real clients: boto3, the aws CLI and curl (from the test
//! venv made by scripts/install-test-deps.sh, and apt) run LAB steps 2-5 and 7 for
//! objects (tests/py/test_s3_boto3.py); this file then checks what only the server's
//! side shows: the object files hold no plaintext, and the trail names the signer and
//! the object for every GenerateDataKey (PUT) and Decrypt (GET). `atrest gateway
//! serve` answers both APIs on one port.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

use common::{
    assert_success, contains, files_under, require_test_venv, require_tools, trail_records,
    venv_bin, Home, Served,
};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const USER: &str = "arn:aws:iam::000000000000:user/KeyUser";

fn access_key(home: &Home, principal: &str) -> (String, String) {
    let out = home.run(&["iam", "create-access-key", "--principal", principal]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &answer["AccessKey"];
    (
        key["AccessKeyId"].as_str().unwrap().to_owned(),
        key["SecretAccessKey"].as_str().unwrap().to_owned(),
    )
}

/// alias/MyKMSKey, made by the account root, usable by KeyUser (LAB step 1's policy).
fn lab_key(home: &Home) {
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "root", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::000000000000:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "KeyUsers", "Effect": "Allow", "Principal": {"AWS": USER},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                        "kms:GenerateDataKey*", "kms:DescribeKey"],
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
}

fn serve(home: &Home, command: &str) -> Served {
    home.serve_env(
        &[("ATREST_REGION", REGION)],
        &[command, "serve", "--listen", "127.0.0.1:0"],
    )
}

#[test]
fn boto3_aws_cli_and_curl_run_the_object_lab_steps() {
    if !(require_tools(&["curl"]) && require_test_venv(&["python", "aws"])) {
        return;
    }
    let home = Home::new();
    home.run(&["kms", "list-keys"]);
    lab_key(&home);
    let (id, secret) = access_key(&home, USER);
    let server = serve(&home, "s3");
    let work = home.file("work");
    std::fs::create_dir(&work).unwrap();
    let credentials = json!({"user": {"AccessKeyId": id, "SecretAccessKey": secret, "Arn": USER}});
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/test_s3_boto3.py");
    let mut python = Command::new(venv_bin("python"));
    python
        .arg(&script)
        .env("ATREST_S3_ENDPOINT", format!("http://{}", server.addr))
        .env("ATREST_S3_REGION", REGION)
        .env("ATREST_CREDENTIALS", credentials.to_string())
        .env("ATREST_AWS_CLI", venv_bin("aws"))
        .env("ATREST_CURL", "curl")
        .env("ATREST_BIN", env!("CARGO_BIN_EXE_atrest"))
        .env("ATREST_HOME", home.path())
        .env("ATREST_REGION", REGION)
        .env("ATREST_WORKDIR", &work)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let out = python.output().expect("running python");
    assert_success(
        &format!("{} (server log:\n{})", script.display(), server.log()),
        &out,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: LAB steps 2-5 and 7"));

    // At rest: no object file holds any run of the PNG's bytes.
    let png = std::fs::read(work.join("clock.png")).unwrap();
    let object_files = files_under(&home.path().join("s3"));
    assert!(
        object_files
            .iter()
            .any(|p| std::fs::metadata(p).unwrap().len() > png.len() as u64),
        "no object file found under {}",
        home.path().join("s3").display()
    );
    for path in &object_files {
        let stored = std::fs::read(path).unwrap();
        let runs: HashSet<&[u8]> = stored.windows(32).collect();
        for window in png.chunks(32).filter(|w| w.len() == 32) {
            assert!(
                !runs.contains(window),
                "{} holds plaintext of clock.png",
                path.display()
            );
        }
        assert!(!contains(&stored, b"IHDR"), "{}", path.display());
    }

    // The trail: KeyUser's GenerateDataKey for the upload and Decrypt for each GET,
    // with the object's ARN in the encryption context.
    let arn = "arn:aws:s3:::lab-bucket/clock.png";
    let for_object = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e.to_string().contains(arn))
            .cloned()
            .collect()
    };
    let generated = for_object(&trail_records(&home, "GenerateDataKey"));
    assert!(!generated.is_empty(), "no GenerateDataKey for {arn}");
    for event in &generated {
        assert_eq!(
            event["requestParameters"]["encryptionContext"]["aws:s3:arn"], arn,
            "{event}"
        );
        assert_eq!(event["userIdentity"]["arn"], USER, "{event}");
    }
    let decrypts = for_object(&trail_records(&home, "Decrypt"));
    let ok: Vec<&Value> = decrypts
        .iter()
        .filter(|e| e.get("errorCode").is_none_or(Value::is_null))
        .collect();
    assert!(ok.len() >= 4, "expected the GETs' Decrypts: {decrypts:?}");
    for event in &decrypts {
        assert_eq!(event["userIdentity"]["arn"], USER, "{event}");
        assert_eq!(
            event["requestParameters"]["encryptionContext"]["aws:s3:arn"], arn,
            "{event}"
        );
    }
    assert!(
        decrypts
            .iter()
            .any(|e| e.to_string().contains("DisabledException")),
        "the refused Decrypt while the key was disabled is audited: {decrypts:?}"
    );
    server.stop();
}

#[test]
fn gateway_serve_answers_kms_and_s3_on_one_port() {
    if !require_test_venv(&["aws"]) {
        return;
    }
    let home = Home::new();
    let (id, secret) = access_key(&home, "arn:aws:iam::000000000000:root");
    let server = serve(&home, "gateway");
    let endpoint = format!("http://{}", server.addr);
    let aws = |args: &[&str]| {
        let out = Command::new(venv_bin("aws"))
            .arg("--endpoint-url")
            .arg(&endpoint)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &id)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_CONFIG_FILE", home.file("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                home.file("no-aws-credentials"),
            )
            .env_remove("AWS_PROFILE")
            .output()
            .expect("running aws");
        assert_success(
            &format!("aws {} (server log:\n{})", args.join(" "), server.log()),
            &out,
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let created: Value =
        serde_json::from_str(&aws(&["kms", "create-key", "--description", "one port"])).unwrap();
    let key_arn = created["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    aws(&["s3api", "create-bucket", "--bucket", "both"]);
    let file = home.file("hello.txt");
    std::fs::write(&file, "hello over one port\n").unwrap();
    let put: Value = serde_json::from_str(&aws(&[
        "s3api",
        "put-object",
        "--bucket",
        "both",
        "--key",
        "hello.txt",
        "--body",
        file.to_str().unwrap(),
        "--server-side-encryption",
        "aws:kms",
        "--ssekms-key-id",
        &key_arn,
    ]))
    .unwrap();
    assert_eq!(put["SSEKMSKeyId"], key_arn.as_str());
    let listed = aws(&["s3", "ls", "s3://both/"]);
    assert!(listed.contains("hello.txt"), "{listed}");
    let keys = aws(&["kms", "list-keys"]);
    assert!(keys.contains(&key_arn), "{keys}");
    server.stop();
}
