//! End-to-end tests of `atrest kms ...`: LAB step 1 through the real binary, the
//! aws-CLI-shaped output, error names and exit codes, and that no key material
//! reaches the trail, the logs or an error message.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use common::{contains, spellings, unseal_cmk_material};
use serde_json::Value;

/// One isolated atrest home; every command runs the real binary against it.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, bytes).expect("write input file");
        path
    }

    fn run_as(&self, principal: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atrest"));
        cmd.args(args)
            .env("ATREST_HOME", self.path().join("home"))
            .env("RUST_LOG", "trace")
            .env_remove("ATREST_REGION")
            .env_remove("ATREST_ACCOUNT")
            .env_remove("ATREST_ROOT_KEY_FILE")
            .env_remove("ATREST_CLOCK_OFFSET");
        match principal {
            Some(principal) => cmd.env("ATREST_PRINCIPAL", principal),
            None => cmd.env_remove("ATREST_PRINCIPAL"),
        };
        cmd.output().expect("run atrest")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_as(None, args)
    }

    /// Runs a command that must succeed and returns its JSON output (Null if none).
    fn ok(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "atrest {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!(
                "atrest {args:?} printed no JSON ({err}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs a command that must fail with a key-service error; returns stderr.
    fn service_error(&self, principal: Option<&str>, args: &[&str], aws_name: &str) -> String {
        let out = self.run_as(principal, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(254), "atrest {args:?}: {stderr}");
        let message = stderr.lines().last().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{aws_name}: ")),
            "atrest {args:?} should fail with {aws_name}, got: {stderr}"
        );
        assert!(out.stdout.is_empty(), "a failed call printed output");
        stderr
    }

    fn trail_events(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["trail", "lookup"];
        full.extend_from_slice(args);
        let out = self.ok(&full);
        out["Events"]
            .as_array()
            .expect("Events array")
            .iter()
            .map(|event| {
                serde_json::from_str(event["CloudTrailEvent"].as_str().expect("CloudTrailEvent"))
                    .expect("CloudTrailEvent is JSON")
            })
            .collect()
    }
}

fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {value}"))
}

