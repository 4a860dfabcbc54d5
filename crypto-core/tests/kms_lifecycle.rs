//! Rotation and deletion over (injected) time: old material keeps decrypting,
//! deletion windows are enforced, and a completed deletion is persisted for every
//! process, whatever its own clock says.

mod kms_support;

use std::sync::Arc;

use crypto_core::envelope;
use crypto_core::kms::{
    Clock, KeyService, KeyState, KmsError, ListRequest, ManualClock, RotationType,
};
use kms_support::{ctx, decrypt_req, gdk, Lab};
use time::Duration;

fn material_version(blob: &[u8]) -> u32 {
    envelope::parse(blob).unwrap().header.material_version
}

#[test]
fn automatic_rotation_keeps_every_old_blob_decryptable() {
    let lab = Lab::new();
    let key = lab.key();
    let context = ctx(&[("k", "v")]);
    let status = lab.kms.get_key_rotation_status(&key).unwrap();
    assert!(!status.key_rotation_enabled);
    assert_eq!(status.next_rotation_date, None);

    lab.kms.enable_key_rotation(&key, None).unwrap();
    let status = lab.kms.get_key_rotation_status(&key).unwrap();
    assert!(status.key_rotation_enabled);
    assert_eq!(status.rotation_period_in_days, Some(365));
    assert_eq!(
        status.next_rotation_date,
        Some(lab.clock.now() + Duration::days(365))
    );

    let mut blobs = vec![
        lab.kms
            .encrypt(&key, b"year 0", &context)
            .unwrap()
            .ciphertext_blob,
    ];
    lab.clock.advance(Duration::days(364));
    blobs.push(
        lab.kms
            .encrypt(&key, b"day 364", &context)
            .unwrap()
            .ciphertext_blob,
    );
    assert_eq!(material_version(&blobs[1]), 0);
    for year in 1..=3u32 {
        lab.clock.advance(Duration::days(366));
        let blob = lab
            .kms
            .encrypt(&key, format!("year {year}").as_bytes(), &context)
            .unwrap()
            .ciphertext_blob;
        assert_eq!(material_version(&blob), year);
        blobs.push(blob);
    }
    let texts = ["year 0", "day 364", "year 1", "year 2", "year 3"];
    for (blob, text) in blobs.iter().zip(texts) {
        let plain = lab.kms.decrypt(&decrypt_req(blob, &context)).unwrap();
        assert_eq!(plain.plaintext.expose(), text.as_bytes());
    }
    let rotations = lab.kms.list_key_rotations(&key).unwrap();
    assert_eq!(rotations.len(), 3);
    assert!(rotations
        .iter()
        .all(|r| r.rotation_type == RotationType::Automatic));

    lab.kms.disable_key_rotation(&key).unwrap();
    lab.clock.advance(Duration::days(800));
    let blob = lab
        .kms
        .encrypt(&key, b"no more", &context)
        .unwrap()
        .ciphertext_blob;
    assert_eq!(material_version(&blob), 3);
}

#[test]
fn disabled_keys_do_not_rotate_until_enabled_again() {
    let lab = Lab::new();
    let key = lab.key();
    lab.kms.enable_key_rotation(&key, Some(90)).unwrap();
    lab.kms.disable_key(&key).unwrap();
    lab.clock.advance(Duration::days(100));
    lab.kms.describe_key(&key).unwrap();
    assert!(lab.kms.list_key_rotations(&key).unwrap().is_empty());
    lab.kms.enable_key(&key).unwrap();
    let blob = lab
        .kms
        .encrypt(&key, b"x", &ctx(&[]))
        .unwrap()
        .ciphertext_blob;
    assert_eq!(material_version(&blob), 1);
}

#[test]
fn rotation_period_bounds() {
    let lab = Lab::new();
    let key = lab.key();
    for bad in [0, 89, 2561] {
        let err = lab.kms.enable_key_rotation(&key, Some(bad)).unwrap_err();
        assert!(matches!(err, KmsError::Validation(_)), "{bad}: {err}");
    }
    lab.kms.enable_key_rotation(&key, Some(90)).unwrap();
    lab.kms.enable_key_rotation(&key, Some(2560)).unwrap();
    assert_eq!(
        lab.kms
            .get_key_rotation_status(&key)
            .unwrap()
            .rotation_period_in_days,
        Some(2560)
    );
}

