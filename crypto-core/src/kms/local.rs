//! [`LocalKms`]: the embedded key service over the keystore in `<home>/kms/`,
//! reporting every call to the trail in `<home>/trail/`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::clock::{parse_offset, Clock, SystemClock};
use super::ident::{
    alias_arn, is_account_id, key_arn, principal_account, printable, validate_alias_name, KeyRef,
};
use super::keystore::{
    add_material, to_time, AliasRecord, KeyRecord, Keystore, Maintenance, RotationRecord,
    RotationSchedule, StoreData,
};
use super::operation::{ImportOperation, Operation};
use super::policy::{default_policy, CallerContext, Decision, KeyPolicy};
use super::{
    AliasListEntry, CreateKeyRequest, DataKeySpec, DecryptRequest, DecryptedData,
    EncryptionContext, GenerateDataKeyRequest, GeneratedDataKey, KeyListEntry, KeyMetadata,
    KeyService, KeyState, KmsError, ListRequest, Page, ReEncryptRequest, ReEncrypted,
    RotationEntry, RotationStatus, RotationType, ScheduledDeletion, Tag, WrappedData,
};
use crate::envelope::{self, MAX_PLAINTEXT_LEN};
use crate::secret::{Aes256Key, SecretBytes};
use crate::trail::{ApiCall, RefusedRequest, RequestSource, Trail};

/// AWS's bounds on ScheduleKeyDeletion's window.
const MIN_PENDING_DAYS: u32 = 7;
const MAX_PENDING_DAYS: u32 = 30;
const DEFAULT_PENDING_DAYS: u32 = 30;
/// AWS's bounds on the automatic rotation period.
const MIN_ROTATION_DAYS: u32 = 90;
const MAX_ROTATION_DAYS: u32 = 2560;
const DEFAULT_ROTATION_DAYS: u32 = 365;
/// AWS's tag limits: 50 tags per key, keys of 1-128 and values of 0-256 characters.
const MAX_TAGS: usize = 50;
const MAX_TAG_KEY_LEN: usize = 128;
const MAX_TAG_VALUE_LEN: usize = 256;
/// AWS allows 10 on-demand rotations per key.
const MAX_ON_DEMAND_ROTATIONS: usize = 10;
/// AWS's limit on a ciphertext blob passed to Decrypt or ReEncrypt.
const MAX_CIPHERTEXT_LEN: usize = 6144;
/// Bound on the encoded encryption context.
const MAX_CONTEXT_LEN: usize = 8192;
const MAX_DESCRIPTION_LEN: usize = 8192;
/// AWS's `KeySpec` and `KeyUsageType` enums (botocore 1.44's KMS model): a value outside
/// them is a ValidationException; one inside that atrest does not make (asymmetric,
/// HMAC) an UnsupportedOperationException.
const KEY_SPECS: [&str; 20] = [
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "SYMMETRIC_DEFAULT",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
    "SM2",
    "ML_DSA_44",
    "ML_DSA_65",
    "ML_DSA_87",
    "ECC_NIST_EDWARDS25519",
    "ML_KEM_512",
    "ML_KEM_768",
    "ML_KEM_1024",
];
const KEY_USAGES: [&str; 5] = [
    "SIGN_VERIFY",
    "ENCRYPT_DECRYPT",
    "GENERATE_VERIFY_MAC",
    "KEY_AGREEMENT",
    "ENCAPSULATE_DECAPSULATE",
];
/// GenerateRandom's bounds on `NumberOfBytes`.
const MAX_RANDOM_BYTES: u32 = 1024;
/// Who the trail names for what the key service does on its own (deletion, rotation).
const SERVICE_PRINCIPAL: &str = "kms.amazonaws.com";

/// How [`LocalKms`] is set up. [`LocalKmsConfig::from_env`] reads the `ATREST_*`
/// variables; [`LocalKmsConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct LocalKmsConfig {
    /// `ATREST_REGION`, default `local`.
    pub region: String,
    /// `ATREST_ACCOUNT`, twelve digits, default `000000000000`: the account of callers
    /// whose principal is not an ARN (`KeyUser`), and the owner of keys and aliases
    /// made before accounts existed (keystore version 1).
    pub account: String,
    /// The caller: `ATREST_PRINCIPAL`, default `arn:aws:iam::<account>:root`. A
    /// principal ARN (`arn:aws:iam::111111111111:user/Eve`) acts in its own account.
    pub principal: String,
    /// The system clock shifted by `ATREST_CLOCK_OFFSET` (e.g. `31d`, `-2h`, `90`).
    pub clock: Arc<dyn Clock>,
    /// `ATREST_ROOT_KEY_FILE`; default `<home>/kms/root.key`.
    pub root_key_file: Option<PathBuf>,
}

impl Default for LocalKmsConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalKmsConfig {
    /// Region `local`, account `000000000000`, the account's root user, system clock.
    pub fn new() -> Self {
        let account = "000000000000".to_owned();
        Self {
            region: "local".into(),
            principal: root_principal(&account),
            account,
            clock: Arc::new(SystemClock::new()),
            root_key_file: None,
        }
    }

    /// Reads `ATREST_REGION`, `ATREST_ACCOUNT`, `ATREST_PRINCIPAL`,
    /// `ATREST_ROOT_KEY_FILE` and `ATREST_CLOCK_OFFSET`; unset or empty means default.
    pub fn from_env() -> Result<Self, KmsError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut config = Self::new();
        if let Some(region) = var("ATREST_REGION") {
            config.region = region;
        }
        if let Some(account) = var("ATREST_ACCOUNT") {
            config.principal = root_principal(&account);
            config.account = account;
        }
        if let Some(principal) = var("ATREST_PRINCIPAL") {
            // A principal ARN acts in its own account; an explicit ATREST_ACCOUNT that
            // says otherwise is a mistake, not a choice.
            if let (Some(account), Some(named)) =
                (var("ATREST_ACCOUNT"), principal_account(&principal))
            {
                if account != named {
                    return Err(KmsError::Validation(format!(
                        "ATREST_PRINCIPAL '{}' belongs to account {named} but ATREST_ACCOUNT \
                         is '{}': a principal acts in its own account; unset ATREST_ACCOUNT \
                         or make them agree",
                        printable(&principal),
                        printable(&account)
                    )));
                }
            }
            config.principal = principal;
        }
        config.root_key_file = std::env::var_os("ATREST_ROOT_KEY_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if let Some(offset) = var("ATREST_CLOCK_OFFSET") {
            let offset = parse_offset(&offset).map_err(|e| {
                KmsError::Validation(format!("ATREST_CLOCK_OFFSET: {}", e.message()))
            })?;
            config.clock = Arc::new(SystemClock::with_offset(offset));
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), KmsError> {
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 32
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(KmsError::Validation(format!(
                "region '{}' must be 1-32 characters of a-z, 0-9 and '-'",
                printable(&self.region)
            )));
        }
        if !is_account_id(&self.account) {
            return Err(KmsError::Validation(format!(
                "account '{}' must be twelve digits",
                printable(&self.account)
            )));
        }
        check_principal(&self.principal)
    }
}

/// The account a caller acts in: its principal ARN's, else `configured`.
fn caller_account(principal: &str, configured: &str) -> String {
    principal_account(principal)
        .unwrap_or(configured)
        .to_owned()
}

