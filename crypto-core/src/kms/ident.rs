//! How callers name keys: key ids, key ARNs, alias names, alias ARNs, and AWS's rules
//! for alias names.

use uuid::Uuid;

use super::KmsError;

/// The longest key identifier AWS accepts (`KeyId` is 1..=2048 characters).
const MAX_KEY_ID_LEN: usize = 2048;
/// The longest alias name AWS accepts.
const MAX_ALIAS_LEN: usize = 256;

/// A caller's way of naming a key, parsed but not yet looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// A bare key id (of the caller's account) or a key ARN of this region, which
    /// may name another account: the only way to reach another account's key.
    Key {
        /// The account the caller expects the key in.
        account: String,
        /// The key's UUID.
        id: Uuid,
    },
    /// `alias/NAME`, or an alias ARN of this region and of the caller's account
    /// (stored as the name).
    Alias(String),
}

impl KeyRef {
    /// Parses `text` as AWS does, for a caller of `account`. Malformed identifiers,
    /// ARNs of another region and alias ARNs of another account are
    /// `NotFoundException` (AWS's answer: such a key cannot exist here); an empty or
    /// over-long one is a `ValidationException`.
    pub fn parse(text: &str, region: &str, account: &str) -> Result<Self, KmsError> {
        if text.is_empty() || text.len() > MAX_KEY_ID_LEN {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value at 'keyId' failed to satisfy constraint: \
                 Member must have length between 1 and {MAX_KEY_ID_LEN}"
            )));
        }
        let invalid = || KmsError::NotFound(format!("Invalid keyId '{}'", printable(text)));
        if text.starts_with("alias/") {
            return Ok(KeyRef::Alias(text.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("arn:aws:kms:") {
            let mut parts = rest.splitn(3, ':');
            let (Some(arn_region), Some(arn_account), Some(resource)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(invalid());
            };
            if arn_region != region || !is_account_id(arn_account) {
                return Err(KmsError::NotFound(format!(
                    "Key '{}' does not exist: it names region '{}', this key service serves \
                     region '{region}'",
                    printable(text),
                    printable(arn_region),
                )));
            }
            if let Some(id) = resource.strip_prefix("key/") {
                return parse_uuid(id)
                    .map(|id| KeyRef::Key {
                        account: arn_account.to_owned(),
                        id,
                    })
                    .ok_or_else(invalid);
            }
            if resource.starts_with("alias/") {
                if arn_account != account {
                    return Err(KmsError::NotFound(format!(
                        "Alias '{}' is not found: an alias names a key of the caller's own \
                         account only; name another account's key by its key ARN",
                        printable(text)
                    )));
                }
                return Ok(KeyRef::Alias(resource.to_owned()));
            }
            return Err(invalid());
        }
        parse_uuid(text)
            .map(|id| KeyRef::Key {
                account: account.to_owned(),
                id,
            })
            .ok_or_else(invalid)
    }
}

/// Twelve ASCII digits, as AWS account ids are.
pub(crate) fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
}

/// The account a principal ARN belongs to (`arn:aws:iam::<account>:...` or
/// `arn:aws:sts::<account>:...`); `None` for anything else (a bare name such as
/// `KeyUser`, or a service principal).
pub fn principal_account(principal: &str) -> Option<&str> {
    let rest = principal
        .strip_prefix("arn:aws:iam::")
        .or_else(|| principal.strip_prefix("arn:aws:sts::"))?;
    let (account, resource) = rest.split_once(':')?;
    (is_account_id(account) && !resource.is_empty()).then_some(account)
}

/// Only the hyphenated lowercase-or-uppercase form AWS prints is a key id.
fn parse_uuid(text: &str) -> Option<Uuid> {
    if text.len() != 36 {
        return None;
    }
    Uuid::try_parse(text).ok()
}

/// Caller-supplied text as it may appear in an error message: control characters
/// replaced, at most 300 characters.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .take(300)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The ARN of key `id`.
pub(crate) fn key_arn(region: &str, account: &str, id: &Uuid) -> String {
    format!("arn:aws:kms:{region}:{account}:key/{id}")
}

/// The ARN of alias `name` (which includes the `alias/` prefix).
pub(crate) fn alias_arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:kms:{region}:{account}:{name}")
}

