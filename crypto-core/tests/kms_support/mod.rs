//! Helpers shared by the kms_* tests: a LocalKms in a temp home on a manual clock.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;

use crypto_core::kms::{
    CreateKeyRequest, DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest,
    KeyService, LocalKms, LocalKmsConfig, ManualClock,
};
use tempfile::TempDir;
use time::OffsetDateTime;

pub const ROOT: &str = "arn:aws:iam::000000000000:root";

pub struct Lab {
    pub home: TempDir,
    pub clock: Arc<ManualClock>,
    pub kms: LocalKms,
}

impl Lab {
    pub fn new() -> Self {
        let home = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::new(
            OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time"),
        ));
        let kms = LocalKms::open(home.path(), Self::config_for(&clock)).expect("open LocalKms");
        Self { home, clock, kms }
    }

    pub fn config_for(clock: &Arc<ManualClock>) -> LocalKmsConfig {
        LocalKmsConfig {
            clock: clock.clone(),
            ..LocalKmsConfig::new()
        }
    }

    /// Another handle on the same home, with its own clock starting where ours is.
    pub fn reopen_with_clock(&self, clock: &Arc<ManualClock>) -> LocalKms {
        LocalKms::open(self.home.path(), Self::config_for(clock)).expect("reopen LocalKms")
    }

    pub fn key(&self) -> String {
        self.kms
            .create_key(&CreateKeyRequest::default())
            .expect("create key")
            .key_id
    }

    pub fn as_user(&self, principal: &str) -> LocalKms {
        self.kms.as_principal(principal).expect("valid principal")
    }
}

pub fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn gdk(key_id: &str) -> GenerateDataKeyRequest {
    GenerateDataKeyRequest {
        key_id: key_id.into(),
        spec: DataKeySpec::Aes256,
        encryption_context: ctx(&[("atrest:volume-id", "vol-1")]),
    }
}

pub fn decrypt_req(blob: &[u8], context: &EncryptionContext) -> DecryptRequest {
    DecryptRequest {
        ciphertext_blob: blob.to_vec(),
        encryption_context: context.clone(),
        key_id: None,
    }
}

/// The AWS error name of a result, or "ok".
pub fn outcome<T>(result: Result<T, crypto_core::kms::KmsError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.aws_name(),
    }
}
