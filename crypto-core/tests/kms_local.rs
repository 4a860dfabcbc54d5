//! LocalKms end to end through the KeyService trait: keys, data keys, encryption,
//! persistence across reopen, and several handles on one home at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use crypto_core::kms::{
    CreateKeyRequest, DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest,
    KeyService, KeyState, KmsError, ListRequest, LocalKms, LocalKmsConfig, ManualClock,
    ReEncryptRequest,
};
use time::OffsetDateTime;

fn config(clock: &Arc<ManualClock>) -> LocalKmsConfig {
    LocalKmsConfig {
        clock: clock.clone(),
        ..LocalKmsConfig::new()
    }
}

fn start() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
    ))
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gdk(key_id: &str, spec: DataKeySpec, context: EncryptionContext) -> GenerateDataKeyRequest {
    GenerateDataKeyRequest {
        key_id: key_id.into(),
        spec,
        encryption_context: context,
    }
}

#[test]
fn create_describe_and_generate_data_keys() {
    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), config(&start())).unwrap();
    let meta = kms
        .create_key(&CreateKeyRequest {
            description: "lab key".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(meta.key_state, KeyState::Enabled);
    assert!(meta.enabled);
    assert_eq!(
        meta.arn,
        format!("arn:aws:kms:local:000000000000:key/{}", meta.key_id)
    );
    assert_eq!(meta.description, "lab key");
    assert_eq!(meta.creation_date.unix_timestamp(), 1_800_000_000);

    let by_id = kms.describe_key(&meta.key_id).unwrap();
    let by_arn = kms.describe_key(&meta.arn).unwrap();
    assert_eq!(by_id, meta);
    assert_eq!(by_arn, meta);

    let context = ctx(&[("atrest:volume-id", "vol-1")]);
    for (spec, len) in [
        (DataKeySpec::Aes256, 32),
        (DataKeySpec::Aes128, 16),
        (DataKeySpec::Bytes(64), 64),
        (DataKeySpec::Bytes(1024), 1024),
    ] {
        let dk = kms
            .generate_data_key(&gdk(&meta.key_id, spec, context.clone()))
            .unwrap();
        assert_eq!(dk.key_id, meta.arn);
        assert_eq!(dk.plaintext.len(), len);
        let back = kms
            .decrypt(&DecryptRequest {
                ciphertext_blob: dk.ciphertext_blob.clone(),
                encryption_context: context.clone(),
                key_id: None,
            })
            .unwrap();
        assert_eq!(back.plaintext.expose(), dk.plaintext.expose());
        assert_eq!(back.key_id, meta.arn);
    }

    let wrapped = kms
        .generate_data_key_without_plaintext(&gdk(
            &meta.arn,
            DataKeySpec::Bytes(64),
            context.clone(),
        ))
        .unwrap();
    let unwrapped = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: wrapped.ciphertext_blob,
            encryption_context: context,
            key_id: Some(meta.key_id.clone()),
        })
        .unwrap();
    assert_eq!(unwrapped.plaintext.len(), 64);

    for bad in [0u16, 1025] {
        let err = kms
            .generate_data_key(&gdk(&meta.key_id, DataKeySpec::Bytes(bad), ctx(&[])))
            .unwrap_err();
        assert!(matches!(err, KmsError::Validation(_)), "{err}");
    }
}

