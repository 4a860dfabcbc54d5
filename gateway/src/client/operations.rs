//! [`RemoteKms`]'s operations: each [`KeyService`] call as its KMS JSON request and
//! the answer read back into atrest's types.

use crypto_core::kms::wire::{
    self, decode_blob, encode_blob, encode_secret, CiphertextResponse, KeyIdResponse,
    KeyMetadataResponse, KeyPolicyResponse, ListAliasesResponse, ListKeyPoliciesResponse,
    ListKeyRotationsResponse, ListKeysResponse, ListResourceTagsResponse, PlaintextResponse,
    ReEncryptResponse, RotationStatusResponse, ScheduleKeyDeletionResponse, WireAlias,
    WireKeyMetadata, WireRotation,
};
use crypto_core::kms::{
    AliasListEntry, CreateKeyRequest, DataKeySpec, DecryptRequest, DecryptedData,
    EncryptionContext, GenerateDataKeyRequest, GeneratedDataKey, KeyListEntry, KeyMetadata,
    KeyService, KmsError, ListRequest, Operation, Page, ReEncryptRequest, ReEncrypted,
    RotationEntry, RotationStatus, ScheduledDeletion, Tag, WrappedData,
};
use crypto_core::secret::SecretBytes;
use time::OffsetDateTime;
use zeroize::{Zeroize, Zeroizing};

use super::RemoteKms;

impl RemoteKms {
    fn data_key_request(req: &GenerateDataKeyRequest) -> Result<wire::DataKeyRequest, KmsError> {
        req.spec.byte_len()?;
        let (key_spec, number_of_bytes) = match req.spec {
            DataKeySpec::Aes256 => (Some("AES_256".to_owned()), None),
            DataKeySpec::Aes128 => (Some("AES_128".to_owned()), None),
            DataKeySpec::Bytes(n) => (None, Some(u32::from(n))),
        };
        Ok(wire::DataKeyRequest {
            key_id: req.key_id.clone(),
            key_spec,
            number_of_bytes,
            encryption_context: context(&req.encryption_context),
            dry_run: None,
        })
    }
}

fn context(context: &EncryptionContext) -> Option<EncryptionContext> {
    (!context.is_empty()).then(|| context.clone())
}

fn blob(field: &str, text: &str) -> Result<Vec<u8>, KmsError> {
    decode_blob(field, text)
        .map(|bytes| bytes.to_vec())
        .map_err(|e| KmsError::Internal(format!("the key service sent {e}")))
}

/// A plaintext field decoded straight into a secret; the base64 text is wiped.
fn secret(mut text: String) -> Result<SecretBytes, KmsError> {
    let decoded = decode_blob("Plaintext", &text);
    text.zeroize();
    decoded
        .map(SecretBytes::from_zeroizing)
        .map_err(|e| KmsError::Internal(format!("the key service sent {e}")))
}

/// CreateKey's and DescribeKey's key, as atrest models it.
fn metadata(answer: KeyMetadataResponse<WireKeyMetadata>) -> Result<KeyMetadata, KmsError> {
    answer.key_metadata.into_metadata()
}

/// A plaintext answer's key id, which every answer but GenerateRandom's carries.
fn answer_key_id(answer: &mut PlaintextResponse) -> Result<String, KmsError> {
    answer
        .key_id
        .take()
        .ok_or_else(|| KmsError::Internal("the key service sent no KeyId".into()))
}

fn list(req: &ListRequest, key_id: Option<&str>) -> wire::ListRequest {
    wire::ListRequest {
        key_id: key_id.map(str::to_owned),
        limit: req.limit,
        marker: req.marker.clone(),
    }
}

impl KeyService for RemoteKms {
    fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, KmsError> {
        let request = wire::KeyIdRequest {
            key_id: key_id.to_owned(),
        };
        metadata(self.call(Operation::DescribeKey, &request)?)
    }

