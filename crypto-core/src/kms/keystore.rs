//! The keystore on disk: one checksummed JSON file replaced atomically, a lock file
//! that serialises writers across processes, and the root key that seals every
//! CMK's material. Layout and byte formats: docs/FORMAT.md ("Keystore").

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{KeyState, KmsError, RotationType};
use crate::secret::{fill_random, Aes256Key};

/// First word of the keystore file's header line.
const FILE_MAGIC: &str = "atrest-keystore";
/// The keystore format version this code writes. Version 2 added accounts: every key
/// names its account and aliases are kept per account. Version 1 files (no accounts)
/// are still read: their keys and aliases belong to the legacy account (see
/// [`StoreData::adopt_legacy`]). Older atrest refuses version 2, since it would
/// otherwise treat every account's keys as its own.
const FILE_VERSION: u32 = 2;
/// Bound on the keystore size we are willing to read (a corrupted length guard).
const MAX_FILE_LEN: u64 = 256 * 1024 * 1024;
/// AAD of the root-key check value.
const ROOT_CHECK_AAD: &[u8] = b"atrest keystore root key check v1";
/// AAD prefix of sealed CMK material (followed by key id and version).
const MATERIAL_AAD: &[u8] = b"atrest cmk material v1";

/// Everything the keystore file holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct StoreData {
    /// Proves the root key in use is the one that sealed this store's material.
    #[serde(default)]
    pub root_key_check: Option<String>,
    pub keys: BTreeMap<Uuid, KeyRecord>,
    /// Version 1's aliases (one namespace, all of the legacy account); moved into
    /// `aliases` when read, never written.
    #[serde(rename = "aliases", default, skip_serializing)]
    legacy_aliases: BTreeMap<String, AliasRecord>,
    /// Account id to alias name to alias: each account has its own alias namespace.
    #[serde(rename = "account_aliases", default)]
    pub aliases: BTreeMap<String, BTreeMap<String, AliasRecord>>,
    /// Keys whose deletion completed, and when: their ciphertexts get a clear
    /// NotFoundException instead of an opaque InvalidCiphertextException.
    pub deleted_keys: BTreeMap<Uuid, Timestamp>,
    /// The account each deleted key belonged to (version 2; version 1 tombstones are
    /// the legacy account's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deleted_key_accounts: BTreeMap<Uuid, String>,
}

/// Seconds since the Unix epoch, as stored.
pub(crate) type Timestamp = i64;

pub(crate) fn to_time(ts: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(ts).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    /// The twelve-digit account that owns the key (the account of the principal that
    /// created it). Empty only in version 1 files, until [`StoreData::adopt_legacy`].
    #[serde(default)]
    pub account: String,
    pub description: String,
    pub creation_date: Timestamp,
    pub state: KeyState,
    #[serde(default)]
    pub deletion_date: Option<Timestamp>,
    #[serde(default)]
    pub pending_window_in_days: Option<u32>,
    pub policy: String,
    #[serde(default)]
    pub rotation: Option<RotationSchedule>,
    #[serde(default)]
    pub rotations: Vec<RotationRecord>,
    /// Version `i` is `materials[i]`; the last one seals new ciphertexts.
    pub materials: Vec<SealedMaterial>,
    /// TagResource's tags, tag key to value (absent in files written before tags).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RotationSchedule {
    pub period_in_days: u32,
    pub next_rotation_date: Timestamp,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RotationRecord {
    pub date: Timestamp,
    pub rotation_type: RotationType,
}

/// CMK material sealed under the root key: base64 of nonce (12) || ciphertext (32)
/// || tag (16).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct SealedMaterial {
    pub created: Timestamp,
    pub sealed: String,
}

impl fmt::Debug for SealedMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedMaterial")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AliasRecord {
    pub target_key_id: Uuid,
    pub creation_date: Timestamp,
    pub last_updated_date: Timestamp,
}

