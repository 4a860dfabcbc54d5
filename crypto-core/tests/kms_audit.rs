//! Every LocalKms call lands in the trail, successful or not; no record, error
//! message or Debug output holds key material; a trail that cannot be written stops
//! key use (fail closed).

mod kms_support;

use std::fs;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use crypto_core::kms::{
    CreateKeyRequest, DataKeySpec, GenerateDataKeyRequest, KeyService, KmsError, ListRequest,
    ReEncryptRequest,
};
use crypto_core::trail::{LookupFilter, Trail};
use kms_support::{ctx, decrypt_req, gdk, Lab};
use serde_json::Value;
use time::Duration;

fn records(lab: &Lab) -> Vec<Value> {
    let trail = Trail::open(&lab.home.path().join("trail"), "local", "000000000000").unwrap();
    let mut all: Vec<Value> = trail
        .lookup(&LookupFilter::default())
        .unwrap()
        .into_iter()
        .map(|found| found.event)
        .collect();
    all.reverse();
    all
}

/// Ways a secret could be spelled in text: raw (if UTF-8), hex, base64.
fn spellings(secret: &[u8]) -> Vec<String> {
    let mut out = vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        B64.encode(secret),
    ];
    if let Ok(text) = std::str::from_utf8(secret) {
        out.push(text.to_owned());
    }
    out
}

#[test]
fn every_call_is_recorded_with_its_outcome() {
    let lab = Lab::new();
    let kms = &lab.kms;
    let key = kms
        .create_key(&CreateKeyRequest {
            description: "audited".into(),
            ..Default::default()
        })
        .unwrap();
    kms.create_alias("alias/MyKMSKey", &key.key_id).unwrap();
    let dk = kms.generate_data_key(&gdk("alias/MyKMSKey")).unwrap();
    kms.decrypt(&decrypt_req(
        &dk.ciphertext_blob,
        &gdk("x").encryption_context,
    ))
    .unwrap();
    kms.disable_key("alias/MyKMSKey").unwrap();
    let failed = kms.generate_data_key(&gdk("alias/MyKMSKey")).unwrap_err();
    kms.enable_key(&key.key_id).unwrap();
    kms.schedule_key_deletion(&key.key_id, Some(7)).unwrap();
    kms.cancel_key_deletion(&key.key_id).unwrap();
    let _ = kms.describe_key("alias/nothing").unwrap_err();
    kms.list_keys(&ListRequest::default()).unwrap();
    kms.enable_key(&key.key_id).unwrap();
    kms.schedule_key_deletion(&key.key_id, Some(7)).unwrap();
    lab.clock.advance(Duration::days(7));
    let _ = kms.describe_key(&key.key_id).unwrap_err();

    let events = records(&lab);
    let names: Vec<_> = events
        .iter()
        .map(|e| e["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "CreateKey",
            "CreateAlias",
            "GenerateDataKey",
            "Decrypt",
            "DisableKey",
            "GenerateDataKey",
            "EnableKey",
            "ScheduleKeyDeletion",
            "CancelKeyDeletion",
            "DescribeKey",
            "ListKeys",
            "EnableKey",
            "ScheduleKeyDeletion",
            "DeleteKey",
            "DescribeKey",
        ]
    );
    let refused = &events[5];
    assert_eq!(refused["errorCode"], failed.aws_name());
    assert_eq!(refused["errorMessage"], failed.message());
    assert_eq!(refused["requestParameters"]["keyId"], "alias/MyKMSKey");
    assert_eq!(refused["requestParameters"]["keySpec"], "AES_256");
    assert_eq!(
        refused["requestParameters"]["encryptionContext"]["atrest:volume-id"],
        "vol-1"
    );
    assert!(
        refused["resources"].to_string().contains(&key.arn),
        "{refused}"
    );
    assert_eq!(events[2]["readOnly"], true);
    assert_eq!(events[4]["readOnly"], false);
    assert_eq!(events[9]["errorCode"], "NotFoundException");
    assert_eq!(events[13]["eventName"], "DeleteKey");
    assert!(events[13]["resources"].to_string().contains(&key.arn));
    for event in &events {
        assert_eq!(event["eventSource"], "kms.amazonaws.com");
    }
}