#[test]
fn lab_step_1_runs_and_every_call_is_in_the_trail() {
    let home = Home::new();
    let created = home.ok(&[
        "kms",
        "create-key",
        "--alias",
        "alias/MyKMSKey",
        "--description",
        "lab key",
    ]);
    let metadata = &created["KeyMetadata"];
    let arn = str_of(metadata, "Arn").to_owned();
    let key_id = str_of(metadata, "KeyId").to_owned();
    assert!(
        arn.starts_with("arn:aws:kms:local:000000000000:key/"),
        "{arn}"
    );
    assert!(arn.ends_with(&key_id));
    assert_eq!(metadata["KeyState"], "Enabled");
    assert_eq!(metadata["Description"], "lab key");
    assert!(
        str_of(metadata, "CreationDate").contains('T'),
        "dates print in ISO 8601 like the aws CLI: {metadata}"
    );

    let aliases = home.ok(&["kms", "list-aliases", "--key-id", &key_id]);
    assert_eq!(aliases["Aliases"][0]["AliasName"], "alias/MyKMSKey");
    assert_eq!(aliases["Aliases"][0]["TargetKeyId"], key_id.as_str());

    let generated = home.ok(&[
        "kms",
        "generate-data-key",
        "--key-id",
        "alias/MyKMSKey",
        "--key-spec",
        "AES_256",
        "--encryption-context",
        "purpose=lab,step=1",
    ]);
    assert_eq!(generated["KeyId"], arn.as_str());
    let plaintext = BASE64
        .decode(str_of(&generated, "Plaintext"))
        .expect("Plaintext is base64");
    assert_eq!(plaintext.len(), 32);
    let blob = BASE64
        .decode(str_of(&generated, "CiphertextBlob"))
        .expect("CiphertextBlob is base64");
    let blob_file = home.file("datakey.bin", &blob);
    let blob_arg = format!("fileb://{}", blob_file.display());

    let decrypted = home.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blob_arg,
        "--encryption-context",
        r#"{"step":"1","purpose":"lab"}"#,
    ]);
    assert_eq!(decrypted["KeyId"], arn.as_str());
    assert_eq!(decrypted["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    assert_eq!(
        BASE64
            .decode(str_of(&decrypted, "Plaintext"))
            .expect("base64"),
        plaintext
    );

    assert_eq!(
        home.ok(&["kms", "disable-key", "--key-id", "alias/MyKMSKey"]),
        Value::Null
    );
    home.service_error(
        None,
        &["kms", "generate-data-key", "--key-id", "alias/MyKMSKey"],
        "DisabledException",
    );
    home.service_error(
        None,
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &blob_arg,
            "--encryption-context",
            "purpose=lab,step=1",
        ],
        "DisabledException",
    );

    home.ok(&["kms", "enable-key", "--key-id", &arn]);
    let again = home.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blob_arg,
        "--encryption-context",
        "purpose=lab,step=1",
        "--key-id",
        "alias/MyKMSKey",
    ]);
    assert_eq!(
        BASE64.decode(str_of(&again, "Plaintext")).expect("base64"),
        plaintext
    );

    let scheduled = home.ok(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &key_id,
        "--pending-window-in-days",
        "7",
    ]);
    assert_eq!(scheduled["KeyId"], arn.as_str());
    assert_eq!(scheduled["KeyState"], "PendingDeletion");
    assert_eq!(scheduled["PendingWindowInDays"], 7);
    home.service_error(
        None,
        &["kms", "generate-data-key", "--key-id", "alias/MyKMSKey"],
        "KMSInvalidStateException",
    );
    let cancelled = home.ok(&["kms", "cancel-key-deletion", "--key-id", &key_id]);
    assert_eq!(cancelled["KeyId"], arn.as_str());
    let described = home.ok(&["kms", "describe-key", "--key-id", "alias/MyKMSKey"]);
    assert_eq!(
        described["KeyMetadata"]["KeyState"], "Disabled",
        "CancelKeyDeletion leaves the key Disabled, as AWS"
    );

    // Every call above, in order, successful or not, is in the trail.
    let mut events = home.trail_events(&[]);
    events.reverse();
    let calls: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|e| (str_of(e, "eventName"), e["errorCode"].as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("CreateKey", None),
            ("CreateAlias", None),
            ("ListAliases", None),
            ("GenerateDataKey", None),
            ("Decrypt", None),
            ("DisableKey", None),
            ("GenerateDataKey", Some("DisabledException")),
            ("Decrypt", Some("DisabledException")),
            ("EnableKey", None),
            ("Decrypt", None),
            ("ScheduleKeyDeletion", None),
            ("GenerateDataKey", Some("KMSInvalidStateException")),
            ("CancelKeyDeletion", None),
            ("DescribeKey", None),
        ]
    );
    for event in &events {
        assert_eq!(event["eventSource"], "kms.amazonaws.com");
        assert_eq!(
            event["userIdentity"]["arn"],
            "arn:aws:iam::000000000000:root"
        );
        assert_eq!(event["userIdentity"]["type"], "Root");
        assert_eq!(event["awsRegion"], "local");
        assert_eq!(event["eventType"], "AwsApiCall");
        uuid_like(str_of(event, "eventID"));
    }

    // The filters of `trail lookup` find the data-key calls, including the failed ones.
    let data_keys = home.trail_events(&[
        "--event-name",
        "GenerateDataKey",
        "--key-id",
        "alias/MyKMSKey",
    ]);
    assert_eq!(data_keys.len(), 3);
    let first = data_keys.last().expect("oldest");
    assert_eq!(first["requestParameters"]["keyId"], "alias/MyKMSKey");
    assert_eq!(first["requestParameters"]["keySpec"], "AES_256");
    assert_eq!(
        first["requestParameters"]["encryptionContext"],
        serde_json::json!({"purpose": "lab", "step": "1"})
    );
    assert_eq!(first["resources"][0]["ARN"], arn.as_str());
    let failed = &data_keys[1];
    assert_eq!(failed["errorCode"], "DisabledException");
    assert!(failed["errorMessage"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(
        home.trail_events(&["--key-id", &arn, "--event-name", "Decrypt"])
            .len(),
        3
    );
    assert_eq!(
        home.trail_events(&["--key-id", &key_id, "--max-results", "2"])
            .len(),
        2
    );
    assert_eq!(
        home.trail_events(&["--principal", "arn:aws:iam::000000000000:user/nobody"])
            .len(),
        0
    );
    assert_eq!(
        home.trail_events(&["--start-time", "2000-01-01"]).len(),
        events.len()
    );
    assert_eq!(home.trail_events(&["--end-time", "2000-01-01"]).len(), 0);

    let report = home.ok(&["trail", "validate"]);
    assert_eq!(report["Valid"], true);
    assert_eq!(report["Records"], events.len());
}

fn uuid_like(text: &str) {
    let groups: Vec<usize> = text.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{text} is not a UUID");
}

#[test]
fn outputs_have_the_aws_shape() {
    let home = Home::new();
    let a = home.ok(&["kms", "create-key"])["KeyMetadata"]["Arn"]
        .as_str()
        .expect("arn")
        .to_owned();
    let b = home.ok(&["kms", "create-key", "--description", "second"])["KeyMetadata"]["KeyId"]
        .as_str()
        .expect("id")
        .to_owned();
    let keys = home.ok(&["kms", "list-keys"]);
    assert_eq!(keys["Keys"].as_array().expect("Keys").len(), 2);
    assert!(keys["Keys"]
        .as_array()
        .expect("Keys")
        .iter()
        .any(|k| k["KeyArn"] == a.as_str()));
    home.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/b",
        "--target-key-id",
        &b,
    ]);

    // Encrypt/decrypt with a file, re-encrypt to another key.
    let secret = home.file("secret.txt", b"attack at dawn");
    let encrypted = home.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        &a,
        "--plaintext",
        &format!("fileb://{}", secret.display()),
        "--encryption-context",
        "app=test",
    ]);
    assert_eq!(encrypted["KeyId"], a.as_str());
    assert_eq!(encrypted["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    let blob_b64 = str_of(&encrypted, "CiphertextBlob").to_owned();
    let reencrypted = home.ok(&[
        "kms",
        "re-encrypt",
        "--ciphertext-blob",
        &blob_b64,
        "--source-encryption-context",
        "app=test",
        "--destination-key-id",
        "alias/b",
        "--destination-encryption-context",
        "app=moved",
    ]);
    assert_eq!(reencrypted["SourceKeyId"], a.as_str());
    assert!(str_of(&reencrypted, "KeyId").ends_with(&b));
    let decrypted = home.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        str_of(&reencrypted, "CiphertextBlob"),
        "--encryption-context",
        "app=moved",
    ]);
    assert_eq!(
        BASE64
            .decode(str_of(&decrypted, "Plaintext"))
            .expect("base64"),
        b"attack at dawn"
    );

    let wrapped = home.ok(&[
        "kms",
        "generate-data-key-without-plaintext",
        "--key-id",
        &b,
        "--number-of-bytes",
        "64",
    ]);
    assert!(wrapped.get("Plaintext").is_none());
    let unwrapped = home.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        str_of(&wrapped, "CiphertextBlob"),
    ]);
    assert_eq!(
        BASE64
            .decode(str_of(&unwrapped, "Plaintext"))
            .expect("b64")
            .len(),
        64
    );
    let short = home.ok(&[
        "kms",
        "generate-data-key",
        "--key-id",
        &b,
        "--key-spec",
        "AES_128",
    ]);
    assert_eq!(
        BASE64
            .decode(str_of(&short, "Plaintext"))
            .expect("b64")
            .len(),
        16
    );

    // Rotation.
    home.ok(&[
        "kms",
        "enable-key-rotation",
        "--key-id",
        &a,
        "--rotation-period-in-days",
        "90",
    ]);
    let status = home.ok(&["kms", "get-key-rotation-status", "--key-id", &a]);
    assert_eq!(status["KeyRotationEnabled"], true);
    assert_eq!(status["RotationPeriodInDays"], 90);
    assert_eq!(
        home.ok(&["kms", "rotate-key-on-demand", "--key-id", &a])["KeyId"],
        a.as_str()
    );
    let rotations = home.ok(&["kms", "list-key-rotations", "--key-id", &a]);
    assert_eq!(rotations["Rotations"][0]["RotationType"], "ON_DEMAND");
    let old = home.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blob_b64,
        "--encryption-context",
        "app=test",
    ]);
    assert_eq!(
        BASE64.decode(str_of(&old, "Plaintext")).expect("b64"),
        b"attack at dawn"
    );
    home.ok(&["kms", "disable-key-rotation", "--key-id", &a]);
    assert_eq!(
        home.ok(&["kms", "get-key-rotation-status", "--key-id", &a])["KeyRotationEnabled"],
        false
    );

    // Policy and aliases.
    let policy = home.ok(&["kms", "get-key-policy", "--key-id", &a]);
    assert_eq!(policy["PolicyName"], "default");
    let document: Value = serde_json::from_str(str_of(&policy, "Policy")).expect("policy JSON");
    assert!(document["Statement"].is_array());
    home.ok(&[
        "kms",
        "update-alias",
        "--alias-name",
        "alias/b",
        "--target-key-id",
        &a,
    ]);
    assert!(
        str_of(
            &home.ok(&["kms", "describe-key", "--key-id", "alias/b"])["KeyMetadata"],
            "Arn"
        ) == a
    );
    home.ok(&["kms", "delete-alias", "--alias-name", "alias/b"]);
    assert_eq!(
        home.ok(&["kms", "list-aliases"])["Aliases"],
        serde_json::json!([])
    );
}

