//! The grammar key policies and S3 bucket policies share: the document (`Version`,
//! `Id`, `Statement`), each statement's fields (`Sid`, `Effect`, `Principal`,
//! `Action`, `Resource`, `Condition`; `NotPrincipal`, `NotAction` and `NotResource`
//! refused), `Principal` as `"*"` or `{"AWS": ...}` with a bare account id meaning its
//! root user. Parsed once into [`PolicyDocument`]; each policy kind then checks what
//! only it allows (actions, resources, conditions) and keeps its own evaluation rules.

use std::convert::Infallible;

use serde_json::{Map, Value};

/// Why a document does not parse. Key policies and bucket policies word the two
/// kinds differently ([`super::KeyPolicy::parse`] prefixes only `Malformed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrammarError {
    /// Not the policy grammar (bad JSON, a wrong type, an unknown field).
    Malformed(String),
    /// Valid grammar atrest does not evaluate (`NotAction`, a non-AWS principal).
    Unsupported(String),
}

/// Where a [`GrammarError`] is: in the document itself or in statement `N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentError {
    /// The statement (from 0), `None` for the document's own fields.
    pub statement: Option<usize>,
    /// What is wrong.
    pub error: GrammarError,
}

/// A statement's `Effect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `"Allow"`.
    Allow,
    /// `"Deny"`.
    Deny,
}

/// A statement's `Principal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// `"*"`.
    Anyone,
    /// The `AWS` principals as written (`"*"` among them means anyone), a bare
    /// account id turned into its root ARN (`arn:aws:iam::<id>:root`).
    Aws(Vec<String>),
}

impl Principal {
    /// The principals it names; `None` when it names anyone.
    pub fn arns(&self) -> Option<&[String]> {
        match self {
            Principal::Anyone => None,
            Principal::Aws(arns) if arns.iter().any(|a| a == "*") => None,
            Principal::Aws(arns) => Some(arns),
        }
    }
}

/// One statement, its fields as written (actions not yet lowercased, the
/// condition not yet interpreted).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyStatement {
    /// Allow or Deny.
    pub effect: Effect,
    /// Who it applies to.
    pub principal: Principal,
    /// The `Action` patterns.
    pub actions: Vec<String>,
    /// The `Resource` patterns.
    pub resources: Vec<String>,
    /// The `Condition` block, if any.
    pub condition: Option<Value>,
}

/// A parsed policy document.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDocument {
    /// At least one statement.
    pub statements: Vec<PolicyStatement>,
}

/// Why [`PolicyDocument::parse_each`] failed: the shared grammar, or what the
/// caller's own check of statement `index` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError<E> {
    /// The document or a statement breaks the shared grammar.
    Grammar(DocumentError),
    /// The caller refused statement `index`.
    Statement {
        /// The statement (from 0).
        index: usize,
        /// The caller's reason.
        error: E,
    },
}

impl PolicyDocument {
    /// Parses `text`, at most `max_len` bytes.
    pub fn parse(text: &str, max_len: usize) -> Result<PolicyDocument, DocumentError> {
        let statements = PolicyDocument::parse_each(text, max_len, Ok::<_, Infallible>).map_err(
            |err| match err {
                ParseError::Grammar(err) => err,
                ParseError::Statement { error, .. } => match error {},
            },
        )?;
        Ok(PolicyDocument { statements })
    }

    /// Parses `text` (at most `max_len` bytes) statement by statement, handing each
    /// to `each` as soon as it parses: the first error in document order wins,
    /// whether the grammar's or `each`'s.
    pub fn parse_each<T, E>(
        text: &str,
        max_len: usize,
        mut each: impl FnMut(PolicyStatement) -> Result<T, E>,
    ) -> Result<Vec<T>, ParseError<E>> {
        let in_document = |error| {
            ParseError::Grammar(DocumentError {
                statement: None,
                error,
            })
        };
        if text.len() > max_len {
            return Err(in_document(malformed(format!(
                "it is longer than {max_len} bytes"
            ))));
        }
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| in_document(malformed(format!("not JSON: {e}"))))?;
        let Value::Object(doc) = doc else {
            return Err(in_document(malformed("the document must be a JSON object")));
        };
        for key in doc.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(in_document(malformed(format!(
                    "unknown top-level field '{key}'"
                ))));
            }
        }
        match doc.get("Version") {
            None => {}
            Some(Value::String(v)) if v == "2012-10-17" || v == "2008-10-17" => {}
            Some(_) => return Err(in_document(malformed("Version must be \"2012-10-17\""))),
        }
        let statements = match doc.get("Statement") {
            Some(Value::Array(items)) if !items.is_empty() => items.iter().collect::<Vec<_>>(),
            Some(item @ Value::Object(_)) => vec![item],
            _ => {
                return Err(in_document(malformed(
                    "Statement must be an object or a non-empty list",
                )))
            }
        };
        statements
            .into_iter()
            .enumerate()
            .map(|(index, statement)| {
                let parsed = parse_statement(statement).map_err(|error| {
                    ParseError::Grammar(DocumentError {
                        statement: Some(index),
                        error,
                    })
                })?;
                each(parsed).map_err(|error| ParseError::Statement { index, error })
            })
            .collect()
    }
}

