//! Aliases (List/Create/Update/DeleteAlias) and the AWS managed keys named by `alias/aws/*`.

use std::collections::BTreeMap;

use serde_json::json;
use uuid::Uuid;

use super::LocalKms;
use crate::kms::ident::{alias_arn, printable, validate_alias_name, KeyRef};
use crate::kms::keystore::{add_material, to_time, AliasRecord, KeyRecord, StoreData};
use crate::kms::operation::Operation;
use crate::kms::{AliasListEntry, KeyState, KmsError, ListRequest, Page};

/// The alias of the AWS managed key that S3 encrypts with for SSE-S3 (and for SSE-KMS
/// without a key id), as AWS names it.
pub const AWS_MANAGED_S3_ALIAS: &str = "alias/aws/s3";

impl LocalKms {
    /// The ARN of the caller's alias `name`.
    pub(super) fn alias_arn(&self, name: &str) -> String {
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

    fn alias_entry(&self, name: &str, alias: &AliasRecord) -> AliasListEntry {
        AliasListEntry {
            alias_name: name.to_owned(),
            alias_arn: self.alias_arn(name),
            target_key_id: alias.target_key_id.to_string(),
            creation_date: to_time(alias.creation_date),
            last_updated_date: to_time(alias.last_updated_date),
        }
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

    pub(super) fn list_aliases(
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

    pub(super) fn create_alias(
        &self,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), KmsError> {
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

    pub(super) fn update_alias(
        &self,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), KmsError> {
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

    pub(super) fn delete_alias(&self, alias_name: &str) -> Result<(), KmsError> {
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
}

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