    fn generate_data_key(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<GeneratedDataKey, KmsError> {
        let op = Operation::GenerateDataKey;
        let body = serde_json::to_vec(&Self::data_key_request(req)?)
            .map_err(|e| KmsError::Internal(format!("cannot encode {}: {e}", op.name())))?;
        let mut answer: PlaintextResponse = self.parse(op, &self.call_raw(op, &body)?)?;
        let key_id = answer_key_id(&mut answer)?;
        let ciphertext = answer
            .ciphertext_blob
            .as_deref()
            .ok_or_else(|| KmsError::Internal("the key service sent no CiphertextBlob".into()))?;
        Ok(GeneratedDataKey {
            ciphertext_blob: blob("CiphertextBlob", ciphertext)?,
            key_id,
            plaintext: secret(answer.plaintext)?,
        })
    }

    fn generate_data_key_without_plaintext(
        &self,
        req: &GenerateDataKeyRequest,
    ) -> Result<WrappedData, KmsError> {
        let answer: CiphertextResponse = self.call(
            Operation::GenerateDataKeyWithoutPlaintext,
            &Self::data_key_request(req)?,
        )?;
        Ok(WrappedData {
            ciphertext_blob: blob("CiphertextBlob", &answer.ciphertext_blob)?,
            key_id: answer.key_id,
        })
    }

    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        encryption_context: &EncryptionContext,
    ) -> Result<WrappedData, KmsError> {
        let op = Operation::Encrypt;
        let request = wire::EncryptRequest {
            key_id: key_id.to_owned(),
            plaintext: encode_secret(plaintext),
            encryption_context: context(encryption_context),
            encryption_algorithm: None,
            dry_run: None,
        };
        // The request holds the plaintext: encode it into a buffer that is wiped.
        let mut body = Zeroizing::new(Vec::with_capacity(request.plaintext.len() + 512));
        serde_json::to_writer(&mut *body, &request)
            .map_err(|e| KmsError::Internal(format!("cannot encode {}: {e}", op.name())))?;
        let answer: CiphertextResponse = self.parse(op, &self.call_raw(op, &body)?)?;
        Ok(WrappedData {
            ciphertext_blob: blob("CiphertextBlob", &answer.ciphertext_blob)?,
            key_id: answer.key_id,
        })
    }

    fn decrypt(&self, req: &DecryptRequest) -> Result<DecryptedData, KmsError> {
        let op = Operation::Decrypt;
        let request = wire::DecryptRequest {
            ciphertext_blob: encode_blob(&req.ciphertext_blob),
            encryption_context: context(&req.encryption_context),
            key_id: req.key_id.clone(),
            encryption_algorithm: None,
            dry_run: None,
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| KmsError::Internal(format!("cannot encode {}: {e}", op.name())))?;
        let mut answer: PlaintextResponse = self.parse(op, &self.call_raw(op, &body)?)?;
        Ok(DecryptedData {
            key_id: answer_key_id(&mut answer)?,
            plaintext: secret(answer.plaintext)?,
            key_material_id: answer.key_material_id,
        })
    }

    fn re_encrypt(&self, req: &ReEncryptRequest) -> Result<ReEncrypted, KmsError> {
        let request = wire::ReEncryptRequest {
            ciphertext_blob: encode_blob(&req.ciphertext_blob),
            source_encryption_context: context(&req.source_encryption_context),
            source_key_id: req.source_key_id.clone(),
            destination_key_id: req.destination_key_id.clone(),
            destination_encryption_context: context(&req.destination_encryption_context),
            source_encryption_algorithm: None,
            destination_encryption_algorithm: None,
            dry_run: None,
        };
        let answer: ReEncryptResponse = self.call(Operation::ReEncrypt, &request)?;
        Ok(ReEncrypted {
            source_key_id: answer.source_key_id,
            key_id: answer.key_id,
            ciphertext_blob: blob("CiphertextBlob", &answer.ciphertext_blob)?,
            source_key_material_id: answer.source_key_material_id,
            destination_key_material_id: answer.destination_key_material_id,
        })
    }

    fn create_key(&self, req: &CreateKeyRequest) -> Result<KeyMetadata, KmsError> {
        let request = wire::CreateKeyRequest {
            description: Some(req.description.clone()),
            policy: req.policy.clone(),
            bypass_policy_lockout_safety_check: req
                .bypass_policy_lockout_safety_check
                .then_some(true),
            key_spec: req.key_spec.clone(),
            key_usage: req.key_usage.clone(),
            ..wire::CreateKeyRequest::default()
        };
        metadata(self.call(Operation::CreateKey, &request)?)
    }