fn malformed(why: impl Into<String>) -> GrammarError {
    GrammarError::Malformed(why.into())
}

/// A JSON string or non-empty array of strings, as policies allow for most fields.
pub fn strings(value: &Value, field: &str) -> Result<Vec<String>, GrammarError> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(malformed(format!("{field} must hold only strings"))),
            })
            .collect(),
        _ => Err(malformed(format!(
            "{field} must be a string or a non-empty list of strings"
        ))),
    }
}

fn parse_statement(value: &Value) -> Result<PolicyStatement, GrammarError> {
    let Value::Object(fields) = value else {
        return Err(malformed("a statement must be a JSON object"));
    };
    for key in fields.keys() {
        match key.as_str() {
            "Sid" | "Effect" | "Principal" | "Action" | "Resource" | "Condition" => {}
            "NotPrincipal" | "NotAction" | "NotResource" => {
                return Err(GrammarError::Unsupported(format!(
                    "atrest does not evaluate '{key}'; rewrite the statement without it"
                )))
            }
            other => return Err(malformed(format!("unknown field '{other}'"))),
        }
    }
    let effect = match fields.get("Effect") {
        Some(Value::String(e)) if e == "Allow" => Effect::Allow,
        Some(Value::String(e)) if e == "Deny" => Effect::Deny,
        _ => return Err(malformed("Effect must be \"Allow\" or \"Deny\"")),
    };
    let principal = parse_principal(fields)?;
    let field = |name: &str| strings(fields.get(name).unwrap_or(&Value::Null), name);
    Ok(PolicyStatement {
        effect,
        principal,
        actions: field("Action")?,
        resources: field("Resource")?,
        condition: fields.get("Condition").cloned(),
    })
}

fn parse_principal(fields: &Map<String, Value>) -> Result<Principal, GrammarError> {
    match fields.get("Principal") {
        Some(Value::String(s)) if s == "*" => Ok(Principal::Anyone),
        Some(Value::Object(map)) => {
            let mut arns = Vec::new();
            for (kind, value) in map {
                if kind != "AWS" {
                    return Err(GrammarError::Unsupported(format!(
                        "atrest only knows AWS principals, not '{kind}'"
                    )));
                }
                arns.extend(
                    strings(value, "Principal.AWS")?
                        .into_iter()
                        .map(account_to_root),
                );
            }
            Ok(Principal::Aws(arns))
        }
        _ => Err(malformed(
            "Principal must be \"*\" or {\"AWS\": ARN or [ARN, ...]}",
        )),
    }
}

/// AWS lets a policy name an account by its bare id; that means its root user.
fn account_to_root(principal: String) -> String {
    if principal.len() == 12 && principal.bytes().all(|b| b.is_ascii_digit()) {
        format!("arn:aws:iam::{principal}:root")
    } else {
        principal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_parse_into_statements() {
        let doc = PolicyDocument::parse(
            r#"{"Version":"2012-10-17","Statement":{"Sid":"s","Effect":"Deny",
                "Principal":{"AWS":["111111111111","arn:aws:iam::2:user/u"]},
                "Action":"kms:*","Resource":["*"],"Condition":{"Bool":{"k":"true"}}}}"#,
            1024,
        )
        .unwrap();
        let statement = &doc.statements[0];
        assert_eq!(statement.effect, Effect::Deny);
        assert_eq!(
            statement.principal,
            Principal::Aws(vec![
                "arn:aws:iam::111111111111:root".into(),
                "arn:aws:iam::2:user/u".into()
            ])
        );
        assert_eq!(statement.actions, ["kms:*"]);
        assert!(statement.condition.is_some());
        let anyone = r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":["1","*"]},
            "Action":"a","Resource":"r"}]}"#;
        let parsed = PolicyDocument::parse(anyone, 1024).unwrap();
        assert_eq!(parsed.statements[0].principal.arns(), None);
        assert_eq!(
            doc.statements[0].principal.arns().map(<[String]>::len),
            Some(2)
        );
    }

    #[test]
    fn errors_say_where_and_what_kind() {
        let too_long = PolicyDocument::parse("{}", 1).unwrap_err();
        assert_eq!(too_long.statement, None);
        let second = PolicyDocument::parse(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"a","Resource":"r"},
                {"Effect":"Allow","Principal":"*","NotAction":"a","Resource":"r"}]}"#,
            1024,
        )
        .unwrap_err();
        assert_eq!(second.statement, Some(1));
        assert!(matches!(second.error, GrammarError::Unsupported(_)));
        for bad in [
            r#"[]"#,
            r#"{"Statement":[]}"#,
            r#"{"Version":"2020","Statement":{}}"#,
            r#"{"Extra":1,"Statement":{}}"#,
            r#"{"Statement":{"Effect":"allow","Principal":"*","Action":"a","Resource":"r"}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"me","Action":"a","Resource":"r"}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":[],"Resource":"r"}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"a","Resource":[1]}}"#,
        ] {
            let err = PolicyDocument::parse(bad, 1024).unwrap_err();
            assert!(matches!(err.error, GrammarError::Malformed(_)), "{bad}");
        }
    }
}
