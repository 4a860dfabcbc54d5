//! Bucket policies (Put/Get/DeleteBucketPolicy): parsed once, strictly, when they are
//! put (anything atrest could not evaluate faithfully is refused with
//! MalformedPolicy), and evaluated on every request to the bucket as IAM does: an
//! explicit Deny wins, then an Allow; principals of the bucket owner's account need no
//! Allow, those of another account do.
//!
//! Conditions: `aws:SecureTransport`, `aws:PrincipalAccount`,
//! `s3:x-amz-server-side-encryption` and
//! `s3:x-amz-server-side-encryption-aws-kms-key-id`, with the operators
//! StringEquals, StringNotEquals, StringLike, StringNotLike, Bool and Null. A key the
//! request does not carry makes a positive operator false and a negated one true, as
//! in IAM.

use crypto_core::kms::policy::document::{
    strings, Effect, GrammarError, ParseError, PolicyDocument, PolicyStatement, Principal,
};
use crypto_core::kms::policy::glob;
use serde_json::Value;

use crate::error::GatewayError;

/// S3's limit on a bucket policy.
const MAX_POLICY_LEN: usize = 20 * 1024;

/// A request's side of a policy evaluation.
#[derive(Clone, Debug, Default)]
pub struct RequestFacts {
    /// Whether the request came over TLS (`aws:SecureTransport`).
    pub secure_transport: bool,
    /// `x-amz-server-side-encryption` as sent.
    pub sse: Option<String>,
    /// `x-amz-server-side-encryption-aws-kms-key-id` as sent.
    pub sse_kms_key_id: Option<String>,
}

/// An evaluation's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An `Allow` statement applies and no `Deny` does.
    Allow,
    /// A `Deny` statement applies: refused whatever else allows it.
    Deny,
    /// No statement applies.
    NotMentioned,
}

#[derive(Clone, Debug)]
struct Condition {
    operator: Operator,
    key: ConditionKey,
    values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringNotEquals,
    StringLike,
    StringNotLike,
    Bool,
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConditionKey {
    SecureTransport,
    PrincipalAccount,
    Sse,
    SseKmsKeyId,
}

#[derive(Clone, Debug)]
struct Statement {
    deny: bool,
    /// `None`: anyone (`"*"`).
    principals: Option<Vec<String>>,
    actions: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

/// A parsed bucket policy.
#[derive(Clone, Debug)]
pub struct BucketPolicy {
    statements: Vec<Statement>,
}

fn malformed(what: impl std::fmt::Display) -> GatewayError {
    GatewayError::Object(objstore::Error::MalformedPolicy(format!("{what}")))
}

/// The shared grammar's errors, worded as bucket policies always were (no prefix,
/// no statement index).
fn grammar(err: GrammarError) -> GatewayError {
    match err {
        GrammarError::Malformed(why) | GrammarError::Unsupported(why) => malformed(why),
    }
}

fn account_of(arn: &str) -> &str {
    arn.split(':').nth(4).unwrap_or_default()
}

impl BucketPolicy {
    /// Parses a policy for `bucket`: every Resource must be the bucket or under it.
    pub fn parse(text: &str, bucket: &str) -> Result<BucketPolicy, GatewayError> {
        let statements = PolicyDocument::parse_each(text, MAX_POLICY_LEN, |parsed| {
            bucket_statement(parsed, bucket)
        })
        .map_err(|err| match err {
            ParseError::Grammar(err) => grammar(err.error),
            ParseError::Statement { error, .. } => error,
        })?;
        Ok(BucketPolicy { statements })
    }

    /// Whether the policy allows anyone (an Allow with `Principal: "*"` not narrowed
    /// by an `aws:PrincipalAccount` condition), as BlockPublicPolicy and
    /// RestrictPublicBuckets judge it.
    pub fn is_public(&self) -> bool {
        self.statements.iter().any(|s| {
            !s.deny
                && s.principals.is_none()
                && !s
                    .conditions
                    .iter()
                    .any(|c| c.key == ConditionKey::PrincipalAccount)
        })
    }

