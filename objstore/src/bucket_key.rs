//! S3 Bucket Keys: one data key per bucket and CMK, from which every object's key is
//! derived, so that PUT and GET of many objects cost a few key-service calls instead
//! of one each (byte layout and derivation in `docs/FORMAT.md`).
//!
//! - The bucket key is a 256-bit data key from GenerateDataKey under the CMK with the
//!   encryption context `{"aws:s3:arn": "arn:aws:s3:::BUCKET"}`. Its wrapped blob is
//!   kept in `buckets/<bucket>/bucket-keys/` (the bucket's current key for new objects)
//!   and in the header of every object derived from it, so an object stays readable
//!   after the bucket key is rotated or replaced.
//! - An object's key is HKDF-SHA256 of the bucket key with a fresh random 32-byte
//!   salt and the object's ARN in the info ([`derive_object_key`]).
//! - The unwrapped bucket key is kept in memory ([`BucketKeyCache`]) for one principal
//!   at a time, as S3 does: a request reuses it only when it acts as the same
//!   principal, within [`DEFAULT_CACHE_TTL`], and while the key store has not changed
//!   since the key was unwrapped ([`CacheScope::generation`]). Any key-store update
//!   (disable, schedule deletion, a policy change) therefore sends the next request
//!   back to the key service, which refuses it: bucket keys fail closed like every
//!   other object.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crypto_core::kms::LocalKms;
use ring::hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::format::BUCKET_KEY_SALT_LEN;
use crate::Error;

/// How long an unwrapped bucket key is reused for one principal.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// How long a bucket key is used for new objects before a fresh one is generated.
pub const BUCKET_KEY_MAX_AGE: time::Duration = time::Duration::days(1);
/// Unwrapped bucket keys held at most (all principals, buckets and CMKs together).
const CACHE_CAPACITY: usize = 1024;
/// The HKDF info prefix; the object's ARN follows it.
const DERIVATION_LABEL: &[u8] = b"atrest s3 bucket-key object key v1\0";

/// A 256-bit key that is zeroized when dropped.
pub(crate) type Key32 = Zeroizing<[u8; 32]>;

/// Who a request acts as, and the key store's generation when the request began:
/// what makes reusing an unwrapped bucket key safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheScope {
    /// The principal (ARN) the request's key-service calls act as.
    pub principal: String,
    /// A number that changes with every update of the key store (key state,
    /// policy, rotation): [`LocalKms::keystore_generation`].
    pub generation: u64,
}

impl CacheScope {
    /// The scope of requests made through `kms` (its principal and the key store's
    /// current generation). Read it at the start of each request.
    pub fn of(kms: &LocalKms) -> Result<CacheScope, Error> {
        Ok(CacheScope {
            principal: kms.principal().to_owned(),
            generation: kms.keystore_generation()?,
        })
    }
}

/// The object's own key: HKDF-SHA256 (RFC 5869) with `salt` as the salt, the bucket
/// key as the input keying material, and `DERIVATION_LABEL || object ARN` as the info.
pub(crate) fn derive_object_key(
    bucket_key: &[u8; 32],
    salt: &[u8; BUCKET_KEY_SALT_LEN],
    object_arn: &str,
) -> Key32 {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(bucket_key);
    let info = [DERIVATION_LABEL, object_arn.as_bytes()];
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 255 * 32 limit, so expand cannot fail.
    if let Ok(okm) = prk.expand(&info, hkdf::HKDF_SHA256) {
        let _ = okm.fill(&mut out[..]);
    }
    out
}

/// The bucket's current key for one CMK (`bucket-keys/<H>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BucketKeyRecord {
    /// The key id new objects name (as the PUT or the bucket's default gave it).
    pub kms_key_id: String,
    /// ARN of the CMK that wrapped the bucket key.
    pub kms_key_arn: String,
    /// The key service's ciphertext blob, base64.
    pub wrapped_key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

impl BucketKeyRecord {
    /// Whether new objects may still use this bucket key at `now`.
    pub(crate) fn is_current(&self, now: OffsetDateTime) -> bool {
        now - self.created < BUCKET_KEY_MAX_AGE && self.created <= now
    }
}

/// The file name of the bucket key record for `kms_key_id`: hex SHA-256 of the id,
/// so any key id (ARN, alias) is a safe path component.
pub(crate) fn record_file_name(kms_key_id: &str) -> String {
    format!(
        "{}.json",
        hex::encode(Sha256::digest(kms_key_id.as_bytes()))
    )
}

struct Entry {
    key: Key32,
    generation: u64,
    expires: Instant,
}

/// Unwrapped bucket keys, by principal and wrapped blob. Shared by every clone of
/// an [`ObjectStore`](crate::ObjectStore).
pub(crate) struct BucketKeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<(String, [u8; 32]), Entry>>,
    creating: Mutex<()>,
}

