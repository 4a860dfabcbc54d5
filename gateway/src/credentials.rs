//! The access keys the gateway accepts: `<home>/iam/access-keys.json`, 0600 in a
//! 0700 directory, managed by `atrest iam create-access-key`.
//!
//! SigV4 signatures are HMACs keyed by the secret (through a key derived per day,
//! region and service), so verifying one needs the secret itself: the file holds it
//! in the clear, like `~/.aws/credentials` on the client side, and is refused if
//! anyone but its owner can read it.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::{Zeroize, Zeroizing};

use crate::error::GatewayError;
use crate::sigv4::SecretLookup;

const FILE_NAME: &str = "access-keys.json";
const LOCK_NAME: &str = "access-keys.lock";
const FORMAT_VERSION: u32 = 1;
/// Far more than any real list of access keys; stops a damaged file from being read
/// into memory whole.
const MAX_FILE_LEN: u64 = 16 << 20;
/// The characters of AWS access key ids after the `AKIA` prefix (base32).
const KEY_ID_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The characters of AWS secret access keys (base64 without padding).
const SECRET_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Whether an access key may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessKeyStatus {
    /// Requests signed with the key are accepted.
    Active,
    /// Requests signed with the key are refused.
    Inactive,
}

/// One access key. The secret is zeroized on drop and never printed by `Debug`.
pub struct AccessKey {
    /// The public half (`AKIA` and 16 base32 characters, as AWS).
    pub access_key_id: String,
    /// The SigV4 signing secret (40 base64 characters).
    pub secret_access_key: Zeroizing<String>,
    /// The principal ARN requests signed with this key act as.
    pub principal: String,
    /// The user name, when the principal is an IAM user (`...:user/NAME`).
    pub user_name: Option<String>,
    /// Active or Inactive.
    pub status: AccessKeyStatus,
    /// When the key was made (AWS `CreateDate`).
    pub create_date: OffsetDateTime,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .field("principal", &self.principal)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The file's record of one key (the secret moves into a `Zeroizing` right after
/// parsing, and the record is zeroized before it is dropped).
#[derive(Serialize, Deserialize)]
struct StoredKey {
    access_key_id: String,
    secret_access_key: String,
    principal: String,
    status: AccessKeyStatus,
    #[serde(with = "time::serde::rfc3339")]
    create_date: OffsetDateTime,
}

#[derive(Serialize, Deserialize)]
struct StoredFile {
    version: u32,
    access_keys: Vec<StoredKey>,
}

/// What the file looked like when it was last read, to reload only on a change.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    mtime_ns: i128,
}

struct Cache {
    stamp: Option<FileStamp>,
    keys: Vec<AccessKey>,
}

/// The access keys under `<home>/iam/`. Lookups re-read the file when it changed
/// (keys created while the server runs work at once).
pub struct CredentialStore {
    dir: PathBuf,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// The store of `home` (`<home>/iam/`); nothing is created until a key is.
    pub fn open(home: &Path) -> CredentialStore {
        CredentialStore {
            dir: home.join("iam"),
            cache: Mutex::new(Cache {
                stamp: None,
                keys: Vec::new(),
            }),
        }
    }

    /// The JSON file the keys are stored in (`<dir>/access-keys.json`).
    pub fn file_path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn file_error(&self, message: impl Into<String>) -> GatewayError {
        GatewayError::CredentialsFile {
            path: self.file_path().display().to_string(),
            message: message.into(),
        }
    }

