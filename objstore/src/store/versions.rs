//! S3 versioning: PutBucketVersioning (Enabled, Suspended), object versions, delete
//! markers, GET/HEAD/DELETE of one version, ListObjectVersions (layout in
//! `docs/FORMAT.md`, "Versions").
//!
//! The current version stays at `objects/<H>.obj`, so unversioned reads and listings
//! are unchanged. A version that stops being current (a newer PUT, or a DELETE that
//! leaves a delete marker) is renamed, with its sidecars, to
//! `versions/<H>/<VERSION-ID>.obj`; it keeps its header, wrapped data key and
//! segments, so every version stays encrypted under its own data key. Delete markers
//! are `versions/<H>/<VERSION-ID>.marker`. Every change happens under the bucket's
//! commit lock. Version ids are 32 hex digits, the first 16 the creation time in
//! milliseconds, so they sort by age; `null` is the version of objects written while
//! versioning was off or suspended.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    create_dir_private, headers_in, io_err, now, sync_dir, write_atomic, ObjectStore, ACL_EXT,
    CHECKSUM_EXT, OBJECT_EXT, PARTS_EXT, TAGS_EXT,
};
use crate::format::ObjectHeader;
use crate::names::object_file_name;
use crate::Error;

pub(crate) const VERSIONS_DIR: &str = "versions";
const MARKER_EXT: &str = "marker";
/// The system-metadata name under which an object's header records its version id
/// (absent: `null`). Clients cannot set it: PUTs may store only `SYSTEM_METADATA`.
pub(crate) const VERSION_ID_KEY: &str = "x-amz-version-id";
/// The version of objects written while versioning was off or suspended.
pub const NULL_VERSION: &str = "null";

/// A bucket's versioning state (`VersioningConfiguration`'s `Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Versioning {
    /// New objects get a version id of their own; noncurrent ones are kept.
    Enabled,
    /// New objects are the `null` version; the versions already made are kept.
    Suspended,
}

impl Versioning {
    /// The wire value (`Status`).
    pub fn as_str(self) -> &'static str {
        match self {
            Versioning::Enabled => "Enabled",
            Versioning::Suspended => "Suspended",
        }
    }
}

/// What a DeleteObject did in a versioning-configured bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// The version removed or the delete marker made (`x-amz-version-id`); `None`
    /// in a bucket that never had versioning.
    pub version_id: Option<String>,
    /// Whether that version is a delete marker (`x-amz-delete-marker`).
    pub delete_marker: bool,
}

/// One entry of ListObjectVersions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionEntry {
    /// The object's key.
    pub key: String,
    /// The version's id (`null` for the null version).
    pub version_id: String,
    /// Whether it is the key's current version.
    pub is_latest: bool,
    /// When the version (or marker) was made.
    pub last_modified: OffsetDateTime,
    /// `None` for a delete marker.
    pub object: Option<crate::ObjectInfo>,
}

/// One page of ListObjectVersions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionsPage {
    /// The versions and delete markers of the page, by key, newest first.
    pub entries: Vec<VersionEntry>,
    /// When truncated: the key and version id to resume after (`NextKeyMarker`,
    /// `NextVersionIdMarker`).
    pub next: Option<(String, String)>,
}

/// `versions/<H>/<VERSION-ID>.marker`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MarkerRecord {
    key: String,
    version_id: String,
    last_modified_ms: i64,
}

/// A fresh version id: creation time (ms, 16 hex digits) then 64 random bits.
pub(crate) fn new_version_id() -> String {
    let ms = (now().unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    let mut random = [0u8; 8];
    crypto_core::secret::fill_random(&mut random);
    format!("{ms:016x}{}", hex::encode(random))
}

/// Whether `id` can name a version (so it is safe as a file name).
fn check_version_id(id: &str) -> Result<(), Error> {
    let valid = id == NULL_VERSION
        || (id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "Invalid version id specified".into(),
        ))
    }
}

/// The version id an object header records.
pub(crate) fn version_of(header: &ObjectHeader) -> String {
    header
        .bound
        .system_metadata
        .get(VERSION_ID_KEY)
        .cloned()
        .unwrap_or_else(|| NULL_VERSION.to_owned())
}

