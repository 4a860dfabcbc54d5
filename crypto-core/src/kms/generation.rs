//! [`KeystoreGeneration`]: the cheap, unaudited signal that a key service's keys may
//! have changed, which a long-running holder of a data key (a volume's lease) polls
//! instead of asking DescribeKey every time.

use super::{KmsError, LocalKms};

/// A cheap, unaudited signal that a key service's keys may have changed: a number
/// that changes with every update of the key store.
pub trait KeystoreGeneration: Send + Sync {
    /// The key store's current generation; a different number than last time means
    /// some key may have changed (and the caller should ask DescribeKey).
    fn generation(&self) -> Result<u64, KmsError>;
}

impl KeystoreGeneration for LocalKms {
    fn generation(&self) -> Result<u64, KmsError> {
        self.keystore_generation()
    }
}
