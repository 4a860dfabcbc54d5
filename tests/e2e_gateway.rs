//! `atrest kms serve` with the real AWS clients: boto3 and the aws CLI (from PyPI, in
//! the test venv made by scripts/install-test-deps.sh) run LAB step 1 and the
//! authentication failures; `atrest iam create-access-key`; and the remote key
//! service client against atrest's endpoint and moto's server mode.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_success, require_test_venv, venv_bin, Home, Served};
use crypto_core::kms::{
    CreateKeyRequest, DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest,
    KeyService, KeyState, ListRequest,
};
use gateway::sigv4::SigningCredentials;
use gateway::{RemoteKms, RemoteKmsConfig};
use serde_json::{json, Value};
use zeroize::Zeroizing;

const REGION: &str = "us-east-1";

struct AccessKey {
    id: String,
    secret: String,
    arn: String,
}

fn create_access_key(home: &Home, principal: &str) -> AccessKey {
    let out = home.run(&["iam", "create-access-key", "--principal", principal]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &answer["AccessKey"];
    AccessKey {
        id: key["AccessKeyId"].as_str().expect("AccessKeyId").to_owned(),
        secret: key["SecretAccessKey"]
            .as_str()
            .expect("SecretAccessKey")
            .to_owned(),
        arn: principal.to_owned(),
    }
}

fn serve_kms(home: &Home) -> Served {
    home.serve_env(
        &[("ATREST_REGION", REGION)],
        &["kms", "serve", "--listen", "127.0.0.1:0"],
    )
}

fn remote(endpoint: &str, id: &str, secret: &str) -> RemoteKms {
    RemoteKms::new(RemoteKmsConfig {
        endpoint: endpoint.to_owned(),
        region: REGION.into(),
        credentials: SigningCredentials {
            access_key_id: id.to_owned(),
            secret_access_key: Zeroizing::new(secret.to_owned()),
            session_token: None,
        },
        timeout: Duration::from_secs(30),
        ca_bundle: None,
    })
    .expect("a valid endpoint")
}

#[test]
fn iam_create_access_key_prints_aws_shape_and_keeps_the_file_private() {
    let home = Home::new();
    let out = home.run(&[
        "iam",
        "create-access-key",
        "--principal",
        "arn:aws:iam::000000000000:user/alice",
    ]);
    let answer: Value = serde_json::from_str(&out).expect("JSON");
    let key = &answer["AccessKey"];
    assert_eq!(key["UserName"], "alice");
    assert_eq!(key["Status"], "Active");
    assert!(key["AccessKeyId"].as_str().unwrap().starts_with("AKIA"));
    assert_eq!(key["SecretAccessKey"].as_str().unwrap().len(), 40);
    assert!(key["CreateDate"].as_str().unwrap().ends_with('Z'));
    let file = home.path().join("iam/access-keys.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let role = home.run(&[
        "iam",
        "create-access-key",
        "--principal",
        "arn:aws:iam::000000000000:role/app",
    ]);
    let role: Value = serde_json::from_str(&role).unwrap();
    assert!(role["AccessKey"].get("UserName").is_none());

    let bad = home
        .atrest()
        .args(["iam", "create-access-key", "--principal", "alice"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an ARN"));
}

#[test]
fn boto3_and_aws_cli_run_lab_step_1_and_bad_signatures_are_refused() {
    if !require_test_venv(&["python", "aws"]) {
        return;
    }
    let home = Home::new();
    let root = create_access_key(&home, "arn:aws:iam::000000000000:root");
    let admin = create_access_key(&home, "arn:aws:iam::000000000000:user/KeyAdmin");
    let user = create_access_key(&home, "arn:aws:iam::000000000000:user/KeyUser");
    let server = serve_kms(&home);
    let credentials = json!({
        "root": {"AccessKeyId": root.id, "SecretAccessKey": root.secret, "Arn": root.arn},
        "admin": {"AccessKeyId": admin.id, "SecretAccessKey": admin.secret, "Arn": admin.arn},
        "user": {"AccessKeyId": user.id, "SecretAccessKey": user.secret, "Arn": user.arn},
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/test_kms_boto3.py");
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: LAB step 1"));

    // The trail names the signing principals: the user's GenerateDataKey and the
    // administrator's refused Decrypt.
    let events = home.run(&["trail", "lookup", "--event-name", "Decrypt"]);
    assert!(events.contains("user/KeyAdmin"), "{events}");
    assert!(events.contains("AccessDeniedException"), "{events}");
    let events = home.run(&["trail", "lookup", "--event-name", "GenerateDataKey"]);
    assert!(events.contains("user/KeyUser"), "{events}");
    server.stop();
}

#[test]
fn remote_kms_uses_atrests_endpoint_with_a_key_made_by_the_cli() {
    let home = Home::new();
    let root = create_access_key(&home, "arn:aws:iam::000000000000:root");
    let server = serve_kms(&home);
    let kms = remote(&format!("http://{}", server.addr), &root.id, &root.secret);
    let key = kms
        .create_key(&CreateKeyRequest::default())
        .expect("CreateKey");
    kms.create_alias("alias/remote", &key.key_id).unwrap();
    let context: EncryptionContext = [("atrest:volume-id".to_owned(), "v1".to_owned())].into();
    let generated = kms
        .generate_data_key(&GenerateDataKeyRequest {
            key_id: "alias/remote".into(),
            spec: DataKeySpec::Bytes(64),
            encryption_context: context.clone(),
        })
        .expect("GenerateDataKey");
    // The local CLI, on the same home, sees the key and decrypts the blob.
    let blob = home.file("blob");
    std::fs::write(&blob, &generated.ciphertext_blob).unwrap();
    let local: Value = serde_json::from_str(&home.run(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &format!("fileb://{}", blob.display()),
        "--encryption-context",
        "atrest:volume-id=v1",
    ]))
    .unwrap();
    use base64::Engine;
    assert_eq!(
        local["Plaintext"].as_str().unwrap(),
        base64::engine::general_purpose::STANDARD.encode(generated.plaintext.expose())
    );
    home.run(&["kms", "disable-key", "--key-id", "alias/remote"]);
    assert_eq!(
        kms.describe_key("alias/remote").unwrap().key_state,
        KeyState::Disabled
    );
    let err = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: generated.ciphertext_blob,
            encryption_context: context,
            key_id: None,
        })
        .unwrap_err();
    assert_eq!(err.aws_name(), "DisabledException");
    let wrong = remote(
        &format!("http://{}", server.addr),
        &root.id,
        &"z".repeat(40),
    );
    let err = wrong.list_keys(&ListRequest::default()).unwrap_err();
    assert!(
        err.to_string().contains("InvalidSignatureException"),
        "{err}"
    );
    server.stop();
}

/// moto's server mode on a free port, killed on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Moto {
    fn start() -> Moto {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let mut moto = Moto { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto.addr = addr;
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn remote_kms_works_against_moto_server() {
    if !require_test_venv(&["moto_server"]) {
        return;
    }
    let moto = Moto::start();
    // moto accepts any credentials; it checks no signature.
    let kms = remote(&format!("http://{}", moto.addr), "AKIAMOTO", "moto-secret");
    let key = kms
        .create_key(&CreateKeyRequest {
            description: "atrest against moto".into(),
            ..CreateKeyRequest::default()
        })
        .expect("CreateKey on moto");
    assert_eq!(key.key_state, KeyState::Enabled);
    assert_eq!(kms.describe_key(&key.key_id).unwrap().arn, key.arn);
    kms.create_alias("alias/moto", &key.key_id).unwrap();
    let aliases = kms
        .list_aliases(Some(&key.key_id), &ListRequest::default())
        .unwrap();
    assert!(aliases.items.iter().any(|a| a.alias_name == "alias/moto"));
    let context: EncryptionContext = [("atrest:volume-id".to_owned(), "m1".to_owned())].into();
    let generated = kms
        .generate_data_key(&GenerateDataKeyRequest {
            key_id: "alias/moto".into(),
            spec: DataKeySpec::Bytes(64),
            encryption_context: context.clone(),
        })
        .expect("GenerateDataKey on moto");
    assert_eq!(generated.plaintext.len(), 64);
    let back = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: generated.ciphertext_blob.clone(),
            encryption_context: context.clone(),
            key_id: None,
        })
        .expect("Decrypt on moto");
    assert_eq!(back.plaintext.expose(), generated.plaintext.expose());
    let wrapped = kms
        .generate_data_key_without_plaintext(&GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            spec: DataKeySpec::Aes256,
            encryption_context: context.clone(),
        })
        .unwrap();
    assert!(!wrapped.ciphertext_blob.is_empty());
    let sealed = kms.encrypt(&key.key_id, b"object", &context).unwrap();
    let opened = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: sealed.ciphertext_blob,
            encryption_context: context,
            key_id: None,
        })
        .unwrap();
    assert_eq!(opened.plaintext.expose(), b"object");
    let keys = kms.list_keys(&ListRequest::default()).unwrap();
    assert!(keys.items.iter().any(|k| k.key_id == key.key_id));
    kms.disable_key(&key.key_id).unwrap();
    assert_eq!(
        kms.describe_key(&key.key_id).unwrap().key_state,
        KeyState::Disabled
    );
    kms.enable_key(&key.key_id).unwrap();
    let scheduled = kms.schedule_key_deletion(&key.key_id, Some(7)).unwrap();
    assert_eq!(scheduled.key_state, KeyState::PendingDeletion);
    kms.cancel_key_deletion(&key.key_id).unwrap();
    assert_eq!(
        kms.describe_key(&key.key_id).unwrap().key_state,
        KeyState::Disabled
    );
    let missing = kms.describe_key("alias/none").unwrap_err();
    assert_eq!(missing.aws_name(), "NotFoundException");
}

