//! [`LocalKms`]: the embedded key service over the keystore in `<home>/kms/`,
//! reporting every call to the trail in `<home>/trail/`.

mod aliases;
mod calls;
mod config;
mod crypto;
mod keys;
mod policy_tags;
mod rotation;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use super::clock::Clock;
use super::ident::key_arn;
use super::keystore::Keystore;
use super::operation::Operation;
use super::policy::CallerContext;
use super::{
    AliasListEntry, CreateKeyRequest, DecryptRequest, DecryptedData, EncryptionContext,
    GenerateDataKeyRequest, GeneratedDataKey, KeyListEntry, KeyMetadata, KeyService, KmsError,
    ListRequest, Page, ReEncryptRequest, ReEncrypted, RotationEntry, RotationStatus,
    ScheduledDeletion, Tag, WrappedData,
};
use crate::secret::SecretBytes;
use crate::trail::{RequestSource, Trail};

pub use aliases::AWS_MANAGED_S3_ALIAS;
pub use config::LocalKmsConfig;
pub use policy_tags::validate_tags;

use config::{caller_account, check_principal};

/// The trail record of one call, filled in as the call learns which keys it touches.
struct Audit {
    op: Operation,
    request: Value,
    resources: Vec<String>,
    response: Option<Value>,
    /// Set once the success record is in the trail (mutations write it before commit).
    recorded: bool,
}

struct Shared {
    home: PathBuf,
    keystore: Keystore,
    trail: Trail,
    region: String,
    account: String,
    clock: Arc<dyn Clock>,
}

/// The embedded key service (keystore under `ATREST_HOME`).
///
/// Cheap to clone; clones share the keystore and trail. Safe to use from many
/// threads and from several processes on the same home at once: every update takes
/// the keystore's file lock, and every call re-reads the keystore, so a key disabled
/// by another process is disabled here on the next call.
#[derive(Clone)]
pub struct LocalKms {
    shared: Arc<Shared>,
    caller: Caller,
}

/// Who a [`LocalKms`] acts for: everything that differs between callers of one key
/// service.
#[derive(Clone)]
struct Caller {
    principal: String,
    /// The caller's account: the one in `principal`'s ARN, else the configured one.
    /// Keys and aliases are created, listed and resolved in this account only.
    account: String,
    /// Where this caller's calls come from, for their trail records.
    source: Arc<RequestSource>,
    /// The AWS service this caller's calls come through (`kms:ViaService` of key
    /// policies), e.g. `s3.us-east-1.amazonaws.com` for the S3 endpoint's calls made
    /// for its signer; `None` for direct calls.
    via_service: Option<Arc<str>>,
}

impl Caller {
    /// `principal` calling directly from this machine; its account is the one in its
    /// ARN, else `configured_account`.
    fn local(principal: String, configured_account: &str) -> Caller {
        Caller {
            account: caller_account(&principal, configured_account),
            principal,
            source: Arc::new(RequestSource::local()),
            via_service: None,
        }
    }

    /// What key policies' conditions see of this caller.
    fn context(&self) -> CallerContext<'_> {
        CallerContext {
            account: &self.account,
            via_service: self.via_service.as_deref(),
        }
    }
}

impl fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKms")
            .field("home", &self.shared.home)
            .field("region", &self.shared.region)
            .field("account", &self.caller.account)
            .field("principal", &self.caller.principal)
            .finish_non_exhaustive()
    }
}

impl LocalKms {
    /// Opens the key service in `home` (created 0700 if missing): the keystore in
    /// `home/kms/`, the root key (created on first use), the trail in `home/trail/`.
    pub fn open(home: &Path, config: LocalKmsConfig) -> Result<LocalKms, KmsError> {
        config.validate()?;
        let keystore = Keystore::open(
            &home.join("kms"),
            config.root_key_file.as_deref(),
            &config.account,
        )?;
        let trail = Trail::open(&home.join("trail"), &config.region, &config.account)
            .map_err(|e| KmsError::Internal(format!("cannot open the audit trail: {e}")))?;
        let caller = Caller::local(config.principal, &config.account);
        Ok(LocalKms {
            shared: Arc::new(Shared {
                home: home.to_path_buf(),
                keystore,
                trail,
                region: config.region,
                account: config.account,
                clock: config.clock,
            }),
            caller,
        })
    }