/// `KeyMaterialId` of material version `version` of key `id`: hex SHA-256 of a label,
/// the key id and the version, so it names the material (and changes on rotation)
/// without depending on a secret byte.
pub(crate) fn key_material_id(id: &Uuid, version: u32) -> String {
    let mut hash = Sha256::new();
    hash.update(b"atrest key material id v1");
    hash.update(id.as_bytes());
    hash.update(version.to_le_bytes());
    hex::encode(hash.finalize())
}

fn root_principal(account: &str) -> String {
    format!("arn:aws:iam::{account}:root")
}

fn check_principal(principal: &str) -> Result<(), KmsError> {
    if principal.is_empty() || principal.len() > 2048 || principal.chars().any(char::is_control) {
        return Err(KmsError::Validation(format!(
            "principal '{}' must be 1-2048 printable characters (an ARN)",
            printable(principal)
        )));
    }
    Ok(())
}

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

    /// Records a request an endpoint refused before it reached the key service (a
    /// bad signature, an unreadable request). Durable before it returns, like every
    /// record: the endpoint answers the refusal only after.
    pub fn record_refusal(&self, refused: &RefusedRequest) -> Result<(), KmsError> {
        self.shared.trail.append_refusal(refused).map_err(|e| {
            KmsError::Internal(format!(
                "the audit trail could not record a refused {} ({e})",
                refused.event_name
            ))
        })
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

    /// The ARN of the caller's alias `name`.
    fn alias_arn(&self, name: &str) -> String {
        alias_arn(&self.shared.region, &self.caller.account, name)
    }

    /// UpdateAlias's and DeleteAlias's refusal of an alias the caller does not have.
    fn alias_not_found(&self, name: &str) -> KmsError {
        KmsError::NotFound(format!("Alias '{}' is not found.", self.alias_arn(name)))
    }

    /// The key the caller's alias `name` points at.
    fn aliased_key(&self, store: &StoreData, name: &str) -> Result<Uuid, KmsError> {
        store
            .aliases_of(&self.caller.account)
            .and_then(|aliases| aliases.get(name))
            .map(|alias| alias.target_key_id)
            .ok_or_else(|| self.alias_not_found(name))
    }

    /// GetParametersForImport, ImportKeyMaterial and DeleteImportedKeyMaterial
    /// (`operation` names which): every atrest key has origin `AWS_KMS`, so each is
    /// refused with UnsupportedOperationException once the key is found and the
    /// caller is allowed the action, as AWS answers for such keys. Audited.
    pub fn refuse_key_material_import(&self, operation: ImportOperation, key_id: &str) -> KmsError {
        let refused: Result<(), KmsError> = self.inspect(
            operation.into(),
            key_id,
            json!({ "keyId": key_id }),
            |_, _, arn| {
                Err(KmsError::UnsupportedOperation(format!(
                    "{arn} origin is AWS_KMS which is not valid for this operation."
                )))
            },
        );
        match refused {
            Err(err) => err,
            Ok(()) => KmsError::Internal("a key material import was not refused".into()),
        }
    }

    /// Appends the record of a call refused before it reached the key service (a
    /// request body that does not parse or fails AWS's validation), so every
    /// refusal is in the trail. `op` is the operation the caller named;
    /// `request_parameters` must hold no secret (callers drop `Plaintext`).
    pub fn record_invalid_request(
        &self,
        op: Operation,
        request_parameters: Value,
        error_code: &str,
        error_message: &str,
    ) -> Result<(), KmsError> {
        self.append(&ApiCall {
            event_time: self.now(),
            event_name: op.name().to_owned(),
            principal: self.caller.principal.clone(),
            request_parameters,
            response_elements: None,
            error_code: Some(error_code.to_owned()),
            error_message: Some(error_message.to_owned()),
            read_only: op.read_only(),
            resources: Vec::new(),
        })
    }

    fn now(&self) -> OffsetDateTime {
        self.shared.clock.now()
    }

    fn append(&self, call: &ApiCall) -> Result<(), KmsError> {
        self.append_from(call, &self.caller.source)
    }

    fn append_from(&self, call: &ApiCall, source: &RequestSource) -> Result<(), KmsError> {
        self.shared.trail.append_from(call, source).map_err(|e| {
            KmsError::Internal(format!(
                "the audit trail could not record {} ({e}); the call was refused",
                call.event_name
            ))
        })
    }

    fn record(&self, audit: &Audit, error: Option<&KmsError>) -> ApiCall {
        ApiCall {
            event_time: self.now(),
            event_name: audit.op.name().to_owned(),
            principal: self.caller.principal.clone(),
            request_parameters: audit.request.clone(),
            response_elements: if error.is_none() {
                audit.response.clone()
            } else {
                None
            },
            error_code: error.map(|e| e.aws_name().to_owned()),
            error_message: error.map(|e| e.message().to_owned()),
            read_only: audit.op.read_only(),
            resources: audit.resources.clone(),
        }
    }

    /// Runs one call and records it in the trail, successful or not. If the record
    /// cannot be written the call fails with KMSInternalException: no key is used
    /// without a trail entry.
    fn run<R>(
        &self,
        op: Operation,
        request: Value,
        body: impl FnOnce(&mut Audit) -> Result<R, KmsError>,
    ) -> Result<R, KmsError> {
        let mut audit = Audit {
            op,
            request,
            resources: Vec::new(),
            response: None,
            recorded: false,
        };
        match body(&mut audit) {
            Ok(value) => {
                if !audit.recorded {
                    self.append(&self.record(&audit, None))?;
                }
                Ok(value)
            }
            Err(err) => {
                self.append(&self.record(&audit, Some(&err)))?;
                Err(err)
            }
        }
    }

    fn audit_maintenance(&self, done: &[Maintenance]) -> Result<(), KmsError> {
        for event in done {
            let (name, id, account) = match event {
                Maintenance::Deleted { id, account } => ("DeleteKey", id, account),
                Maintenance::Rotated { id, account } => ("RotateKey", id, account),
            };
            let arn = self.arn_in(account, id);
            // The service's own work, not the caller whose call found it due.
            self.append_from(
                &ApiCall {
                    event_time: self.now(),
                    event_name: name.to_owned(),
                    principal: SERVICE_PRINCIPAL.to_owned(),
                    request_parameters: json!({ "keyId": arn }),
                    response_elements: None,
                    error_code: None,
                    error_message: None,
                    read_only: false,
                    resources: vec![arn],
                },
                &RequestSource::internal(),
            )?;
        }
        Ok(())
    }

    /// The keystore as it is now, after completing any deletion window or rotation
    /// that fell due (persisted and audited, so every process sees it).
    fn fresh(&self) -> Result<StoreData, KmsError> {
        let now = self.now();
        let store = self.shared.keystore.read()?;
        if !store.maintenance_due(now) {
            return Ok(store);
        }
        let prepared = self.shared.keystore.prepare(now, |_| Ok(()))?;
        if prepared.maintenance.is_empty() {
            return Ok(prepared.store);
        }
        self.audit_maintenance(&prepared.maintenance)?;
        prepared.tx.commit()?;
        Ok(prepared.store)
    }

    /// Applies `update` under the keystore's write lock; the success record goes to
    /// the trail before the update becomes visible.
    fn mutate<R>(
        &self,
        audit: &mut Audit,
        update: impl FnOnce(&mut StoreData, OffsetDateTime, &mut Audit) -> Result<R, KmsError>,
    ) -> Result<R, KmsError> {
        self.fresh()?;
        let now = self.now();
        let prepared = self
            .shared
            .keystore
            .prepare(now, |store| update(store, now, audit))?;
        self.audit_maintenance(&prepared.maintenance)?;
        self.append(&self.record(audit, None))?;
        audit.recorded = true;
        prepared.tx.commit()?;
        Ok(prepared.value)
    }

    /// Finds the key `key_id` names, for `op`: a key id or alias of the caller's
    /// account, or (when `op` allows cross-account use) another account's key by its
    /// key ARN. Returns the key's id and ARN. Another account's key named where `op`
    /// does not allow it is NotFoundException, as AWS answers.
    fn resolve(
        &self,
        store: &StoreData,
        key_id: &str,
        op: Operation,
    ) -> Result<(Uuid, String), KmsError> {
        match KeyRef::parse(key_id, &self.shared.region, &self.caller.account)? {
            KeyRef::Key { account, id } => {
                let arn = self.arn_in(&account, &id);
                let reachable = account == self.caller.account || op.cross_account();
                match store.keys.get(&id) {
                    Some(key) if key.account == account && reachable => Ok((id, arn)),
                    _ => Err(KmsError::NotFound(format!("Key '{arn}' does not exist"))),
                }
            }
            KeyRef::Alias(name) => {
                let target = store
                    .aliases_of(&self.caller.account)
                    .and_then(|aliases| aliases.get(&name))
                    .map(|a| a.target_key_id);
                match target.and_then(|id| store.keys.get(&id).map(|k| (id, k))) {
                    Some((id, key)) => Ok((id, self.arn_in(&key.account, &id))),
                    None => Err(KmsError::NotFound(format!(
                        "Alias '{}' is not found.",
                        self.alias_arn(&printable(&name))
                    ))),
                }
            }
        }
    }

    fn authorize(&self, key: &KeyRecord, action: &str, arn: &str) -> Result<(), KmsError> {
        let policy = KeyPolicy::parse(&key.policy).map_err(|e| {
            KmsError::Internal(format!(
                "the stored policy of {arn} is unreadable: {}",
                e.message()
            ))
        })?;
        match policy.evaluate_in(&self.caller.principal, self.caller.context(), action, arn) {
            Decision::Allow => Ok(()),
            Decision::ExplicitDeny => Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: {action} on resource: {arn} with an \
                 explicit deny in a resource-based policy",
                self.caller.principal
            ))),
            Decision::ImplicitDeny => Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: {action} on resource: {arn} because no \
                 resource-based policy allows the {action} action",
                self.caller.principal
            ))),
        }
    }

    /// Resolves `key_id`, records it, and checks policy (`action`) and state (`op`).
    fn usable_key<'s>(
        &self,
        audit: &mut Audit,
        store: &'s StoreData,
        key_id: &str,
        op: Operation,
        action: &str,
    ) -> Result<(Uuid, &'s KeyRecord, String), KmsError> {
        let (id, arn) = self.resolve(store, key_id, op)?;
        audit.resources.push(arn.clone());
        let key = store
            .keys
            .get(&id)
            .ok_or_else(|| KmsError::NotFound(format!("Key '{arn}' does not exist")))?;
        self.authorize(key, action, &arn)?;
        op.check_state(key.state, &arn)?;
        Ok((id, key, arn))
    }

    /// A key administration call: resolve, authorize, check state, then `change`
    /// the key record under the write lock.
    fn administer<R>(
        &self,
        op: Operation,
        key_id: &str,
        request: Value,
        change: impl FnOnce(&mut KeyRecord, &Uuid, &str, OffsetDateTime) -> Result<R, KmsError>,
    ) -> Result<R, KmsError> {
        self.run(op, request, |audit| {
            self.mutate(audit, |store, now, audit| {
                let (id, arn) = self.resolve(store, key_id, op)?;
                audit.resources.push(arn.clone());
                let key = store
                    .keys
                    .get_mut(&id)
                    .ok_or_else(|| KmsError::NotFound(format!("Key '{arn}' does not exist")))?;
                self.authorize(key, &op.action(), &arn)?;
                op.check_state(key.state, &arn)?;
                let value = change(key, &id, &arn, now)?;
                audit.response = Some(json!({ "keyId": arn }));
                Ok(value)
            })
        })
    }

    /// A read-only key call: resolve, authorize, check state on a fresh snapshot.
    fn inspect<R>(
        &self,
        op: Operation,
        key_id: &str,
        request: Value,
        read: impl FnOnce(&KeyRecord, &Uuid, &str) -> Result<R, KmsError>,
    ) -> Result<R, KmsError> {
        self.run(op, request, |audit| {
            let store = self.fresh()?;
            let (id, key, arn) = self.usable_key(audit, &store, key_id, op, &op.action())?;
            read(key, &id, &arn)
        })
    }

    fn metadata(&self, id: &Uuid, key: &KeyRecord) -> KeyMetadata {
        KeyMetadata {
            key_id: id.to_string(),
            arn: self.arn_in(&key.account, id),
            key_state: key.state,
            aws_account_id: key.account.clone(),
            creation_date: to_time(key.creation_date),
            enabled: key.state == KeyState::Enabled,
            description: key.description.clone(),
            key_usage: "ENCRYPT_DECRYPT".into(),
            key_spec: "SYMMETRIC_DEFAULT".into(),
            customer_master_key_spec: "SYMMETRIC_DEFAULT".into(),
            key_manager: "CUSTOMER".into(),
            origin: "AWS_KMS".into(),
            encryption_algorithms: vec!["SYMMETRIC_DEFAULT".into()],
            multi_region: false,
            deletion_date: key.deletion_date.map(to_time),
            pending_deletion_window_in_days: key.pending_window_in_days,
            current_key_material_id: key
                .materials
                .len()
                .checked_sub(1)
                .and_then(|last| u32::try_from(last).ok())
                .map(|version| key_material_id(id, version)),
        }
    }

    /// The current material version of a key, unsealed.
    fn current_material(&self, id: &Uuid, key: &KeyRecord) -> Result<(u32, Aes256Key), KmsError> {
        let last = key
            .materials
            .len()
            .checked_sub(1)
            .ok_or_else(|| KmsError::Internal(format!("key {id} has no material")))?;
        let version = u32::try_from(last)
            .map_err(|_| KmsError::Internal(format!("key {id} has too many material versions")))?;
        let material =
            self.shared
                .keystore
                .unseal_material(id, version, &key.materials[last].sealed)?;
        Ok((version, material))
    }

    /// Checks and decrypts a blob for Decrypt/ReEncrypt: the blob's key must exist
    /// (and be `expected`, when the caller named one), allow `action` and be enabled.
    fn open_blob(
        &self,
        audit: &mut Audit,
        store: &StoreData,
        blob: &[u8],
        context: &EncryptionContext,
        expected: Option<&str>,
        action: &str,
    ) -> Result<(String, String, SecretBytes), KmsError> {
        if blob.is_empty() || blob.len() > MAX_CIPHERTEXT_LEN {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value at 'ciphertextBlob' failed to satisfy \
                 constraint: Member must have length between 1 and {MAX_CIPHERTEXT_LEN}"
            )));
        }
        let parsed = envelope::parse(blob)?;
        let id = parsed.header.key_id;
        if let Some(named) = expected {
            let (named, named_arn) = self.resolve(store, named, audit.op)?;
            if named != id {
                audit.resources.push(named_arn);
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a KMS key that can perform this operation."
                        .into(),
                ));
            }
        }
        let Some(key) = store.keys.get(&id) else {
            if let Some(account) = store.deleted_key_accounts.get(&id) {
                let arn = self.arn_in(account, &id);
                audit.resources.push(arn.clone());
                return Err(KmsError::NotFound(format!(
                    "Key '{arn}' was deleted; its ciphertexts cannot be decrypted"
                )));
            }
            return Err(KmsError::InvalidCiphertext(
                "the ciphertext blob is not valid: it names no key of this key service".into(),
            ));
        };
        let arn = self.arn_in(&key.account, &id);
        audit.resources.push(arn.clone());
        self.authorize(key, action, &arn)?;
        audit.op.check_state(key.state, &arn)?;
        let version = parsed.header.material_version;
        let sealed = usize::try_from(version)
            .ok()
            .and_then(|v| key.materials.get(v))
            .ok_or_else(|| {
                KmsError::InvalidCiphertext(
                    "the ciphertext blob is not valid: unknown key material version".into(),
                )
            })?;
        let material = self
            .shared
            .keystore
            .unseal_material(&id, version, &sealed.sealed)?;
        let plaintext = envelope::open(&material, &parsed, context)?;
        Ok((arn, key_material_id(&id, version), plaintext))
    }

    fn generate(
        &self,
        op: Operation,
        req: &GenerateDataKeyRequest,
    ) -> Result<(String, SecretBytes, Vec<u8>), KmsError> {
        let mut request = json!({
            "keyId": req.key_id,
            "encryptionContext": req.encryption_context,
        });
        match req.spec {
            DataKeySpec::Aes256 => request["keySpec"] = json!("AES_256"),
            DataKeySpec::Aes128 => request["keySpec"] = json!("AES_128"),
            DataKeySpec::Bytes(n) => request["numberOfBytes"] = json!(n),
        }
        self.run(op, request, |audit| {
            let len = req.spec.byte_len()?;
            check_context(&req.encryption_context, "encryptionContext")?;
            let store = self.fresh()?;
            let (id, key, arn) = self.usable_key(audit, &store, &req.key_id, op, &op.action())?;
            let (version, material) = self.current_material(&id, key)?;
            let plaintext = SecretBytes::random(len);
            let blob = envelope::seal(
                &material,
                id,
                version,
                plaintext.expose(),
                &req.encryption_context,
            )?;
            audit.response = Some(json!({ "keyId": arn }));
            Ok((arn, plaintext, blob))
        })
    }

    fn page<T>(
        &self,
        items: impl Iterator<Item = (String, T)>,
        req: &ListRequest,
    ) -> Result<Page<T>, KmsError> {
        let limit = match req.limit {
            None => 100,
            Some(n @ 1..=1000) => n as usize,
            Some(n) => {
                return Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{n}' at 'limit' failed to satisfy \
                     constraint: Member must have value between 1 and 1000"
                )))
            }
        };
        let mut items = items.peekable();
        if let Some(marker) = &req.marker {
            let mut found = false;
            for (sort_key, _) in items.by_ref() {
                if &sort_key == marker {
                    found = true;
                    break;
                }
            }
            if !found {
                return Err(KmsError::InvalidMarker(format!(
                    "marker '{}' was not issued by this listing",
                    printable(marker)
                )));
            }
        }
        let mut page = Vec::new();
        let mut last = None;
        while page.len() < limit {
            let Some((sort_key, item)) = items.next() else {
                break;
            };
            last = Some(sort_key);
            page.push(item);
        }
        let next_marker = if items.peek().is_some() { last } else { None };
        Ok(Page {
            items: page,
            next_marker,
        })
    }

    fn alias_entry(&self, name: &str, alias: &AliasRecord) -> AliasListEntry {
        AliasListEntry {
            alias_name: name.to_owned(),
            alias_arn: self.alias_arn(name),
            target_key_id: alias.target_key_id.to_string(),
            creation_date: to_time(alias.creation_date),
            last_updated_date: to_time(alias.last_updated_date),
        }
    }

    /// Refuses a policy the caller could not change afterwards (AWS's lockout check).
    fn check_lockout(&self, policy: &KeyPolicy, arn: &str, bypass: bool) -> Result<(), KmsError> {
        if bypass
            || policy.evaluate_in(
                &self.caller.principal,
                self.caller.context(),
                "kms:PutKeyPolicy",
                arn,
            ) == Decision::Allow
        {
            return Ok(());
        }
        Err(KmsError::MalformedPolicyDocument(
            "The new key policy will not allow you to update the key policy in the future.".into(),
        ))
    }

    /// Resolves an alias target, which must name a key of the caller's account, not
    /// another alias.
    fn alias_target(
        &self,
        store: &StoreData,
        target: &str,
        op: Operation,
    ) -> Result<(Uuid, String), KmsError> {
        if let KeyRef::Alias(_) = KeyRef::parse(target, &self.shared.region, &self.caller.account)?
        {
            return Err(KmsError::Validation(
                "TargetKeyId must be a key ID or key ARN, not an alias".into(),
            ));
        }
        self.resolve(store, target, op)
    }
}

