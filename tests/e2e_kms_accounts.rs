//! Accounts (issue 16 item 1), refusals before the key service in the trail (item 2,
//! the validation part) and AWS fidelity (item 4), end to end: `atrest kms serve`
//! with boto3 and the aws CLI (tests/py/test_kms_accounts.py), the local CLI with
//! `ATREST_PRINCIPAL`, and a keystore written by atrest before accounts existed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_success, require_test_venv, trail_records, venv_bin, Home};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const EVE: &str = "arn:aws:iam::111111111111:user/Eve";
const ALICE: &str = "arn:aws:iam::000000000000:user/Alice";

fn access_key(home: &Home, principal: &str) -> Value {
    let out = home.run(&["iam", "create-access-key", "--principal", principal]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &answer["AccessKey"];
    json!({
        "AccessKeyId": key["AccessKeyId"],
        "SecretAccessKey": key["SecretAccessKey"],
        "Arn": principal,
    })
}

/// The records of `event` that failed with `code`, as (principal ARN, message).
fn refusals(home: &Home, event: &str, code: &str) -> Vec<(String, String)> {
    trail_records(home, event)
        .into_iter()
        .filter(|r| r["errorCode"] == code)
        .map(|r| {
            (
                r["userIdentity"]["arn"].as_str().unwrap_or("").to_owned(),
                r["errorMessage"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn boto3_and_aws_cli_accounts_are_isolated_refusals_audited_and_answers_match_aws() {
    if !require_test_venv(&["python", "aws"]) {
        return;
    }
    let home = Home::new();
    let credentials = json!({
        "root": access_key(&home, "arn:aws:iam::000000000000:root"),
        "alice": access_key(&home, ALICE),
        "eve": access_key(&home, EVE),
        "eve_root": access_key(&home, "arn:aws:iam::111111111111:root"),
    });
    let server = home.serve_env(
        &[("ATREST_REGION", REGION)],
        &["kms", "serve", "--listen", "127.0.0.1:0"],
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/test_kms_accounts.py");
    let out = Command::new(venv_bin("python"))
        .arg(&script)
        .env("ATREST_KMS_ENDPOINT", format!("http://{}", server.addr))
        .env("ATREST_KMS_REGION", REGION)
        .env("ATREST_CREDENTIALS", credentials.to_string())
        .env("ATREST_AWS_CLI", venv_bin("aws"))
        .env_remove("AWS_PROFILE")
        .output()
        .expect("running python");
    assert_success(
        &format!("{} (server log:\n{})", script.display(), server.log()),
        &out,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK: accounts"), "{stdout}");
    let facts: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FACTS "))
        .map(|l| serde_json::from_str(l).expect("FACTS is JSON"))
        .expect("the script printed its FACTS");
    server.stop();

    // Every refusal before the key service is in the trail, once, with who and why.
    for (event, code, at_least) in [
        ("CreateKey", "TagException", 1),
        ("GenerateDataKey", "ValidationException", 2),
        ("Decrypt", "ValidationException", 1),
        ("GenerateRandom", "ValidationException", 1),
    ] {
        let by_alice: Vec<_> = refusals(&home, event, code)
            .into_iter()
            .filter(|(who, _)| who == ALICE)
            .collect();
        assert!(
            by_alice.len() >= at_least,
            "{event} {code}: {by_alice:?} in the trail"
        );
        assert!(by_alice.iter().all(|(_, message)| !message.is_empty()));
    }
    let gdk = refusals(&home, "GenerateDataKey", "ValidationException");
    assert!(
        gdk.iter().any(|(_, m)| m.contains("1024")),
        "NumberOfBytes 1025 refusal: {gdk:?}"
    );
    // The refused Decrypt names no ciphertext and no plaintext.
    for record in trail_records(&home, "Decrypt") {
        assert!(record["requestParameters"].get("ciphertextBlob").is_none());
    }

    // Eve's tries on the home account's key are refused and recorded under her name.
    let home_key = facts["home_key"].as_str().unwrap();
    for (event, code) in [
        ("DisableKey", "NotFoundException"),
        ("ScheduleKeyDeletion", "NotFoundException"),
        ("PutKeyPolicy", "NotFoundException"),
        ("CreateAlias", "NotFoundException"),
        ("Decrypt", "AccessDeniedException"),
        ("GenerateDataKey", "AccessDeniedException"),
    ] {
        let by_eve: Vec<_> = refusals(&home, event, code)
            .into_iter()
            .filter(|(who, _)| who == EVE)
            .collect();
        assert!(!by_eve.is_empty(), "no refused {event} by Eve in the trail");
        assert!(
            by_eve.iter().any(|(_, m)| m.contains(home_key)),
            "{event}: {by_eve:?}"
        );
    }
    // Her allowed cross-account GenerateDataKey names the home account's key.
    let shared = facts["shared_key"].as_str().unwrap();
    assert!(trail_records(&home, "GenerateDataKey").iter().any(|r| {
        r["userIdentity"]["arn"] == EVE
            && r["errorCode"].is_null()
            && r["resources"][0]["ARN"] == shared
    }));
}

/// Runs the CLI as `principal` (and `account`, when given) in `home`.
fn cli(home: &Home, principal: Option<&str>, account: Option<&str>, args: &[&str]) -> Value {
    let mut cmd = home.atrest();
    if let Some(principal) = principal {
        cmd.env("ATREST_PRINCIPAL", principal);
    }
    if let Some(account) = account {
        cmd.env("ATREST_ACCOUNT", account);
    }
    let out = cmd.args(args).output().expect("running atrest");
    assert_success(&format!("atrest {}", args.join(" ")), &out);
    if out.stdout.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).expect("atrest prints JSON")
}

fn cli_error(home: &Home, principal: &str, args: &[&str]) -> String {
    let out = home
        .atrest()
        .env("ATREST_PRINCIPAL", principal)
        .args(args)
        .output()
        .expect("running atrest");
    assert!(
        !out.status.success(),
        "atrest {args:?} as {principal} succeeded"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn local_cli_acts_in_the_account_of_atrest_principal() {
    let home = Home::new();
    let mine = cli(&home, None, None, &["kms", "create-key"]);
    let mine = mine["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    cli(
        &home,
        None,
        None,
        &[
            "kms",
            "create-alias",
            "--alias-name",
            "alias/payments",
            "--target-key-id",
            &mine,
        ],
    );

    let eves = cli(&home, Some(EVE), None, &["kms", "create-key"]);
    let eves = eves["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    assert!(
        eves.starts_with("arn:aws:kms:local:111111111111:key/"),
        "{eves}"
    );
    // Her alias/payments is hers; the home account's resolves as before.
    cli(
        &home,
        Some(EVE),
        None,
        &[
            "kms",
            "create-alias",
            "--alias-name",
            "alias/payments",
            "--target-key-id",
            &eves,
        ],
    );
    let resolved = cli(
        &home,
        None,
        None,
        &["kms", "describe-key", "--key-id", "alias/payments"],
    );
    assert_eq!(resolved["KeyMetadata"]["Arn"], mine.as_str());
    let listed = cli(&home, Some(EVE), None, &["kms", "list-keys"]);
    assert_eq!(
        listed["Keys"],
        json!([{"KeyId": eves.rsplit('/').next().unwrap(), "KeyArn": eves}])
    );
    let policies = cli(
        &home,
        Some(EVE),
        None,
        &["kms", "list-key-policies", "--key-id", &eves],
    );
    assert_eq!(
        policies,
        json!({"PolicyNames": ["default"], "Truncated": false})
    );
    let random = cli(
        &home,
        None,
        None,
        &["kms", "generate-random", "--number-of-bytes", "48"],
    );
    assert_eq!(random["Plaintext"].as_str().unwrap().len(), 64);
    let listed = cli(&home, None, None, &["kms", "list-aliases"]);
    let aliases = listed["Aliases"].as_array().unwrap();
    assert_eq!(aliases.len(), 1, "{aliases:?}");
    assert!(aliases[0]["AliasArn"]
        .as_str()
        .unwrap()
        .contains(":000000000000:alias/payments"));

    let stderr = cli_error(&home, EVE, &["kms", "disable-key", "--key-id", &mine]);
    assert!(stderr.contains("NotFoundException"), "{stderr}");
    let id = mine.rsplit('/').next().unwrap();
    let stderr = cli_error(&home, EVE, &["kms", "describe-key", "--key-id", id]);
    assert!(stderr.contains("NotFoundException"), "{stderr}");
    let stderr = cli_error(
        &home,
        EVE,
        &["kms", "encrypt", "--key-id", &mine, "--plaintext", "eA=="],
    );
    assert!(stderr.contains("AccessDeniedException"), "{stderr}");

    // An ATREST_ACCOUNT that contradicts the principal is refused, not guessed.
    let out = home
        .atrest()
        .env("ATREST_PRINCIPAL", EVE)
        .env("ATREST_ACCOUNT", "000000000000")
        .args(["kms", "list-keys"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ATREST_ACCOUNT"), "{stderr}");
    cli(
        &home,
        Some(EVE),
        Some("111111111111"),
        &["kms", "describe-key", "--key-id", &eves],
    );
}

fn copy_fixture(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for name in ["keystore.json", "root.key"] {
        let target = to.join(name);
        std::fs::copy(from.join(name), &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// tests/fixtures/keystore-v1 was written by atrest before accounts (keystore format
/// 1, commit 133e706): key 17c1231e-... with alias/payments, and blob.bin, "sealed
/// before accounts existed" encrypted under it with context purpose=compat.
#[test]
fn keystore_v1_written_before_accounts_still_opens_in_the_account_of_its_arns() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keystore-v1");
    let home = Home::new();
    copy_fixture(&fixture, &home.path().join("kms"));
    let arn = "arn:aws:kms:local:000000000000:key/17c1231e-c683-4d88-8396-045f02fbb7c5";

    // Eve opens it first: nothing of it is hers.
    let listed = cli(&home, Some(EVE), None, &["kms", "list-keys"]);
    assert_eq!(listed["Keys"], json!([]));
    let stderr = cli_error(
        &home,
        EVE,
        &["kms", "describe-key", "--key-id", "alias/payments"],
    );
    assert!(stderr.contains("NotFoundException"), "{stderr}");

    let described = cli(
        &home,
        None,
        None,
        &["kms", "describe-key", "--key-id", "alias/payments"],
    );
    assert_eq!(described["KeyMetadata"]["Arn"], arn);
    assert_eq!(described["KeyMetadata"]["AWSAccountId"], "000000000000");
    let blob = fixture.join("blob.bin");
    let decrypted = cli(
        &home,
        None,
        None,
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &format!("fileb://{}", blob.display()),
            "--encryption-context",
            "purpose=compat",
        ],
    );
    assert_eq!(decrypted["KeyId"], arn);
    use base64::Engine;
    let plaintext = base64::engine::general_purpose::STANDARD
        .decode(decrypted["Plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(plaintext, b"sealed before accounts existed");

    // The first update writes format 2 with the account spelled out; it still opens.
    cli(
        &home,
        None,
        None,
        &[
            "kms",
            "tag-resource",
            "--key-id",
            arn,
            "--tags",
            "TagKey=era,TagValue=v1",
        ],
    );
    let text = std::fs::read_to_string(home.path().join("kms/keystore.json")).unwrap();
    assert!(text.starts_with("atrest-keystore 2 "), "{}", &text[..40]);
    assert!(text.contains("\"account\": \"000000000000\""));
    let aliases = cli(&home, None, None, &["kms", "list-aliases"]);
    assert_eq!(aliases["Aliases"][0]["AliasName"], "alias/payments");
    assert_eq!(
        aliases["Aliases"][0]["TargetKeyId"],
        "17c1231e-c683-4d88-8396-045f02fbb7c5"
    );
    // Opened later under another ATREST_ACCOUNT, the key stays the account's it was.
    let other = cli(&home, None, Some("222222222222"), &["kms", "list-keys"]);
    assert_eq!(other["Keys"], json!([]));
}