#[test]
fn trail_digests_from_the_cli_and_the_server_validate_and_catch_tampering() {
    let home = Home::new();
    home.run(&["kms", "create-key", "--alias", "alias/d"]);
    let first: Value = serde_json::from_str(&home.run(&["trail", "digest"])).unwrap();
    assert_eq!(first["DigestSequence"], 0);
    let public_key = first["PublicKey"].as_str().unwrap().to_owned();
    home.run(&["kms", "generate-data-key", "--key-id", "alias/d"]);
    let second: Value = serde_json::from_str(&home.run(&["trail", "digest"])).unwrap();
    assert_eq!(second["DigestSequence"], 1);
    assert_eq!(second["PublicKey"], public_key.as_str());

    // The server writes its own digest at shutdown, with the same key.
    let root = create_access_key(&home, "arn:aws:iam::000000000000:root");
    let server = home.serve(&[
        "kms",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--digest-interval",
        "1h",
    ]);
    let kms = remote_local(&server, &root);
    assert_eq!(
        kms.describe_key("alias/d").unwrap().key_state,
        KeyState::Enabled
    );
    server.stop();

    let valid: Value =
        serde_json::from_str(&home.run(&["trail", "validate", "--digest-public-key", &public_key]))
            .unwrap();
    assert_eq!(valid["Valid"], true);
    assert_eq!(valid["Digests"], 3, "{valid}");
    assert_eq!(valid["DigestedRecords"], valid["Records"], "{valid}");

    let wrong_key = "0".repeat(63) + "1";
    let out = home
        .atrest()
        .args(["trail", "validate", "--digest-public-key", &wrong_key])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the trail's key"));

    std::fs::remove_file(
        home.path()
            .join("trail/digests/digest-00000000000000000001.json"),
    )
    .unwrap();
    let out = home.atrest().args(["trail", "validate"]).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("digest-00000000000000000001.json") && said.contains("missing"),
        "{said}"
    );
}

/// A client of a server in the default region, `local`.
fn remote_local(server: &Served, key: &AccessKey) -> RemoteKms {
    RemoteKms::new(RemoteKmsConfig {
        endpoint: format!("http://{}", server.addr),
        region: "local".into(),
        credentials: SigningCredentials {
            access_key_id: key.id.clone(),
            secret_access_key: Zeroizing::new(key.secret.clone()),
            session_token: None,
        },
        timeout: Duration::from_secs(30),
        ca_bundle: None,
    })
    .unwrap()
}