fn check_context(context: &EncryptionContext, field: &str) -> Result<(), KmsError> {
    let len: usize = context.iter().map(|(k, v)| k.len() + v.len()).sum();
    if len > MAX_CONTEXT_LEN {
        return Err(KmsError::Validation(format!(
            "{field} is {len} bytes; atrest allows at most {MAX_CONTEXT_LEN}"
        )));
    }
    Ok(())
}

fn date(ts: OffsetDateTime) -> Value {
    json!(ts.unix_timestamp())
}

/// The alias of the AWS managed key that S3 encrypts with for SSE-S3 (and for SSE-KMS
/// without a key id), as AWS names it.
pub const AWS_MANAGED_S3_ALIAS: &str = "alias/aws/s3";

/// The key policy of an AWS managed key `alias/aws/SERVICE`: it may be used for
/// encryption only through that service (`kms:ViaService`, e.g.
/// `s3.REGION.amazonaws.com`: never by a direct call to the key service), and nobody
/// may administer, disable, re-target or delete it. Unlike AWS's policy there is no
/// `kms:CallerAccount` condition: atrest's SSE-S3 objects are encrypted under this key
/// where AWS uses S3-owned keys, and those objects are readable by whomever the bucket
/// policy lets in, other accounts included (the S3 endpoint decides first).
fn aws_managed_policy(account: &str, region: &str, alias: &str) -> String {
    let service = alias.trim_start_matches("alias/aws/");
    json!({
        "Version": "2012-10-17",
        "Id": format!("auto-{}", alias.trim_start_matches("alias/aws/")),
        "Statement": [{
            "Sid": format!("Allow use of the key of account {account} through {service} only"),
            "Effect": "Allow",
            "Principal": { "AWS": "*" },
            "Action": [
                "kms:Encrypt",
                "kms:Decrypt",
                "kms:ReEncrypt*",
                "kms:GenerateDataKey*",
                "kms:DescribeKey"
            ],
            "Resource": "*",
            "Condition": {
                "StringEquals": { "kms:ViaService": format!("{service}.{region}.amazonaws.com") }
            }
        }]
    })
    .to_string()
}