fn ms_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl ObjectStore {
    pub(crate) fn versions_dir(&self, bucket: &str, key: &str) -> PathBuf {
        let name = object_file_name(key);
        let stem = name.strip_suffix(".obj").unwrap_or(&name);
        self.bucket_dir(bucket).join(VERSIONS_DIR).join(stem)
    }

    /// PutBucketVersioning. Once enabled, versioning can only be suspended, as on S3.
    pub fn put_bucket_versioning(&self, name: &str, status: Versioning) -> Result<(), Error> {
        self.update_bucket(name, |info| info.versioning = Some(status))?;
        Ok(())
    }

    /// GetBucketVersioning: `None` for a bucket that never had versioning.
    pub fn bucket_versioning(&self, name: &str) -> Result<Option<Versioning>, Error> {
        Ok(self.bucket(name)?.versioning)
    }

    /// The file of version `id` of `key`: the current object when it is that version,
    /// else the noncurrent one. DeleteMarker when `id` is a delete marker.
    pub(crate) fn version_path(&self, bucket: &str, key: &str, id: &str) -> Result<PathBuf, Error> {
        check_version_id(id)?;
        let current = self.object_path(bucket, key);
        if let Ok(file) = fs::File::open(&current) {
            let header = super::read_header(&file, &current)?;
            if version_of(&header) == id {
                return Ok(current);
            }
        }
        let dir = self.versions_dir(bucket, key);
        let path = dir.join(format!("{id}.{OBJECT_EXT}"));
        if path.exists() {
            return Ok(path);
        }
        if dir.join(format!("{id}.{MARKER_EXT}")).exists() {
            return Err(Error::DeleteMarker {
                version_id: id.to_owned(),
            });
        }
        Err(Error::NoSuchVersion {
            key: key.to_owned(),
            version_id: id.to_owned(),
        })
    }

    /// Moves the current object (with its sidecars) among the noncurrent versions, or,
    /// when it is the `null` version and the bucket is suspended, leaves it to be
    /// replaced. Removes any noncurrent `null` version when `replacing_null` (a
    /// suspended bucket's PUT or DELETE makes a new `null`). Caller holds the lock.
    pub(crate) fn demote_current(
        &self,
        bucket: &str,
        key: &str,
        status: Versioning,
    ) -> Result<(), Error> {
        let dir = self.versions_dir(bucket, key);
        let replacing_null = status == Versioning::Suspended;
        if replacing_null {
            for ext in [
                OBJECT_EXT,
                MARKER_EXT,
                PARTS_EXT,
                CHECKSUM_EXT,
                ACL_EXT,
                TAGS_EXT,
            ] {
                Self::remove_if_exists(&dir.join(format!("{NULL_VERSION}.{ext}")))?;
            }
        }
        let current = self.object_path(bucket, key);
        let file = match fs::File::open(&current) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("open {}", current.display()),
                    source,
                })
            }
        };
        let id = version_of(&super::read_header(&file, &current)?);
        if replacing_null && id == NULL_VERSION {
            return Ok(());
        }
        create_dir_private(&dir)?;
        // Sidecars first, the object last: a crash leaves the current object whole.
        for ext in [PARTS_EXT, CHECKSUM_EXT, ACL_EXT, TAGS_EXT] {
            let from = current.with_extension(ext);
            match fs::rename(&from, dir.join(format!("{id}.{ext}"))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        context: format!("move {}", from.display()),
                        source,
                    })
                }
            }
        }
        fs::rename(&current, dir.join(format!("{id}.{OBJECT_EXT}")))
            .map_err(io_err(format!("move {}", current.display())))?;
        sync_dir(&dir)?;
        sync_dir(current.parent().unwrap_or(Path::new(".")))
    }

    /// DeleteObject in a bucket with versioning configured: without `version_id`, a
    /// new delete marker becomes the latest version (the current object becomes
    /// noncurrent); with one, that version (or marker) is removed for good and, if it
    /// was the current object, the newest remaining version takes its place.
    pub(crate) fn delete_versioned(
        &self,
        bucket: &str,
        key: &str,
        status: Versioning,
        version_id: Option<&str>,
    ) -> Result<DeleteOutcome, Error> {
        let dir = self.versions_dir(bucket, key);
        let Some(id) = version_id else {
            self.demote_current(bucket, key, status)?;
            let id = match status {
                Versioning::Enabled => new_version_id(),
                Versioning::Suspended => NULL_VERSION.to_owned(),
            };
            let record = MarkerRecord {
                key: key.to_owned(),
                version_id: id.clone(),
                last_modified_ms: (now().unix_timestamp_nanos() / 1_000_000) as i64,
            };
            create_dir_private(&dir)?;
            let json = serde_json::to_vec(&record).map_err(|e| Error::Io {
                context: "encode delete marker".into(),
                source: io::Error::other(e),
            })?;
            write_atomic(&dir.join(format!("{id}.{MARKER_EXT}")), &json)?;
            return Ok(DeleteOutcome {
                version_id: Some(id),
                delete_marker: true,
            });
        };
        check_version_id(id)?;
        let marker = dir.join(format!("{id}.{MARKER_EXT}"));
        if Self::remove_if_exists(&marker)? {
            sync_dir(&dir)?;
            // The marker may have been the latest version: the newest remaining one
            // (if it is an object) becomes current again.
            if !self.object_path(bucket, key).exists() {
                self.promote_newest(bucket, key)?;
            }
            return Ok(DeleteOutcome {
                version_id: Some(id.to_owned()),
                delete_marker: true,
            });
        }
        let path = match self.version_path(bucket, key, id) {
            Ok(path) => path,
            // Deleting a version that does not exist succeeds, as on S3.
            Err(Error::NoSuchVersion { .. }) => {
                return Ok(DeleteOutcome {
                    version_id: Some(id.to_owned()),
                    delete_marker: false,
                })
            }
            Err(err) => return Err(err),
        };
        let was_current = path == self.object_path(bucket, key);
        Self::remove_if_exists(&path)?;
        for ext in [PARTS_EXT, CHECKSUM_EXT, ACL_EXT, TAGS_EXT] {
            Self::remove_if_exists(&path.with_extension(ext))?;
        }
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        if was_current {
            self.promote_newest(bucket, key)?;
        }
        Ok(DeleteOutcome {
            version_id: Some(id.to_owned()),
            delete_marker: false,
        })
    }

    /// After the current object was removed: the newest noncurrent version becomes
    /// current, unless the newest is a delete marker (then there is no current object).
    fn promote_newest(&self, bucket: &str, key: &str) -> Result<(), Error> {
        let entries = self.entries_of(bucket, key)?;
        let Some(newest) = entries.first() else {
            return Ok(());
        };
        if newest.object.is_none() {
            return Ok(());
        }
        let dir = self.versions_dir(bucket, key);
        let current = self.object_path(bucket, key);
        for ext in [PARTS_EXT, CHECKSUM_EXT, ACL_EXT, TAGS_EXT] {
            let from = dir.join(format!("{}.{ext}", newest.version_id));
            match fs::rename(&from, current.with_extension(ext)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        context: format!("move {}", from.display()),
                        source,
                    })
                }
            }
        }
        let from = dir.join(format!("{}.{OBJECT_EXT}", newest.version_id));
        fs::rename(&from, &current).map_err(io_err(format!("move {}", from.display())))?;
        sync_dir(&dir)?;
        sync_dir(current.parent().unwrap_or(Path::new(".")))
    }

    /// The noncurrent versions and markers of one key, newest first.
    fn entries_of(&self, bucket: &str, key: &str) -> Result<Vec<VersionEntry>, Error> {
        let dir = self.versions_dir(bucket, key);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (id, path, header) in headers_in(&dir, |path| {
            (path.extension()? == OBJECT_EXT)
                .then(|| path.file_stem()?.to_str().map(str::to_owned))
                .flatten()
        })? {
            let info = Self::read_info(&path, &header)?;
            out.push(VersionEntry {
                key: key.to_owned(),
                version_id: id,
                is_latest: false,
                last_modified: info.last_modified,
                object: Some(info),
            });
        }
        for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
            let path = entry
                .map_err(io_err(format!("list {}", dir.display())))?
                .path();
            if path.extension().is_none_or(|x| x != MARKER_EXT) {
                continue;
            }
            let record: MarkerRecord = match fs::read(&path) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupted {
                    path: path.clone(),
                    what: format!("delete marker: {e}"),
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::Io {
                        context: format!("read {}", path.display()),
                        source,
                    })
                }
            };
            if record.key != key {
                return Err(Error::Corrupted {
                    path,
                    what: "the delete marker names another key".into(),
                });
            }
            out.push(VersionEntry {
                key: key.to_owned(),
                version_id: record.version_id,
                is_latest: false,
                last_modified: ms_time(record.last_modified_ms),
                object: None,
            });
        }
        out.sort_by(|a, b| {
            b.last_modified
                .cmp(&a.last_modified)
                .then_with(|| b.version_id.cmp(&a.version_id))
        });
        Ok(out)
    }

    /// Whether the bucket holds any noncurrent version or delete marker.
    pub(crate) fn has_versions(&self, bucket: &str) -> Result<bool, Error> {
        let dir = self.bucket_dir(bucket).join(VERSIONS_DIR);
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry
                        .map_err(io_err(format!("list {}", dir.display())))?
                        .path();
                    if fs::read_dir(&path).is_ok_and(|mut e| e.next().is_some()) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Io {
                context: format!("list {}", dir.display()),
                source,
            }),
        }
    }

    /// ListObjectVersions: every version and delete marker of the keys under
    /// `prefix`, by key, newest first, after (`key_marker`, `version_id_marker`), at
    /// most `max_keys`.
    pub fn list_object_versions(
        &self,
        bucket: &str,
        prefix: &str,
        key_marker: Option<&str>,
        version_id_marker: Option<&str>,
        max_keys: usize,
    ) -> Result<VersionsPage, Error> {
        self.bucket(bucket)?;
        let mut keys: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let objects = self.bucket_dir(bucket).join(super::OBJECTS_DIR);
        for ((), _, header) in headers_in(&objects, |p| {
            p.extension().is_some_and(|x| x == OBJECT_EXT).then_some(())
        })? {
            keys.insert(header.bound.key);
        }
        let versions = self.bucket_dir(bucket).join(VERSIONS_DIR);
        if let Ok(dirs) = fs::read_dir(&versions) {
            for dir in dirs.flatten() {
                for entry in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                    let path = entry.path();
                    let key = if path.extension().is_some_and(|x| x == OBJECT_EXT) {
                        fs::File::open(&path)
                            .ok()
                            .and_then(|f| super::read_header(&f, &path).ok())
                            .map(|h| h.bound.key)
                    } else if path.extension().is_some_and(|x| x == MARKER_EXT) {
                        fs::read(&path)
                            .ok()
                            .and_then(|b| serde_json::from_slice::<MarkerRecord>(&b).ok())
                            .map(|m| m.key)
                    } else {
                        None
                    };
                    if let Some(key) = key {
                        keys.insert(key);
                        break;
                    }
                }
            }
        }
        let max = max_keys.min(crate::MAX_KEYS);
        let mut out = Vec::new();
        for key in keys.into_iter().filter(|k| k.starts_with(prefix)) {
            if key_marker.is_some_and(|m| key.as_str() < m) {
                continue;
            }
            let mut entries = Vec::new();
            match self.head_object(bucket, &key) {
                Ok(info) => entries.push(VersionEntry {
                    key: key.clone(),
                    version_id: info
                        .version_id
                        .clone()
                        .unwrap_or_else(|| NULL_VERSION.to_owned()),
                    is_latest: true,
                    last_modified: info.last_modified,
                    object: Some(info),
                }),
                Err(Error::NoSuchKey { .. }) => {}
                Err(err) => return Err(err),
            }
            let current = !entries.is_empty();
            let mut rest = self.entries_of(bucket, &key)?;
            if !current {
                if let Some(first) = rest.first_mut() {
                    first.is_latest = true;
                }
            }
            entries.append(&mut rest);
            let mut skipping = key_marker == Some(key.as_str());
            for entry in entries {
                if skipping {
                    // Resume after (key_marker, version_id_marker); a bare key marker
                    // skips the whole key, as on S3.
                    if version_id_marker == Some(entry.version_id.as_str()) {
                        skipping = false;
                    }
                    continue;
                }
                if out.len() == max {
                    let next = out
                        .last()
                        .map(|last: &VersionEntry| (last.key.clone(), last.version_id.clone()));
                    return Ok(VersionsPage { entries: out, next });
                }
                out.push(entry);
            }
        }
        Ok(VersionsPage {
            entries: out,
            next: None,
        })
    }
}