    /// Creates an active access key for `principal` (an ARN) and returns it, secret
    /// included: the only time the secret is shown.
    pub fn create_access_key(&self, principal: &str) -> Result<AccessKey, GatewayError> {
        check_principal(principal)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| GatewayError::io(format!("creating {}", self.dir.display()), e))?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(LOCK_NAME))
            .map_err(|e| {
                GatewayError::io(format!("opening the lock in {}", self.dir.display()), e)
            })?;
        FileExt::lock_exclusive(&lock)
            .map_err(|e| GatewayError::io("locking the credentials file", e))?;
        let mut keys = self.read_file()?.map(|(keys, _)| keys).unwrap_or_default();
        let key = AccessKey {
            access_key_id: new_access_key_id(&keys),
            secret_access_key: new_secret(),
            principal: principal.to_owned(),
            user_name: user_name(principal),
            status: AccessKeyStatus::Active,
            create_date: OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        };
        keys.push(AccessKey {
            access_key_id: key.access_key_id.clone(),
            secret_access_key: key.secret_access_key.clone(),
            principal: key.principal.clone(),
            user_name: key.user_name.clone(),
            status: key.status,
            create_date: key.create_date,
        });
        self.write_file(&keys)?;
        Ok(key)
    }

    /// Every access key (secrets included), for listing and tests.
    pub fn access_keys(&self) -> Result<Vec<AccessKey>, GatewayError> {
        Ok(self.read_file()?.map(|(keys, _)| keys).unwrap_or_default())
    }

    /// Reads the file: `None` when it does not exist yet.
    fn read_file(&self) -> Result<Option<(Vec<AccessKey>, FileStamp)>, GatewayError> {
        let path = self.file_path();
        let mut file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(GatewayError::io(format!("opening {}", path.display()), e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| GatewayError::io(format!("reading {}", path.display()), e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(self.file_error(format!(
                "is readable by others (mode {:o}); it holds secrets: chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        if meta.len() > MAX_FILE_LEN {
            return Err(self.file_error(format!("is larger than {MAX_FILE_LEN} bytes")));
        }
        let stamp = stamp_of(&meta);
        let mut text = Zeroizing::new(Vec::new());
        file.read_to_end(&mut text)
            .map_err(|e| GatewayError::io(format!("reading {}", path.display()), e))?;
        let mut stored: StoredFile = serde_json::from_slice(&text)
            .map_err(|e| self.file_error(format!("is not a valid access key list ({e})")))?;
        if stored.version != FORMAT_VERSION {
            return Err(self.file_error(format!(
                "has format version {}, this atrest reads version {FORMAT_VERSION}",
                stored.version
            )));
        }
        let keys = stored
            .access_keys
            .iter_mut()
            .map(|record| {
                check_principal(&record.principal)?;
                Ok(AccessKey {
                    access_key_id: record.access_key_id.clone(),
                    secret_access_key: Zeroizing::new(std::mem::take(
                        &mut record.secret_access_key,
                    )),
                    principal: record.principal.clone(),
                    user_name: user_name(&record.principal),
                    status: record.status,
                    create_date: record.create_date,
                })
            })
            .collect::<Result<Vec<_>, GatewayError>>();
        for record in &mut stored.access_keys {
            record.secret_access_key.zeroize();
        }
        Ok(Some((keys?, stamp)))
    }

    /// Replaces the file atomically (temporary file, fsync, rename, fsync the
    /// directory), keeping mode 0600.
    fn write_file(&self, keys: &[AccessKey]) -> Result<(), GatewayError> {
        let mut stored = StoredFile {
            version: FORMAT_VERSION,
            access_keys: keys
                .iter()
                .map(|key| StoredKey {
                    access_key_id: key.access_key_id.clone(),
                    secret_access_key: String::from(key.secret_access_key.as_str()),
                    principal: key.principal.clone(),
                    status: key.status,
                    create_date: key.create_date,
                })
                .collect(),
        };
        let capacity = 256 + keys.len() * 512;
        let mut text = Zeroizing::new(Vec::with_capacity(capacity));
        let written = serde_json::to_writer_pretty(&mut *text, &stored);
        for record in &mut stored.access_keys {
            record.secret_access_key.zeroize();
        }
        written.map_err(|e| self.file_error(format!("cannot be encoded ({e})")))?;
        text.push(b'\n');
        let tmp = self.dir.join(format!("{FILE_NAME}.partial"));
        let write = || -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(&text)?;
            file.sync_all()?;
            fs::rename(&tmp, self.file_path())?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| GatewayError::io(format!("writing {}", self.file_path().display()), e))
    }
}

impl SecretLookup for CredentialStore {
    fn lookup(&self, access_key_id: &str) -> Result<(Zeroizing<String>, String), GatewayError> {
        let path = self.file_path();
        let current = match fs::metadata(&path) {
            Ok(meta) => Some(stamp_of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(GatewayError::io(format!("reading {}", path.display()), e)),
        };
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| self.file_error("a thread panicked while reloading it"))?;
        if current != cache.stamp {
            match self.read_file()? {
                Some((keys, stamp)) => {
                    cache.keys = keys;
                    cache.stamp = Some(stamp);
                }
                None => {
                    cache.keys.clear();
                    cache.stamp = None;
                }
            }
        }
        let key = cache
            .keys
            .iter()
            .find(|key| key.access_key_id == access_key_id)
            .ok_or_else(|| {
                GatewayError::UnrecognizedClient(
                    "The security token included in the request is invalid.".into(),
                )
            })?;
        if key.status != AccessKeyStatus::Active {
            return Err(GatewayError::InactiveAccessKey(format!(
                "The access key {access_key_id} is inactive."
            )));
        }
        Ok((key.secret_access_key.clone(), key.principal.clone()))
    }
}

fn stamp_of(meta: &fs::Metadata) -> FileStamp {
    FileStamp {
        inode: meta.ino(),
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    }
}

/// A principal must look like an ARN (`arn:PARTITION:SERVICE:...`), so that key
/// policies can name it.
fn check_principal(principal: &str) -> Result<(), GatewayError> {
    let parts: Vec<&str> = principal.splitn(6, ':').collect();
    let valid = principal.len() <= 2048
        && !principal.chars().any(char::is_control)
        && parts.len() == 6
        && parts[0] == "arn"
        && !parts[1].is_empty()
        && !parts[2].is_empty()
        && !parts[5].is_empty();
    if !valid {
        return Err(GatewayError::Config(format!(
            "principal '{}' is not an ARN (e.g. arn:aws:iam::000000000000:user/alice)",
            principal.chars().take(128).collect::<String>()
        )));
    }
    Ok(())
}

/// `NAME` of `arn:aws:iam::ACCOUNT:user/NAME` (or `user/PATH/NAME`).
fn user_name(principal: &str) -> Option<String> {
    let resource = principal.splitn(6, ':').nth(5)?;
    let path = resource.strip_prefix("user/")?;
    path.rsplit('/').next().map(str::to_owned)
}

fn random_text(alphabet: &[u8], len: usize) -> Zeroizing<String> {
    let mut bytes = Zeroizing::new(vec![0u8; len]);
    crypto_core::secret::fill_random(&mut bytes);
    // Both alphabets have a power-of-two length, so the modulo is unbiased.
    let text: String = bytes
        .iter()
        .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
        .collect();
    Zeroizing::new(text)
}

fn new_access_key_id(existing: &[AccessKey]) -> String {
    loop {
        let id = format!("AKIA{}", random_text(KEY_ID_ALPHABET, 16).as_str());
        if !existing.iter().any(|key| key.access_key_id == id) {
            return id;
        }
    }
}

fn new_secret() -> Zeroizing<String> {
    random_text(SECRET_ALPHABET, 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_keys_are_found_and_the_file_is_private() {
        let home = tempfile::tempdir().unwrap();
        let store = CredentialStore::open(home.path());
        assert!(matches!(
            store.lookup("AKIAUNKNOWN"),
            Err(GatewayError::UnrecognizedClient(_))
        ));
        let alice = store
            .create_access_key("arn:aws:iam::000000000000:user/alice")
            .unwrap();
        assert!(alice.access_key_id.starts_with("AKIA"));
        assert_eq!(alice.access_key_id.len(), 20);
        assert_eq!(alice.secret_access_key.len(), 40);
        assert_eq!(alice.user_name.as_deref(), Some("alice"));
        let bob = store
            .create_access_key("arn:aws:iam::000000000000:role/bob")
            .unwrap();
        assert_eq!(bob.user_name, None);
        let (secret, principal) = store.lookup(&alice.access_key_id).unwrap();
        assert_eq!(secret.as_str(), alice.secret_access_key.as_str());
        assert_eq!(principal, "arn:aws:iam::000000000000:user/alice");
        assert_eq!(store.lookup(&bob.access_key_id).unwrap().1, bob.principal);
        let mode = fs::metadata(store.file_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{alice:?}").contains(alice.secret_access_key.as_str()));
    }

    #[test]
    fn a_second_store_sees_new_keys_and_refuses_a_readable_file() {
        let home = tempfile::tempdir().unwrap();
        let server = CredentialStore::open(home.path());
        let admin = CredentialStore::open(home.path());
        let key = admin
            .create_access_key("arn:aws:iam::000000000000:user/carol")
            .unwrap();
        assert!(server.lookup(&key.access_key_id).is_ok());
        let later = admin
            .create_access_key("arn:aws:iam::000000000000:user/dave")
            .unwrap();
        assert!(server.lookup(&later.access_key_id).is_ok());
        fs::set_permissions(server.file_path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = server.access_keys().unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn principals_must_be_arns() {
        let home = tempfile::tempdir().unwrap();
        let store = CredentialStore::open(home.path());
        for bad in ["alice", "arn:aws", "arn::iam::0:user/x", "arn:aws:iam::0:"] {
            assert!(store.create_access_key(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let home = tempfile::tempdir().unwrap();
        let store = CredentialStore::open(home.path());
        store
            .create_access_key("arn:aws:iam::000000000000:user/erin")
            .unwrap();
        for text in ["", "{", "{\"version\":2,\"access_keys\":[]}", "[1,2]"] {
            fs::write(store.file_path(), text).unwrap();
            assert!(store.lookup("AKIAX").is_err(), "accepted {text:?}");
        }
    }
}