impl LocalKms {
    /// The ARN of the AWS managed key named `alias` (`alias/aws/SERVICE`, e.g.
    /// [`AWS_MANAGED_S3_ALIAS`]), created with its alias on first use in one keystore
    /// update (recorded in the trail as a CreateKey by the caller). Later calls only
    /// read the keystore. Customers cannot create `alias/aws/*` aliases themselves
    /// (`validate_alias_name`), so the alias always names the managed key.
    pub fn aws_managed_key(&self, alias: &str) -> Result<String, KmsError> {
        let service = alias.strip_prefix("alias/aws/").unwrap_or_default();
        if service.is_empty()
            || !service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(KmsError::InvalidAliasName(format!(
                "'{}' is not the alias of an AWS managed key (alias/aws/SERVICE)",
                printable(alias)
            )));
        }
        if let Some(existing) = self
            .fresh()?
            .aliases
            .get(&self.caller.account)
            .and_then(|aliases| aliases.get(alias))
        {
            return Ok(self.key_arn(&existing.target_key_id));
        }
        let description =
            format!("Default key that protects my {service} data when no other key is defined");
        let request = json!({
            "description": description,
            "keyUsage": "ENCRYPT_DECRYPT",
            "keySpec": "SYMMETRIC_DEFAULT",
            "origin": "AWS_KMS",
            "keyManager": "AWS",
            "aliasName": alias,
        });
        self.run(Operation::CreateKey, request, |audit| {
            self.mutate(audit, |store, now, audit| {
                // Another process may have made it since the read above.
                if let Some(existing) = store
                    .aliases
                    .get(&self.caller.account)
                    .and_then(|aliases| aliases.get(alias))
                {
                    let arn = self.key_arn(&existing.target_key_id);
                    audit.resources.push(arn.clone());
                    audit.response = Some(json!({ "keyMetadata": { "arn": arn } }));
                    return Ok(arn);
                }
                let id = Uuid::new_v4();
                let arn = self.key_arn(&id);
                audit.resources.push(arn.clone());
                let ts = now.unix_timestamp();
                let mut key = KeyRecord {
                    account: self.caller.account.clone(),
                    description: description.clone(),
                    creation_date: ts,
                    state: KeyState::Enabled,
                    deletion_date: None,
                    pending_window_in_days: None,
                    policy: aws_managed_policy(&self.caller.account, &self.shared.region, alias),
                    rotation: None,
                    rotations: Vec::new(),
                    materials: Vec::new(),
                    tags: BTreeMap::new(),
                };
                add_material(&mut key, &id, ts, &self.shared.keystore)?;
                store.keys.insert(id, key);
                store
                    .aliases
                    .entry(self.caller.account.clone())
                    .or_default()
                    .insert(
                        alias.to_owned(),
                        AliasRecord {
                            target_key_id: id,
                            creation_date: ts,
                            last_updated_date: ts,
                        },
                    );
                audit.response = Some(json!({ "keyMetadata": {
                    "keyId": id.to_string(),
                    "arn": arn,
                    "keyManager": "AWS",
                }}));
                Ok(arn)
            })
        })
    }
}

