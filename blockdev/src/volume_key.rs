//! [`VolumeKeyState`]: what the key service says about a volume's CMK, as `atrest
//! volume info` and `atrest nbd list` show it. A key that is gone is named for what
//! it means to the volume (its data is unrecoverable), not as a lookup failure.
#![forbid(unsafe_code)]

use crypto_core::kms::{KeyService, KeyState, KmsError};

/// The state of a volume's CMK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeKeyState {
    /// DescribeKey answered with the key's state.
    Described(KeyState),
    /// DescribeKey found no such key: the volume's data key can never be unwrapped
    /// again. `message` is the key service's.
    Deleted {
        /// The key service's NotFound message.
        message: String,
    },
    /// The key service could not say (unreachable, denied, misconfigured).
    Unknown {
        /// Why, as the error said it.
        reason: String,
    },
}

impl VolumeKeyState {
    /// Asks `kms` to describe `key_arn` (one audited DescribeKey).
    pub fn describe(kms: &dyn KeyService, key_arn: &str) -> VolumeKeyState {
        match kms.describe_key(key_arn) {
            Ok(meta) => VolumeKeyState::Described(meta.key_state),
            Err(KmsError::NotFound(message)) => VolumeKeyState::Deleted { message },
            Err(err) => VolumeKeyState::Unknown {
                reason: with_causes(&err),
            },
        }
    }

    /// The state's name: an AWS key state (`Enabled`, `Disabled`, `PendingDeletion`),
    /// `Deleted` or `Unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            VolumeKeyState::Described(state) => state.as_str(),
            VolumeKeyState::Deleted { .. } => "Deleted",
            VolumeKeyState::Unknown { .. } => "Unknown",
        }
    }

    /// Why the key is not simply in an AWS key state; `None` when it is.
    pub fn reason(&self) -> Option<String> {
        match self {
            VolumeKeyState::Described(_) => None,
            VolumeKeyState::Deleted { message } => Some(format!(
                "the key is gone ({message}): the volume's data key can never be \
                 unwrapped again and its data is unrecoverable"
            )),
            VolumeKeyState::Unknown { reason } => Some(reason.clone()),
        }
    }
}

/// An error and its causes, `: `-separated (as `{:#}` of an `anyhow::Error` shows it).
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_core::kms::{CreateKeyRequest, LocalKms, LocalKmsConfig};

    fn kms() -> (tempfile::TempDir, LocalKms) {
        let home = tempfile::tempdir().expect("tempdir");
        let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).expect("open");
        (home, kms)
    }

    #[test]
    fn a_described_key_has_its_aws_state_and_no_reason() {
        let (_home, kms) = kms();
        let key = kms
            .create_key(&CreateKeyRequest::default())
            .expect("create");
        let state = VolumeKeyState::describe(&kms, &key.arn);
        assert_eq!(state, VolumeKeyState::Described(KeyState::Enabled));
        assert_eq!((state.name(), state.reason()), ("Enabled", None));
        kms.disable_key(&key.arn).expect("disable");
        assert_eq!(VolumeKeyState::describe(&kms, &key.arn).name(), "Disabled");
    }

    #[test]
    fn a_missing_key_means_unrecoverable_data() {
        let (_home, kms) = kms();
        let arn = "arn:aws:kms:local:000000000000:key/aaaaaaaa-0000-4000-8000-000000000001";
        let state = VolumeKeyState::describe(&kms, arn);
        assert!(matches!(state, VolumeKeyState::Deleted { .. }), "{state:?}");
        assert_eq!(state.name(), "Deleted");
        let reason = state.reason().expect("a reason");
        assert!(reason.starts_with("the key is gone ("), "{reason}");
        assert!(reason.ends_with("its data is unrecoverable"), "{reason}");
    }

    #[test]
    fn any_other_failure_is_unknown_with_the_error() {
        let (_home, kms) = kms();
        // Not a key id the service can parse: a ValidationException, not NotFound.
        let state = VolumeKeyState::describe(&kms, "");
        assert_eq!(state.name(), "Unknown");
        let reason = state.reason().expect("a reason");
        assert!(reason.contains("Exception"), "{reason}");
    }
}