    /// The same key service acting for another caller (the HTTP gateway maps each
    /// signed request to its principal; tests play administrators and users).
    pub fn as_principal(&self, principal: &str) -> Result<LocalKms, KmsError> {
        check_principal(principal)?;
        Ok(LocalKms {
            shared: Arc::clone(&self.shared),
            caller: Caller {
                principal: principal.to_owned(),
                account: caller_account(principal, &self.shared.account),
                ..self.caller.clone()
            },
        })
    }

    /// The same key service and caller, its calls made through the AWS service
    /// `service` (its `kms:ViaService`, e.g. `s3.us-east-1.amazonaws.com`): the S3
    /// endpoint calls the key service this way for the signer of each request, so
    /// an AWS managed key such as `alias/aws/s3` serves S3 and nothing else.
    pub fn through_service(&self, service: &str) -> LocalKms {
        LocalKms {
            shared: Arc::clone(&self.shared),
            caller: Caller {
                via_service: Some(Arc::from(service)),
                ..self.caller.clone()
            },
        }
    }

    /// The same key service and caller, its calls recorded as coming from `source`
    /// (the HTTP gateway passes each request's peer address, User-Agent and access
    /// key id). Kept by [`LocalKms::as_principal`].
    pub fn from_source(&self, source: RequestSource) -> LocalKms {
        LocalKms {
            shared: Arc::clone(&self.shared),
            caller: Caller {
                source: Arc::new(source),
                ..self.caller.clone()
            },
        }
    }

    /// The ARN of the principal this handle acts for (the caller every call is
    /// authorised and audited as).
    pub fn principal(&self) -> &str {
        &self.caller.principal
    }

    /// The region in this key service's ARNs (`ATREST_REGION`).
    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// The caller's account (from its principal ARN, else `ATREST_ACCOUNT`).
    pub fn account(&self) -> &str {
        &self.caller.account
    }

    /// The keystore file. Every update replaces it with a rename, so a watcher
    /// (inotify on the directory, or polling [`LocalKms::keystore_generation`]) sees
    /// every change made by any process.
    pub fn keystore_path(&self) -> &Path {
        self.shared.keystore.file_path()
    }

    /// A number that grows with every committed keystore update by any process
    /// (0 before the first). Reads one line, takes no lock and is not audited: a
    /// long-running server polls it and calls `describe_key` only when it changed or
    /// when a key's `DeletionDate` has passed.
    pub fn keystore_generation(&self) -> Result<u64, KmsError> {
        self.shared.keystore.generation()
    }

    /// The ARN of key `id` in this region and the caller's account.
    pub fn key_arn(&self, id: &Uuid) -> String {
        key_arn(&self.shared.region, &self.caller.account, id)
    }

    /// The ARN of key `id` of `account`.
    fn arn_in(&self, account: &str, id: &Uuid) -> String {
        key_arn(&self.shared.region, account, id)
    }
}

// Each method calls the inherent method of the same name in the file of its group
// (keys, crypto, aliases, rotation, policy_tags): inherent methods come first.
impl KeyService for LocalKms {
    fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, KmsError> {
        self.describe_key(key_id)
    }