/// Something the key service did on its own when time passed, to be audited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Maintenance {
    /// The deletion window of the key (of the account) ended; its material is gone.
    Deleted { id: Uuid, account: String },
    /// Automatic rotation of the key (of the account) added a material version.
    Rotated { id: Uuid, account: String },
}

impl StoreData {
    /// Gives the keys and aliases of a version 1 file (written before accounts
    /// existed) to `account`: the account their ARNs named when they were made.
    /// Idempotent; a version 2 file has nothing to adopt.
    pub fn adopt_legacy(&mut self, account: &str) {
        for key in self.keys.values_mut() {
            if key.account.is_empty() {
                key.account = account.to_owned();
            }
        }
        for id in self.deleted_keys.keys() {
            self.deleted_key_accounts
                .entry(*id)
                .or_insert_with(|| account.to_owned());
        }
        if !self.legacy_aliases.is_empty() {
            let namespace = self.aliases.entry(account.to_owned()).or_default();
            for (name, alias) in std::mem::take(&mut self.legacy_aliases) {
                namespace.entry(name).or_insert(alias);
            }
        }
    }

    /// The aliases of `account`, if it has any.
    pub fn aliases_of(&self, account: &str) -> Option<&BTreeMap<String, AliasRecord>> {
        self.aliases.get(account)
    }

    /// True if a deletion window ended or an automatic rotation fell due by `now`.
    pub fn maintenance_due(&self, now: OffsetDateTime) -> bool {
        let now = now.unix_timestamp();
        self.keys.values().any(|k| {
            matches!(k.deletion_date, Some(d) if k.state == KeyState::PendingDeletion && d <= now)
                || matches!(&k.rotation, Some(r) if k.state == KeyState::Enabled && r.next_rotation_date <= now)
        })
    }

    /// Completes due deletions and rotations. AWS rotates only enabled keys; a key
    /// re-enabled after its date rotates on the next access.
    pub fn apply_maintenance(
        &mut self,
        now: OffsetDateTime,
        keystore: &Keystore,
    ) -> Result<Vec<Maintenance>, KmsError> {
        let ts = now.unix_timestamp();
        let mut done = Vec::new();
        let expired: Vec<(Uuid, String)> = self
            .keys
            .iter()
            .filter(|(_, k)| {
                k.state == KeyState::PendingDeletion
                    && matches!(k.deletion_date, Some(d) if d <= ts)
            })
            .map(|(id, k)| (*id, k.account.clone()))
            .collect();
        for (id, account) in expired {
            self.keys.remove(&id);
            for namespace in self.aliases.values_mut() {
                namespace.retain(|_, alias| alias.target_key_id != id);
            }
            self.aliases.retain(|_, namespace| !namespace.is_empty());
            self.deleted_keys.insert(id, ts);
            self.deleted_key_accounts.insert(id, account.clone());
            done.push(Maintenance::Deleted { id, account });
        }
        for (id, key) in self.keys.iter_mut() {
            let Some(schedule) = &mut key.rotation else {
                continue;
            };
            if key.state != KeyState::Enabled || schedule.next_rotation_date > ts {
                continue;
            }
            schedule.next_rotation_date =
                (now + Duration::days(i64::from(schedule.period_in_days))).unix_timestamp();
            add_material(key, id, ts, keystore)?;
            key.rotations.push(RotationRecord {
                date: ts,
                rotation_type: RotationType::Automatic,
            });
            done.push(Maintenance::Rotated {
                id: *id,
                account: key.account.clone(),
            });
        }
        Ok(done)
    }
}

/// Generates, seals and appends a new material version; returns its number.
pub(crate) fn add_material(
    key: &mut KeyRecord,
    id: &Uuid,
    now: Timestamp,
    keystore: &Keystore,
) -> Result<u32, KmsError> {
    let version = u32::try_from(key.materials.len())
        .map_err(|_| KmsError::LimitExceeded("the key has too many material versions".into()))?;
    let material = Aes256Key::random();
    let sealed = keystore.seal_material(id, version, &material)?;
    key.materials.push(SealedMaterial {
        created: now,
        sealed,
    });
    Ok(version)
}

