//! Key policies (Get/PutKeyPolicy, ListKeyPolicies, the lockout check) and tags
//! (Tag/UntagResource, ListResourceTags) with their validation.

use serde_json::json;

use super::LocalKms;
use crate::kms::ident::printable;
use crate::kms::operation::Operation;
use crate::kms::policy::{Decision, KeyPolicy};
use crate::kms::{KmsError, Tag};

/// AWS's tag limits: 50 tags per key, keys of 1-128 and values of 0-256 characters.
const MAX_TAGS: usize = 50;
const MAX_TAG_KEY_LEN: usize = 128;
const MAX_TAG_VALUE_LEN: usize = 256;

impl LocalKms {
    /// Refuses a policy the caller could not change afterwards (AWS's lockout check).
    pub(super) fn check_lockout(
        &self,
        policy: &KeyPolicy,
        arn: &str,
        bypass: bool,
    ) -> Result<(), KmsError> {
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

    pub(super) fn get_key_policy(
        &self,
        key_id: &str,
        policy_name: &str,
    ) -> Result<String, KmsError> {
        let request = json!({ "keyId": key_id, "policyName": policy_name });
        self.inspect(Operation::GetKeyPolicy, key_id, request, |key, _, _| {
            check_policy_name(policy_name)?;
            Ok(key.policy.clone())
        })
    }

    pub(super) fn put_key_policy(
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

    pub(super) fn list_key_policies(&self, key_id: &str) -> Result<Vec<String>, KmsError> {
        self.inspect(
            Operation::ListKeyPolicies,
            key_id,
            json!({ "keyId": key_id }),
            |_, _, _| Ok(vec!["default".to_owned()]),
        )
    }

    pub(super) fn tag_resource(&self, key_id: &str, tags: &[Tag]) -> Result<(), KmsError> {
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

    pub(super) fn untag_resource(&self, key_id: &str, tag_keys: &[String]) -> Result<(), KmsError> {
        let request = json!({ "keyId": key_id, "tagKeys": tag_keys });
        self.administer(Operation::UntagResource, key_id, request, |key, _, _, _| {
            for (position, tag_key) in tag_keys.iter().enumerate() {
                check_tag_key(tag_key, &format!("tagKeys.{}.member", position + 1))?;
                key.tags.remove(tag_key);
            }
            Ok(())
        })
    }

    pub(super) fn list_resource_tags(&self, key_id: &str) -> Result<Vec<Tag>, KmsError> {
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
pub(super) fn not_in_enum(value: &str, field: &str, allowed: &[&str]) -> KmsError {
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