    fn generate_data_key(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<GeneratedDataKey, KmsError> {
        self.generate_data_key(req)
    }

    fn generate_data_key_without_plaintext(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<WrappedData, KmsError> {
        self.generate_data_key_without_plaintext(req)
    }

    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        encryption_context: &EncryptionContext,
    ) -> Result<WrappedData, KmsError> {
        self.encrypt(key_id, plaintext, encryption_context)
    }

    fn decrypt(&self, req: &DecryptRequest) -> Result<DecryptedData, KmsError> {
        self.decrypt(req)
    }

    fn re_encrypt(&self, req: &ReEncryptRequest) -> Result<ReEncrypted, KmsError> {
        self.re_encrypt(req)
    }

    fn create_key(&self, req: &CreateKeyRequest) -> Result<KeyMetadata, KmsError> {
        self.create_key(req)
    }

    fn list_keys(&self, req: &ListRequest) -> Result<Page<KeyListEntry>, KmsError> {
        self.list_keys(req)
    }

    fn update_key_description(&self, key_id: &str, description: &str) -> Result<(), KmsError> {
        self.update_key_description(key_id, description)
    }

    fn enable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.enable_key(key_id)
    }

    fn disable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.disable_key(key_id)
    }

    fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> Result<ScheduledDeletion, KmsError> {
        self.schedule_key_deletion(key_id, pending_window_in_days)
    }

    fn cancel_key_deletion(&self, key_id: &str) -> Result<String, KmsError> {
        self.cancel_key_deletion(key_id)
    }

    fn list_aliases(
        &self,
        key_id: Option<&str>,
        req: &ListRequest,
    ) -> Result<Page<AliasListEntry>, KmsError> {
        self.list_aliases(key_id, req)
    }

    fn create_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError> {
        self.create_alias(alias_name, target_key_id)
    }

    fn update_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError> {
        self.update_alias(alias_name, target_key_id)
    }

    fn delete_alias(&self, alias_name: &str) -> Result<(), KmsError> {
        self.delete_alias(alias_name)
    }

    fn enable_key_rotation(
        &self,
        key_id: &str,
        rotation_period_in_days: Option<u32>,
    ) -> Result<(), KmsError> {
        self.enable_key_rotation(key_id, rotation_period_in_days)
    }

    fn disable_key_rotation(&self, key_id: &str) -> Result<(), KmsError> {
        self.disable_key_rotation(key_id)
    }

    fn get_key_rotation_status(&self, key_id: &str) -> Result<RotationStatus, KmsError> {
        self.get_key_rotation_status(key_id)
    }

    fn rotate_key_on_demand(&self, key_id: &str) -> Result<String, KmsError> {
        self.rotate_key_on_demand(key_id)
    }

    fn list_key_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, KmsError> {
        self.list_key_rotations(key_id)
    }

    fn get_key_policy(&self, key_id: &str, policy_name: &str) -> Result<String, KmsError> {
        self.get_key_policy(key_id, policy_name)
    }

    fn put_key_policy(
        &self,
        key_id: &str,
        policy_name: &str,
        policy: &str,
        bypass_policy_lockout_safety_check: bool,
    ) -> Result<(), KmsError> {
        self.put_key_policy(
            key_id,
            policy_name,
            policy,
            bypass_policy_lockout_safety_check,
        )
    }

    fn tag_resource(&self, key_id: &str, tags: &[Tag]) -> Result<(), KmsError> {
        self.tag_resource(key_id, tags)
    }

    fn untag_resource(&self, key_id: &str, tag_keys: &[String]) -> Result<(), KmsError> {
        self.untag_resource(key_id, tag_keys)
    }

    fn list_resource_tags(&self, key_id: &str) -> Result<Vec<Tag>, KmsError> {
        self.list_resource_tags(key_id)
    }

    /// GenerateRandom: `number_of_bytes` (1..=1024, required) random bytes. Audited
    /// like every call; the bytes are not in the record.
    fn generate_random(&self, number_of_bytes: Option<u32>) -> Result<SecretBytes, KmsError> {
        self.generate_random(number_of_bytes)
    }

    /// ListKeyPolicies: the names of a key's policies, always `["default"]`.
    fn list_key_policies(&self, key_id: &str) -> Result<Vec<String>, KmsError> {
        self.list_key_policies(key_id)
    }
}