#[test]
fn no_key_material_in_records_errors_or_debug_output() {
    let lab = Lab::new();
    let kms = &lab.kms;
    let a = kms.create_key(&CreateKeyRequest::default()).unwrap().key_id;
    let b = kms.create_key(&CreateKeyRequest::default()).unwrap().key_id;
    kms.enable_key_rotation(&a, None).unwrap();
    kms.rotate_key_on_demand(&a).unwrap();
    let context = ctx(&[("purpose", "leak-test")]);
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut shown = Vec::new();
    for spec in [
        DataKeySpec::Aes256,
        DataKeySpec::Aes128,
        DataKeySpec::Bytes(64),
    ] {
        let req = GenerateDataKeyRequest {
            key_id: a.clone(),
            spec,
            encryption_context: context.clone(),
        };
        let dk = kms.generate_data_key(&req).unwrap();
        shown.push(format!("{dk:?}"));
        let back = kms
            .decrypt(&decrypt_req(&dk.ciphertext_blob, &context))
            .unwrap();
        shown.push(format!("{back:?}"));
        secrets.push(dk.plaintext.expose().to_vec());
        blobs.push(dk.ciphertext_blob.clone());
        let moved = kms
            .re_encrypt(&ReEncryptRequest {
                ciphertext_blob: dk.ciphertext_blob,
                source_encryption_context: context.clone(),
                source_key_id: None,
                destination_key_id: b.clone(),
                destination_encryption_context: context.clone(),
            })
            .unwrap();
        blobs.push(moved.ciphertext_blob);
        // Failures that involve the secret: wrong context, tampered blob.
        let mut tampered = blobs.last().unwrap().clone();
        tampered[40] ^= 1;
        shown.push(
            kms.decrypt(&decrypt_req(&tampered, &context))
                .unwrap_err()
                .to_string(),
        );
        shown.push(
            kms.decrypt(&decrypt_req(blobs.last().unwrap(), &ctx(&[])))
                .unwrap_err()
                .to_string(),
        );
    }
    let plaintext = b"top secret plaintext for Encrypt".to_vec();
    let enc = kms.encrypt(&a, &plaintext, &context).unwrap();
    blobs.push(enc.ciphertext_blob);
    secrets.push(plaintext);
    kms.disable_key(&a).unwrap();
    shown.push(
        kms.decrypt(&decrypt_req(&blobs[0], &context))
            .unwrap_err()
            .to_string(),
    );
    shown.push(format!("{kms:?}"));

    let root_key = fs::read(lab.home.path().join("kms/root.key")).unwrap();
    secrets.push(root_key);
    let keystore = fs::read_to_string(kms.keystore_path()).unwrap();
    let trail_text = fs::read_to_string(lab.home.path().join("trail/trail.jsonl")).unwrap();
    assert!(!trail_text.is_empty());
    let shown = shown.join("\n");
    for secret in &secrets {
        for spelling in spellings(secret) {
            assert!(
                !trail_text.contains(&spelling),
                "trail holds a secret ({spelling})"
            );
            assert!(
                !shown.contains(&spelling),
                "an error or Debug output holds a secret ({spelling})"
            );
            assert!(
                !keystore.contains(&spelling),
                "the keystore holds a secret in the clear"
            );
        }
    }
    for blob in &blobs {
        assert!(
            !trail_text.contains(&B64.encode(blob)),
            "trail holds a ciphertext blob"
        );
    }
    // The sealed material in the keystore does not leak into the trail either.
    let stored: Value = serde_json::from_str(keystore.split_once('\n').unwrap().1).unwrap();
    for key in stored["keys"].as_object().unwrap().values() {
        for material in key["materials"].as_array().unwrap() {
            assert!(!trail_text.contains(material["sealed"].as_str().unwrap()));
        }
    }
}

#[test]
fn a_trail_that_cannot_be_written_stops_key_use() {
    let lab = Lab::new();
    let key = lab.key();
    lab.kms.generate_data_key(&gdk(&key)).unwrap();
    // Damage the last record: the trail refuses to extend a chain that does not verify.
    let log = lab.home.path().join("trail/trail.jsonl");
    let mut text = fs::read_to_string(&log).unwrap();
    let at = text.rfind("GenerateDataKey").unwrap();
    text.replace_range(at..at + 1, "X");
    fs::write(&log, text).unwrap();

    let err = lab.kms.generate_data_key(&gdk(&key)).unwrap_err();
    assert!(matches!(err, KmsError::Internal(_)), "{err}");
    assert!(err.to_string().contains("audit trail"), "{err}");
    let err = lab.kms.disable_key(&key).unwrap_err();
    assert!(matches!(err, KmsError::Internal(_)), "{err}");
    // The refused change did not happen.
    fs::rename(&log, lab.home.path().join("trail/damaged.jsonl")).unwrap();
    fs::remove_file(lab.home.path().join("trail/trail.head")).unwrap();
    let fresh = lab.reopen_with_clock(&lab.clock);
    assert!(fresh.describe_key(&key).unwrap().enabled);
}
