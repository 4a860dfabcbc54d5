//! The local key service and its ciphertext blobs against a model: a plain in-memory
//! table of key states, rotation settings, on-demand rotations and the blobs made so
//! far. The same sequence of operations (create, enable, disable, schedule and cancel
//! deletion, rotation on and off, on-demand rotation, encrypt, decrypt under the
//! right or a wrong context or key, re-encrypt, aliases, days passing) gets the same
//! answers and the same AWS error names from both; every blob decrypts to what was
//! encrypted while its key is usable, whatever rotations happened since.
#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use atrest_fuzz::{scratch_dir, Input, KEYSTORE_ROOT_KEY};
use crypto_core::kms::clock::ManualClock;
use crypto_core::kms::{
    CreateKeyRequest, DecryptRequest, EncryptionContext, KeyService, KeyState, KmsError, LocalKms,
    LocalKmsConfig, ReEncryptRequest,
};
use crypto_core::trail::{HEAD_FILE, LOG_FILE};
use libfuzzer_sys::fuzz_target;
use time::{Duration, OffsetDateTime};

const MAX_KEYS: usize = 4;
const MAX_ON_DEMAND_ROTATIONS: u32 = 10;

/// The instant every input starts at (2026-01-01).
const START: i64 = 1_767_225_600;

/// One key service per process, emptied before each input: opening one per input
/// (creating its home, keystore directory, root key check and trail, each with a
/// directory sync) cost more than the operations. Emptied, it is what a fresh one
/// is: no keystore file (created by the first update, as in a new home) and an empty
/// trail and head (the files are truncated through other handles; the service's own
/// log handle appends, so its next record is the first line again). Every call reads
/// the keystore from disk, so nothing else carries over (the trail's last-record
/// memo holds only while the log ends with that record, which truncation undoes).
struct Service {
    _dir: tempfile::TempDir,
    keystore: PathBuf,
    trail_log: PathBuf,
    trail_head: PathBuf,
    clock: Arc<ManualClock>,
    kms: LocalKms,
}

impl Service {
    fn get() -> &'static Service {
        static SERVICE: OnceLock<Service> = OnceLock::new();
        SERVICE.get_or_init(|| {
            let dir = scratch_dir("kms-model");
            let root_key = dir.path().join("root.key");
            fs::write(&root_key, KEYSTORE_ROOT_KEY).expect("root key");
            fs::set_permissions(&root_key, fs::Permissions::from_mode(0o600)).expect("chmod");
            let home = dir.path().join("home");
            let clock = Arc::new(ManualClock::new(start()));
            let mut config = LocalKmsConfig::new();
            config.root_key_file = Some(root_key);
            config.clock = clock.clone();
            let kms = LocalKms::open(&home, config).expect("a fresh key service");
            let trail = home.join("trail");
            Service {
                keystore: kms.keystore_path().to_path_buf(),
                trail_log: trail.join(LOG_FILE),
                trail_head: trail.join(HEAD_FILE),
                _dir: dir,
                clock,
                kms,
            }
        })
    }

    /// Empties the keystore and the trail and sets the clock back to the start.
    fn reset(&self) -> &LocalKms {
        match fs::remove_file(&self.keystore) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", self.keystore.display()),
        }
        for file in [&self.trail_log, &self.trail_head] {
            fs::OpenOptions::new()
                .write(true)
                .open(file)
                .and_then(|f| f.set_len(0))
                .unwrap_or_else(|e| panic!("cannot empty {}: {e}", file.display()));
        }
        self.clock.set(start());
        &self.kms
    }
}

fn start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(START).expect("2026-01-01")
}

/// What the model knows of one key.
#[derive(Clone, Debug)]
struct ModelKey {
    arn: String,
    state: KeyState,
    /// When a key pending deletion is gone.
    deletion_at: Option<OffsetDateTime>,
    rotation_enabled: bool,
    on_demand_rotations: u32,
}

#[derive(Debug)]
struct Blob {
    key: usize,
    context: EncryptionContext,
    plaintext: Vec<u8>,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Model {
    keys: Vec<ModelKey>,
    blobs: Vec<Blob>,
    /// alias name -> key index.
    aliases: BTreeMap<String, usize>,
}

impl Model {
    /// The key as a usable one (present, not gone past its deletion date).
    fn key(&self, index: usize, now: OffsetDateTime) -> Result<&ModelKey, &'static str> {
        match self.keys.get(index) {
            Some(key) if key.deletion_at.is_some_and(|at| now >= at) => Err("NotFoundException"),
            Some(key) => Ok(key),
            None => Err("NotFoundException"),
        }
    }