    fn list_keys(&self, req: &ListRequest) -> Result<Page<KeyListEntry>, KmsError> {
        let answer: ListKeysResponse<KeyListEntry> =
            self.call(Operation::ListKeys, &list(req, None))?;
        Ok(Page {
            next_marker: answer.next_page(),
            items: answer.keys,
        })
    }

    fn update_key_description(&self, key_id: &str, description: &str) -> Result<(), KmsError> {
        self.unit(
            Operation::UpdateKeyDescription,
            &wire::UpdateKeyDescriptionRequest {
                key_id: key_id.to_owned(),
                description: description.to_owned(),
            },
        )
    }

    fn enable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.unit(Operation::EnableKey, &key_request(key_id))
    }

    fn disable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.unit(Operation::DisableKey, &key_request(key_id))
    }

    fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> Result<ScheduledDeletion, KmsError> {
        let answer: ScheduleKeyDeletionResponse = self.call(
            Operation::ScheduleKeyDeletion,
            &wire::ScheduleKeyDeletionRequest {
                key_id: key_id.to_owned(),
                pending_window_in_days,
            },
        )?;
        let key_state = match answer.key_state.as_deref() {
            Some(text) => wire::parse_key_state(text)?,
            None => crypto_core::kms::KeyState::PendingDeletion,
        };
        Ok(ScheduledDeletion {
            key_id: answer.key_id,
            deletion_date: answer
                .deletion_date
                .ok_or_else(|| KmsError::Internal("the key service sent no DeletionDate".into()))?,
            key_state,
            pending_window_in_days: answer
                .pending_window_in_days
                .or(pending_window_in_days)
                .unwrap_or(30),
        })
    }

    fn cancel_key_deletion(&self, key_id: &str) -> Result<String, KmsError> {
        let answer: KeyIdResponse =
            self.call(Operation::CancelKeyDeletion, &key_request(key_id))?;
        Ok(answer.key_id)
    }

    fn list_aliases(
        &self,
        key_id: Option<&str>,
        req: &ListRequest,
    ) -> Result<Page<AliasListEntry>, KmsError> {
        let answer: ListAliasesResponse<WireAlias> =
            self.call(Operation::ListAliases, &list(req, key_id))?;
        let next_marker = answer.next_page();
        // Aliases without a target (AWS-managed ones never used) name no key to list.
        let items = answer
            .aliases
            .into_iter()
            .filter_map(|alias| {
                let target_key_id = alias.target_key_id?;
                let created = alias.creation_date.unwrap_or(OffsetDateTime::UNIX_EPOCH);
                Some(AliasListEntry {
                    alias_name: alias.alias_name,
                    alias_arn: alias.alias_arn,
                    target_key_id,
                    creation_date: created,
                    last_updated_date: alias.last_updated_date.unwrap_or(created),
                })
            })
            .collect();
        Ok(Page { items, next_marker })
    }

    fn create_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError> {
        self.unit(
            Operation::CreateAlias,
            &wire::AliasRequest {
                alias_name: alias_name.to_owned(),
                target_key_id: target_key_id.to_owned(),
            },
        )
    }

    fn update_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), KmsError> {
        self.unit(
            Operation::UpdateAlias,
            &wire::AliasRequest {
                alias_name: alias_name.to_owned(),
                target_key_id: target_key_id.to_owned(),
            },
        )
    }

    fn delete_alias(&self, alias_name: &str) -> Result<(), KmsError> {
        self.unit(
            Operation::DeleteAlias,
            &wire::DeleteAliasRequest {
                alias_name: alias_name.to_owned(),
            },
        )
    }

    fn enable_key_rotation(
        &self,
        key_id: &str,
        rotation_period_in_days: Option<u32>,
    ) -> Result<(), KmsError> {
        self.unit(
            Operation::EnableKeyRotation,
            &wire::EnableKeyRotationRequest {
                key_id: key_id.to_owned(),
                rotation_period_in_days,
            },
        )
    }

    fn disable_key_rotation(&self, key_id: &str) -> Result<(), KmsError> {
        self.unit(Operation::DisableKeyRotation, &key_request(key_id))
    }

    fn get_key_rotation_status(&self, key_id: &str) -> Result<RotationStatus, KmsError> {
        let answer: RotationStatusResponse =
            self.call(Operation::GetKeyRotationStatus, &key_request(key_id))?;
        Ok(RotationStatus {
            key_id: answer.key_id.unwrap_or_else(|| key_id.to_owned()),
            key_rotation_enabled: answer.key_rotation_enabled,
            rotation_period_in_days: answer.rotation_period_in_days,
            next_rotation_date: answer.next_rotation_date,
            on_demand_rotation_start_date: answer.on_demand_rotation_start_date,
        })
    }

    fn rotate_key_on_demand(&self, key_id: &str) -> Result<String, KmsError> {
        let answer: KeyIdResponse =
            self.call(Operation::RotateKeyOnDemand, &key_request(key_id))?;
        Ok(answer.key_id)
    }

    fn list_key_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, KmsError> {
        let answers = self.every_page(
            Operation::ListKeyRotations,
            key_id,
            1000,
            ListKeyRotationsResponse::<WireRotation>::next_page,
        )?;
        let mut rotations = Vec::new();
        for rotation in answers.into_iter().flat_map(|answer| answer.rotations) {
            rotations.push(RotationEntry {
                key_id: rotation.key_id,
                rotation_date: rotation.rotation_date.ok_or_else(|| {
                    KmsError::Internal("the key service sent a rotation without a date".into())
                })?,
                rotation_type: rotation.rotation_type,
                key_material_id: rotation.key_material_id,
            });
        }
        Ok(rotations)
    }

    fn get_key_policy(&self, key_id: &str, policy_name: &str) -> Result<String, KmsError> {
        let answer: KeyPolicyResponse = self.call(
            Operation::GetKeyPolicy,
            &wire::KeyPolicyRequest {
                key_id: key_id.to_owned(),
                policy_name: Some(policy_name.to_owned()),
                ..wire::KeyPolicyRequest::default()
            },
        )?;
        Ok(answer.policy)
    }

    fn put_key_policy(
        &self,
        key_id: &str,
        policy_name: &str,
        policy: &str,
        bypass_policy_lockout_safety_check: bool,
    ) -> Result<(), KmsError> {
        self.unit(
            Operation::PutKeyPolicy,
            &wire::KeyPolicyRequest {
                key_id: key_id.to_owned(),
                policy_name: Some(policy_name.to_owned()),
                policy: Some(policy.to_owned()),
                bypass_policy_lockout_safety_check: bypass_policy_lockout_safety_check
                    .then_some(true),
            },
        )
    }

    fn tag_resource(&self, key_id: &str, tags: &[Tag]) -> Result<(), KmsError> {
        self.unit(
            Operation::TagResource,
            &wire::TagResourceRequest {
                key_id: key_id.to_owned(),
                tags: tags.to_vec(),
            },
        )
    }

    fn untag_resource(&self, key_id: &str, tag_keys: &[String]) -> Result<(), KmsError> {
        self.unit(
            Operation::UntagResource,
            &wire::UntagResourceRequest {
                key_id: key_id.to_owned(),
                tag_keys: tag_keys.to_vec(),
            },
        )
    }

    fn list_resource_tags(&self, key_id: &str) -> Result<Vec<Tag>, KmsError> {
        let answers = self.every_page(
            Operation::ListResourceTags,
            key_id,
            50,
            ListResourceTagsResponse::<Tag>::next_page,
        )?;
        Ok(answers.into_iter().flat_map(|answer| answer.tags).collect())
    }

    fn generate_random(&self, number_of_bytes: Option<u32>) -> Result<SecretBytes, KmsError> {
        let op = Operation::GenerateRandom;
        let request = wire::GenerateRandomRequest {
            number_of_bytes,
            ..Default::default()
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| KmsError::Internal(format!("cannot encode {}: {e}", op.name())))?;
        let answer: PlaintextResponse = self.parse(op, &self.call_raw(op, &body)?)?;
        secret(answer.plaintext)
    }

    fn list_key_policies(&self, key_id: &str) -> Result<Vec<String>, KmsError> {
        let answers = self.every_page(
            Operation::ListKeyPolicies,
            key_id,
            1000,
            ListKeyPoliciesResponse::<String>::next_page,
        )?;
        Ok(answers
            .into_iter()
            .flat_map(|answer| answer.policy_names)
            .collect())
    }
}

fn key_request(key_id: &str) -> wire::KeyIdRequest {
    wire::KeyIdRequest {
        key_id: key_id.to_owned(),
    }
}
