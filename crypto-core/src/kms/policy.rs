//! AWS-format key policies: parsing and evaluation.
//!
//! Evaluation follows AWS: an explicit `Deny` that matches wins, else an `Allow` that
//! matches grants, else the request is implicitly denied. atrest has no IAM, so a
//! principal matches only its own ARN or `"*"`; `arn:aws:iam::<account>:root` (or the
//! bare account id) names the account's root user, not every user of the account.
//! The conditions evaluated are `StringEquals` on `kms:CallerAccount` (the caller's
//! account) and `kms:ViaService` (the AWS service the call came through, e.g.
//! `s3.us-east-1.amazonaws.com` for the S3 endpoint's calls), as AWS managed keys'
//! policies use them; every key listed must hold. Any other `Condition`, and
//! `NotPrincipal`, `NotAction` and `NotResource`, are refused rather than ignored, so
//! a policy never grants or denies more than it says.

use serde_json::Value;

use super::KmsError;

pub mod document;

use document::{
    strings, DocumentError, Effect, GrammarError, ParseError, PolicyDocument, PolicyStatement,
};

/// Key policies are at most 32 KiB (AWS's limit).
pub const MAX_POLICY_LEN: usize = 32 * 1024;

/// The outcome of evaluating a policy for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An `Allow` statement matched and no `Deny` did.
    Allow,
    /// A `Deny` statement matched.
    ExplicitDeny,
    /// No statement matched.
    ImplicitDeny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Principals {
    Anyone,
    Arns(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Statement {
    effect: Effect,
    principals: Principals,
    /// Lowercased action patterns (`kms:*`, `kms:generate*`).
    actions: Vec<String>,
    resources: Vec<String>,
    /// A `StringEquals` condition: the statement applies only where every key holds
    /// one of its values. Empty: no condition.
    conditions: Vec<(ConditionKey, Vec<String>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConditionKey {
    CallerAccount,
    ViaService,
}

/// Who is asking, beyond the principal's ARN: what a policy's conditions look at.
#[derive(Clone, Copy, Debug)]
pub struct CallerContext<'a> {
    /// The caller's account (`kms:CallerAccount`).
    pub account: &'a str,
    /// The service the call came through (`kms:ViaService`); `None` for a direct call.
    pub via_service: Option<&'a str>,
}

/// A parsed key policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    statements: Vec<Statement>,
}

fn malformed(why: impl std::fmt::Display) -> KmsError {
    KmsError::MalformedPolicyDocument(format!("the key policy is not valid: {why}"))
}

/// A malformed part of a statement's condition, worded as key policies word it.
fn grammar(err: GrammarError) -> KmsError {
    match err {
        GrammarError::Malformed(why) => malformed(why),
        GrammarError::Unsupported(why) => KmsError::MalformedPolicyDocument(why),
    }
}

/// A grammar error worded as key policies always were: a malformed part prefixed
/// "the key policy is not valid", a statement's error after its index.
fn document_error(err: DocumentError) -> KmsError {
    let inner = match err.error {
        GrammarError::Malformed(why) => format!("the key policy is not valid: {why}"),
        GrammarError::Unsupported(why) => why,
    };
    match err.statement {
        Some(i) => malformed(format!("statement {i}: {inner}")),
        None => KmsError::MalformedPolicyDocument(inner),
    }
}

impl KeyPolicy {
    /// Parses a policy document, refusing anything atrest cannot evaluate faithfully.
    pub fn parse(text: &str) -> Result<Self, KmsError> {
        let statements = PolicyDocument::parse_each(text, MAX_POLICY_LEN, statement).map_err(
            |err| match err {
                ParseError::Grammar(err) => document_error(err),
                ParseError::Statement { index, error } => {
                    malformed(format!("statement {index}: {}", error.message()))
                }
            },
        )?;
        Ok(Self { statements })
    }

    /// Evaluates `action` (e.g. `kms:Decrypt`) by `principal` on the key `resource`;
    /// the caller's account is the one in `principal`'s ARN.
    pub fn evaluate(&self, principal: &str, action: &str, resource: &str) -> Decision {
        let context = CallerContext {
            account: super::principal_account(principal).unwrap_or_default(),
            via_service: None,
        };
        self.evaluate_in(principal, context, action, resource)
    }

    /// [`KeyPolicy::evaluate`] with the caller's context (the key service knows the
    /// account of a principal that is not an ARN, and the service a call came through).
    pub fn evaluate_in(
        &self,
        principal: &str,
        context: CallerContext<'_>,
        action: &str,
        resource: &str,
    ) -> Decision {
        let action = action.to_ascii_lowercase();
        let mut allowed = false;
        for statement in &self.statements {
            if !statement.applies(principal, context, &action, resource) {
                continue;
            }
            match statement.effect {
                Effect::Deny => return Decision::ExplicitDeny,
                Effect::Allow => allowed = true,
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }
}

/// A key-policy statement: actions lowercased, the condition one atrest evaluates.
fn statement(parsed: PolicyStatement) -> Result<Statement, KmsError> {
    let conditions = match &parsed.condition {
        Some(condition) => parse_condition(condition)?,
        None => Vec::new(),
    };
    Ok(Statement {
        effect: parsed.effect,
        principals: match parsed.principal.arns() {
            None => Principals::Anyone,
            Some(arns) => Principals::Arns(arns.to_vec()),
        },
        actions: parsed
            .actions
            .into_iter()
            .map(|a| a.to_ascii_lowercase())
            .collect(),
        resources: parsed.resources,
        conditions,
    })
}

/// The conditions atrest evaluates: `{"StringEquals": {"kms:CallerAccount": ..,
/// "kms:ViaService": ..}}` (one or both keys).
fn parse_condition(value: &Value) -> Result<Vec<(ConditionKey, Vec<String>)>, KmsError> {
    let unsupported = || {
        KmsError::MalformedPolicyDocument(
            "atrest evaluates only the conditions {\"StringEquals\": {\"kms:CallerAccount\": \
             ACCOUNT, \"kms:ViaService\": SERVICE}}; rewrite the statement without any other \
             'Condition'"
                .to_owned(),
        )
    };
    let Value::Object(operators) = value else {
        return Err(unsupported());
    };
    let mut conditions = Vec::new();
    for (operator, keys) in operators {
        let Value::Object(keys) = keys else {
            return Err(unsupported());
        };
        if operator != "StringEquals" || keys.is_empty() {
            return Err(unsupported());
        }
        for (key, values) in keys {
            // Condition keys are case-insensitive in AWS.
            let key = if key.eq_ignore_ascii_case("kms:CallerAccount") {
                ConditionKey::CallerAccount
            } else if key.eq_ignore_ascii_case("kms:ViaService") {
                ConditionKey::ViaService
            } else {
                return Err(unsupported());
            };
            conditions.push((key, strings(values, "Condition").map_err(grammar)?));
        }
    }
    if conditions.is_empty() {
        return Err(unsupported());
    }
    Ok(conditions)
}

impl Statement {
    fn applies(
        &self,
        principal: &str,
        context: CallerContext<'_>,
        action: &str,
        resource: &str,
    ) -> bool {
        let principal_matches = match &self.principals {
            Principals::Anyone => true,
            Principals::Arns(arns) => arns.iter().any(|arn| arn == principal),
        };
        let condition_holds = self.conditions.iter().all(|(key, values)| {
            let actual = match key {
                ConditionKey::CallerAccount => Some(context.account),
                ConditionKey::ViaService => context.via_service,
            };
            actual.is_some_and(|actual| values.iter().any(|v| v == actual))
        });
        principal_matches
            && condition_holds
            && self
                .actions
                .iter()
                .any(|pattern| glob(pattern.as_bytes(), action.as_bytes()))
            && self
                .resources
                .iter()
                .any(|pattern| glob(pattern.as_bytes(), resource.as_bytes()))
    }
}

/// IAM wildcard matching: `*` any run of characters, `?` any one character
/// (case-sensitive). Shared with the S3 endpoint's bucket policies.
/// Iterative with one backtrack point, so it is linear-ish and cannot overflow a stack.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// The policy CreateKey gives a key when the caller passes none: the account's root
/// user and the creating principal may perform every `kms:` action on the key.
pub fn default_policy(account: &str, creator: &str) -> String {
    let root = format!("arn:aws:iam::{account}:root");
    let principals = if creator == root {
        serde_json::json!(root)
    } else {
        serde_json::json!([root, creator])
    };
    let doc = serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": principals},
            "Action": "kms:*",
            "Resource": "*"
        }]
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:local:000000000000:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const ADMIN: &str = "arn:aws:iam::000000000000:user/admin";
    const USER: &str = "arn:aws:iam::000000000000:user/app";

    fn lab_policy() -> KeyPolicy {
        KeyPolicy::parse(&format!(
            r#"{{
              "Version": "2012-10-17",
              "Statement": [
                {{"Sid": "Admins", "Effect": "Allow", "Principal": {{"AWS": "{ADMIN}"}},
                  "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*",
                             "kms:Put*", "kms:Update*", "kms:Revoke*", "kms:Disable*",
                             "kms:Get*", "kms:Delete*", "kms:ScheduleKeyDeletion",
                             "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand"],
                  "Resource": "*"}},
                {{"Sid": "Users", "Effect": "Allow", "Principal": {{"AWS": ["{USER}"]}},
                  "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                             "kms:GenerateDataKey*", "kms:DescribeKey"],
                  "Resource": "*"}}
              ]
            }}"#
        ))
        .unwrap()
    }

    #[test]
    fn admins_administer_and_users_use() {
        let policy = lab_policy();
        assert_eq!(
            policy.evaluate(ADMIN, "kms:DisableKey", KEY),
            Decision::Allow
        );
        assert_eq!(
            policy.evaluate(ADMIN, "kms:Decrypt", KEY),
            Decision::ImplicitDeny
        );
        assert_eq!(policy.evaluate(USER, "kms:Decrypt", KEY), Decision::Allow);
        assert_eq!(
            policy.evaluate(USER, "kms:GenerateDataKeyWithoutPlaintext", KEY),
            Decision::Allow
        );
        assert_eq!(
            policy.evaluate(USER, "kms:DisableKey", KEY),
            Decision::ImplicitDeny
        );
        assert_eq!(
            policy.evaluate("arn:aws:iam::000000000000:root", "kms:Decrypt", KEY),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn explicit_deny_beats_allow() {
        let policy = KeyPolicy::parse(&format!(
            r#"{{"Statement": [
                {{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}},
                {{"Effect": "Deny", "Principal": {{"AWS": "{USER}"}}, "Action": "kms:Decrypt", "Resource": "{KEY}"}}
            ]}}"#
        ))
        .unwrap();
        assert_eq!(
            policy.evaluate(USER, "kms:Decrypt", KEY),
            Decision::ExplicitDeny
        );
        assert_eq!(policy.evaluate(USER, "kms:Encrypt", KEY), Decision::Allow);
        assert_eq!(policy.evaluate(ADMIN, "kms:Decrypt", KEY), Decision::Allow);
    }

    #[test]
    fn resource_and_action_patterns() {
        let policy = KeyPolicy::parse(&format!(
            r#"{{"Statement": {{"Effect": "Allow", "Principal": {{"AWS": "{USER}"}},
                "Action": "KMS:generate?ataKey", "Resource": "arn:aws:kms:local:000000000000:key/other"}}}}"#
        ))
        .unwrap();
        assert_eq!(
            policy.evaluate(USER, "kms:GenerateDataKey", KEY),
            Decision::ImplicitDeny
        );
        assert_eq!(
            policy.evaluate(
                USER,
                "kms:GenerateDataKey",
                "arn:aws:kms:local:000000000000:key/other"
            ),
            Decision::Allow
        );
    }

    #[test]
    fn default_policy_gives_creator_and_root_everything() {
        let policy = KeyPolicy::parse(&default_policy("000000000000", USER)).unwrap();
        assert_eq!(
            policy.evaluate(USER, "kms:ScheduleKeyDeletion", KEY),
            Decision::Allow
        );
        assert_eq!(
            policy.evaluate("arn:aws:iam::000000000000:root", "kms:Decrypt", KEY),
            Decision::Allow
        );
        assert_eq!(
            policy.evaluate(ADMIN, "kms:Decrypt", KEY),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn malformed_policies_are_refused() {
        for text in [
            "",
            "[]",
            "{}",
            r#"{"Statement": []}"#,
            r#"{"Statement": {"Effect": "Maybe", "Principal": "*", "Action": "kms:*", "Resource": "*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Resource": "*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": [], "Resource": "*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*", "Condition": {}}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"}, "Action": "kms:*", "Resource": "*"}}"#,
            r#"{"Version": "2099-01-01", "Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}}"#,
        ] {
            assert!(
                matches!(
                    KeyPolicy::parse(text),
                    Err(KmsError::MalformedPolicyDocument(_))
                ),
                "{text}"
            );
        }
        let huge = format!("{{\"Id\": \"{}\"}}", "x".repeat(MAX_POLICY_LEN));
        assert!(matches!(
            KeyPolicy::parse(&huge),
            Err(KmsError::MalformedPolicyDocument(_))
        ));
    }

    #[test]
    fn a_bare_account_id_names_its_root_user() {
        let policy = KeyPolicy::parse(
            r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": "000000000000"}, "Action": "kms:*", "Resource": "*"}}"#,
        )
        .unwrap();
        assert_eq!(
            policy.evaluate("arn:aws:iam::000000000000:root", "kms:Decrypt", KEY),
            Decision::Allow
        );
        assert_eq!(
            policy.evaluate(USER, "kms:Decrypt", KEY),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn glob_matches_like_iam() {
        assert!(glob(b"kms:*", b"kms:decrypt"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"abc", b"abcd"));
        assert!(!glob(b"", b"a"));
    }

    #[test]
    fn caller_account_condition_limits_a_statement_to_its_accounts() {
        let policy = KeyPolicy::parse(
            r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt",
                "Resource": "*", "Condition": {"StringEquals": {"kms:CallerAccount": "000000000000"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            policy.evaluate("arn:aws:iam::000000000000:user/alice", "kms:Decrypt", KEY),
            Decision::Allow
        );
        assert_eq!(
            policy.evaluate("arn:aws:iam::111111111111:user/Eve", "kms:Decrypt", KEY),
            Decision::ImplicitDeny
        );
        let in_000 = CallerContext {
            account: "000000000000",
            via_service: None,
        };
        assert_eq!(
            policy.evaluate_in("KeyUser", in_000, "kms:Decrypt", KEY),
            Decision::Allow
        );
        assert_eq!(
            policy.evaluate("KeyUser", "kms:Decrypt", KEY),
            Decision::ImplicitDeny
        );
        for other in [
            r#"{"StringEquals": {"aws:SourceIp": "10.0.0.1"}}"#,
            r#"{"StringLike": {"kms:CallerAccount": "0*"}}"#,
            r#"{"StringEquals": {"kms:CallerAccount": "0", "aws:SourceIp": "1"}}"#,
            r#"{"StringEquals": {}}"#,
            r#""x""#,
        ] {
            let text = format!(
                r#"{{"Statement": {{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*", "Condition": {other}}}}}"#
            );
            assert!(KeyPolicy::parse(&text).is_err(), "{other} was accepted");
        }
    }

    #[test]
    fn via_service_condition_needs_the_call_to_come_through_that_service() {
        let policy = KeyPolicy::parse(
            r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt",
                "Resource": "*", "Condition": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}}}"#,
        )
        .unwrap();
        let eve = "arn:aws:iam::111111111111:user/Eve";
        assert_eq!(
            policy.evaluate(eve, "kms:Decrypt", KEY),
            Decision::ImplicitDeny
        );
        let through = |service| CallerContext {
            account: "111111111111",
            via_service: Some(service),
        };
        assert_eq!(
            policy.evaluate_in(
                eve,
                through("s3.us-east-1.amazonaws.com"),
                "kms:Decrypt",
                KEY
            ),
            Decision::Allow
        );
        assert_eq!(
            policy.evaluate_in(
                eve,
                through("kms.us-east-1.amazonaws.com"),
                "kms:Decrypt",
                KEY
            ),
            Decision::ImplicitDeny
        );
    }
}
