use super::actions::object_path;
use super::*;

#[test]
fn the_console_owns_its_prefix_only() {
    assert!(owns("/console"));
    assert!(owns("/console/"));
    assert!(owns("/console/api/kms"));
    assert!(!owns("/consoles/key"));
    assert!(!owns("/"));
    assert!(!owns("/bucket/console/x"));
}

#[test]
fn the_cookie_is_found_among_others() {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        HeaderValue::from_static("a=1; atrest_console=tok; b=2"),
    );
    assert_eq!(cookie_token(&headers).as_deref(), Some("tok"));
    assert_eq!(cookie_token(&HeaderMap::new()), None);
}

#[test]
fn the_cookie_is_http_only_strict_and_secure_under_tls() {
    let plain = session_cookie("t", false, None);
    let plain = plain.to_str().unwrap();
    assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
    assert!(!plain.contains("Secure"));
    assert!(session_cookie("t", true, None)
        .to_str()
        .unwrap()
        .contains("; Secure"));
}

#[test]
fn object_paths_are_encoded_per_segment() {
    assert_eq!(object_path("b", "a/<img>.png"), "/b/a/%3Cimg%3E.png");
    assert_eq!(object_path("b", ""), "/b");
    assert_eq!(object_path("", ""), "/");
}

#[test]
fn plaintext_operations_are_not_offered() {
    for op in [
        "Decrypt",
        "GenerateDataKey",
        "Encrypt",
        "ReEncrypt",
        "GenerateRandom",
    ] {
        assert!(!KMS_OPERATIONS.contains(&op));
    }
}

#[test]
fn assets_have_no_inline_script_or_handlers() {
    let lower = INDEX_HTML.to_ascii_lowercase();
    assert_eq!(lower.matches("<script").count(), 1);
    assert!(lower.contains("<script src=\"/console/app.js\"></script>"));
    // No inline event handler attribute (` onload=`, ` onclick=` ...).
    let handlers = lower.match_indices(" on").filter(|(at, _)| {
        let rest = &lower[at + 3..];
        let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        name_len > 0 && rest[name_len..].starts_with('=')
    });
    assert_eq!(handlers.count(), 0);
    assert!(!APP_JS.contains("innerHTML"));
    assert!(!APP_JS.contains("eval("));
}
