//! The KMS endpoint end to end in one process: a `RunningGateway` over a real
//! `LocalKms`, reached by `RemoteKms` (every KeyService operation over HTTP) and by
//! hand-made requests for the authentication failures.

/// The system tests' skip rule, shared with the root package's tests.
#[path = "../../tests/common/system.rs"]
mod system;

use std::io::Read;
use std::sync::Arc;

use crypto_core::kms::{
    CreateKeyRequest, DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest,
    KeyService, KeyState, KmsError, ListRequest, LocalKms, LocalKmsConfig, ReEncryptRequest, Tag,
};
use gateway::sigv4::{self, Payload, Signer, SigningCredentials};
use gateway::{CredentialStore, Gateway, RemoteKms, RemoteKmsConfig, RunningGateway};
use serde_json::Value;
use zeroize::Zeroizing;

const REGION: &str = "us-east-1";
const ROOT: &str = "arn:aws:iam::000000000000:root";
const ADMIN: &str = "arn:aws:iam::000000000000:user/KeyAdmin";
const USER: &str = "arn:aws:iam::000000000000:user/KeyUser";

struct Endpoint {
    _home: tempfile::TempDir,
    server: Option<RunningGateway>,
    store: CredentialStore,
}

impl Endpoint {
    fn start() -> Endpoint {
        let home = tempfile::tempdir().unwrap();
        let mut config = LocalKmsConfig::new();
        config.region = REGION.into();
        let kms = LocalKms::open(home.path(), config).unwrap();
        let server =
            RunningGateway::start(Gateway::new(kms, home.path()), "127.0.0.1:0", None).unwrap();
        let store = CredentialStore::open(home.path());
        Endpoint {
            _home: home,
            server: Some(server),
            store,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.as_ref().unwrap().local_addr())
    }

    fn credentials(&self, principal: &str) -> SigningCredentials {
        let key = self.store.create_access_key(principal).unwrap();
        SigningCredentials {
            access_key_id: key.access_key_id.clone(),
            secret_access_key: key.secret_access_key.clone(),
            session_token: None,
        }
    }

    fn client(&self, principal: &str) -> RemoteKms {
        RemoteKms::new(RemoteKmsConfig {
            endpoint: self.url(),
            region: REGION.into(),
            credentials: self.credentials(principal),
            timeout: std::time::Duration::from_secs(30),
            ca_bundle: None,
        })
        .unwrap()
    }

    /// Posts `body` as operation `op`, signed with `credentials` at `at` (after
    /// `tamper` may change the body), and returns the status and JSON answer.
    fn raw(
        &self,
        credentials: Option<&SigningCredentials>,
        op: &str,
        body: &[u8],
        at: time::OffsetDateTime,
        sent_body: Option<&[u8]>,
    ) -> (u16, Value) {
        let addr = self.server.as_ref().unwrap().local_addr();
        let mut headers = http::HeaderMap::new();
        headers.insert("host", addr.to_string().parse().unwrap());
        headers.insert(
            "content-type",
            "application/x-amz-json-1.1".parse().unwrap(),
        );
        headers.insert(
            "x-amz-target",
            format!("TrentService.{op}").parse().unwrap(),
        );
        if let Some(credentials) = credentials {
            sigv4::sign_headers(
                &Signer::new(credentials, REGION, "kms", at),
                "POST",
                "/",
                "",
                &mut headers,
                Payload::Body(body),
            )
            .unwrap();
        }
        let mut request = ureq::post(&self.url());
        for (name, value) in &headers {
            request = request.set(name.as_str(), value.to_str().unwrap());
        }
        let response = match request.send_bytes(sent_body.unwrap_or(body)) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport: {e}"),
        };
        let status = response.status();
        let mut text = String::new();
        response.into_reader().read_to_string(&mut text).unwrap();
        (status, serde_json::from_str(&text).unwrap())
    }
}

fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn every_operation_works_through_remote_kms() {
    let endpoint = Endpoint::start();
    let kms = endpoint.client(ROOT);
    let meta = kms
        .create_key(&CreateKeyRequest {
            description: "over http".into(),
            ..CreateKeyRequest::default()
        })
        .unwrap();
    assert_eq!(meta.key_state, KeyState::Enabled);
    assert!(meta
        .arn
        .starts_with("arn:aws:kms:us-east-1:000000000000:key/"));
    kms.create_alias("alias/MyKMSKey", &meta.key_id).unwrap();
    assert_eq!(kms.describe_key("alias/MyKMSKey").unwrap().arn, meta.arn);
    kms.update_key_description(&meta.key_id, "renamed").unwrap();
    assert_eq!(kms.describe_key(&meta.arn).unwrap().description, "renamed");

    let ctx = context(&[("purpose", "test")]);
    let generated = kms
        .generate_data_key(&GenerateDataKeyRequest {
            key_id: "alias/MyKMSKey".into(),
            spec: DataKeySpec::Aes256,
            encryption_context: ctx.clone(),
        })
        .unwrap();
    assert_eq!(generated.plaintext.len(), 32);
    let decrypted = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: generated.ciphertext_blob.clone(),
            encryption_context: ctx.clone(),
            key_id: None,
        })
        .unwrap();
    assert_eq!(decrypted.plaintext.expose(), generated.plaintext.expose());
    let wrong = kms.decrypt(&DecryptRequest {
        ciphertext_blob: generated.ciphertext_blob.clone(),
        encryption_context: context(&[("purpose", "other")]),
        key_id: None,
    });
    assert!(
        matches!(wrong, Err(KmsError::InvalidCiphertext(_))),
        "{wrong:?}"
    );

    let wrapped = kms
        .generate_data_key_without_plaintext(&GenerateDataKeyRequest {
            key_id: meta.key_id.clone(),
            spec: DataKeySpec::Bytes(64),
            encryption_context: ctx.clone(),
        })
        .unwrap();
    let unwrapped = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: wrapped.ciphertext_blob,
            encryption_context: ctx.clone(),
            key_id: Some("alias/MyKMSKey".into()),
        })
        .unwrap();
    assert_eq!(unwrapped.plaintext.len(), 64);

    let sealed = kms.encrypt(&meta.key_id, b"clock.png bytes", &ctx).unwrap();
    let other = kms.create_key(&CreateKeyRequest::default()).unwrap();
    let moved = kms
        .re_encrypt(&ReEncryptRequest {
            ciphertext_blob: sealed.ciphertext_blob,
            source_encryption_context: ctx.clone(),
            source_key_id: None,
            destination_key_id: other.key_id.clone(),
            destination_encryption_context: EncryptionContext::new(),
        })
        .unwrap();
    assert_eq!(moved.key_id, other.arn);
    let opened = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: moved.ciphertext_blob,
            encryption_context: EncryptionContext::new(),
            key_id: None,
        })
        .unwrap();
    assert_eq!(opened.plaintext.expose(), b"clock.png bytes");

    let first = kms
        .list_keys(&ListRequest {
            limit: Some(1),
            marker: None,
        })
        .unwrap();
    assert_eq!(first.items.len(), 1);
    let second = kms
        .list_keys(&ListRequest {
            limit: Some(1),
            marker: first.next_marker.clone(),
        })
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_ne!(first.items[0].key_id, second.items[0].key_id);
    let aliases = kms
        .list_aliases(Some(&meta.key_id), &ListRequest::default())
        .unwrap();
    assert_eq!(aliases.items.len(), 1);
    assert_eq!(aliases.items[0].alias_name, "alias/MyKMSKey");
    kms.create_alias("alias/spare", &meta.key_id).unwrap();
    kms.update_alias("alias/spare", &other.key_id).unwrap();
    kms.delete_alias("alias/spare").unwrap();

    kms.enable_key_rotation(&meta.key_id, Some(90)).unwrap();
    let status = kms.get_key_rotation_status(&meta.key_id).unwrap();
    assert!(status.key_rotation_enabled);
    assert_eq!(status.rotation_period_in_days, Some(90));
    kms.disable_key_rotation(&meta.key_id).unwrap();
    assert_eq!(kms.rotate_key_on_demand(&meta.key_id).unwrap(), meta.arn);
    assert_eq!(kms.list_key_rotations(&meta.key_id).unwrap().len(), 1);
    // Old ciphertexts still decrypt after rotation.
    kms.decrypt(&DecryptRequest {
        ciphertext_blob: generated.ciphertext_blob.clone(),
        encryption_context: ctx.clone(),
        key_id: None,
    })
    .unwrap();

    let tag = |k: &str, v: &str| Tag {
        tag_key: k.into(),
        tag_value: v.into(),
    };
    kms.tag_resource(&meta.key_id, &[tag("team", "storage"), tag("env", "lab")])
        .unwrap();
    kms.untag_resource(&meta.key_id, &["team".into()]).unwrap();
    assert_eq!(
        kms.list_resource_tags(&meta.key_id).unwrap(),
        [tag("env", "lab")]
    );
    assert!(matches!(
        kms.tag_resource(&meta.key_id, &[tag("aws:x", "y")]),
        Err(KmsError::Tag(_))
    ));

    assert_eq!(kms.list_key_policies(&meta.key_id).unwrap(), ["default"]);
    assert_eq!(kms.generate_random(Some(24)).unwrap().len(), 24);
    assert!(matches!(
        kms.generate_random(Some(1025)),
        Err(KmsError::Validation(_))
    ));
    assert!(matches!(
        kms.generate_random(None),
        Err(KmsError::Validation(_))
    ));

    let policy = kms.get_key_policy(&meta.key_id, "default").unwrap();
    kms.put_key_policy(&meta.key_id, "default", &policy, false)
        .unwrap();
    assert!(matches!(
        kms.put_key_policy(&meta.key_id, "default", "{not json", false),
        Err(KmsError::MalformedPolicyDocument(_))
    ));

    kms.disable_key(&meta.key_id).unwrap();
    let refused = kms.decrypt(&DecryptRequest {
        ciphertext_blob: generated.ciphertext_blob.clone(),
        encryption_context: ctx.clone(),
        key_id: None,
    });
    assert!(matches!(refused, Err(KmsError::Disabled(_))), "{refused:?}");
    kms.enable_key(&meta.key_id).unwrap();
    let scheduled = kms.schedule_key_deletion(&meta.key_id, Some(7)).unwrap();
    assert_eq!(scheduled.key_state, KeyState::PendingDeletion);
    assert_eq!(scheduled.pending_window_in_days, 7);
    assert_eq!(kms.cancel_key_deletion(&meta.key_id).unwrap(), meta.arn);
    assert_eq!(
        kms.describe_key(&meta.key_id).unwrap().key_state,
        KeyState::Disabled
    );
    assert!(matches!(
        kms.describe_key("alias/none"),
        Err(KmsError::NotFound(_))
    ));
}