impl KeyService for LocalKms {
    fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, KmsError> {
        self.inspect(
            Operation::DescribeKey,
            key_id,
            json!({ "keyId": key_id }),
            |key, id, _| Ok(self.metadata(id, key)),
        )
    }

    fn generate_data_key(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<GeneratedDataKey, KmsError> {
        let (key_id, plaintext, ciphertext_blob) =
            self.generate(Operation::GenerateDataKey, req)?;
        Ok(GeneratedDataKey {
            key_id,
            plaintext,
            ciphertext_blob,
        })
    }

    fn generate_data_key_without_plaintext(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<WrappedData, KmsError> {
        let (key_id, _, ciphertext_blob) =
            self.generate(Operation::GenerateDataKeyWithoutPlaintext, req)?;
        Ok(WrappedData {
            key_id,
            ciphertext_blob,
        })
    }

    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        encryption_context: &EncryptionContext,
    ) -> Result<WrappedData, KmsError> {
        let request = json!({
            "keyId": key_id,
            "encryptionContext": encryption_context,
            "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
        });
        self.run(Operation::Encrypt, request, |audit| {
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT_LEN {
                return Err(KmsError::Validation(format!(
                    "1 validation error detected: Value at 'plaintext' failed to satisfy \
                     constraint: Member must have length between 1 and {MAX_PLAINTEXT_LEN}"
                )));
            }
            check_context(encryption_context, "encryptionContext")?;
            let store = self.fresh()?;
            let (id, key, arn) =
                self.usable_key(audit, &store, key_id, Operation::Encrypt, "kms:Encrypt")?;
            let (version, material) = self.current_material(&id, key)?;
            let ciphertext_blob =
                envelope::seal(&material, id, version, plaintext, encryption_context)?;
            audit.response = Some(json!({ "keyId": arn }));
            Ok(WrappedData {
                key_id: arn,
                ciphertext_blob,
            })
        })
    }

    fn decrypt(&self, req: &DecryptRequest) -> Result<DecryptedData, KmsError> {
        let mut request = json!({
            "encryptionContext": req.encryption_context,
            "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
        });
        if let Some(key_id) = &req.key_id {
            request["keyId"] = json!(key_id);
        }
        self.run(Operation::Decrypt, request, |audit| {
            check_context(&req.encryption_context, "encryptionContext")?;
            let store = self.fresh()?;
            let (arn, key_material_id, plaintext) = self.open_blob(
                audit,
                &store,
                &req.ciphertext_blob,
                &req.encryption_context,
                req.key_id.as_deref(),
                "kms:Decrypt",
            )?;
            audit.response = Some(json!({ "keyId": arn, "keyMaterialId": key_material_id }));
            Ok(DecryptedData {
                key_id: arn,
                plaintext,
                key_material_id: Some(key_material_id),
            })
        })
    }

    fn re_encrypt(&self, req: &ReEncryptRequest) -> Result<ReEncrypted, KmsError> {
        let mut request = json!({
            "destinationKeyId": req.destination_key_id,
            "sourceEncryptionContext": req.source_encryption_context,
            "destinationEncryptionContext": req.destination_encryption_context,
            "sourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "destinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        });
        if let Some(key_id) = &req.source_key_id {
            request["sourceKeyId"] = json!(key_id);
        }
        self.run(Operation::ReEncrypt, request, |audit| {
            check_context(&req.source_encryption_context, "sourceEncryptionContext")?;
            check_context(
                &req.destination_encryption_context,
                "destinationEncryptionContext",
            )?;
            let store = self.fresh()?;
            let (source_arn, source_material_id, plaintext) = self.open_blob(
                audit,
                &store,
                &req.ciphertext_blob,
                &req.source_encryption_context,
                req.source_key_id.as_deref(),
                "kms:ReEncryptFrom",
            )?;
            let (id, key, arn) = self.usable_key(
                audit,
                &store,
                &req.destination_key_id,
                Operation::ReEncrypt,
                "kms:ReEncryptTo",
            )?;
            let (version, material) = self.current_material(&id, key)?;
            let ciphertext_blob = envelope::seal(
                &material,
                id,
                version,
                plaintext.expose(),
                &req.destination_encryption_context,
            )?;
            let destination_material_id = key_material_id(&id, version);
            audit.response = Some(json!({
                "keyId": arn,
                "sourceKeyId": source_arn,
                "sourceKeyMaterialId": source_material_id,
                "destinationKeyMaterialId": destination_material_id,
            }));
            Ok(ReEncrypted {
                source_key_id: source_arn,
                key_id: arn,
                ciphertext_blob,
                source_key_material_id: Some(source_material_id),
                destination_key_material_id: Some(destination_material_id),
            })
        })
    }

    fn create_key(&self, req: &CreateKeyRequest) -> Result<KeyMetadata, KmsError> {
        let mut request = json!({
            "description": req.description,
            "keyUsage": req.key_usage.as_deref().unwrap_or("ENCRYPT_DECRYPT"),
            "keySpec": req.key_spec.as_deref().unwrap_or("SYMMETRIC_DEFAULT"),
            "origin": "AWS_KMS",
            "bypassPolicyLockoutSafetyCheck": req.bypass_policy_lockout_safety_check,
            "multiRegion": false,
        });
        if let Some(policy) = &req.policy {
            request["policy"] = json!(policy);
        }
        self.run(Operation::CreateKey, request, |audit| {
            if req.description.len() > MAX_DESCRIPTION_LEN {
                return Err(KmsError::Validation(format!(
                    "the description is longer than {MAX_DESCRIPTION_LEN} characters"
                )));
            }
            match req.key_spec.as_deref() {
                None | Some("SYMMETRIC_DEFAULT") => {}
                Some(other) if !KEY_SPECS.contains(&other) => {
                    return Err(not_in_enum(other, "keySpec", &KEY_SPECS))
                }
                Some(other) => {
                    return Err(KmsError::UnsupportedOperation(format!(
                        "KeySpec '{}' is not supported: atrest keys are SYMMETRIC_DEFAULT",
                        printable(other)
                    )))
                }
            }
            match req.key_usage.as_deref() {
                None | Some("ENCRYPT_DECRYPT") => {}
                Some(other) if !KEY_USAGES.contains(&other) => {
                    return Err(not_in_enum(other, "keyUsage", &KEY_USAGES))
                }
                Some(other) => {
                    return Err(KmsError::UnsupportedOperation(format!(
                        "KeyUsage '{}' is not supported: atrest keys are ENCRYPT_DECRYPT",
                        printable(other)
                    )))
                }
            }
            // The key belongs to the caller's account, whatever ATREST_ACCOUNT says.
            let id = Uuid::new_v4();
            let arn = self.key_arn(&id);
            let policy = match &req.policy {
                Some(text) => {
                    let parsed = KeyPolicy::parse(text)?;
                    self.check_lockout(&parsed, &arn, req.bypass_policy_lockout_safety_check)?;
                    text.clone()
                }
                None => default_policy(&self.caller.account, &self.caller.principal),
            };
            self.mutate(audit, |store, now, audit| {
                audit.resources.push(arn.clone());
                let ts = now.unix_timestamp();
                let mut key = KeyRecord {
                    account: self.caller.account.clone(),
                    description: req.description.clone(),
                    creation_date: ts,
                    state: KeyState::Enabled,
                    deletion_date: None,
                    pending_window_in_days: None,
                    policy,
                    rotation: None,
                    rotations: Vec::new(),
                    materials: Vec::new(),
                    tags: BTreeMap::new(),
                };
                add_material(&mut key, &id, ts, &self.shared.keystore)?;
                let meta = self.metadata(&id, &key);
                store.keys.insert(id, key);
                audit.response = Some(json!({ "keyMetadata": {
                    "keyId": meta.key_id,
                    "arn": meta.arn,
                    "aWSAccountId": meta.aws_account_id,
                    "creationDate": date(meta.creation_date),
                    "enabled": meta.enabled,
                    "keyState": meta.key_state.as_str(),
                    "description": meta.description,
                    "keyUsage": meta.key_usage,
                    "keySpec": meta.key_spec,
                    "keyManager": meta.key_manager,
                    "origin": meta.origin,
                }}));
                Ok(meta)
            })
        })
    }

    fn list_keys(&self, req: &ListRequest) -> Result<Page<KeyListEntry>, KmsError> {
        let mut request = json!({});
        if let Some(limit) = req.limit {
            request["limit"] = json!(limit);
        }
        if let Some(marker) = &req.marker {
            request["marker"] = json!(marker);
        }
        self.run(Operation::ListKeys, request, |_| {
            let store = self.fresh()?;
            let items = store
                .keys
                .iter()
                .filter(|(_, key)| key.account == self.caller.account)
                .map(|(id, _)| {
                    (
                        id.to_string(),
                        KeyListEntry {
                            key_id: id.to_string(),
                            key_arn: self.key_arn(id),
                        },
                    )
                });
            self.page(items, req)
        })
    }

    fn update_key_description(&self, key_id: &str, description: &str) -> Result<(), KmsError> {
        let request = json!({ "keyId": key_id, "description": description });
        if description.len() > MAX_DESCRIPTION_LEN {
            return self.run(Operation::UpdateKeyDescription, request, |_| {
                Err(KmsError::Validation(format!(
                    "the description is longer than {MAX_DESCRIPTION_LEN} characters"
                )))
            });
        }
        self.administer(
            Operation::UpdateKeyDescription,
            key_id,
            request,
            |key, _, _, _| {
                key.description = description.to_owned();
                Ok(())
            },
        )
    }

    fn enable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.administer(
            Operation::EnableKey,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, _, _| {
                key.state = KeyState::Enabled;
                Ok(())
            },
        )
    }