#[test]
fn encrypt_decrypt_and_re_encrypt() {
    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), config(&start())).unwrap();
    let a = kms.create_key(&CreateKeyRequest::default()).unwrap();
    let b = kms.create_key(&CreateKeyRequest::default()).unwrap();
    let context = ctx(&[("purpose", "test")]);

    let blob = kms.encrypt(&a.key_id, b"secret message", &context).unwrap();
    assert_eq!(blob.key_id, a.arn);
    let plain = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: blob.ciphertext_blob.clone(),
            encryption_context: context.clone(),
            key_id: None,
        })
        .unwrap();
    assert_eq!(plain.plaintext.expose(), b"secret message");

    let wrong_context = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: blob.ciphertext_blob.clone(),
            encryption_context: ctx(&[("purpose", "other")]),
            key_id: None,
        })
        .unwrap_err();
    assert!(
        matches!(wrong_context, KmsError::InvalidCiphertext(_)),
        "{wrong_context}"
    );
    let no_context = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: blob.ciphertext_blob.clone(),
            encryption_context: BTreeMap::new(),
            key_id: None,
        })
        .unwrap_err();
    assert!(
        matches!(no_context, KmsError::InvalidCiphertext(_)),
        "{no_context}"
    );
    let wrong_key = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: blob.ciphertext_blob.clone(),
            encryption_context: context.clone(),
            key_id: Some(b.key_id.clone()),
        })
        .unwrap_err();
    assert!(
        matches!(wrong_key, KmsError::IncorrectKey(_)),
        "{wrong_key}"
    );

    let moved = kms
        .re_encrypt(&ReEncryptRequest {
            ciphertext_blob: blob.ciphertext_blob,
            source_encryption_context: context.clone(),
            source_key_id: Some(a.arn.clone()),
            destination_key_id: b.key_id.clone(),
            destination_encryption_context: ctx(&[("purpose", "moved")]),
        })
        .unwrap();
    assert_eq!(moved.source_key_id, a.arn);
    assert_eq!(moved.key_id, b.arn);
    let plain = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: moved.ciphertext_blob,
            encryption_context: ctx(&[("purpose", "moved")]),
            key_id: Some(b.arn.clone()),
        })
        .unwrap();
    assert_eq!(plain.plaintext.expose(), b"secret message");

    let too_big = vec![0u8; 4097];
    assert!(matches!(
        kms.encrypt(&a.key_id, &too_big, &context),
        Err(KmsError::Validation(_))
    ));
    assert!(matches!(
        kms.encrypt(&a.key_id, b"", &context),
        Err(KmsError::Validation(_))
    ));
    kms.encrypt(&a.key_id, &too_big[..4096], &context).unwrap();
    let garbage = kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: vec![1, 2, 3],
            encryption_context: context,
            key_id: None,
        })
        .unwrap_err();
    assert!(
        matches!(garbage, KmsError::InvalidCiphertext(_)),
        "{garbage}"
    );
}

#[test]
fn unknown_keys_are_not_found() {
    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), config(&start())).unwrap();
    for id in [
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:kms:local:000000000000:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "alias/none",
        "not-a-key",
    ] {
        let err = kms.describe_key(id).unwrap_err();
        assert!(matches!(err, KmsError::NotFound(_)), "{id}: {err}");
        assert!(err.to_string().starts_with("NotFoundException: "), "{err}");
    }
    let foreign = kms.create_key(&CreateKeyRequest::default()).unwrap();
    let other_region = foreign.arn.replace(":local:", ":us-east-1:");
    assert!(matches!(
        kms.describe_key(&other_region),
        Err(KmsError::NotFound(_))
    ));
}

#[test]
fn state_survives_reopen_and_is_seen_by_other_handles_at_once() {
    let home = tempfile::tempdir().unwrap();
    let clock = start();
    let first = LocalKms::open(home.path(), config(&clock)).unwrap();
    let second = LocalKms::open(home.path(), config(&clock)).unwrap();
    let key = first.create_key(&CreateKeyRequest::default()).unwrap();
    first.create_alias("alias/MyKMSKey", &key.key_id).unwrap();
    let blob = first
        .encrypt("alias/MyKMSKey", b"persisted", &ctx(&[]))
        .unwrap();
    let gen_before = first.keystore_generation().unwrap();

    second.disable_key("alias/MyKMSKey").unwrap();
    assert!(first.keystore_generation().unwrap() > gen_before);
    assert_eq!(
        first.describe_key(&key.key_id).unwrap().key_state,
        KeyState::Disabled
    );
    let err = first
        .decrypt(&DecryptRequest {
            ciphertext_blob: blob.ciphertext_blob.clone(),
            encryption_context: ctx(&[]),
            key_id: None,
        })
        .unwrap_err();
    assert!(matches!(err, KmsError::Disabled(_)), "{err}");
    second.enable_key(&key.arn).unwrap();
    drop((first, second));

    let reopened = LocalKms::open(home.path(), config(&clock)).unwrap();
    assert_eq!(
        reopened.describe_key("alias/MyKMSKey").unwrap().key_state,
        KeyState::Enabled
    );
    let plain = reopened
        .decrypt(&DecryptRequest {
            ciphertext_blob: blob.ciphertext_blob,
            encryption_context: ctx(&[]),
            key_id: Some("alias/MyKMSKey".into()),
        })
        .unwrap();
    assert_eq!(plain.plaintext.expose(), b"persisted");
    let keys = reopened.list_keys(&ListRequest::default()).unwrap();
    assert_eq!(keys.items.len(), 1);
    assert_eq!(keys.items[0].key_arn, key.arn);
    assert!(reopened.keystore_path().ends_with("kms/keystore.json"));
}