#[test]
fn on_demand_rotation_is_limited_to_ten() {
    let lab = Lab::new();
    let key = lab.key();
    let first = lab.kms.generate_data_key(&gdk(&key)).unwrap();
    for _ in 0..10 {
        lab.kms.rotate_key_on_demand(&key).unwrap();
    }
    let err = lab.kms.rotate_key_on_demand(&key).unwrap_err();
    assert!(matches!(err, KmsError::LimitExceeded(_)), "{err}");
    let last = lab.kms.generate_data_key(&gdk(&key)).unwrap();
    assert_eq!(material_version(&last.ciphertext_blob), 10);
    let back = lab
        .kms
        .decrypt(&decrypt_req(
            &first.ciphertext_blob,
            &gdk(&key).encryption_context,
        ))
        .unwrap();
    assert_eq!(back.plaintext.expose(), first.plaintext.expose());
    // Each on-demand rotation completed within its call: none is in progress, so
    // (as AWS) no OnDemandRotationStartDate is shown.
    let status = lab.kms.get_key_rotation_status(&key).unwrap();
    assert_eq!(status.on_demand_rotation_start_date, None);
    assert_eq!(lab.kms.list_key_rotations(&key).unwrap().len(), 10);
}

#[test]
fn deletion_window_bounds_and_default() {
    let lab = Lab::new();
    let key = lab.key();
    for bad in [0, 6, 31] {
        let err = lab.kms.schedule_key_deletion(&key, Some(bad)).unwrap_err();
        assert!(matches!(err, KmsError::Validation(_)), "{bad}: {err}");
    }
    let scheduled = lab.kms.schedule_key_deletion(&key, None).unwrap();
    assert_eq!(scheduled.pending_window_in_days, 30);
    assert_eq!(scheduled.key_state, KeyState::PendingDeletion);
    let meta = lab.kms.describe_key(&key).unwrap();
    assert_eq!(meta.deletion_date, Some(scheduled.deletion_date));
    assert_eq!(meta.pending_deletion_window_in_days, Some(30));
    assert_eq!(
        scheduled.deletion_date,
        lab.clock.now() + Duration::days(30)
    );
}

#[test]
fn deletion_completes_after_the_window_and_destroys_the_key() {
    let lab = Lab::new();
    let key = lab.key();
    let keep = lab.key();
    lab.kms.create_alias("alias/doomed", &key).unwrap();
    lab.kms.create_alias("alias/kept", &keep).unwrap();
    let blob = lab
        .kms
        .encrypt(&key, b"shred me", &ctx(&[]))
        .unwrap()
        .ciphertext_blob;
    let arn = lab.kms.schedule_key_deletion(&key, Some(7)).unwrap().key_id;

    lab.clock.advance(Duration::days(7) - Duration::seconds(1));
    assert_eq!(
        lab.kms.describe_key(&key).unwrap().key_state,
        KeyState::PendingDeletion
    );
    let generation = lab.kms.keystore_generation().unwrap();

    lab.clock.advance(Duration::seconds(1));
    let err = lab.kms.describe_key(&key).unwrap_err();
    assert!(matches!(err, KmsError::NotFound(_)), "{err}");
    assert!(
        lab.kms.keystore_generation().unwrap() > generation,
        "deletion was not persisted"
    );
    let err = lab.kms.decrypt(&decrypt_req(&blob, &ctx(&[]))).unwrap_err();
    assert!(matches!(err, KmsError::NotFound(_)), "{err}");
    assert!(err.to_string().contains(&arn), "{err}");

    let aliases = lab.kms.list_aliases(None, &ListRequest::default()).unwrap();
    let names: Vec<_> = aliases
        .items
        .iter()
        .map(|a| a.alias_name.as_str())
        .collect();
    assert_eq!(names, ["alias/kept"]);
    let keys = lab.kms.list_keys(&ListRequest::default()).unwrap();
    assert_eq!(keys.items.len(), 1);

    let stored = std::fs::read_to_string(lab.kms.keystore_path()).unwrap();
    assert!(
        !stored.contains(&format!("\"{key}\": {{")),
        "the deleted key's record is still in the keystore"
    );
}

#[test]
fn a_process_with_an_earlier_clock_sees_the_deletion_another_completed() {
    let lab = Lab::new();
    let key = lab.key();
    lab.kms.schedule_key_deletion(&key, Some(7)).unwrap();
    // The "server" runs on the real schedule; the "CLI" has ATREST_CLOCK_OFFSET=8d.
    let server_clock = Arc::new(ManualClock::new(lab.clock.now()));
    let server = lab.reopen_with_clock(&server_clock);
    assert_eq!(
        server.describe_key(&key).unwrap().key_state,
        KeyState::PendingDeletion
    );
    let before = server.keystore_generation().unwrap();
    lab.clock.advance(Duration::days(8));
    assert!(matches!(
        lab.kms.describe_key(&key),
        Err(KmsError::NotFound(_))
    ));
    assert!(server.keystore_generation().unwrap() > before);
    assert!(matches!(
        server.describe_key(&key),
        Err(KmsError::NotFound(_))
    ));
}
