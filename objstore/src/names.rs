//! Bucket-name and object-key rules, and how keys map to file names.
//!
//! Object keys never reach the file system: an object's file is named by the SHA-256
//! of its key, so no key (`../x`, `a/./b`, 1024 bytes of `/`) can name a path outside
//! its bucket or exceed the file-name limit. The key itself is kept in the object's
//! header.

use sha2::{Digest, Sha256};

use crate::format::MAX_OBJECT_KEY_LEN;
use crate::Error;

/// Checks `name` against S3's rules for general-purpose bucket names.
pub fn validate_bucket_name(name: &str) -> Result<(), Error> {
    let fail = |reason: &str| {
        Err(Error::InvalidBucketName {
            name: name.chars().take(80).collect(),
            reason: reason.to_owned(),
        })
    };
    if !(3..=63).contains(&name.len()) {
        return fail("bucket names must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return fail("bucket names may only contain lowercase letters, digits, '.' and '-'");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return fail("bucket names must begin and end with a letter or digit");
    }
    if name.contains("..") {
        return fail("bucket names must not contain two adjacent periods");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return fail("bucket names must not be formatted as an IP address");
    }
    for prefix in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if name.starts_with(prefix) {
            return fail("bucket names must not start with a reserved prefix");
        }
    }
    for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if name.ends_with(suffix) {
            return fail("bucket names must not end with a reserved suffix");
        }
    }
    Ok(())
}

/// Checks an object key: 1..=1024 bytes of UTF-8 (guaranteed by `&str`), no NUL,
/// and no `.` or `..` path segment (which HTTP clients and proxies rewrite, so such a
/// key would not reach the same object twice).
pub fn validate_object_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("the object key is empty".into()));
    }
    if key.len() > MAX_OBJECT_KEY_LEN {
        return Err(Error::KeyTooLong { len: key.len() });
    }
    if key.contains('\0') {
        return Err(Error::InvalidArgument(
            "the object key contains a NUL character".into(),
        ));
    }
    if key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(Error::InvalidArgument(
            "the object key has a '.' or '..' path segment".into(),
        ));
    }
    Ok(())
}

/// The file name of `key`'s object: 64 hex digits of SHA-256(key), plus `.obj`.
pub(crate) fn object_file_name(key: &str) -> String {
    format!("{}.obj", hex::encode(Sha256::digest(key.as_bytes())))
}

/// The bucket's ARN, the value of the `aws:s3:arn` encryption-context pair of its
/// bucket keys.
pub fn bucket_arn(bucket: &str) -> String {
    format!("arn:aws:s3:::{bucket}")
}

/// The object's ARN, the value of the `aws:s3:arn` encryption-context pair.
pub fn object_arn(bucket: &str, key: &str) -> String {
    format!("arn:aws:s3:::{bucket}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.2026", "a1b", &"a".repeat(63)] {
            validate_bucket_name(ok).unwrap();
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "Upper",
            "-abc",
            "abc-",
            "a..b",
            "192.168.5.4",
            "xn--abc",
            "abc-s3alias",
            "a_b",
            "../etc",
            "a/b",
        ] {
            let err = validate_bucket_name(bad).unwrap_err();
            assert_eq!(err.s3_code(), "InvalidBucketName", "{bad}");
        }
    }

    #[test]
    fn object_keys() {
        for ok in [
            "a",
            "dir/file.txt",
            "..a",
            "a..",
            "a/.../b",
            "ünïcødé/ключ",
            "/lead",
        ] {
            validate_object_key(ok).unwrap();
        }
        assert_eq!(
            validate_object_key(&"k".repeat(1025))
                .unwrap_err()
                .s3_code(),
            "KeyTooLongError"
        );
        validate_object_key(&"k".repeat(1024)).unwrap();
        for bad in ["", "..", "../x", "a/../b", "a/./b", "x/..", "nul\0"] {
            assert!(validate_object_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names_are_fixed_length_hex() {
        let long = "/".repeat(1024);
        for key in ["a", "../../etc/passwd", long.as_str()] {
            let name = object_file_name(key);
            assert_eq!(name.len(), 68);
            assert!(name[..64].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(object_file_name("a"), object_file_name("b"));
    }
}
