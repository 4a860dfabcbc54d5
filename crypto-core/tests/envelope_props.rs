//! The ciphertext blob: round trips, and every single-byte change, truncation,
//! extension or context change is rejected, both by the pure envelope functions
//! and through LocalKms (InvalidCiphertextException / IncorrectKeyException).

mod kms_support;

use crypto_core::envelope::{self, HEADER_LEN, MAX_BLOB_LEN, TAG_LEN};
use crypto_core::kms::{DecryptRequest, EncryptionContext, KeyService, KmsError};
use crypto_core::secret::Aes256Key;
use kms_support::{ctx, decrypt_req, Lab};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use uuid::Uuid;

fn contexts() -> impl Strategy<Value = EncryptionContext> {
    btree_map("[a-z:/-]{0,12}", "\\PC{0,16}", 0..4)
}

/// Opens a possibly damaged blob; true only if it authenticates.
fn opens(key: &Aes256Key, blob: &[u8], context: &EncryptionContext) -> bool {
    match envelope::parse(blob) {
        Ok(parsed) => envelope::open(key, &parsed, context).is_ok(),
        Err(e) => {
            assert!(matches!(e, KmsError::InvalidCiphertext(_)), "{e}");
            false
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip(plaintext in vec(any::<u8>(), 0..=4096), context in contexts(), version in any::<u32>()) {
        let key = Aes256Key::random();
        let id = Uuid::new_v4();
        let blob = envelope::seal(&key, id, version, &plaintext, &context).unwrap();
        prop_assert_eq!(blob.len(), HEADER_LEN + plaintext.len() + TAG_LEN);
        let parsed = envelope::parse(&blob).unwrap();
        prop_assert_eq!(parsed.header.key_id, id);
        prop_assert_eq!(parsed.header.material_version, version);
        let opened = envelope::open(&key, &parsed, &context).unwrap();
        prop_assert_eq!(opened.expose(), &plaintext[..]);
    }

    #[test]
    fn every_single_byte_change_is_rejected(
        plaintext in vec(any::<u8>(), 0..=64),
        context in contexts(),
        flip in 1u8..=255,
    ) {
        let key = Aes256Key::random();
        let blob = envelope::seal(&key, Uuid::new_v4(), 0, &plaintext, &context).unwrap();
        for at in 0..blob.len() {
            let mut damaged = blob.clone();
            damaged[at] ^= flip;
            prop_assert!(!opens(&key, &damaged, &context), "byte {} ^ {:#x} accepted", at, flip);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected(plaintext in vec(any::<u8>(), 0..=64), extra in vec(any::<u8>(), 1..8)) {
        let key = Aes256Key::random();
        let context = EncryptionContext::new();
        let blob = envelope::seal(&key, Uuid::new_v4(), 0, &plaintext, &context).unwrap();
        for len in 0..blob.len() {
            prop_assert!(!opens(&key, &blob[..len], &context), "truncation to {} accepted", len);
        }
        let mut longer = blob.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(!opens(&key, &longer, &context));
    }

    #[test]
    fn any_other_context_is_rejected(plaintext in vec(any::<u8>(), 1..=32), a in contexts(), b in contexts()) {
        prop_assume!(a != b);
        let key = Aes256Key::random();
        let blob = envelope::seal(&key, Uuid::new_v4(), 0, &plaintext, &a).unwrap();
        prop_assert!(!opens(&key, &blob, &b));
    }

    #[test]
    fn other_material_is_rejected(plaintext in vec(any::<u8>(), 1..=32)) {
        let blob = envelope::seal(&Aes256Key::random(), Uuid::new_v4(), 0, &plaintext, &EncryptionContext::new()).unwrap();
        prop_assert!(!opens(&Aes256Key::random(), &blob, &EncryptionContext::new()));
    }

    #[test]
    fn parse_never_panics(bytes in vec(any::<u8>(), 0..=MAX_BLOB_LEN + 8)) {
        if let Ok(parsed) = envelope::parse(&bytes) {
            prop_assert!(parsed.plaintext_len() <= 4096);
            prop_assert!(!opens(&Aes256Key::random(), &bytes, &EncryptionContext::new()));
        }
    }
}

#[test]
fn through_local_kms_every_byte_change_and_truncation_is_invalid_ciphertext() {
    let lab = Lab::new();
    let key = lab.key();
    let context = ctx(&[("atrest:volume-id", "vol-1")]);
    let blob = lab
        .kms
        .encrypt(&key, &[7u8; 32], &context)
        .unwrap()
        .ciphertext_blob;
    lab.kms.decrypt(&decrypt_req(&blob, &context)).unwrap();
    for at in 0..blob.len() {
        let mut damaged = blob.clone();
        damaged[at] ^= 0x01;
        let err = lab
            .kms
            .decrypt(&decrypt_req(&damaged, &context))
            .unwrap_err();
        assert!(
            matches!(err, KmsError::InvalidCiphertext(_)),
            "byte {at}: {err}"
        );
    }
    for len in 1..blob.len() {
        let err = lab
            .kms
            .decrypt(&decrypt_req(&blob[..len], &context))
            .unwrap_err();
        assert!(
            matches!(err, KmsError::InvalidCiphertext(_)),
            "length {len}: {err}"
        );
    }
    let err = lab.kms.decrypt(&decrypt_req(&[], &context)).unwrap_err();
    assert!(matches!(err, KmsError::Validation(_)), "{err}");
    for other in [
        ctx(&[]),
        ctx(&[("atrest:volume-id", "vol-2")]),
        ctx(&[("atrest:volume-id", "vol-1"), ("x", "y")]),
    ] {
        let err = lab.kms.decrypt(&decrypt_req(&blob, &other)).unwrap_err();
        assert!(matches!(err, KmsError::InvalidCiphertext(_)), "{err}");
    }
}

#[test]
fn through_local_kms_the_wrong_key_id_is_incorrect_key() {
    let lab = Lab::new();
    let key = lab.key();
    let other = lab.key();
    lab.kms.create_alias("alias/other", &other).unwrap();
    let blob = lab
        .kms
        .encrypt(&key, b"data", &ctx(&[]))
        .unwrap()
        .ciphertext_blob;
    for wrong in [other.clone(), "alias/other".to_owned()] {
        let err = lab
            .kms
            .decrypt(&DecryptRequest {
                ciphertext_blob: blob.clone(),
                encryption_context: ctx(&[]),
                key_id: Some(wrong),
            })
            .unwrap_err();
        assert!(matches!(err, KmsError::IncorrectKey(_)), "{err}");
    }
    // A key id that names no key at all is NotFound, as in AWS.
    let err = lab
        .kms
        .decrypt(&DecryptRequest {
            ciphertext_blob: blob,
            encryption_context: ctx(&[]),
            key_id: Some(Uuid::new_v4().to_string()),
        })
        .unwrap_err();
    assert!(matches!(err, KmsError::NotFound(_)), "{err}");
}
