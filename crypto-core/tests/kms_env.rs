//! `LocalKmsConfig::from_env`: the ATREST_* variables. The only test in its binary,
//! because it changes the process environment.

use crypto_core::kms::{CreateKeyRequest, KeyService, KmsError, LocalKms, LocalKmsConfig};
use time::{Duration, OffsetDateTime};

const VARS: [&str; 5] = [
    "ATREST_REGION",
    "ATREST_ACCOUNT",
    "ATREST_PRINCIPAL",
    "ATREST_ROOT_KEY_FILE",
    "ATREST_CLOCK_OFFSET",
];

#[test]
fn from_env_reads_every_variable_and_validates_them() {
    for var in VARS {
        std::env::remove_var(var);
    }
    let defaults = LocalKmsConfig::from_env().unwrap();
    assert_eq!(defaults.region, "local");
    assert_eq!(defaults.account, "000000000000");
    assert_eq!(defaults.principal, "arn:aws:iam::000000000000:root");
    assert_eq!(defaults.root_key_file, None);
    assert!((defaults.clock.now() - OffsetDateTime::now_utc()).abs() < Duration::minutes(1));

    let home = tempfile::tempdir().unwrap();
    let root_key = home.path().join("elsewhere/root.key");
    std::env::set_var("ATREST_REGION", "eu-central-1");
    std::env::set_var("ATREST_ACCOUNT", "123456789012");
    std::env::set_var("ATREST_ROOT_KEY_FILE", &root_key);
    std::env::set_var("ATREST_CLOCK_OFFSET", "31d");
    let config = LocalKmsConfig::from_env().unwrap();
    assert_eq!(config.principal, "arn:aws:iam::123456789012:root");
    let ahead = config.clock.now() - OffsetDateTime::now_utc();
    assert!(
        ahead > Duration::days(30) && ahead < Duration::days(32),
        "{ahead}"
    );
    let kms = LocalKms::open(&home.path().join("home"), config).unwrap();
    let key = kms.create_key(&CreateKeyRequest::default()).unwrap();
    assert!(key
        .arn
        .starts_with("arn:aws:kms:eu-central-1:123456789012:key/"));
    assert_eq!(std::fs::metadata(&root_key).unwrap().len(), 32);
    assert!(!home.path().join("home/kms/root.key").exists());

    std::env::set_var("ATREST_PRINCIPAL", "arn:aws:iam::123456789012:user/alice");
    assert_eq!(
        LocalKmsConfig::from_env().unwrap().principal,
        "arn:aws:iam::123456789012:user/alice"
    );
    std::env::set_var("ATREST_CLOCK_OFFSET", "-2h");
    let behind = LocalKmsConfig::from_env().unwrap().clock.now() - OffsetDateTime::now_utc();
    assert!(behind < Duration::minutes(-119), "{behind}");

    for (var, bad) in [
        ("ATREST_CLOCK_OFFSET", "soon"),
        ("ATREST_ACCOUNT", "42"),
        ("ATREST_REGION", "Mars Base"),
    ] {
        let good = std::env::var(var).unwrap();
        std::env::set_var(var, bad);
        let err = LocalKmsConfig::from_env().unwrap_err();
        assert!(matches!(err, KmsError::Validation(_)), "{var}={bad}: {err}");
        std::env::set_var(var, good);
    }
}
