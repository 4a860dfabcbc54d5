//! The POST policy document of a browser upload: its expiration and conditions
//! (`eq`, `starts-with`, `content-length-range`), decoded from the form's base64
//! `policy` field and checked against every other field.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{invalid_policy, policy_failed};
use crate::error::GatewayError;

/// A condition of the policy's `conditions`.
#[derive(Debug, PartialEq)]
pub(super) enum Rule {
    Eq(String, String),
    StartsWith(String, String),
    Length(u64, u64),
}

impl Rule {
    pub(super) fn describe(&self) -> String {
        match self {
            Rule::Eq(field, value) => format!("[\"eq\", \"${field}\", \"{value}\"]"),
            Rule::StartsWith(field, prefix) => {
                format!("[\"starts-with\", \"${field}\", \"{prefix}\"]")
            }
            Rule::Length(min, max) => format!("[\"content-length-range\", {min}, {max}]"),
        }
    }
}

/// The decoded policy: its expiration and conditions.
#[derive(Debug)]
pub(super) struct Policy {
    pub(super) expiration: OffsetDateTime,
    pub(super) rules: Vec<Rule>,
}

pub(super) fn number(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn field_name(value: &serde_json::Value) -> Result<String, GatewayError> {
    value
        .as_str()
        .and_then(|name| name.strip_prefix('$'))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| invalid_policy("a condition names its field as \"$field\""))
}

impl Policy {
    pub(super) fn parse(base64_policy: &str) -> Result<Policy, GatewayError> {
        let json = BASE64
            .decode(base64_policy.trim())
            .map_err(|_| invalid_policy("the policy is not base64"))?;
        let doc: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|_| invalid_policy("the policy is not a JSON document"))?;
        let object = doc
            .as_object()
            .ok_or_else(|| invalid_policy("the policy is not a JSON object"))?;
        if let Some(extra) = object
            .keys()
            .find(|k| *k != "expiration" && *k != "conditions")
        {
            return Err(invalid_policy(format!(
                "Unexpected field '{extra}' in the policy document"
            )));
        }
        let expiration = object
            .get("expiration")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| invalid_policy("Policy missing expiration."))?;
        let expiration = OffsetDateTime::parse(expiration, &Rfc3339)
            .map_err(|_| invalid_policy("Invalid 'expiration' value: an ISO 8601 UTC time"))?;
        let conditions = object
            .get("conditions")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| invalid_policy("Policy missing conditions."))?;
        let mut rules = Vec::new();
        for condition in conditions {
            let rule = match condition {
                serde_json::Value::Object(pair) if pair.len() == 1 => {
                    let (name, value) = pair.iter().next().unwrap_or_else(|| unreachable!());
                    let value = value.as_str().ok_or_else(|| {
                        invalid_policy(format!("the condition on '{name}' is not a string"))
                    })?;
                    Rule::Eq(name.to_ascii_lowercase(), value.to_owned())
                }
                serde_json::Value::Array(items) if items.len() == 3 => {
                    let op = items[0].as_str().unwrap_or_default().to_ascii_lowercase();
                    match op.as_str() {
                        "eq" | "starts-with" => {
                            let field = field_name(&items[1])?;
                            let value = items[2].as_str().ok_or_else(|| {
                                invalid_policy(format!("the {op} condition's value is a string"))
                            })?;
                            if op == "eq" {
                                Rule::Eq(field, value.to_owned())
                            } else {
                                Rule::StartsWith(field, value.to_owned())
                            }
                        }
                        "content-length-range" => match (number(&items[1]), number(&items[2])) {
                            (Some(min), Some(max)) if min <= max => Rule::Length(min, max),
                            _ => {
                                return Err(invalid_policy(
                                    "content-length-range takes two numbers, min <= max",
                                ))
                            }
                        },
                        _ => {
                            return Err(invalid_policy(format!(
                                "Invalid condition operator '{}'",
                                op.chars().take(32).collect::<String>()
                            )))
                        }
                    }
                }
                _ => {
                    return Err(invalid_policy(
                        "a condition is an object of one field or a 3-element array",
                    ))
                }
            };
            rules.push(rule);
        }
        Ok(Policy { expiration, rules })
    }

    /// Checks every condition against the form (`fields`, names lowercase; the key
    /// with `${filename}` substituted) and that every field is covered by one.
    pub(super) fn check(
        &self,
        fields: &BTreeMap<String, String>,
        bucket: &str,
    ) -> Result<(), GatewayError> {
        let value_of = |name: &str| -> Option<&str> {
            if name == "bucket" {
                Some(bucket)
            } else {
                fields.get(name).map(String::as_str)
            }
        };
        for rule in &self.rules {
            let ok = match rule {
                Rule::Eq(field, expected) => value_of(field) == Some(expected.as_str()),
                Rule::StartsWith(field, prefix) => {
                    value_of(field).is_some_and(|v| v.starts_with(prefix.as_str()))
                }
                Rule::Length(..) => true,
            };
            if !ok {
                return Err(policy_failed(format!(
                    "Policy Condition failed: {}",
                    rule.describe()
                )));
            }
        }
        for name in fields.keys() {
            let exempt = matches!(name.as_str(), "x-amz-signature" | "file" | "policy")
                || name.starts_with("x-ignore-");
            let covered = self.rules.iter().any(|rule| match rule {
                Rule::Eq(field, _) | Rule::StartsWith(field, _) => field == name,
                Rule::Length(..) => false,
            });
            if !exempt && !covered {
                return Err(policy_failed(format!("Extra input fields: {name}")));
            }
        }
        Ok(())
    }

    pub(super) fn length_range(&self) -> Option<(u64, u64)> {
        self.rules.iter().fold(None, |acc, rule| match rule {
            Rule::Length(min, max) => Some(match acc {
                None => (*min, *max),
                Some((lo, hi)) => (lo.max(*min), hi.min(*max)),
            }),
            _ => acc,
        })
    }
}
