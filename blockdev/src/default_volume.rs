//! First-run setup of `atrest serve`, the zero-config job: the default key
//! ([`DEFAULT_KEY_ALIAS`]) and the default volume (`<home>/volumes/default.vol`,
//! [`DEFAULT_VOLUME_SIZE`] bytes, encrypted under that key), made once and then
//! served on every run.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use crypto_core::kms::{CreateKeyRequest, KeyService, KmsError};

use crate::format::VolumeHeader;
use crate::volume::{self, NewVolumeKey};
use crate::Error;

/// The key `atrest serve` creates on first run and encrypts the default volume under.
pub const DEFAULT_KEY_ALIAS: &str = "alias/atrest-default";
/// The size of the default volume: 1 GiB.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;
/// The description of the default key (what DescribeKey shows).
const DEFAULT_KEY_DESCRIPTION: &str = "atrest default volume key";

/// Something first-run setup has just made, reported as soon as it exists (so the
/// user learns of a key made even when the volume then fails).
#[derive(Debug)]
pub enum Made<'a> {
    /// The default key, created and named [`DEFAULT_KEY_ALIAS`].
    Key {
        /// The new key's ARN.
        arn: &'a str,
    },
    /// The default volume.
    Volume {
        /// Where it is.
        path: &'a Path,
        /// Its header (volume id, size, wrapped key).
        header: &'a VolumeHeader,
    },
}

/// Why first-run setup failed; nothing it made before the failure is undone (a key
/// made stays, and is used by the next run).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The key service could not describe, create or name the default key.
    #[error(transparent)]
    Key(KmsError),
    /// `<home>/volumes` could not be created.
    #[error("creating {}", dir.display())]
    VolumesDir {
        /// The directory.
        dir: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The default volume could not be created.
    #[error("creating the default volume {}", path.display())]
    Volume {
        /// The volume's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: Error,
    },
}

/// Where the default volume of `home` lives: `<home>/volumes/default.vol`.
pub fn path_in(home: &Path) -> PathBuf {
    home.join("volumes").join("default.vol")
}

