//! [`Keys`]: the key service of volume, NBD and KMS commands, chosen once: the local
//! keystore of a home, or any AWS-KMS-compatible endpoint reached with [`RemoteKms`].

use std::path::Path;
use std::sync::Arc;

use crypto_core::kms::{KeyService, KeystoreGeneration, KmsError, LocalKms, LocalKmsConfig};

use crate::client::{RemoteKms, RemoteKmsConfig};
use crate::GatewayError;

/// The key service volume and NBD commands use: the local keystore, or any
/// AWS-KMS-compatible endpoint (AWS KMS, another machine's `atrest kms serve`),
/// signed with the AWS credentials of the environment or profile.
/// Derefs to `dyn KeyService`, so it goes wherever a key service does.
#[derive(Clone, Debug)]
pub enum Keys {
    /// The keystore of a home on this machine (audited in its trail).
    Local(LocalKms),
    /// A key service reached over HTTP(S).
    Remote(Arc<RemoteKms>),
}

impl Keys {
    /// The keystore of `home`, configured from the environment (`ATREST_REGION`,
    /// `ATREST_ACCOUNT`, ...); created on first use.
    pub fn local(home: &Path) -> Result<Keys, KmsError> {
        Ok(Keys::Local(LocalKms::open(
            home,
            LocalKmsConfig::from_env()?,
        )?))
    }

    /// The key service at `endpoint`, signing with the AWS credentials, region and
    /// profile of the environment.
    pub fn remote(endpoint: &str) -> Result<Keys, GatewayError> {
        let config = RemoteKmsConfig::from_env(Some(endpoint))?;
        Ok(Keys::Remote(Arc::new(RemoteKms::new(config)?)))
    }

    /// The key service as a shareable trait object (what a data-key lease holds).
    pub fn service(&self) -> Arc<dyn KeyService> {
        match self {
            Keys::Local(kms) => Arc::new(kms.clone()),
            Keys::Remote(kms) => Arc::clone(kms) as Arc<dyn KeyService>,
        }
    }

    /// What a data-key lease watches to re-check a key at once: the local keystore's
    /// generation. A remote key service offers none; the lease polls DescribeKey.
    pub fn watch(&self) -> Option<Arc<dyn KeystoreGeneration>> {
        match self {
            Keys::Local(kms) => Some(Arc::new(kms.clone())),
            Keys::Remote(_) => None,
        }
    }
}

impl std::ops::Deref for Keys {
    type Target = dyn KeyService;

    fn deref(&self) -> &Self::Target {
        match self {
            Keys::Local(kms) => kms,
            Keys::Remote(kms) => kms.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_core::kms::CreateKeyRequest;

    #[test]
    fn the_local_keystore_is_watched_and_shared() {
        let home = tempfile::tempdir().expect("tempdir");
        let keys = Keys::local(home.path()).expect("local keystore");
        let watch = keys.watch().expect("the local keystore has a generation");
        let before = watch.generation().expect("generation");
        // Through Deref, the service handle and a second opening: one keystore.
        let key = keys
            .create_key(&CreateKeyRequest::default())
            .expect("create");
        assert_ne!(watch.generation().expect("generation"), before);
        assert_eq!(
            keys.service().describe_key(&key.arn).expect("describe").arn,
            key.arn
        );
        let again = Keys::local(home.path()).expect("reopen");
        assert_eq!(again.describe_key(&key.arn).expect("describe").arn, key.arn);
    }
}
