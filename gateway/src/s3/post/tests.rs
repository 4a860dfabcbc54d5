use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::form::*;
use super::policy::*;
use super::*;

fn encode(json: &str) -> String {
    BASE64.encode(json)
}

#[test]
fn policies_parse_and_check_conditions_and_coverage() {
    let policy = Policy::parse(&encode(
        r#"{"expiration":"2030-01-01T00:00:00.000Z","conditions":[{"bucket":"b"},
        ["starts-with","$key","up/"],["eq","$x-amz-algorithm","AWS4-HMAC-SHA256"],
        ["content-length-range",1,"10"]]}"#,
    ))
    .unwrap();
    assert_eq!(policy.length_range(), Some((1, 10)));
    let mut fields = BTreeMap::new();
    fields.insert("key".to_owned(), "up/a".to_owned());
    fields.insert("x-amz-algorithm".to_owned(), "AWS4-HMAC-SHA256".to_owned());
    fields.insert("policy".to_owned(), "p".to_owned());
    fields.insert("x-ignore-me".to_owned(), "p".to_owned());
    policy.check(&fields, "b").unwrap();
    assert!(policy.check(&fields, "c").is_err());
    fields.insert("key".to_owned(), "other/a".to_owned());
    let err = policy.check(&fields, "b").unwrap_err();
    assert_eq!(err.s3_code(), "AccessDenied");
    assert!(err.message().contains("starts-with"), "{}", err.message());
    fields.insert("key".to_owned(), "up/a".to_owned());
    fields.insert("acl".to_owned(), "public-read".to_owned());
    let err = policy.check(&fields, "b").unwrap_err();
    assert_eq!(
        err.message(),
        "Invalid according to Policy: Extra input fields: acl"
    );
}

#[test]
fn bad_policies_are_invalid_documents() {
    for bad in [
        "not base64!",
        &encode("[]"),
        &encode(r#"{"conditions":[]}"#),
        &encode(r#"{"expiration":"tomorrow","conditions":[]}"#),
        &encode(r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["in","$key","x"]]}"#),
        &encode(r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[{"a":"1","b":"2"}]}"#),
        &encode(
            r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["content-length-range",9,1]]}"#,
        ),
    ] {
        let err = Policy::parse(bad).unwrap_err();
        assert_eq!(err.s3_code(), "InvalidPolicyDocument", "{bad}");
    }
}

#[test]
fn find_locates_the_first_whole_needle() {
    assert_eq!(find(b"ab\r\n-\r\n--B", b"\r\n--B"), Some(5));
    assert_eq!(find(b"ab\r\n--", b"\r\n--B"), None);
    assert_eq!(find(b"", b"\r\n"), None);
    assert_eq!(find(b"\r\n", b"\r\n"), Some(0));
}

#[test]
fn forms_read_fields_then_the_file_within_the_policy() {
    let policy = encode(
        r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["starts-with","$key","a/"],
        ["content-length-range",1,5]]}"#,
    );
    let body = |file: &str| {
        format!(
            "preamble\r\n--B\r\nContent-Disposition: form-data; name=\"Key\"\r\n\r\n\
             a/${{filename}}\r\n--B\r\nContent-Disposition: form-data; name=\"policy\"\r\n\
             \r\n{policy}\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"f\"\r\nContent-Type: text/plain\r\n\r\n{file}\r\n--B--\r\n"
        )
    };
    let read = |file: &str| read_form("multipart/form-data; boundary=B", body(file).as_bytes());
    assert_eq!(read("hello").unwrap(), b"hello");
    assert_eq!(read("toolong").unwrap_err().s3_code(), "EntityTooLarge");
    assert_eq!(read("").unwrap_err().s3_code(), "EntityTooSmall");
    let err = read_form("multipart/form-data; boundary=C", body("x").as_bytes());
    assert_eq!(err.unwrap_err().s3_code(), "IncompleteBody");
    let err = read_form("application/x-www-form-urlencoded", b"key=x");
    assert_eq!(err.unwrap_err().s3_code(), "PreconditionFailed");
    let twice = body("x").replacen("name=\"policy\"", "name=\"key\"", 1);
    let err = read_form("multipart/form-data; boundary=B", twice.as_bytes()).unwrap_err();
    assert!(
        err.message().contains("more than once"),
        "{}",
        err.message()
    );
}

#[test]
fn dispositions_parse_quoted_names() {
    let d = parse_disposition(r#"form-data; name="file"; filename="a;b \"c\".txt""#).unwrap();
    assert_eq!(d.name, "file");
    assert_eq!(d.filename.as_deref(), Some(r#"a;b "c".txt"#));
    assert!(parse_disposition("attachment; name=x").is_err());
    assert!(parse_disposition("form-data; filename=x").is_err());
}

#[test]
fn the_file_streams_up_to_its_boundary_within_its_range() {
    let body = b"data\r\n--XyZ\r\nmore\r\n--XyZ--\r\n".to_vec();
    let read = |range| {
        let mut src: &[u8] = &body;
        let mut form = Form {
            src: &mut src,
            buf: Vec::new(),
            delimiter: b"\r\n--XyZ".to_vec(),
        };
        let mut out = Vec::new();
        let mut file = FileReader {
            form: &mut form,
            range,
            read: 0,
            done: false,
        };
        file.read_to_end(&mut out).map(|_| out)
    };
    assert_eq!(read(None).unwrap(), b"data");
    assert_eq!(read(Some((4, 4))).unwrap(), b"data");
    let err = UploadBody::<&mut dyn BufRead>::error_of(read(Some((0, 3))).unwrap_err());
    assert_eq!(err.s3_code(), "EntityTooLarge");
    let err = UploadBody::<&mut dyn BufRead>::error_of(read(Some((5, 9))).unwrap_err());
    assert_eq!(err.s3_code(), "EntityTooSmall");
    let mut src: &[u8] = b"data without an end";
    let mut form = Form {
        src: &mut src,
        buf: Vec::new(),
        delimiter: b"\r\n--XyZ".to_vec(),
    };
    let mut file = FileReader {
        form: &mut form,
        range: None,
        read: 0,
        done: false,
    };
    let err = file.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(
        UploadBody::<&mut dyn BufRead>::error_of(err).s3_code(),
        "IncompleteBody"
    );
}
