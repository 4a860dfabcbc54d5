//! [`LocalKmsConfig`]: how a [`LocalKms`](super::LocalKms) is set up (`ATREST_*`), and the
//! caller principal checks.

use std::path::PathBuf;
use std::sync::Arc;

use crate::kms::clock::{parse_offset, Clock, SystemClock};
use crate::kms::ident::{is_account_id, principal_account, printable};
use crate::kms::KmsError;

/// How [`LocalKms`](super::LocalKms) is set up. [`LocalKmsConfig::from_env`] reads the
/// `ATREST_*` variables; [`LocalKmsConfig::new`] gives the defaults.
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

    pub(super) fn validate(&self) -> Result<(), KmsError> {
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
pub(super) fn caller_account(principal: &str, configured: &str) -> String {
    principal_account(principal)
        .unwrap_or(configured)
        .to_owned()
}

fn root_principal(account: &str) -> String {
    format!("arn:aws:iam::{account}:root")
}

pub(super) fn check_principal(principal: &str) -> Result<(), KmsError> {
    if principal.is_empty() || principal.len() > 2048 || principal.chars().any(char::is_control) {
        return Err(KmsError::Validation(format!(
            "principal '{}' must be 1-2048 printable characters (an ARN)",
            printable(principal)
        )));
    }
    Ok(())
}