#[test]
fn key_policies_bind_the_signing_principal() {
    let endpoint = Endpoint::start();
    let root = endpoint.client(ROOT);
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "root", "Effect": "Allow", "Principal": {"AWS": ROOT},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "admins", "Effect": "Allow", "Principal": {"AWS": ADMIN},
             "Action": ["kms:Describe*", "kms:Enable*", "kms:Disable*",
                        "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
                        "kms:RotateKeyOnDemand", "kms:PutKeyPolicy", "kms:GetKeyPolicy"],
             "Resource": "*"},
            {"Sid": "users", "Effect": "Allow", "Principal": {"AWS": USER},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                        "kms:GenerateDataKey*", "kms:DescribeKey"],
             "Resource": "*"}
        ]
    });
    let key = root
        .create_key(&CreateKeyRequest {
            policy: Some(policy.to_string()),
            ..CreateKeyRequest::default()
        })
        .unwrap();
    let admin = endpoint.client(ADMIN);
    let user = endpoint.client(USER);
    let generated = user
        .generate_data_key(&GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            spec: DataKeySpec::Aes256,
            encryption_context: EncryptionContext::new(),
        })
        .unwrap();
    let denied = admin.decrypt(&DecryptRequest {
        ciphertext_blob: generated.ciphertext_blob.clone(),
        encryption_context: EncryptionContext::new(),
        key_id: None,
    });
    match denied {
        Err(KmsError::AccessDenied(message)) => assert!(message.contains(ADMIN), "{message}"),
        other => panic!("admin decrypted: {other:?}"),
    }
    assert!(matches!(
        user.disable_key(&key.key_id),
        Err(KmsError::AccessDenied(_))
    ));
    admin.disable_key(&key.key_id).unwrap();
    admin.enable_key(&key.key_id).unwrap();
    user.decrypt(&DecryptRequest {
        ciphertext_blob: generated.ciphertext_blob,
        encryption_context: EncryptionContext::new(),
        key_id: None,
    })
    .unwrap();
}