/// The keystore directory, its lock, and the root key.
pub(crate) struct Keystore {
    dir: PathBuf,
    file: PathBuf,
    lock: PathBuf,
    root_key_path: PathBuf,
    root: Aes256Key,
    /// The account that owns keys and aliases of version 1 files.
    legacy_account: String,
}

impl fmt::Debug for Keystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keystore")
            .field("file", &self.file)
            .field("root_key_path", &self.root_key_path)
            .finish_non_exhaustive()
    }
}

fn io_error(what: &str, path: &Path, err: io::Error) -> KmsError {
    KmsError::Internal(format!("{what} {}: {err}", path.display()))
}

fn corrupted(path: &Path, why: &str) -> KmsError {
    KmsError::Internal(format!(
        "the keystore {} is corrupted: {why}",
        path.display()
    ))
}

/// Creates `dir` and its missing parents with mode 0700.
fn make_private_dir(dir: &Path) -> Result<(), KmsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error("cannot create directory", dir, e))
}

fn fsync_dir(dir: &Path) -> Result<(), KmsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync directory", dir, e))
}

/// Writes `bytes` to a new 0600 file at `tmp` and syncs it.
fn write_private_file(tmp: &Path, bytes: &[u8]) -> Result<(), KmsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| io_error("cannot create", tmp, e))?;
    // A leftover temp file from a crashed writer keeps its old mode; fix it.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| io_error("cannot chmod", tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("cannot write", tmp, e))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A held write lock with the new keystore written to a temp file, not yet visible.
/// Dropping it without [`Transaction::commit`] discards the update.
pub(crate) struct Transaction {
    _lock: File,
    tmp: PathBuf,
    file: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl Transaction {
    /// Makes the update visible and durable: rename over the keystore, sync the dir.
    pub fn commit(mut self) -> Result<(), KmsError> {
        fs::rename(&self.tmp, &self.file).map_err(|e| io_error("cannot replace", &self.file, e))?;
        self.committed = true;
        fsync_dir(&self.dir)
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover temp file is overwritten by the next writer.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// An update prepared by [`Keystore::prepare`].
#[derive(Debug)]
pub(crate) struct Prepared<R> {
    pub value: R,
    pub store: StoreData,
    pub maintenance: Vec<Maintenance>,
    pub tx: Transaction,
}

impl Keystore {
    /// Opens (creating if needed) the keystore in `dir`, with the root key at
    /// `root_key_file` or `dir/root.key`. Keys and aliases of a version 1 file
    /// belong to `legacy_account`.
    pub fn open(
        dir: &Path,
        root_key_file: Option<&Path>,
        legacy_account: &str,
    ) -> Result<Self, KmsError> {
        make_private_dir(dir)?;
        let root_key_path = root_key_file.map_or_else(|| dir.join("root.key"), Path::to_path_buf);
        let lock = dir.join("keystore.lock");
        let mut keystore = Self {
            dir: dir.to_path_buf(),
            file: dir.join("keystore.json"),
            lock,
            root_key_path,
            root: Aes256Key::random(),
            legacy_account: legacy_account.to_owned(),
        };
        let guard = keystore.lock(true)?;
        let store = keystore.read_unlocked()?;
        let may_create = store.keys.is_empty() && store.root_key_check.is_none();
        keystore.root = load_or_create_root_key(&keystore.root_key_path, may_create)?;
        drop(guard);
        if let Some(check) = &store.root_key_check {
            keystore.verify_root_check(check)?;
        }
        Ok(keystore)
    }

    pub fn file_path(&self) -> &Path {
        &self.file
    }

    fn lock(&self, exclusive: bool) -> Result<File, KmsError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock)
            .map_err(|e| io_error("cannot open lock file", &self.lock, e))?;
        let locked = if exclusive {
            FileExt::lock_exclusive(&file)
        } else {
            FileExt::lock_shared(&file)
        };
        locked.map_err(|e| io_error("cannot lock", &self.lock, e))?;
        Ok(file)
    }

    /// The current contents, read under a shared lock.
    pub fn read(&self) -> Result<StoreData, KmsError> {
        let _guard = self.lock(false)?;
        self.read_unlocked()
    }

    /// The generation in the header line: increases with every committed update,
    /// 0 before the first. Reads one short line, takes no lock (the file is only ever
    /// replaced whole).
    pub fn generation(&self) -> Result<u64, KmsError> {
        let mut head = [0u8; 160];
        let n = match File::open(&self.file) {
            Ok(mut f) => {
                read_up_to(&mut f, &mut head).map_err(|e| io_error("cannot read", &self.file, e))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error("cannot open", &self.file, e)),
        };
        let line_end = head[..n]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupted(&self.file, "no header line"))?;
        let header = std::str::from_utf8(&head[..line_end])
            .map_err(|_| corrupted(&self.file, "the header line is not text"))?;
        Ok(parse_header(header)
            .map_err(|why| corrupted(&self.file, why))?
            .0)
    }

