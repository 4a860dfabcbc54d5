//! What every call goes through: reading and updating the keystore, resolving and
//! authorizing the key, and the call's trail record.

use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Audit, LocalKms};
use crate::kms::ident::{printable, KeyRef};
use crate::kms::keystore::{KeyRecord, Maintenance, StoreData};
use crate::kms::operation::{ImportOperation, Operation};
use crate::kms::policy::{Decision, KeyPolicy};
use crate::kms::{KmsError, ListRequest, Page};
use crate::trail::{ApiCall, RefusedRequest, RequestSource};

/// Who the trail names for what the key service does on its own (deletion, rotation).
const SERVICE_PRINCIPAL: &str = "kms.amazonaws.com";

impl LocalKms {
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

    /// Records an event that is not a key service call but belongs in the same trail
    /// (a console sign-in), as coming from `source`. Durable before it returns.
    pub fn record_event(&self, call: &ApiCall, source: &RequestSource) -> Result<(), KmsError> {
        self.append_from(call, source)
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
    pub(super) fn run<R>(
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
    pub(super) fn fresh(&self) -> Result<StoreData, KmsError> {
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
    pub(super) fn mutate<R>(
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
    pub(super) fn resolve(
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

    pub(super) fn authorize(
        &self,
        key: &KeyRecord,
        action: &str,
        arn: &str,
    ) -> Result<(), KmsError> {
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
    pub(super) fn usable_key<'s>(
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
    pub(super) fn administer<R>(
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
    pub(super) fn inspect<R>(
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

    pub(super) fn page<T>(
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
}