    /// Evaluates `action` (`s3:GetObject`, ...) by `principal` on `resource` (an
    /// `arn:aws:s3:::` ARN).
    pub fn evaluate(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        facts: &RequestFacts,
    ) -> Decision {
        let mut allowed = false;
        for statement in &self.statements {
            if !statement.applies(principal, action, resource, facts) {
                continue;
            }
            if statement.deny {
                return Decision::Deny;
            }
            allowed = true;
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::NotMentioned
        }
    }
}

/// A bucket-policy statement: AWS principals must be IAM ARNs, actions `s3:`,
/// resources the bucket or under it, conditions the ones atrest evaluates.
fn bucket_statement(parsed: PolicyStatement, bucket: &str) -> Result<Statement, GatewayError> {
    let deny = parsed.effect == Effect::Deny;
    if let Principal::Aws(arns) = &parsed.principal {
        if let Some(arn) = arns
            .iter()
            .find(|arn| *arn != "*" && !arn.starts_with("arn:aws:iam::"))
        {
            return Err(malformed(format!("invalid principal '{arn}'")));
        }
    }
    let principals = parsed.principal.arns().map(<[String]>::to_vec);
    let actions = parsed.actions;
    for action in &actions {
        if action != "*" && !action.to_ascii_lowercase().starts_with("s3:") {
            return Err(malformed(format!("Policy has invalid action '{action}'")));
        }
    }
    let actions = actions
        .into_iter()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    let resources = parsed.resources;
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    for resource in &resources {
        if resource != &bucket_arn && !resource.starts_with(&format!("{bucket_arn}/")) {
            return Err(malformed(format!(
                "Policy has invalid resource '{resource}': it must be {bucket_arn} or under it"
            )));
        }
    }
    let conditions = match &parsed.condition {
        None => Vec::new(),
        Some(Value::Object(ops)) => {
            let mut out = Vec::new();
            for (op, keys) in ops {
                let operator = match op.as_str() {
                    "StringEquals" => Operator::StringEquals,
                    "StringNotEquals" => Operator::StringNotEquals,
                    "StringLike" => Operator::StringLike,
                    "StringNotLike" => Operator::StringNotLike,
                    "Bool" => Operator::Bool,
                    "Null" => Operator::Null,
                    other => {
                        return Err(malformed(format!(
                            "atrest does not evaluate the condition operator '{other}'"
                        )))
                    }
                };
                let Value::Object(keys) = keys else {
                    return Err(malformed(format!("Condition.{op} must be an object")));
                };
                for (key, values) in keys {
                    let key = match key.to_ascii_lowercase().as_str() {
                        "aws:securetransport" => ConditionKey::SecureTransport,
                        "aws:principalaccount" => ConditionKey::PrincipalAccount,
                        "s3:x-amz-server-side-encryption" => ConditionKey::Sse,
                        "s3:x-amz-server-side-encryption-aws-kms-key-id" => {
                            ConditionKey::SseKmsKeyId
                        }
                        _ => {
                            return Err(malformed(format!(
                                "atrest does not evaluate the condition key '{key}'"
                            )))
                        }
                    };
                    let values = match values {
                        Value::Bool(b) => vec![b.to_string()],
                        other => strings(other, "a condition value").map_err(grammar)?,
                    };
                    out.push(Condition {
                        operator,
                        key,
                        values,
                    });
                }
            }
            out
        }
        Some(_) => return Err(malformed("Condition must be an object")),
    };
    Ok(Statement {
        deny,
        principals,
        actions,
        resources,
        conditions,
    })
}

impl Statement {
    fn applies(&self, principal: &str, action: &str, resource: &str, facts: &RequestFacts) -> bool {
        let principal_matches = match &self.principals {
            None => true,
            Some(arns) => arns.iter().any(|arn| {
                arn == principal
                    // An account's root stands for the whole account (atrest has no
                    // IAM policies to delegate to).
                    || (arn.ends_with(":root") && account_of(arn) == account_of(principal))
            }),
        };
        let action = action.to_ascii_lowercase();
        principal_matches
            && self
                .actions
                .iter()
                .any(|p| p == "*" || glob(p.as_bytes(), action.as_bytes()))
            && self
                .resources
                .iter()
                .any(|p| glob(p.as_bytes(), resource.as_bytes()))
            && self.conditions.iter().all(|c| c.holds(principal, facts))
    }
}

impl Condition {
    fn holds(&self, principal: &str, facts: &RequestFacts) -> bool {
        let value: Option<String> = match self.key {
            ConditionKey::SecureTransport => Some(facts.secure_transport.to_string()),
            ConditionKey::PrincipalAccount => Some(account_of(principal).to_owned()),
            ConditionKey::Sse => facts.sse.clone(),
            ConditionKey::SseKmsKeyId => facts.sse_kms_key_id.clone(),
        };
        let any = |f: &dyn Fn(&str, &str) -> bool| {
            value
                .as_deref()
                .is_some_and(|v| self.values.iter().any(|want| f(want, v)))
        };
        match self.operator {
            Operator::StringEquals => any(&|want, v| want == v),
            Operator::StringNotEquals => !any(&|want, v| want == v),
            Operator::StringLike => any(&|want, v| glob(want.as_bytes(), v.as_bytes())),
            Operator::StringNotLike => !any(&|want, v| glob(want.as_bytes(), v.as_bytes())),
            Operator::Bool => any(&|want, v| want.eq_ignore_ascii_case(v)),
            Operator::Null => {
                let absent = value.is_none();
                self.values
                    .iter()
                    .any(|want| want.eq_ignore_ascii_case(&absent.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "arn:aws:iam::000000000000:user/u";
    const OTHER: &str = "arn:aws:iam::111111111111:user/o";

    #[test]
    fn deny_wins_and_accounts_stand_for_their_principals() {
        let p = BucketPolicy::parse(
            r#"{"Statement":[
                {"Effect":"Allow","Principal":{"AWS":"111111111111"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"},
                {"Effect":"Deny","Principal":"*","Action":"s3:*","Resource":"arn:aws:s3:::b/secret*"}]}"#,
            "b",
        )
        .unwrap();
        let facts = RequestFacts::default();
        assert_eq!(
            p.evaluate(OTHER, "s3:GetObject", "arn:aws:s3:::b/k", &facts),
            Decision::Allow
        );
        assert_eq!(
            p.evaluate(OTHER, "s3:PutObject", "arn:aws:s3:::b/k", &facts),
            Decision::NotMentioned
        );
        assert_eq!(
            p.evaluate(OTHER, "s3:GetObject", "arn:aws:s3:::b/secret1", &facts),
            Decision::Deny
        );
        assert_eq!(
            p.evaluate(USER, "s3:GetObject", "arn:aws:s3:::b/k", &facts),
            Decision::NotMentioned
        );
    }

    #[test]
    fn conditions_follow_iam_on_missing_keys() {
        let p = BucketPolicy::parse(
            r#"{"Statement":[
                {"Effect":"Deny","Principal":"*","Action":"s3:*","Resource":["arn:aws:s3:::b","arn:aws:s3:::b/*"],"Condition":{"Bool":{"aws:SecureTransport":"false"}}},
                {"Effect":"Deny","Principal":"*","Action":"s3:PutObject","Resource":"arn:aws:s3:::b/*","Condition":{"StringNotEquals":{"s3:x-amz-server-side-encryption":"aws:kms"}}}]}"#,
            "b",
        )
        .unwrap();
        let mut facts = RequestFacts::default();
        assert_eq!(
            p.evaluate(USER, "s3:GetObject", "arn:aws:s3:::b/k", &facts),
            Decision::Deny
        );
        facts.secure_transport = true;
        assert_eq!(
            p.evaluate(USER, "s3:GetObject", "arn:aws:s3:::b/k", &facts),
            Decision::NotMentioned
        );
        assert_eq!(
            p.evaluate(USER, "s3:PutObject", "arn:aws:s3:::b/k", &facts),
            Decision::Deny
        );
        facts.sse = Some("aws:kms".into());
        assert_eq!(
            p.evaluate(USER, "s3:PutObject", "arn:aws:s3:::b/k", &facts),
            Decision::NotMentioned
        );
    }

    #[test]
    fn what_cannot_be_evaluated_is_refused() {
        for bad in [
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::other/*"}}"#,
            r#"{"Statement":{"Effect":"Allow","NotPrincipal":{"AWS":"*"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*","Condition":{"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"arn:aws:s3:::b/*"}}"#,
            r#"{"Statement":{"Effect":"Maybe","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}}"#,
            "not json",
        ] {
            assert_eq!(
                BucketPolicy::parse(bad, "b").unwrap_err().s3_code(),
                "MalformedPolicy",
                "{bad}"
            );
        }
    }
}
