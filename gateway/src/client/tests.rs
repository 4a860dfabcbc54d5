use super::*;

#[test]
fn endpoints_parse_with_host_headers() {
    let e = Endpoint::parse("http://127.0.0.1:4599").unwrap();
    assert_eq!(e.host, "127.0.0.1:4599");
    assert_eq!(e.path, "/");
    let e = Endpoint::parse("https://kms.us-east-1.amazonaws.com:443/").unwrap();
    assert_eq!(e.host, "kms.us-east-1.amazonaws.com");
    let e = Endpoint::parse("http://[::1]:8080/kms").unwrap();
    assert_eq!(e.host, "[::1]:8080");
    assert_eq!(e.path, "/kms");
    for bad in [
        "",
        "ftp://x",
        "127.0.0.1:4599",
        "http://",
        "http://u@h/",
        "http://h:x/",
        "http://h/?q",
    ] {
        assert!(Endpoint::parse(bad).is_err(), "accepted {bad}");
    }
}

#[test]
fn profiles_are_read_from_ini_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials");
    std::fs::write(
        &path,
        "[default]\naws_access_key_id = A\n# comment\n[profile p]\nregion=eu-west-1\n[other]\naws_access_key_id=B\n",
    )
    .unwrap();
    assert_eq!(
        profile_value(&path, "default", "aws_access_key_id").as_deref(),
        Some("A")
    );
    assert_eq!(
        profile_value(&path, "other", "aws_access_key_id").as_deref(),
        Some("B")
    );
    assert_eq!(
        profile_value(&path, "profile p", "region").as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(profile_value(&path, "missing", "region"), None);
}