    fn read_unlocked(&self) -> Result<StoreData, KmsError> {
        Ok(self.read_with_generation()?.1)
    }

    fn read_with_generation(&self) -> Result<(u64, StoreData), KmsError> {
        let mut file = match File::open(&self.file) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, StoreData::default())),
            Err(e) => return Err(io_error("cannot open", &self.file, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| io_error("cannot stat", &self.file, e))?
            .len();
        if len > MAX_FILE_LEN {
            return Err(corrupted(
                &self.file,
                "it is larger than any keystore atrest writes",
            ));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(|e| io_error("cannot read", &self.file, e))?;
        let (generation, mut store) =
            decode_file(&bytes).map_err(|why| corrupted(&self.file, &why))?;
        store.adopt_legacy(&self.legacy_account);
        Ok((generation, store))
    }

    /// Takes the write lock, applies due maintenance and then `update` to the current
    /// store, and writes the result to a temp file. Nothing is visible until the
    /// returned transaction is committed; an error from `update` writes nothing.
    pub fn prepare<R>(
        &self,
        now: OffsetDateTime,
        update: impl FnOnce(&mut StoreData) -> Result<R, KmsError>,
    ) -> Result<Prepared<R>, KmsError> {
        let lock = self.lock(true)?;
        let (generation, mut store) = self.read_with_generation()?;
        let maintenance = store.apply_maintenance(now, self)?;
        let value = update(&mut store)?;
        if store.root_key_check.is_none() {
            store.root_key_check = Some(self.root_check()?);
        }
        let bytes = encode_file(generation.saturating_add(1), &store)?;
        let tmp = self.dir.join("keystore.json.tmp");
        write_private_file(&tmp, &bytes)?;
        Ok(Prepared {
            value,
            store,
            maintenance,
            tx: Transaction {
                _lock: lock,
                tmp,
                file: self.file.clone(),
                dir: self.dir.clone(),
                committed: false,
            },
        })
    }

    fn root_check(&self) -> Result<String, KmsError> {
        seal_with(&self.root, ROOT_CHECK_AAD, &[])
    }

    fn verify_root_check(&self, check: &str) -> Result<(), KmsError> {
        open_with(&self.root, ROOT_CHECK_AAD, check)
            .map(drop)
            .map_err(|_| {
                KmsError::Internal(format!(
                    "the root key {} is not the one that sealed the keystore {}",
                    self.root_key_path.display(),
                    self.file.display()
                ))
            })
    }

    fn material_aad(id: &Uuid, version: u32) -> Vec<u8> {
        let mut aad = MATERIAL_AAD.to_vec();
        aad.extend_from_slice(id.as_bytes());
        aad.extend_from_slice(&version.to_le_bytes());
        aad
    }

    pub fn seal_material(
        &self,
        id: &Uuid,
        version: u32,
        material: &Aes256Key,
    ) -> Result<String, KmsError> {
        seal_with(
            &self.root,
            &Self::material_aad(id, version),
            material.expose(),
        )
    }

    pub fn unseal_material(
        &self,
        id: &Uuid,
        version: u32,
        sealed: &str,
    ) -> Result<Aes256Key, KmsError> {
        let plain = open_with(&self.root, &Self::material_aad(id, version), sealed).map_err(|_| {
            KmsError::Internal(format!(
                "the material of key {id} version {version} cannot be unsealed with the root key {}",
                self.root_key_path.display()
            ))
        })?;
        Aes256Key::from_slice(&plain).ok_or_else(|| {
            KmsError::Internal(format!(
                "the material of key {id} version {version} has the wrong length"
            ))
        })
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// `atrest-keystore <version> gen:<generation> sha256:<hex of the JSON body>`
fn parse_header(line: &str) -> Result<(u64, [u8; 32]), &'static str> {
    let mut words = line.split(' ');
    if words.next() != Some(FILE_MAGIC) {
        return Err("it is not an atrest keystore");
    }
    if !matches!(words.next(), Some("1" | "2")) {
        return Err("unknown keystore format version");
    }
    let generation = words
        .next()
        .and_then(|w| w.strip_prefix("gen:"))
        .and_then(|g| g.parse().ok())
        .ok_or("bad generation in the header line")?;
    let mut digest = [0u8; 32];
    words
        .next()
        .and_then(|w| w.strip_prefix("sha256:"))
        .and_then(|h| hex::decode_to_slice(h, &mut digest).ok())
        .ok_or("bad checksum in the header line")?;
    if words.next().is_some() {
        return Err("trailing words in the header line");
    }
    Ok((generation, digest))
}

fn encode_file(generation: u64, store: &StoreData) -> Result<Vec<u8>, KmsError> {
    let body = serde_json::to_vec_pretty(store)
        .map_err(|e| KmsError::Internal(format!("cannot encode the keystore: {e}")))?;
    let digest = hex::encode(Sha256::digest(&body));
    let mut out =
        format!("{FILE_MAGIC} {FILE_VERSION} gen:{generation} sha256:{digest}\n").into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode_file(bytes: &[u8]) -> Result<(u64, StoreData), String> {
    let line_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header =
        std::str::from_utf8(&bytes[..line_end]).map_err(|_| "the header line is not text")?;
    let (generation, digest) = parse_header(header)?;
    let body = &bytes[line_end + 1..];
    if Sha256::digest(body).as_slice() != digest {
        return Err("the checksum does not match the contents".into());
    }
    let store = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    Ok((generation, store))
}

/// AES-256-GCM under the root key; base64 of nonce || ciphertext || tag.
fn seal_with(root: &Aes256Key, aad: &[u8], plaintext: &[u8]) -> Result<String, KmsError> {
    let mut nonce = [0u8; 12];
    fill_random(&mut nonce);
    let cipher = Aes256Gcm::new(root.expose().into());
    let mut buf = Zeroizing::new(Vec::with_capacity(12 + plaintext.len() + 16));
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), aad, (&mut buf[12..]).into())
        .map_err(|_| KmsError::Internal("AES-GCM refused to seal".into()))?;
    buf.extend_from_slice(&tag);
    Ok(B64.encode(buf.as_slice()))
}

