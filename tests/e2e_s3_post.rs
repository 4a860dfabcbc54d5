//! Issue 21, browser uploads (S3 POST policy) with the real clients: boto3's
//! generate_presigned_post signs forms that Python's requests and curl post
//! (tests/py/test_s3_post.py) against `atrest s3 serve`; refused forms (tampered,
//! expired, too large, key outside the policy, unsigned, another account, cut short)
//! store nothing. This file then checks the server's side: no object file holds the
//! plaintext posted, each upload's data key was made for the form's signer, and the
//! 403 refusals are in the trail as refused PostObject requests.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{
    assert_success, contains, files_under, require_test_venv, require_tools, trail_records,
    venv_bin, Home,
};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const USER: &str = "arn:aws:iam::000000000000:user/FormUser";
const OTHER: &str = "arn:aws:iam::111111111111:user/Other";
const MARKER: &[u8] = b"POST-PLAINTEXT-MARKER-";

fn access_key(home: &Home, principal: &str) -> Value {
    let out = home.run(&["iam", "create-access-key", "--principal", principal]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    answer["AccessKey"].clone()
}

#[test]
fn browser_post_policy_uploads_are_signed_checked_and_encrypted() {
    if !(require_tools(&["curl"]) && require_test_venv(&["python"])) {
        return;
    }
    let home = Home::new();
    home.run(&["kms", "list-keys"]);
    let user = access_key(&home, USER);
    let other = access_key(&home, OTHER);
    let server = home.serve_env(
        &[("ATREST_REGION", REGION)],
        &["s3", "serve", "--listen", "127.0.0.1:0"],
    );
    let work = home.file("work");
    std::fs::create_dir(&work).unwrap();
    let credentials = json!({
        "user": {"AccessKeyId": user["AccessKeyId"], "SecretAccessKey": user["SecretAccessKey"]},
        "other": {"AccessKeyId": other["AccessKeyId"], "SecretAccessKey": other["SecretAccessKey"]},
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/test_s3_post.py");
    let out = Command::new(venv_bin("python"))
        .arg(&script)
        .env("ATREST_S3_ENDPOINT", format!("http://{}", server.addr))
        .env("ATREST_S3_REGION", REGION)
        .env("ATREST_CREDENTIALS", credentials.to_string())
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: S3 POST policy uploads"));
    server.stop();

    // At rest: every posted object is encrypted; no file holds the plaintext.
    let files = files_under(&home.path().join("s3"));
    assert!(files.len() > 5, "{files:?}");
    for path in &files {
        // Refused uploads leave no temporary file behind either.
        assert!(
            !path.to_string_lossy().ends_with(".tmp"),
            "{} left behind",
            path.display()
        );
        let stored = std::fs::read(path).unwrap();
        assert!(
            !contains(&stored, MARKER),
            "{} holds plaintext",
            path.display()
        );
    }
    // Each upload's data key was generated for the form's signer.
    let generated: Vec<Value> = trail_records(&home, "GenerateDataKey")
        .into_iter()
        .filter(|e| {
            e["requestParameters"]["encryptionContext"]["aws:s3:arn"]
                == "arn:aws:s3:::forms/uploads/hello.txt"
        })
        .collect();
    assert_eq!(generated.len(), 1, "{generated:?}");
    assert_eq!(generated[0]["userIdentity"]["arn"], USER);
    // The 403 refusals are in the trail: the signer when the signature verified.
    let refused = trail_records(&home, "PostObject");
    let codes: Vec<(&str, &str)> = refused
        .iter()
        .map(|e| {
            (
                e["errorCode"].as_str().unwrap_or_default(),
                e["userIdentity"]["arn"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    for wanted in [
        ("SignatureDoesNotMatch", "-"),
        ("AccessDenied", USER),
        ("AccessDenied", OTHER),
    ] {
        assert!(codes.contains(&wanted), "{wanted:?} not in {codes:?}");
    }
    assert!(refused
        .iter()
        .all(|e| e["requestParameters"]["bucketName"] == "forms"));
}