/// Makes the default volume of `home` unless it exists: first the default key
/// (unless [`DEFAULT_KEY_ALIAS`] already names one), then `<home>/volumes` and the
/// volume, encrypted under the alias. Tells `made` of each thing as it is made.
/// Returns the volume's path, made now or before.
pub fn ensure(
    home: &Path,
    kms: &dyn KeyService,
    made: &mut dyn FnMut(Made<'_>),
) -> Result<PathBuf, SetupError> {
    let path = path_in(home);
    if path.exists() {
        return Ok(path);
    }
    ensure_default_key(kms, made).map_err(SetupError::Key)?;
    let dir = home.join("volumes");
    std::fs::create_dir_all(&dir).map_err(|source| SetupError::VolumesDir {
        dir: dir.clone(),
        source,
    })?;
    let header = volume::create(
        &path,
        DEFAULT_VOLUME_SIZE,
        NewVolumeKey::Kms {
            kms,
            key_id: DEFAULT_KEY_ALIAS,
        },
    )
    .map_err(|source| SetupError::Volume {
        path: path.clone(),
        source,
    })?;
    made(Made::Volume {
        path: &path,
        header: &header,
    });
    Ok(path)
}

/// Creates [`DEFAULT_KEY_ALIAS`] (and its key) unless it exists. Any other answer
/// of DescribeKey than NotFound (a disabled key, a denial) is left to the caller's
/// next use of the key, or returned when it is a failure.
fn ensure_default_key(
    kms: &dyn KeyService,
    made: &mut dyn FnMut(Made<'_>),
) -> Result<(), KmsError> {
    match kms.describe_key(DEFAULT_KEY_ALIAS) {
        Ok(_) => Ok(()),
        Err(KmsError::NotFound(_)) => {
            let key = kms.create_key(&CreateKeyRequest {
                description: DEFAULT_KEY_DESCRIPTION.into(),
                ..CreateKeyRequest::default()
            })?;
            kms.create_alias(DEFAULT_KEY_ALIAS, &key.key_id)?;
            made(Made::Key { arn: &key.arn });
            Ok(())
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_core::kms::{LocalKms, LocalKmsConfig};

    /// What `ensure` reported, as text.
    fn run(home: &Path, kms: &dyn KeyService) -> (Result<PathBuf, SetupError>, Vec<String>) {
        let mut seen = Vec::new();
        let result = ensure(home, kms, &mut |made| {
            seen.push(match made {
                Made::Key { arn } => format!("key {arn}"),
                Made::Volume { path, header } => {
                    format!("volume {} {}", path.display(), header.size())
                }
            });
        });
        (result, seen)
    }

    fn kms(home: &Path) -> LocalKms {
        LocalKms::open(home, LocalKmsConfig::new()).expect("open")
    }

    /// A key named by the default alias before first-run setup (by the user).
    fn default_key_made_before(kms: &LocalKms) -> crypto_core::kms::KeyMetadata {
        let key = kms
            .create_key(&CreateKeyRequest::default())
            .expect("create");
        kms.create_alias(DEFAULT_KEY_ALIAS, &key.key_id)
            .expect("alias");
        key
    }

    #[test]
    fn first_run_makes_key_and_volume_then_nothing() {
        let home = tempfile::tempdir().expect("tempdir");
        let kms = kms(home.path());
        let (path, seen) = run(home.path(), &kms);
        let path = path.expect("first run");
        assert_eq!(path, home.path().join("volumes/default.vol"));
        let key = kms
            .describe_key(DEFAULT_KEY_ALIAS)
            .expect("the default key");
        assert_eq!(key.description, DEFAULT_KEY_DESCRIPTION);
        assert_eq!(
            seen,
            [
                format!("key {}", key.arn),
                format!("volume {} {DEFAULT_VOLUME_SIZE}", path.display()),
            ]
        );
        let header = crate::format::read_header(&std::fs::File::open(&path).expect("open"), &path)
            .expect("a volume")
            .header;
        match header.encryption() {
            crate::format::Encryption::Aes256XtsPlain64(wrapped) => {
                assert_eq!(wrapped.key_arn, key.arn);
            }
            crate::format::Encryption::None => panic!("the default volume is not encrypted"),
        }
        let (again, seen) = run(home.path(), &kms);
        assert_eq!(again.expect("second run"), path);
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[test]
    fn an_existing_alias_is_used_not_replaced() {
        let home = tempfile::tempdir().expect("tempdir");
        let kms = kms(home.path());
        let key = default_key_made_before(&kms);
        let (path, seen) = run(home.path(), &kms);
        let path = path.expect("setup");
        assert_eq!(
            seen,
            [format!("volume {} {DEFAULT_VOLUME_SIZE}", path.display())]
        );
        assert_eq!(
            kms.describe_key(DEFAULT_KEY_ALIAS).expect("key").arn,
            key.arn
        );
    }

    #[test]
    fn a_failure_after_the_key_reports_the_key_and_keeps_it() {
        let home = tempfile::tempdir().expect("tempdir");
        let kms = kms(home.path());
        // A file where the volumes directory goes.
        std::fs::write(home.path().join("volumes"), b"not a directory").expect("write");
        let (result, seen) = run(home.path(), &kms);
        let err = result.expect_err("no volumes directory");
        assert!(matches!(err, SetupError::VolumesDir { .. }), "{err:?}");
        let key = kms.describe_key(DEFAULT_KEY_ALIAS).expect("the key stays");
        assert_eq!(seen, [format!("key {}", key.arn)]);
    }

    #[test]
    fn a_key_pending_deletion_fails_the_volume_and_makes_nothing() {
        let home = tempfile::tempdir().expect("tempdir");
        let kms = kms(home.path());
        let key = default_key_made_before(&kms);
        kms.schedule_key_deletion(&key.key_id, Some(7))
            .expect("schedule deletion");
        let (result, seen) = run(home.path(), &kms);
        // DescribeKey still answers for a key pending deletion (no new key is made);
        // GenerateDataKey refuses it, so the volume fails with that refusal.
        let err = result.expect_err("a key pending deletion");
        let SetupError::Volume { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(
            matches!(source, Error::Kms(KmsError::InvalidState(_))),
            "{source:?}"
        );
        assert!(seen.is_empty(), "{seen:?}");
        assert!(!path_in(home.path()).exists());
    }

    #[test]
    fn a_dangling_symlink_at_the_volume_path_is_not_followed() {
        let home = tempfile::tempdir().expect("tempdir");
        let kms = kms(home.path());
        std::fs::create_dir(home.path().join("volumes")).expect("mkdir");
        let target = home.path().join("elsewhere.vol");
        std::os::unix::fs::symlink(&target, path_in(home.path())).expect("symlink");
        let (result, _) = run(home.path(), &kms);
        let err = result.expect_err("a symlink where the volume goes");
        let SetupError::Volume { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(matches!(source, Error::AlreadyExists { .. }), "{source:?}");
        assert!(!target.exists(), "setup wrote through the symlink");
    }
}