    /// The error a cryptographic operation with this key gets, if any.
    fn crypto_error(&self, index: usize, now: OffsetDateTime) -> Result<(), &'static str> {
        match self.key(index, now)?.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err("DisabledException"),
            KeyState::PendingDeletion => Err("KMSInvalidStateException"),
        }
    }

    /// The error a change to the key's settings gets when it is pending deletion.
    fn settings_error(&self, index: usize, now: OffsetDateTime) -> Result<(), &'static str> {
        match self.key(index, now)?.state {
            KeyState::PendingDeletion => Err("KMSInvalidStateException"),
            _ => Ok(()),
        }
    }
}

fn name<T>(result: &Result<T, KmsError>) -> Result<(), &'static str> {
    match result {
        Ok(_) => Ok(()),
        Err(err) => Err(err.aws_name()),
    }
}

fn context(pick: u8) -> EncryptionContext {
    match pick % 3 {
        0 => EncryptionContext::new(),
        1 => [("purpose".to_owned(), "fuzz".to_owned())].into(),
        _ => [("purpose".to_owned(), "other".to_owned())].into(),
    }
}

/// A key reference: the ARN of a key the model made (or of a key that was never
/// made, when the index is past the end), or an alias.
fn reference(model: &Model, pick: u8) -> (String, Option<usize>) {
    let index = usize::from(pick % 8);
    if pick & 0x80 != 0 {
        let alias = format!("alias/fuzz-{}", index % 2);
        let target = model.aliases.get(&alias).copied();
        return (alias, target);
    }
    match model.keys.get(index) {
        Some(key) => (key.arn.clone(), Some(index)),
        None => (
            format!(
                "arn:aws:kms:local:000000000000:key/00000000-0000-4000-8000-00000000000{index}"
            ),
            None,
        ),
    }
}