#[test]
fn bad_authentication_is_refused_with_aws_error_names() {
    let endpoint = Endpoint::start();
    let good = endpoint.credentials(ROOT);
    let now = time::OffsetDateTime::now_utc();
    let body = br#"{"Limit": 10}"#;

    let (status, ok) = endpoint.raw(Some(&good), "ListKeys", body, now, None);
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["Truncated"], false);

    let expect_error = |(status, answer): (u16, Value), name: &str| {
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["__type"], name, "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    let wrong_secret = SigningCredentials {
        access_key_id: good.access_key_id.clone(),
        secret_access_key: Zeroizing::new("x".repeat(40)),
        session_token: None,
    };
    expect_error(
        endpoint.raw(Some(&wrong_secret), "ListKeys", body, now, None),
        "InvalidSignatureException",
    );
    expect_error(
        endpoint.raw(
            Some(&good),
            "ListKeys",
            body,
            now,
            Some(br#"{"Limit": 11}"#),
        ),
        "InvalidSignatureException",
    );
    let stale = now - time::Duration::minutes(20);
    let (status, answer) = endpoint.raw(Some(&good), "ListKeys", body, stale, None);
    expect_error((status, answer.clone()), "InvalidSignatureException");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("Signature expired"),
        "{answer}"
    );
    let unknown = SigningCredentials {
        access_key_id: "AKIAUNKNOWNUNKNOWN00".into(),
        secret_access_key: Zeroizing::new("x".repeat(40)),
        session_token: None,
    };
    expect_error(
        endpoint.raw(Some(&unknown), "ListKeys", body, now, None),
        "UnrecognizedClientException",
    );
    expect_error(
        endpoint.raw(None, "ListKeys", body, now, None),
        "MissingAuthenticationTokenException",
    );
    expect_error(
        endpoint.raw(Some(&good), "NoSuchOperation", body, now, None),
        "UnknownOperationException",
    );
    expect_error(
        endpoint.raw(Some(&good), "ListKeys", b"{not json", now, None),
        "SerializationException",
    );
    expect_error(
        endpoint.raw(Some(&good), "DescribeKey", b"{}", now, None),
        "ValidationException",
    );
    let token = SigningCredentials {
        session_token: Some("FwoGZXIvYXdzEXAMPLE".into()),
        ..endpoint.credentials(ROOT)
    };
    expect_error(
        endpoint.raw(Some(&token), "ListKeys", body, now, None),
        "UnrecognizedClientException",
    );
}