#[test]
fn many_threads_share_one_service() {
    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), config(&start())).unwrap();
    let key = kms.create_key(&CreateKeyRequest::default()).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let kms = &kms;
            let key_id = key.key_id.clone();
            scope.spawn(move || {
                for i in 0..10 {
                    let context = ctx(&[("thread", &t.to_string()), ("i", &i.to_string())]);
                    // The key flips between Enabled and Disabled meanwhile: every call
                    // either works or says DisabledException, nothing else.
                    let dk = match kms.generate_data_key(&gdk(
                        &key_id,
                        DataKeySpec::Aes256,
                        context.clone(),
                    )) {
                        Ok(dk) => dk,
                        Err(KmsError::Disabled(_)) => continue,
                        Err(other) => panic!("{other}"),
                    };
                    let request = DecryptRequest {
                        ciphertext_blob: dk.ciphertext_blob,
                        encryption_context: context,
                        key_id: None,
                    };
                    loop {
                        match kms.decrypt(&request) {
                            Ok(back) => {
                                assert_eq!(back.plaintext.expose(), dk.plaintext.expose());
                                break;
                            }
                            Err(KmsError::Disabled(_)) => std::thread::yield_now(),
                            Err(other) => panic!("{other}"),
                        }
                    }
                }
            });
        }
        let kms = &kms;
        let key_id = key.key_id.clone();
        scope.spawn(move || {
            for _ in 0..10 {
                kms.disable_key(&key_id).unwrap();
                kms.enable_key(&key_id).unwrap();
            }
        });
    });
    assert_eq!(
        kms.describe_key(&key.key_id).unwrap().key_state,
        KeyState::Enabled
    );
}

#[test]
fn config_from_env_is_validated() {
    let home = tempfile::tempdir().unwrap();
    let bad_account = LocalKmsConfig {
        account: "12".into(),
        ..LocalKmsConfig::new()
    };
    assert!(matches!(
        LocalKms::open(home.path(), bad_account),
        Err(KmsError::Validation(_))
    ));
    let bad_region = LocalKmsConfig {
        region: "Us East".into(),
        ..LocalKmsConfig::new()
    };
    assert!(matches!(
        LocalKms::open(home.path(), bad_region),
        Err(KmsError::Validation(_))
    ));
    // A principal ARN acts in its own account (here the default root user's).
    let other = LocalKmsConfig {
        account: "123456789012".into(),
        ..LocalKmsConfig::new()
    };
    let kms = LocalKms::open(home.path(), other).unwrap();
    assert_eq!(kms.account(), "000000000000");
    let custom = LocalKmsConfig {
        region: "eu-west-1".into(),
        account: "123456789012".into(),
        principal: "arn:aws:iam::123456789012:root".into(),
        ..LocalKmsConfig::new()
    };
    let kms = LocalKms::open(home.path(), custom).unwrap();
    let key = kms.create_key(&CreateKeyRequest::default()).unwrap();
    assert!(key
        .arn
        .starts_with("arn:aws:kms:eu-west-1:123456789012:key/"));
}

#[test]
fn local_kms_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<LocalKms>();
    let home = tempfile::tempdir().unwrap();
    let shared: Arc<dyn KeyService> =
        Arc::new(LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap());
    assert!(
        shared
            .create_key(&CreateKeyRequest::default())
            .unwrap()
            .enabled
    );
}

#[test]
fn a_damaged_keystore_is_reported_and_a_crash_leftover_is_ignored() {
    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), config(&start())).unwrap();
    let key = kms.create_key(&CreateKeyRequest::default()).unwrap();
    // A writer that died before its rename leaves a temp file: harmless.
    let tmp = home.path().join("kms/keystore.json.tmp");
    std::fs::write(&tmp, b"half a keystore").unwrap();
    kms.disable_key(&key.key_id).unwrap();
    assert_eq!(
        kms.describe_key(&key.key_id).unwrap().key_state,
        KeyState::Disabled
    );

    let path = kms.keystore_path().to_path_buf();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let err = kms.describe_key(&key.key_id).unwrap_err();
    assert!(matches!(err, KmsError::Internal(_)), "{err}");
    assert!(err.to_string().contains("corrupted"), "{err}");
    assert!(matches!(
        LocalKms::open(home.path(), config(&start())),
        Err(KmsError::Internal(_))
    ));
}