#[test]
fn tags_are_added_listed_and_removed_as_with_the_aws_cli() {
    let home = Home::new();
    home.ok(&["kms", "create-key", "--alias", "alias/tagged"]);
    let tags = |home: &Home| {
        let out = home.ok(&["kms", "list-resource-tags", "--key-id", "alias/tagged"]);
        assert_eq!(out["Truncated"], false);
        out["Tags"].clone()
    };
    assert_eq!(tags(&home), serde_json::json!([]));
    // Shorthand, several after one --tags, and an empty value.
    let added = home.ok(&[
        "kms",
        "tag-resource",
        "--key-id",
        "alias/tagged",
        "--tags",
        "TagKey=env,TagValue=prod",
        "TagKey=team,TagValue=",
    ]);
    assert_eq!(
        added,
        Value::Null,
        "tag-resource prints nothing, as aws kms"
    );
    // A JSON list; an existing key's value is overwritten.
    home.ok(&[
        "kms",
        "tag-resource",
        "--key-id",
        "alias/tagged",
        "--tags",
        r#"[{"TagKey": "env", "TagValue": "test"}, {"TagKey": "owner", "TagValue": "ops"}]"#,
    ]);
    assert_eq!(
        tags(&home),
        serde_json::json!([
            {"TagKey": "env", "TagValue": "test"},
            {"TagKey": "owner", "TagValue": "ops"},
            {"TagKey": "team", "TagValue": ""},
        ])
    );
    home.ok(&[
        "kms",
        "untag-resource",
        "--key-id",
        "alias/tagged",
        "--tag-keys",
        "env",
        "team",
    ]);
    assert_eq!(
        tags(&home),
        serde_json::json!([{"TagKey": "owner", "TagValue": "ops"}])
    );
    home.service_error(
        None,
        &[
            "kms",
            "tag-resource",
            "--key-id",
            "alias/tagged",
            "--tags",
            "TagKey=aws:reserved,TagValue=x",
        ],
        "TagException",
    );
    for bad in ["Key=x,Value=y", "TagKey=x", r#"[{"TagKey": 1}]"#] {
        let out = home.run(&[
            "kms",
            "tag-resource",
            "--key-id",
            "alias/tagged",
            "--tags",
            bad,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.contains("--tags"), "{bad}: {stderr}");
    }
    let events = home.trail_events(&["--event-name", "TagResource"]);
    assert_eq!(events.len(), 3, "two accepted and one refused TagResource");
}

#[test]
fn errors_carry_the_aws_name_and_exit_codes() {
    let home = Home::new();
    let key = home.ok(&["kms", "create-key"])["KeyMetadata"]["KeyId"]
        .as_str()
        .expect("id")
        .to_owned();
    home.service_error(
        None,
        &["kms", "describe-key", "--key-id", "alias/missing"],
        "NotFoundException",
    );
    home.service_error(
        None,
        &[
            "kms",
            "create-alias",
            "--alias-name",
            "alias/aws/mine",
            "--target-key-id",
            &key,
        ],
        "NotAuthorizedException",
    );
    home.service_error(
        None,
        &[
            "kms",
            "schedule-key-deletion",
            "--key-id",
            &key,
            "--pending-window-in-days",
            "3",
        ],
        "ValidationException",
    );
    home.service_error(
        None,
        &[
            "kms",
            "generate-data-key",
            "--key-id",
            &key,
            "--number-of-bytes",
            "1025",
        ],
        "ValidationException",
    );
    home.service_error(
        None,
        &[
            "kms",
            "generate-data-key",
            "--key-id",
            &key,
            "--key-spec",
            "AES_512",
        ],
        "ValidationException",
    );
    home.service_error(
        None,
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &BASE64.encode([7u8; 80]),
        ],
        "InvalidCiphertextException",
    );

    // Usage errors: non-zero, not the service's 254, and they say what was wrong.
    for (args, complaint) in [
        (vec!["kms", "describe-key"], "--key-id"),
        (
            vec!["kms", "describe-key", "--key-id", &key, "--bogus"],
            "--bogus",
        ),
        (
            vec!["kms", "decrypt", "--ciphertext-blob", "!!not base64!!"],
            "base64",
        ),
        (
            vec![
                "kms",
                "decrypt",
                "--ciphertext-blob",
                "fileb:///nonexistent/x",
            ],
            "/nonexistent/x",
        ),
        (
            vec![
                "kms",
                "generate-data-key",
                "--key-id",
                &key,
                "--encryption-context",
                "novalue",
            ],
            "key=value",
        ),
        (
            vec![
                "kms",
                "generate-data-key",
                "--key-id",
                &key,
                "--key-spec",
                "AES_256",
                "--number-of-bytes",
                "8",
            ],
            "--number-of-bytes",
        ),
    ] {
        let out = home.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_ne!(out.status.code(), Some(254), "{args:?}: {stderr}");
        assert!(stderr.contains(complaint), "{args:?}: {stderr}");
    }
}