/// Checks AWS's rules for a customer alias name: `alias/` followed by 1 or more of
/// `A-Z a-z 0-9 / _ -`, at most 256 characters in all, not under `alias/aws/`.
pub fn validate_alias_name(name: &str) -> Result<(), KmsError> {
    if name.is_empty() || name.len() > MAX_ALIAS_LEN {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{}' at 'aliasName' failed to satisfy \
             constraint: Member must have length between 1 and {MAX_ALIAS_LEN}",
            printable(name)
        )));
    }
    let Some(rest) = name.strip_prefix("alias/") else {
        // AWS's words, a ValidationException (not InvalidAliasNameException).
        return Err(KmsError::Validation(
            "Alias must start with the prefix \"alias/\". Please see \
             https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html"
                .into(),
        ));
    };
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        return Err(KmsError::InvalidAliasName(format!(
            "Alias '{}' must be 'alias/' followed by one or more of A-Z, a-z, 0-9, '/', '_', '-'",
            printable(name)
        )));
    }
    if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case("aws/") {
        return Err(KmsError::NotAuthorized(format!(
            "Alias '{}' is reserved: the alias/aws/ prefix belongs to AWS managed keys",
            printable(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn key_ids_arns_and_aliases_parse() {
        let id = Uuid::parse_str(ID).unwrap();
        let own = KeyRef::Key {
            account: "000000000000".into(),
            id,
        };
        assert_eq!(KeyRef::parse(ID, "local", "000000000000").unwrap(), own);
        let arn = format!("arn:aws:kms:local:000000000000:key/{ID}");
        assert_eq!(KeyRef::parse(&arn, "local", "000000000000").unwrap(), own);
        let foreign = format!("arn:aws:kms:local:111111111111:key/{ID}");
        assert_eq!(
            KeyRef::parse(&foreign, "local", "000000000000").unwrap(),
            KeyRef::Key {
                account: "111111111111".into(),
                id
            }
        );
        assert_eq!(
            KeyRef::parse("alias/MyKMSKey", "local", "000000000000").unwrap(),
            KeyRef::Alias("alias/MyKMSKey".into())
        );
        assert_eq!(
            KeyRef::parse(
                "arn:aws:kms:local:000000000000:alias/a",
                "local",
                "000000000000"
            )
            .unwrap(),
            KeyRef::Alias("alias/a".into())
        );
    }

    #[test]
    fn foreign_and_malformed_ids_are_not_found() {
        let other_region = format!("arn:aws:kms:us-east-1:000000000000:key/{ID}");
        for text in [
            "nope",
            "1234abcd12ab34cd56ef1234567890ab",
            "arn:aws:kms:local:000000000000:key/nope",
            "arn:aws:kms:local",
            "arn:aws:kms:local:000000000000:grant/x",
            "arn:aws:kms:local:42:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:local:111111111111:alias/payments",
            other_region.as_str(),
        ] {
            assert!(
                matches!(
                    KeyRef::parse(text, "local", "000000000000"),
                    Err(KmsError::NotFound(_))
                ),
                "{text}"
            );
        }
        assert!(matches!(
            KeyRef::parse("", "local", "0"),
            Err(KmsError::Validation(_))
        ));
        let long = "x".repeat(2049);
        assert!(matches!(
            KeyRef::parse(&long, "local", "0"),
            Err(KmsError::Validation(_))
        ));
    }

    #[test]
    fn principals_name_their_account() {
        assert_eq!(
            principal_account("arn:aws:iam::111111111111:user/Eve"),
            Some("111111111111")
        );
        assert_eq!(
            principal_account("arn:aws:iam::000000000000:root"),
            Some("000000000000")
        );
        assert_eq!(
            principal_account("arn:aws:sts::222222222222:assumed-role/r/s"),
            Some("222222222222")
        );
        for none in [
            "KeyUser",
            "kms.amazonaws.com",
            "arn:aws:iam::42:user/x",
            "arn:aws:iam::111111111111:",
            "arn:aws:s3:::bucket",
        ] {
            assert_eq!(principal_account(none), None, "{none}");
        }
    }

    #[test]
    fn alias_rules_follow_aws() {
        for good in [
            "alias/MyKMSKey",
            "alias/a",
            "alias/team/app-1_x",
            "alias/awsome",
        ] {
            validate_alias_name(good).unwrap();
        }
        assert!(matches!(
            validate_alias_name("MyKey"),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            validate_alias_name("alias/"),
            Err(KmsError::InvalidAliasName(_))
        ));
        assert!(matches!(
            validate_alias_name("alias/a b"),
            Err(KmsError::InvalidAliasName(_))
        ));
        assert!(matches!(
            validate_alias_name("alias/a:b"),
            Err(KmsError::InvalidAliasName(_))
        ));
        assert!(matches!(
            validate_alias_name("alias/aws/ebs"),
            Err(KmsError::NotAuthorized(_))
        ));
        assert!(matches!(
            validate_alias_name("alias/AWS/x"),
            Err(KmsError::NotAuthorized(_))
        ));
        assert!(matches!(
            validate_alias_name(""),
            Err(KmsError::Validation(_))
        ));
        let long = format!("alias/{}", "a".repeat(251));
        assert!(matches!(
            validate_alias_name(&long),
            Err(KmsError::Validation(_))
        ));
        validate_alias_name(&long[..256]).unwrap();
    }
}