fn open_with(root: &Aes256Key, aad: &[u8], sealed: &str) -> Result<Zeroizing<Vec<u8>>, ()> {
    let bytes = B64.decode(sealed).map_err(drop)?;
    if bytes.len() < 28 {
        return Err(());
    }
    let (nonce, rest) = bytes.split_at(12);
    let (ciphertext, tag) = rest.split_at(rest.len() - 16);
    let nonce: [u8; 12] = nonce.try_into().map_err(drop)?;
    let cipher = Aes256Gcm::new(root.expose().into());
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_inout_detached(
            &Nonce::from(nonce),
            aad,
            plain.as_mut_slice().into(),
            tag.try_into().map_err(drop)?,
        )
        .map_err(drop)?;
    Ok(plain)
}

/// Reads the 32-byte root key, or creates it (0600) when it does not exist and the
/// keystore holds no keys yet. Called under the keystore's write lock; the final
/// `hard_link` cannot replace a root key another keystore sharing the file made.
fn load_or_create_root_key(path: &Path, may_create: bool) -> Result<Aes256Key, KmsError> {
    match fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(KmsError::Internal(format!(
                    "the root key {} is accessible to other users (mode {:o}); run chmod 600 on it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                )));
            }
            if meta.len() != 32 {
                return Err(KmsError::Internal(format!(
                    "the root key {} must be exactly 32 bytes, it is {}",
                    path.display(),
                    meta.len()
                )));
            }
            let bytes =
                Zeroizing::new(fs::read(path).map_err(|e| io_error("cannot read", path, e))?);
            Aes256Key::from_slice(&bytes).ok_or_else(|| {
                KmsError::Internal(format!(
                    "the root key {} changed while being read",
                    path.display()
                ))
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !may_create {
                return Err(KmsError::Internal(format!(
                    "the root key {} is missing but the keystore holds keys sealed under it; \
                     restore it (or set ATREST_ROOT_KEY_FILE to where it is)",
                    path.display()
                )));
            }
            let dir = parent_of(path);
            make_private_dir(dir)?;
            let key = Aes256Key::random();
            let tmp = dir.join(format!(".root.key.{}.tmp", Uuid::new_v4()));
            write_private_file(&tmp, key.expose())?;
            let linked = fs::hard_link(&tmp, path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    fsync_dir(dir)?;
                    Ok(key)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    load_or_create_root_key(path, may_create)
                }
                Err(e) => Err(io_error("cannot create the root key", path, e)),
            }
        }
        Err(e) => Err(io_error("cannot stat the root key", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn file_round_trip_and_corruption() {
        let mut store = StoreData::default();
        store.deleted_keys.insert(Uuid::nil(), 5);
        let bytes = encode_file(7, &store).unwrap();
        let (generation, back) = decode_file(&bytes).unwrap();
        assert_eq!(generation, 7);
        assert_eq!(back.deleted_keys.get(&Uuid::nil()), Some(&5));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert!(decode_file(&flipped).is_err());
        assert!(decode_file(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_file(b"").is_err());
        assert!(decode_file(b"atrest-keystore 3 gen:1 sha256:00\n{}").is_err());
    }

    #[test]
    fn version_1_bodies_are_adopted_by_the_legacy_account_and_written_as_version_2() {
        let id = Uuid::from_u128(7);
        let body = format!(
            r#"{{"keys": {{"{id}": {{"description": "", "creation_date": 1, "state": "Enabled",
                "policy": "{{}}", "materials": []}}}},
                "aliases": {{"alias/payments": {{"target_key_id": "{id}", "creation_date": 1,
                "last_updated_date": 1}}}},
                "deleted_keys": {{"{}": 2}}}}"#,
            Uuid::from_u128(8)
        );
        let digest = hex::encode(Sha256::digest(body.as_bytes()));
        let file = format!("atrest-keystore 1 gen:3 sha256:{digest}\n{body}");
        let (generation, mut store) = decode_file(file.as_bytes()).unwrap();
        assert_eq!(generation, 3);
        store.adopt_legacy("000000000000");
        store.adopt_legacy("222222222222");
        assert_eq!(store.keys[&id].account, "000000000000");
        assert_eq!(
            store.aliases_of("000000000000").unwrap()["alias/payments"].target_key_id,
            id
        );
        assert!(store.aliases_of("222222222222").is_none());
        assert_eq!(
            store.deleted_key_accounts[&Uuid::from_u128(8)],
            "000000000000"
        );
        let written = encode_file(4, &store).unwrap();
        let text = String::from_utf8(written.clone()).unwrap();
        assert!(text.starts_with("atrest-keystore 2 gen:4 "), "{text}");
        assert!(!text.contains("\"aliases\""), "{text}");
        let (_, back) = decode_file(&written).unwrap();
        assert_eq!(back.keys[&id].account, "000000000000");
        assert_eq!(back.aliases_of("000000000000").unwrap().len(), 1);
    }

    #[test]
    fn files_and_dirs_are_private_and_updates_are_atomic() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("kms");
        let ks = Keystore::open(&dir, None, "000000000000").unwrap();
        assert_eq!(ks.generation().unwrap(), 0);
        let p = ks
            .prepare(now(), |s| {
                s.deleted_keys.insert(Uuid::nil(), 1);
                Ok(())
            })
            .unwrap();
        // Not visible before commit.
        assert_eq!(ks.generation().unwrap(), 0);
        p.tx.commit().unwrap();
        assert_eq!(ks.generation().unwrap(), 1);
        assert_eq!(ks.read().unwrap().deleted_keys.len(), 1);
        let dropped = ks
            .prepare(now(), |s| {
                s.deleted_keys.clear();
                Ok(())
            })
            .unwrap();
        drop(dropped);
        assert_eq!(ks.read().unwrap().deleted_keys.len(), 1);
        assert!(!dir.join("keystore.json.tmp").exists());
        for (path, mode) in [
            (dir.clone(), 0o700),
            (dir.join("keystore.json"), 0o600),
            (dir.join("root.key"), 0o600),
        ] {
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                mode,
                "{}",
                path.display()
            );
        }
    }

    /// Commits `deleted_keys[nil] = value` (a tombstone of the legacy account)
    /// through `ks`.
    fn commit_tombstone(ks: &Keystore, value: Timestamp) {
        ks.prepare(now(), |s| {
            s.deleted_keys.insert(Uuid::nil(), value);
            s.deleted_key_accounts
                .insert(Uuid::nil(), "000000000000".to_owned());
            Ok(())
        })
        .unwrap()
        .tx
        .commit()
        .unwrap();
    }

    fn tombstone(ks: &Keystore) -> Option<Timestamp> {
        ks.read().unwrap().deleted_keys.get(&Uuid::nil()).copied()
    }

    #[test]
    fn another_writers_update_of_the_same_length_is_seen_by_the_next_read() {
        let home = tempfile::tempdir().unwrap();
        let mine = Keystore::open(home.path(), None, "000000000000").unwrap();
        let other = Keystore::open(home.path(), None, "000000000000").unwrap();
        commit_tombstone(&mine, 1);
        assert_eq!(tombstone(&mine), Some(1));
        let before = fs::metadata(mine.file_path()).unwrap().len();
        // Another process (here another handle, with its own cache) changes one digit.
        commit_tombstone(&other, 2);
        assert_eq!(fs::metadata(mine.file_path()).unwrap().len(), before);
        assert_eq!(tombstone(&mine), Some(2));
        assert_eq!(mine.read_with_generation().unwrap().0, 2);
        mine.prepare(now(), |s| {
            assert_eq!(s.deleted_keys.get(&Uuid::nil()), Some(&2));
            Ok(())
        })
        .unwrap();
        // The same body under another header (a restored copy) gives its generation.
        let (_, store) = decode_file(&fs::read(mine.file_path()).unwrap()).unwrap();
        fs::write(mine.file_path(), encode_file(9, &store).unwrap()).unwrap();
        assert_eq!(mine.read_with_generation().unwrap().0, 9);
        // Back to an earlier state, written by hand: seen too.
        let mut older = store.clone();
        older.deleted_keys.insert(Uuid::nil(), 1);
        fs::write(mine.file_path(), encode_file(9, &older).unwrap()).unwrap();
        assert_eq!(tombstone(&mine), Some(1));
    }

    #[test]
    fn a_file_corrupted_after_a_good_read_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let ks = Keystore::open(home.path(), None, "000000000000").unwrap();
        commit_tombstone(&ks, 1);
        assert_eq!(tombstone(&ks), Some(1));
        let good = fs::read(ks.file_path()).unwrap();
        let digit = good.iter().rposition(|&b| b == b'1').unwrap();
        let mut flipped = good.clone();
        flipped[digit] = b'2';
        fs::write(ks.file_path(), &flipped).unwrap();
        let err = ks.read().unwrap_err().to_string();
        assert!(err.contains("the checksum does not match"), "{err}");
        // A matching checksum over a body that is not a keystore.
        let body = b"{\"keys\": 1}";
        let digest = hex::encode(Sha256::digest(body));
        let mut forged = format!("atrest-keystore 2 gen:5 sha256:{digest}\n").into_bytes();
        forged.extend_from_slice(body);
        fs::write(ks.file_path(), &forged).unwrap();
        let err = ks.read().unwrap_err().to_string();
        assert!(err.contains("bad JSON"), "{err}");
        fs::write(ks.file_path(), &good).unwrap();
        assert_eq!(tombstone(&ks), Some(1));
    }

    #[test]
    fn callers_change_copies_never_the_stored_state() {
        let home = tempfile::tempdir().unwrap();
        let ks = Keystore::open(home.path(), None, "000000000000").unwrap();
        commit_tombstone(&ks, 1);
        let mut read = ks.read().unwrap();
        read.deleted_keys.insert(Uuid::nil(), 3);
        assert_eq!(tombstone(&ks), Some(1));
        let prepared = ks
            .prepare(now(), |s| {
                s.deleted_keys.insert(Uuid::nil(), 4);
                Ok(())
            })
            .unwrap();
        drop(prepared);
        assert_eq!(tombstone(&ks), Some(1));
    }

    #[test]
    fn material_seals_under_root_key_and_binds_id_and_version() {
        let home = tempfile::tempdir().unwrap();
        let ks = Keystore::open(home.path(), None, "000000000000").unwrap();
        let material = Aes256Key::random();
        let id = Uuid::new_v4();
        let sealed = ks.seal_material(&id, 3, &material).unwrap();
        assert_eq!(
            ks.unseal_material(&id, 3, &sealed).unwrap().expose(),
            material.expose()
        );
        assert!(ks.unseal_material(&id, 2, &sealed).is_err());
        assert!(ks.unseal_material(&Uuid::new_v4(), 3, &sealed).is_err());
    }

    #[test]
    fn wrong_or_exposed_root_key_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let ks = Keystore::open(home.path(), None, "000000000000").unwrap();
        ks.prepare(now(), |_| Ok(())).unwrap().tx.commit().unwrap();
        let root = home.path().join("root.key");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keystore::open(home.path(), None, "000000000000").unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::remove_file(&root).unwrap();
        write_private_file(&root, &[7u8; 32]).unwrap();
        let err = Keystore::open(home.path(), None, "000000000000").unwrap_err();
        assert!(
            err.to_string().contains("is not the one that sealed"),
            "{err}"
        );
    }

    #[test]
    fn separate_root_key_file_is_used_and_created() {
        let home = tempfile::tempdir().unwrap();
        let elsewhere = home.path().join("secrets/my.key");
        Keystore::open(&home.path().join("kms"), Some(&elsewhere), "000000000000").unwrap();
        assert_eq!(fs::metadata(&elsewhere).unwrap().len(), 32);
        assert!(!home.path().join("kms/root.key").exists());
    }
}