impl std::fmt::Debug for BucketKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketKeyCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn blob_id(wrapped: &[u8]) -> [u8; 32] {
    Sha256::digest(wrapped).into()
}

impl BucketKeyCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            creating: Mutex::new(()),
        }
    }

    /// Held while a bucket key is made, so that concurrent uploads make one.
    pub(crate) fn lock_creation(&self) -> MutexGuard<'_, ()> {
        self.creating.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The unwrapped bucket key of `wrapped` for `scope`, if one is held, has not
    /// expired and was unwrapped under the scope's key-store generation.
    pub(crate) fn get(&self, scope: &CacheScope, wrapped: &[u8]) -> Option<Key32> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let id = (scope.principal.clone(), blob_id(wrapped));
        let entry = entries.get(&id)?;
        if entry.generation == scope.generation && Instant::now() < entry.expires {
            return Some(entry.key.clone());
        }
        entries.remove(&id);
        None
    }

    /// Keeps `key` (the plaintext of `wrapped`) for `scope`.
    pub(crate) fn insert(&self, scope: &CacheScope, wrapped: &[u8], key: &Key32) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, e| e.expires > now && e.generation == scope.generation);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            (scope.principal.clone(), blob_id(wrapped)),
            Entry {
                key: key.clone(),
                generation: scope.generation,
                expires: now + self.ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(principal: &str, generation: u64) -> CacheScope {
        CacheScope {
            principal: principal.into(),
            generation,
        }
    }

    #[test]
    fn derivation_matches_rfc5869_computed_independently() {
        // Python `cryptography`'s HKDF(SHA256, length=32, salt, info).derive(ikm) with
        // ikm = 32 x 0x01, salt = 32 x 0x02, info = label || "arn:aws:s3:::b/k".
        let key = derive_object_key(&[1; 32], &[2; 32], "arn:aws:s3:::b/k");
        assert_eq!(hex::encode(*key), EXPECTED_OKM);
    }

    const EXPECTED_OKM: &str = "c318c2fe1b596006971eb00344229546cd0af4346f01b5e59b04ced82d01f8a9";

    #[test]
    fn derivation_separates_objects_salts_and_bucket_keys() {
        let base = derive_object_key(&[1; 32], &[2; 32], "arn:aws:s3:::b/k");
        assert_ne!(
            *base,
            *derive_object_key(&[1; 32], &[2; 32], "arn:aws:s3:::b/k2")
        );
        assert_ne!(
            *base,
            *derive_object_key(&[1; 32], &[3; 32], "arn:aws:s3:::b/k")
        );
        assert_ne!(
            *base,
            *derive_object_key(&[4; 32], &[2; 32], "arn:aws:s3:::b/k")
        );
    }

    #[test]
    fn cache_is_per_principal_generation_and_blob() {
        let cache = BucketKeyCache::new(Duration::from_secs(60));
        let key = Zeroizing::new([7u8; 32]);
        cache.insert(&scope("alice", 3), b"blob", &key);
        assert_eq!(
            cache.get(&scope("alice", 3), b"blob").map(|k| *k),
            Some([7; 32])
        );
        assert!(cache.get(&scope("bob", 3), b"blob").is_none());
        assert!(cache.get(&scope("alice", 3), b"other").is_none());
        // A key-store change drops the entry for good.
        assert!(cache.get(&scope("alice", 4), b"blob").is_none());
        assert!(cache.get(&scope("alice", 3), b"blob").is_none());
    }

    #[test]
    fn zero_ttl_keeps_nothing_and_entries_expire() {
        let cache = BucketKeyCache::new(Duration::ZERO);
        cache.insert(&scope("a", 1), b"blob", &Zeroizing::new([1; 32]));
        assert!(cache.get(&scope("a", 1), b"blob").is_none());
        let cache = BucketKeyCache::new(Duration::from_millis(1));
        cache.insert(&scope("a", 1), b"blob", &Zeroizing::new([1; 32]));
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get(&scope("a", 1), b"blob").is_none());
    }

    #[test]
    fn record_age() {
        let now = OffsetDateTime::now_utc();
        let record = |created| BucketKeyRecord {
            kms_key_id: "alias/k".into(),
            kms_key_arn: "arn".into(),
            wrapped_key: String::new(),
            created,
        };
        assert!(record(now - time::Duration::hours(23)).is_current(now));
        assert!(!record(now - time::Duration::hours(25)).is_current(now));
        assert!(!record(now + time::Duration::hours(1)).is_current(now));
        assert_ne!(record_file_name("alias/a"), record_file_name("alias/b"));
        assert!(record_file_name("../../x").len() == 69);
    }
}