    fn disable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.administer(
            Operation::DisableKey,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, _, _| {
                key.state = KeyState::Disabled;
                Ok(())
            },
        )
    }

    fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> Result<ScheduledDeletion, KmsError> {
        let mut request = json!({ "keyId": key_id });
        if let Some(days) = pending_window_in_days {
            request["pendingWindowInDays"] = json!(days);
        }
        let days = pending_window_in_days.unwrap_or(DEFAULT_PENDING_DAYS);
        if !(MIN_PENDING_DAYS..=MAX_PENDING_DAYS).contains(&days) {
            return self.run(Operation::ScheduleKeyDeletion, request, |_| {
                Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed \
                     to satisfy constraint: Member must have value between {MIN_PENDING_DAYS} and \
                     {MAX_PENDING_DAYS}"
                )))
            });
        }
        self.run(Operation::ScheduleKeyDeletion, request, |audit| {
            self.mutate(audit, |store, now, audit| {
                let (id, arn) = self.resolve(store, key_id, Operation::ScheduleKeyDeletion)?;
                audit.resources.push(arn.clone());
                let key = store
                    .keys
                    .get_mut(&id)
                    .ok_or_else(|| KmsError::NotFound(format!("Key '{arn}' does not exist")))?;
                self.authorize(key, "kms:ScheduleKeyDeletion", &arn)?;
                Operation::ScheduleKeyDeletion.check_state(key.state, &arn)?;
                let deletion_date = now + Duration::days(i64::from(days));
                key.state = KeyState::PendingDeletion;
                key.deletion_date = Some(deletion_date.unix_timestamp());
                key.pending_window_in_days = Some(days);
                audit.response = Some(json!({
                    "keyId": arn,
                    "deletionDate": date(deletion_date),
                    "keyState": "PendingDeletion",
                    "pendingWindowInDays": days,
                }));
                Ok(ScheduledDeletion {
                    key_id: arn,
                    deletion_date: to_time(deletion_date.unix_timestamp()),
                    key_state: KeyState::PendingDeletion,
                    pending_window_in_days: days,
                })
            })
        })
    }

    fn cancel_key_deletion(&self, key_id: &str) -> Result<String, KmsError> {
        self.administer(
            Operation::CancelKeyDeletion,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, arn, _| {
                key.state = KeyState::Disabled;
                key.deletion_date = None;
                key.pending_window_in_days = None;
                Ok(arn.to_owned())
            },
        )
    }

    fn list_aliases(
        &self,
        key_id: Option<&str>,
        req: &ListRequest,
    ) -> Result<Page<AliasListEntry>, KmsError> {
        let mut request = json!({});
        if let Some(key_id) = key_id {
            request["keyId"] = json!(key_id);
        }
        if let Some(limit) = req.limit {
            request["limit"] = json!(limit);
        }
        if let Some(marker) = &req.marker {
            request["marker"] = json!(marker);
        }
        self.run(Operation::ListAliases, request, |audit| {
            let store = self.fresh()?;
            let only = match key_id {
                Some(key_id) => {
                    let (id, arn) = self.resolve(&store, key_id, Operation::ListAliases)?;
                    audit.resources.push(arn);
                    Some(id)
                }
                None => None,
            };
            let items = store
                .aliases_of(&self.caller.account)
                .into_iter()
                .flatten()
                .filter(|(_, a)| only.is_none_or(|id| a.target_key_id == id))
                .map(|(name, a)| (name.clone(), self.alias_entry(name, a)));
            self.page(items, req)
        })
    }

    fn create_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError> {
        let request = json!({ "aliasName": alias_name, "targetKeyId": target_key_id });
        self.run(Operation::CreateAlias, request, |audit| {
            validate_alias_name(alias_name)?;
            self.mutate(audit, |store, now, audit| {
                let (id, arn) = self.alias_target(store, target_key_id, Operation::CreateAlias)?;
                audit.resources.push(arn.clone());
                let key = store
                    .keys
                    .get(&id)
                    .ok_or_else(|| KmsError::NotFound(format!("Key '{arn}' does not exist")))?;
                self.authorize(key, &Operation::CreateAlias.action(), &arn)?;
                Operation::CreateAlias.check_state(key.state, &arn)?;
                let namespace = store
                    .aliases
                    .entry(self.caller.account.clone())
                    .or_default();
                if namespace.contains_key(alias_name) {
                    return Err(KmsError::AlreadyExists(format!(
                        "An alias with the name {} already exists",
                        self.alias_arn(alias_name)
                    )));
                }
                let ts = now.unix_timestamp();
                namespace.insert(
                    alias_name.to_owned(),
                    AliasRecord {
                        target_key_id: id,
                        creation_date: ts,
                        last_updated_date: ts,
                    },
                );
                Ok(())
            })
        })
    }

    fn update_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError> {
        let request = json!({ "aliasName": alias_name, "targetKeyId": target_key_id });
        self.run(Operation::UpdateAlias, request, |audit| {
            validate_alias_name(alias_name)?;
            self.mutate(audit, |store, now, audit| {
                let alias_not_found = || self.alias_not_found(alias_name);
                let old = self.aliased_key(store, alias_name)?;
                let (new, new_arn) =
                    self.alias_target(store, target_key_id, Operation::UpdateAlias)?;
                let old_arn = self.key_arn(&old);
                audit.resources.push(old_arn.clone());
                if new != old {
                    audit.resources.push(new_arn.clone());
                }
                let old_key = store.keys.get(&old).ok_or_else(alias_not_found)?;
                self.authorize(old_key, &Operation::UpdateAlias.action(), &old_arn)?;
                let new_key = store
                    .keys
                    .get(&new)
                    .ok_or_else(|| KmsError::NotFound(format!("Key '{new_arn}' does not exist")))?;
                self.authorize(new_key, &Operation::UpdateAlias.action(), &new_arn)?;
                Operation::UpdateAlias.check_state(new_key.state, &new_arn)?;
                let alias = store
                    .aliases
                    .get_mut(&self.caller.account)
                    .and_then(|aliases| aliases.get_mut(alias_name))
                    .ok_or_else(alias_not_found)?;
                alias.target_key_id = new;
                alias.last_updated_date = now.unix_timestamp();
                Ok(())
            })
        })
    }

    fn delete_alias(&self, alias_name: &str) -> Result<(), KmsError> {
        let request = json!({ "aliasName": alias_name });
        self.run(Operation::DeleteAlias, request, |audit| {
            validate_alias_name(alias_name)?;
            self.mutate(audit, |store, _, audit| {
                let target = self.aliased_key(store, alias_name)?;
                let arn = self.key_arn(&target);
                audit.resources.push(arn.clone());
                let key = store
                    .keys
                    .get(&target)
                    .ok_or_else(|| self.alias_not_found(alias_name))?;
                self.authorize(key, &Operation::DeleteAlias.action(), &arn)?;
                Operation::DeleteAlias.check_state(key.state, &arn)?;
                if let Some(aliases) = store.aliases.get_mut(&self.caller.account) {
                    aliases.remove(alias_name);
                    if aliases.is_empty() {
                        store.aliases.remove(&self.caller.account);
                    }
                }
                Ok(())
            })
        })
    }

    fn enable_key_rotation(
        &self,
        key_id: &str,
        rotation_period_in_days: Option<u32>,
    ) -> Result<(), KmsError> {
        let mut request = json!({ "keyId": key_id });
        if let Some(days) = rotation_period_in_days {
            request["rotationPeriodInDays"] = json!(days);
        }
        let days = rotation_period_in_days.unwrap_or(DEFAULT_ROTATION_DAYS);
        if !(MIN_ROTATION_DAYS..=MAX_ROTATION_DAYS).contains(&days) {
            return self.run(Operation::EnableKeyRotation, request, |_| {
                Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{days}' at 'rotationPeriodInDays' failed \
                     to satisfy constraint: Member must have value between {MIN_ROTATION_DAYS} and \
                     {MAX_ROTATION_DAYS}"
                )))
            });
        }
        self.administer(
            Operation::EnableKeyRotation,
            key_id,
            request,
            |key, _, _, now| {
                key.rotation = Some(RotationSchedule {
                    period_in_days: days,
                    next_rotation_date: (now + Duration::days(i64::from(days))).unix_timestamp(),
                });
                Ok(())
            },
        )
    }

    fn disable_key_rotation(&self, key_id: &str) -> Result<(), KmsError> {
        self.administer(
            Operation::DisableKeyRotation,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, _, _| {
                key.rotation = None;
                Ok(())
            },
        )
    }

    fn get_key_rotation_status(&self, key_id: &str) -> Result<RotationStatus, KmsError> {
        self.inspect(
            Operation::GetKeyRotationStatus,
            key_id,
            json!({ "keyId": key_id }),
            |key, _, arn| {
                Ok(RotationStatus {
                    key_id: arn.to_owned(),
                    key_rotation_enabled: key.rotation.is_some(),
                    rotation_period_in_days: key.rotation.as_ref().map(|r| r.period_in_days),
                    next_rotation_date: key
                        .rotation
                        .as_ref()
                        .map(|r| to_time(r.next_rotation_date)),
                    // An on-demand rotation completes within RotateKeyOnDemand, so none
                    // is ever in progress: AWS omits the field when none is.
                    on_demand_rotation_start_date: None,
                })
            },
        )
    }

    fn rotate_key_on_demand(&self, key_id: &str) -> Result<String, KmsError> {
        self.administer(
            Operation::RotateKeyOnDemand,
            key_id,
            json!({ "keyId": key_id }),
            |key, id, arn, now| {
                let done = key
                    .rotations
                    .iter()
                    .filter(|r| r.rotation_type == RotationType::OnDemand)
                    .count();
                if done >= MAX_ON_DEMAND_ROTATIONS {
                    return Err(KmsError::LimitExceeded(format!(
                        "{arn} has already been rotated on demand {MAX_ON_DEMAND_ROTATIONS} times"
                    )));
                }
                let ts = now.unix_timestamp();
                add_material(key, id, ts, &self.shared.keystore)?;
                key.rotations.push(RotationRecord {
                    date: ts,
                    rotation_type: RotationType::OnDemand,
                });
                Ok(arn.to_owned())
            },
        )
    }

    fn list_key_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, KmsError> {
        self.inspect(
            Operation::ListKeyRotations,
            key_id,
            json!({ "keyId": key_id }),
            |key, id, arn| {
                // Rotation `i` made material version `i + 1` (version 0 is the key's first).
                Ok(key
                    .rotations
                    .iter()
                    .zip(1u32..)
                    .map(|(r, version)| RotationEntry {
                        key_id: arn.to_owned(),
                        rotation_date: to_time(r.date),
                        rotation_type: r.rotation_type,
                        key_material_id: Some(key_material_id(id, version)),
                    })
                    .collect())
            },
        )
    }

    fn get_key_policy(&self, key_id: &str, policy_name: &str) -> Result<String, KmsError> {
        let request = json!({ "keyId": key_id, "policyName": policy_name });
        self.inspect(Operation::GetKeyPolicy, key_id, request, |key, _, _| {
            check_policy_name(policy_name)?;
            Ok(key.policy.clone())
        })
    }

    fn put_key_policy(
        &self,
        key_id: &str,
        policy_name: &str,
        policy: &str,
        bypass_policy_lockout_safety_check: bool,
    ) -> Result<(), KmsError> {
        let request = json!({
            "keyId": key_id,
            "policyName": policy_name,
            "policy": policy,
            "bypassPolicyLockoutSafetyCheck": bypass_policy_lockout_safety_check,
        });
        self.administer(
            Operation::PutKeyPolicy,
            key_id,
            request,
            |key, _, arn, _| {
                check_policy_name(policy_name)?;
                let parsed = KeyPolicy::parse(policy)?;
                self.check_lockout(&parsed, arn, bypass_policy_lockout_safety_check)?;
                key.policy = policy.to_owned();
                Ok(())
            },
        )
    }

    fn tag_resource(&self, key_id: &str, tags: &[Tag]) -> Result<(), KmsError> {
        let request = json!({ "keyId": key_id, "tags": tags });
        self.administer(Operation::TagResource, key_id, request, |key, _, arn, _| {
            validate_tags(tags)?;
            for tag in tags {
                key.tags.insert(tag.tag_key.clone(), tag.tag_value.clone());
            }
            if key.tags.len() > MAX_TAGS {
                return Err(KmsError::LimitExceeded(format!(
                    "{arn} would have {} tags; a key has at most {MAX_TAGS}",
                    key.tags.len()
                )));
            }
            Ok(())
        })
    }

    fn untag_resource(&self, key_id: &str, tag_keys: &[String]) -> Result<(), KmsError> {
        let request = json!({ "keyId": key_id, "tagKeys": tag_keys });
        self.administer(Operation::UntagResource, key_id, request, |key, _, _, _| {
            for (position, tag_key) in tag_keys.iter().enumerate() {
                check_tag_key(tag_key, &format!("tagKeys.{}.member", position + 1))?;
                key.tags.remove(tag_key);
            }
            Ok(())
        })
    }

    fn list_resource_tags(&self, key_id: &str) -> Result<Vec<Tag>, KmsError> {
        let request = json!({ "keyId": key_id });
        self.inspect(Operation::ListResourceTags, key_id, request, |key, _, _| {
            Ok(key
                .tags
                .iter()
                .map(|(tag_key, tag_value)| Tag {
                    tag_key: tag_key.clone(),
                    tag_value: tag_value.clone(),
                })
                .collect())
        })
    }

    /// GenerateRandom: `number_of_bytes` (1..=1024, required) random bytes. Audited
    /// like every call; the bytes are not in the record.
    fn generate_random(&self, number_of_bytes: Option<u32>) -> Result<SecretBytes, KmsError> {
        let request = json!({ "numberOfBytes": number_of_bytes });
        self.run(
            Operation::GenerateRandom,
            request,
            |_| match number_of_bytes {
                Some(n @ 1..=MAX_RANDOM_BYTES) => Ok(SecretBytes::random(n as usize)),
                Some(n) => Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy \
                 constraint: Member must have value between 1 and {MAX_RANDOM_BYTES}"
            ))),
                None => Err(KmsError::Validation(
                    "1 validation error detected: Value null at 'numberOfBytes' failed to satisfy \
                 constraint: Member must not be null"
                        .into(),
                )),
            },
        )
    }

    /// ListKeyPolicies: the names of a key's policies, always `["default"]`.
    fn list_key_policies(&self, key_id: &str) -> Result<Vec<String>, KmsError> {
        self.inspect(
            Operation::ListKeyPolicies,
            key_id,
            json!({ "keyId": key_id }),
            |_, _, _| Ok(vec!["default".to_owned()]),
        )
    }
}

