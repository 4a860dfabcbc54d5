//! Shared set-up of the objstore integration tests: a home with a key service, a key,
//! and a bucket.
#![allow(dead_code)] // each test file uses a different part

use std::io::{self, Read};

use crypto_core::kms::{CreateKeyRequest, KeyService, LocalKms, LocalKmsConfig};
use objstore::{ObjectStore, PutObjectOptions};
use tempfile::TempDir;

pub const OWNER: &str = "arn:aws:iam::000000000000:root";
pub const SEG: usize = 64 * 1024;

pub struct Lab {
    pub home: TempDir,
    pub kms: LocalKms,
    pub key_arn: String,
    pub store: ObjectStore,
}

impl Lab {
    /// A store with bucket `bkt` and a CMK (not the bucket's default).
    pub fn new() -> Lab {
        let home = tempfile::tempdir().unwrap();
        // As the S3 endpoint calls it: through S3 (the managed key alias/aws/s3 serves
        // nothing else).
        let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
        let kms = kms.through_service(&format!("s3.{}.amazonaws.com", kms.region()));
        let key_arn = kms.create_key(&CreateKeyRequest::default()).unwrap().arn;
        let store = ObjectStore::open(home.path()).unwrap();
        store.create_bucket("bkt", OWNER).unwrap();
        Lab {
            home,
            kms,
            key_arn,
            store,
        }
    }

    pub fn opts(&self) -> PutObjectOptions {
        PutObjectOptions {
            kms_key_id: Some(self.key_arn.clone()),
            ..Default::default()
        }
    }

    pub fn put(&self, key: &str, data: &[u8]) -> objstore::ObjectInfo {
        self.store
            .put_object(&self.kms, "bkt", key, &mut &data[..], &self.opts())
            .unwrap()
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>, objstore::Error> {
        let download = self.store.get_object(&self.kms, "bkt", key, None)?;
        let mut out = Vec::new();
        download.body.write_to(&mut out)?;
        Ok(out)
    }

    pub fn kms(&self) -> &dyn KeyService {
        &self.kms
    }
}

/// Deterministic bytes that do not repeat with any short period.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A body that hands out its bytes in awkward, varying chunk sizes.
pub struct Dribble<'a> {
    pub data: &'a [u8],
    pub step: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.step = self.step % 9973 + 1;
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