#[test]
fn key_policy_separates_administrators_from_users() {
    let home = Home::new();
    let admin = "arn:aws:iam::000000000000:user/KeyAdmin";
    let user = "arn:aws:iam::000000000000:user/KeyUser";
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "root", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::000000000000:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "admins", "Effect": "Allow", "Principal": {"AWS": admin},
             "Action": ["kms:Describe*", "kms:Enable*", "kms:Disable*", "kms:ScheduleKeyDeletion",
                        "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand", "kms:PutKeyPolicy",
                        "kms:GetKeyPolicy"],
             "Resource": "*"},
            {"Sid": "users", "Effect": "Allow", "Principal": {"AWS": user},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                        "kms:DescribeKey"],
             "Resource": "*"},
        ],
    });
    let policy_file = home.file("policy.json", policy.to_string().as_bytes());
    home.ok(&[
        "kms",
        "create-key",
        "--alias",
        "alias/MyKMSKey",
        "--policy",
        &format!("file://{}", policy_file.display()),
    ]);
    let out = home.run_as(
        Some(user),
        &["kms", "generate-data-key", "--key-id", "alias/MyKMSKey"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: Value = serde_json::from_slice(&out.stdout).expect("json");
    let blob = str_of(&generated, "CiphertextBlob");

    home.service_error(
        Some(admin),
        &["kms", "decrypt", "--ciphertext-blob", blob],
        "AccessDeniedException",
    );
    home.service_error(
        Some(user),
        &["kms", "disable-key", "--key-id", "alias/MyKMSKey"],
        "AccessDeniedException",
    );
    let out = home.run_as(
        Some(admin),
        &["kms", "disable-key", "--key-id", "alias/MyKMSKey"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let denied = home.trail_events(&["--principal", admin, "--event-name", "Decrypt"]);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["errorCode"], "AccessDeniedException");
    assert_eq!(denied[0]["userIdentity"]["userName"], "KeyAdmin");
    assert_eq!(home.trail_events(&["--principal", "KeyUser"]).len(), 2);
}

#[test]
fn no_key_material_in_the_trail_logs_or_errors() {
    let home = Home::new();
    let mut stderr = Vec::new();
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let mut run = |args: &[&str]| -> Output {
        let out = home.run(args);
        stderr.extend_from_slice(&out.stderr);
        out
    };
    let parse = |out: &Output| -> Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let key = parse(&run(&["kms", "create-key", "--alias", "alias/secret-test"]))["KeyMetadata"]
        ["Arn"]
        .as_str()
        .expect("arn")
        .to_owned();
    let other = parse(&run(&["kms", "create-key"]))["KeyMetadata"]["Arn"]
        .as_str()
        .expect("arn")
        .to_owned();

    let mut blobs = Vec::new();
    for spec in ["AES_256", "AES_128"] {
        let generated = parse(&run(&[
            "kms",
            "generate-data-key",
            "--key-id",
            &key,
            "--key-spec",
            spec,
            "--encryption-context",
            "volume=v1",
        ]));
        secrets.push(BASE64.decode(str_of(&generated, "Plaintext")).expect("b64"));
        blobs.push(str_of(&generated, "CiphertextBlob").to_owned());
    }
    let message = b"the eagle lands at midnight; bring the blue folder";
    let message_file = home.file("message", message);
    secrets.push(message.to_vec());
    let encrypted = parse(&run(&[
        "kms",
        "encrypt",
        "--key-id",
        &key,
        "--plaintext",
        &format!("fileb://{}", message_file.display()),
    ]));
    blobs.push(str_of(&encrypted, "CiphertextBlob").to_owned());

    // Successful and failed uses of every secret.
    for blob in &blobs[..2] {
        parse(&run(&[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            blob,
            "--encryption-context",
            "volume=v1",
        ]));
        for (args, error) in [
            (
                vec!["--encryption-context", "volume=v2"],
                "InvalidCiphertextException",
            ),
            (
                vec!["--encryption-context", "volume=v1", "--key-id", &other],
                "IncorrectKeyException",
            ),
        ] {
            let mut full = vec!["kms", "decrypt", "--ciphertext-blob", blob.as_str()];
            full.extend(args);
            let out = run(&full);
            assert_eq!(out.status.code(), Some(254));
            assert!(String::from_utf8_lossy(&out.stderr).contains(error));
        }
        let mut tampered = BASE64.decode(blob).expect("b64");
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let out = run(&[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &BASE64.encode(&tampered),
            "--encryption-context",
            "volume=v1",
        ]);
        assert_eq!(out.status.code(), Some(254));
    }
    parse(&run(&[
        "kms",
        "re-encrypt",
        "--ciphertext-blob",
        &blobs[2],
        "--destination-key-id",
        &other,
    ]));
    assert!(run(&["kms", "disable-key", "--key-id", &key])
        .status
        .success());
    let out = run(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blobs[0],
        "--encryption-context",
        "volume=v1",
    ]);
    assert_eq!(out.status.code(), Some(254));
    parse(&run(&["kms", "rotate-key-on-demand", "--key-id", &other]));
    parse(&run(&["trail", "validate"]));

    let home_dir = home.path().join("home");
    let root_key = std::fs::read(home_dir.join("kms/root.key")).expect("root key file");
    let cmk_material = unseal_cmk_material(&home_dir, &root_key);
    assert_eq!(cmk_material.len(), 3, "two keys, one rotated");
    secrets.extend(cmk_material);
    secrets.push(root_key);
    let trail = std::fs::read(home_dir.join("trail/trail.jsonl")).expect("trail");
    assert!(trail.len() > 1000, "the trail recorded the calls");
    assert!(
        !stderr.is_empty(),
        "trace logging produced output to search"
    );
    for secret in &secrets {
        for form in spellings(secret) {
            assert!(!contains(&trail, &form), "key material in the trail");
            assert!(!contains(&stderr, &form), "key material in logs or errors");
        }
    }
    for blob in &blobs {
        assert!(
            !contains(&trail, blob.as_bytes()),
            "a ciphertext blob in the trail"
        );
    }
}