/// AWS's rules for tags: at most 50 in one request, each tag key once, keys of 1 to
/// 128 characters not starting with `aws:` (in any case), values of at most 256
/// characters. Lengths are ValidationException, the rest TagException, as AWS.
pub fn validate_tags(tags: &[Tag]) -> Result<(), KmsError> {
    if tags.len() > MAX_TAGS {
        return Err(KmsError::Tag(format!(
            "Too many tags: {} given, a key has at most {MAX_TAGS}",
            tags.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (position, tag) in tags.iter().enumerate() {
        let member = position + 1;
        check_tag_key(&tag.tag_key, &format!("tags.{member}.member.tagKey"))?;
        if tag.tag_value.chars().count() > MAX_TAG_VALUE_LEN {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{}' at 'tags.{member}.member.tagValue' \
                 failed to satisfy constraint: Member must have length less than or equal to \
                 {MAX_TAG_VALUE_LEN}",
                printable(&tag.tag_value)
            )));
        }
        if !seen.insert(tag.tag_key.as_str()) {
            return Err(KmsError::Tag(format!(
                "Duplicate tag keys: '{}' is given more than once",
                printable(&tag.tag_key)
            )));
        }
    }
    Ok(())
}

fn check_tag_key(tag_key: &str, field: &str) -> Result<(), KmsError> {
    let len = tag_key.chars().count();
    if len == 0 || len > MAX_TAG_KEY_LEN {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{}' at '{field}' failed to satisfy constraint: \
             Member must have length between 1 and {MAX_TAG_KEY_LEN}",
            printable(tag_key)
        )));
    }
    if tag_key.len() >= 4 && tag_key.as_bytes()[..4].eq_ignore_ascii_case(b"aws:") {
        return Err(KmsError::Tag(format!(
            "Tags beginning with aws: are reserved ('{}')",
            printable(tag_key)
        )));
    }
    Ok(())
}

/// AWS's wording for a value outside an enum.
fn not_in_enum(value: &str, field: &str, allowed: &[&str]) -> KmsError {
    KmsError::Validation(format!(
        "1 validation error detected: Value '{}' at '{field}' failed to satisfy constraint: \
         Member must satisfy enum value set: [{}]",
        printable(value),
        allowed.join(", ")
    ))
}

fn check_policy_name(name: &str) -> Result<(), KmsError> {
    if name == "default" {
        Ok(())
    } else {
        Err(KmsError::NotFound(format!(
            "Policy '{}' does not exist: a key's only policy is named 'default'",
            printable(name)
        )))
    }
}