fn check(op: &str, model: Result<(), &'static str>, real: Result<(), &'static str>) {
    assert_eq!(real, model, "{op}: the key service and the model disagree");
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let service = Service::get();
    let kms = service.reset();
    let clock = &service.clock;
    let mut now = start();
    let mut model = Model::default();
    let mut input = Input::new(data);
    let mut ops = 0;
    while !input.is_empty() && ops < 24 {
        ops += 1;
        let op = input.u8();
        let (key_id, index) = reference(&model, input.u8());
        let known = |model: &Model| {
            index.map_or(Err("NotFoundException"), |i| model.key(i, now).map(|_| ()))
        };
        match op % 13 {
            0 => {
                let made = kms.create_key(&CreateKeyRequest::default());
                if model.keys.len() < MAX_KEYS {
                    let made = made.expect("CreateKey");
                    assert_eq!(made.key_state, KeyState::Enabled);
                    model.keys.push(ModelKey {
                        arn: made.arn,
                        state: KeyState::Enabled,
                        deletion_at: None,
                        rotation_enabled: false,
                        on_demand_rotations: 0,
                    });
                }
            }
            1 => {
                let expected =
                    known(&model).and_then(|()| model.settings_error(index.unwrap_or(0), now));
                check("EnableKey", expected, name(&kms.enable_key(&key_id)));
                if let (Ok(()), Some(i)) = (expected, index) {
                    model.keys[i].state = KeyState::Enabled;
                }
            }
            2 => {
                let expected =
                    known(&model).and_then(|()| model.settings_error(index.unwrap_or(0), now));
                check("DisableKey", expected, name(&kms.disable_key(&key_id)));
                if let (Ok(()), Some(i)) = (expected, index) {
                    model.keys[i].state = KeyState::Disabled;
                }
            }
            3 => {
                let days = match input.u8() % 4 {
                    0 => None,
                    1 => Some(7),
                    2 => Some(30),
                    _ => Some(u32::from(input.u8())),
                };
                let window = days.unwrap_or(30);
                let expected = if !(7..=30).contains(&window) {
                    Err("ValidationException")
                } else {
                    known(&model).and_then(|()| model.settings_error(index.unwrap_or(0), now))
                };
                let real = kms.schedule_key_deletion(&key_id, days);
                check("ScheduleKeyDeletion", expected, name(&real));
                if let (Ok(scheduled), Some(i)) = (real, index) {
                    assert_eq!(scheduled.key_state, KeyState::PendingDeletion);
                    let at = now + Duration::days(i64::from(window));
                    assert_eq!(scheduled.deletion_date, at, "the deletion date");
                    model.keys[i].state = KeyState::PendingDeletion;
                    model.keys[i].deletion_at = Some(at);
                }
            }
            4 => {
                let expected =
                    known(&model).and_then(|()| match model.keys[index.unwrap_or(0)].state {
                        KeyState::PendingDeletion => Ok(()),
                        _ => Err("KMSInvalidStateException"),
                    });
                check(
                    "CancelKeyDeletion",
                    expected,
                    name(&kms.cancel_key_deletion(&key_id)),
                );
                if let (Ok(()), Some(i)) = (expected, index) {
                    model.keys[i].state = KeyState::Disabled;
                    model.keys[i].deletion_at = None;
                }
            }
            5 => {
                let expected =
                    known(&model).and_then(|()| model.crypto_error(index.unwrap_or(0), now));
                let real = kms.enable_key_rotation(&key_id, None);
                check("EnableKeyRotation", expected, name(&real));
                if let (Ok(()), Some(i)) = (expected, index) {
                    model.keys[i].rotation_enabled = true;
                }
            }
            6 => {
                let expected =
                    known(&model).and_then(|()| model.crypto_error(index.unwrap_or(0), now));
                let real = kms.disable_key_rotation(&key_id);
                check("DisableKeyRotation", expected, name(&real));
                if let (Ok(()), Some(i)) = (expected, index) {
                    model.keys[i].rotation_enabled = false;
                }
            }
            7 => {
                let expected = known(&model)
                    .and_then(|()| model.crypto_error(index.unwrap_or(0), now))
                    .and_then(|()| {
                        if model.keys[index.unwrap_or(0)].on_demand_rotations
                            >= MAX_ON_DEMAND_ROTATIONS
                        {
                            Err("LimitExceededException")
                        } else {
                            Ok(())
                        }
                    });
                check(
                    "RotateKeyOnDemand",
                    expected,
                    name(&kms.rotate_key_on_demand(&key_id)),
                );
                if let (Ok(()), Some(i)) = (expected, index) {
                    model.keys[i].on_demand_rotations += 1;
                }
            }
            8 => {
                let context = context(input.u8());
                let len = usize::from(input.u8() % 64);
                let plaintext = input.bytes(len).to_vec();
                let expected =
                    known(&model).and_then(|()| model.crypto_error(index.unwrap_or(0), now));
                let expected = if plaintext.is_empty() {
                    Err("ValidationException")
                } else {
                    expected
                };
                let real = kms.encrypt(&key_id, &plaintext, &context);
                check("Encrypt", expected, name(&real));
                if let (Ok(wrapped), Some(i)) = (real, index) {
                    assert_eq!(wrapped.key_id, model.keys[i].arn);
                    model.blobs.push(Blob {
                        key: i,
                        context,
                        plaintext,
                        bytes: wrapped.ciphertext_blob,
                    });
                }
            }
            9 | 10 => {
                let Some(blob) = model
                    .blobs
                    .get(usize::from(input.u8()) % model.blobs.len().max(1))
                else {
                    continue;
                };
                let context_pick = input.u8();
                let same_context = context_pick & 0x80 == 0;
                let asked = if same_context {
                    blob.context.clone()
                } else {
                    context(context_pick)
                };
                let name_key = input.u8() & 1 != 0;
                // A wrong context and a key id naming another key fail; so does a key
                // that cannot be used.
                // A key id that is given is resolved first: one that does not exist
                // (or no longer does) is NotFoundException, another live key than
                // the blob's is IncorrectKeyException.
                let named = match index {
                    _ if !name_key => Ok(()),
                    Some(i) if model.key(i, now).is_ok() && i == blob.key => Ok(()),
                    Some(i) if model.key(i, now).is_ok() => Err("IncorrectKeyException"),
                    _ => Err("NotFoundException"),
                };
                let expected = if let Err(e) = named {
                    Err(e)
                } else {
                    // The blob's key is looked up (a deleted key is NotFound) and
                    // its state checked before the blob is opened: a disabled key
                    // answers DisabledException whatever the context.
                    model
                        .key(blob.key, now)
                        .map(|_| ())
                        .and_then(|()| model.crypto_error(blob.key, now))
                        .and_then(|()| {
                            if asked == blob.context {
                                Ok(())
                            } else {
                                Err("InvalidCiphertextException")
                            }
                        })
                };
                let key_id = name_key.then(|| key_id.clone());
                if op % 13 == 9 {
                    let real = kms.decrypt(&DecryptRequest {
                        ciphertext_blob: blob.bytes.clone(),
                        encryption_context: asked,
                        key_id,
                    });
                    check("Decrypt", expected, name(&real));
                    if let Ok(decrypted) = real {
                        assert_eq!(decrypted.plaintext.expose(), &blob.plaintext[..]);
                        assert_eq!(decrypted.key_id, model.keys[blob.key].arn);
                    }
                } else {
                    // Re-encrypt under the blob's own key with the same context: the
                    // source must open and the destination be usable.
                    let destination = model.keys[blob.key].arn.clone();
                    let expected = expected.and_then(|()| model.crypto_error(blob.key, now));
                    let real = kms.re_encrypt(&ReEncryptRequest {
                        ciphertext_blob: blob.bytes.clone(),
                        source_encryption_context: asked,
                        source_key_id: key_id,
                        destination_key_id: destination,
                        destination_encryption_context: blob.context.clone(),
                    });
                    check("ReEncrypt", expected, name(&real));
                    if let Ok(again) = real {
                        let blob = Blob {
                            key: blob.key,
                            context: blob.context.clone(),
                            plaintext: blob.plaintext.clone(),
                            bytes: again.ciphertext_blob,
                        };
                        model.blobs.push(blob);
                    }
                }
            }
            11 => {
                let alias = format!("alias/fuzz-{}", input.u8() % 2);
                // The target key is checked first (it must exist and not be pending
                // deletion), then the alias name.
                let expected = known(&model)
                    .and_then(|()| model.settings_error(index.unwrap_or(0), now))
                    .and_then(|()| match model.aliases.contains_key(&alias) {
                        true => Err("AlreadyExistsException"),
                        false => Ok(()),
                    });
                let real = kms.create_alias(&alias, &key_id);
                // An alias that names another alias is refused (AWS: the target
                // must be a key id or ARN), whatever the error's name.
                if key_id.starts_with("alias/") {
                    assert!(real.is_err(), "CreateAlias to an alias was accepted");
                    continue;
                }
                check("CreateAlias", expected, name(&real));
                if let (Ok(()), Some(i)) = (expected, index) {
                    model.aliases.insert(alias, i);
                }
            }
            _ => {
                // Days pass; keys past their deletion date are gone, with their aliases.
                let days = i64::from(input.u8() % 40);
                clock.advance(Duration::days(days));
                now += Duration::days(days);
                let gone: Vec<usize> = (0..model.keys.len())
                    .filter(|&i| model.key(i, now).is_err())
                    .collect();
                model.aliases.retain(|_, target| !gone.contains(target));
            }
        }
    }
    // What DescribeKey and GetKeyRotationStatus say of every key matches the model.
    // Once per input, not after each operation: every call is audited (a trail
    // append and a keystore read), and checking after each one quartered the speed;
    // the answers of the operations themselves are checked one by one above.
    for i in 0..model.keys.len() {
        describe_matches(kms, &model, i, now);
    }
});

fn describe_matches(kms: &LocalKms, model: &Model, i: usize, now: OffsetDateTime) {
    let described = kms.describe_key(&model.keys[i].arn);
    match model.key(i, now) {
        Ok(expected) => {
            let described = described.expect("DescribeKey of a live key");
            assert_eq!(described.key_state, expected.state, "key {i}'s state");
            let rotation = kms
                .get_key_rotation_status(&expected.arn)
                .expect("GetKeyRotationStatus of a live key");
            assert_eq!(
                rotation.key_rotation_enabled, expected.rotation_enabled,
                "key {i}'s automatic rotation"
            );
        }
        Err(e) => assert_eq!(name(&described), Err(e), "DescribeKey of a deleted key"),
    }
}