#[test]
fn the_server_serves_many_clients_at_once() {
    let endpoint = Arc::new(Endpoint::start());
    let kms = endpoint.client(ROOT);
    let key = kms.create_key(&CreateKeyRequest::default()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let client = endpoint.client(ROOT);
            let key_id = key.key_id.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let generated = client
                        .generate_data_key(&GenerateDataKeyRequest {
                            key_id: key_id.clone(),
                            spec: DataKeySpec::Aes128,
                            encryption_context: EncryptionContext::new(),
                        })
                        .unwrap();
                    let back = client
                        .decrypt(&DecryptRequest {
                            ciphertext_blob: generated.ciphertext_blob,
                            encryption_context: EncryptionContext::new(),
                            key_id: None,
                        })
                        .unwrap();
                    assert_eq!(back.plaintext.expose(), generated.plaintext.expose());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn an_unreachable_endpoint_is_dependency_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let kms = RemoteKms::new(RemoteKmsConfig {
        endpoint: format!("http://{addr}"),
        region: REGION.into(),
        credentials: SigningCredentials {
            access_key_id: "AKIAX".into(),
            secret_access_key: Zeroizing::new("x".into()),
            session_token: None,
        },
        timeout: std::time::Duration::from_secs(5),
        ca_bundle: None,
    })
    .unwrap();
    let err = kms.describe_key("alias/x").unwrap_err();
    assert_eq!(err.aws_name(), "DependencyTimeoutException", "{err}");
}

#[test]
fn tls_endpoint_serves_clients_that_trust_its_certificate() {
    if !system::require_tools(&["openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args(args)
            .output()
            .expect("openssl is required (scripts/install-test-deps.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    // A private CA and a server certificate for 127.0.0.1 signed by it.
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-days", "2", "-subj", "/CN=atrest test CA"],
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(path("leaf.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    let (cert, key, ca) = (path("cert.pem"), path("key.pem"), path("ca.pem"));

    let home = tempfile::tempdir().unwrap();
    let mut config = LocalKmsConfig::new();
    config.region = REGION.into();
    let kms = LocalKms::open(home.path(), config).unwrap();
    let tls = gateway::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    let server =
        RunningGateway::start(Gateway::new(kms, home.path()), "127.0.0.1:0", Some(&tls)).unwrap();
    let access = CredentialStore::open(home.path())
        .create_access_key(ROOT)
        .unwrap();
    let client = |ca_bundle: Option<std::path::PathBuf>, scheme: &str| {
        RemoteKms::new(RemoteKmsConfig {
            endpoint: format!("{scheme}://{}", server.local_addr()),
            region: REGION.into(),
            credentials: SigningCredentials {
                access_key_id: access.access_key_id.clone(),
                secret_access_key: access.secret_access_key.clone(),
                session_token: None,
            },
            timeout: std::time::Duration::from_secs(10),
            ca_bundle,
        })
        .unwrap()
    };
    let trusted = client(Some(ca), "https");
    let made = trusted.create_key(&CreateKeyRequest::default()).unwrap();
    let generated = trusted
        .generate_data_key(&GenerateDataKeyRequest {
            key_id: made.key_id.clone(),
            spec: DataKeySpec::Aes256,
            encryption_context: EncryptionContext::new(),
        })
        .unwrap();
    assert_eq!(generated.plaintext.len(), 32);
    // The public roots do not vouch for a private certificate.
    let untrusting = client(None, "https");
    let err = untrusting.describe_key(&made.key_id).unwrap_err();
    assert_eq!(err.aws_name(), "DependencyTimeoutException", "{err}");
    // Plain HTTP to the TLS port gets no KMS answer.
    assert!(client(None, "http").describe_key(&made.key_id).is_err());
    // A key that does not match the certificate is refused at start.
    openssl(&[
        "genpkey",
        "-algorithm",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-out",
        "other.pem",
    ]);
    let other = path("other.pem");
    let mismatched = gateway::TlsFiles { cert, key: other };
    let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
    let refused = RunningGateway::start(
        Gateway::new(kms, home.path()),
        "127.0.0.1:0",
        Some(&mismatched),
    );
    assert!(refused.is_err());
}
