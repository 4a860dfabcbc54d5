//! SSE-C: objects encrypted under a key the customer sends with every request and
//! atrest never stores.
//!
//! The object's key is HKDF-SHA256 (RFC 5869) of the customer key with a fresh
//! random salt per object and `OBJECT_LABEL || object ARN` as the info; the header
//! keeps the salt and a *key check*, the same derivation with `CHECK_LABEL`, so that
//! a GET with the wrong key is refused before any byte is decrypted, and a damaged
//! object is still told apart from a wrong key. Neither value reveals the key (HKDF
//! is a PRF keyed by it) and the key check is bound to the object's salt, so two
//! objects under the same key do not even share it.

use md5::{Digest, Md5};
use ring::hkdf;
use zeroize::Zeroizing;

use crate::bucket_key::Key32;
use crate::format::{CUSTOMER_KEY_CHECK_LEN, CUSTOMER_KEY_SALT_LEN};
use crate::Error;

const OBJECT_LABEL: &[u8] = b"atrest sse-c object key v1\0";
const CHECK_LABEL: &[u8] = b"atrest sse-c key check v1\0";

/// A customer-provided AES-256 key (`x-amz-server-side-encryption-customer-key`).
/// Zeroized on drop; `Debug` prints nothing of it.
pub struct CustomerKey {
    key: Key32,
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomerKey { .. }")
    }
}

impl CustomerKey {
    /// The key from its 32 bytes (S3 accepts AES256 keys only).
    pub fn new(bytes: &[u8]) -> Result<CustomerKey, Error> {
        let bytes: &[u8; 32] = bytes.try_into().map_err(|_| {
            Error::InvalidArgument(
                "The secret key was invalid for the specified algorithm: an SSE-C key is 256 \
                 bits (32 bytes)"
                    .into(),
            )
        })?;
        Ok(CustomerKey {
            key: Zeroizing::new(*bytes),
        })
    }

    /// MD5 of the key (`x-amz-server-side-encryption-customer-key-MD5`).
    pub fn md5(&self) -> [u8; 16] {
        Md5::digest(&self.key[..]).into()
    }

    fn derive(&self, salt: &[u8; CUSTOMER_KEY_SALT_LEN], info: &[&[u8]]) -> Key32 {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.key[..]);
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 255 * 32 limit, so expand cannot fail.
        if let Ok(okm) = prk.expand(info, hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut out[..]);
        }
        out
    }

    /// The key that seals the object's segments.
    pub(crate) fn object_key(&self, salt: &[u8; CUSTOMER_KEY_SALT_LEN], object_arn: &str) -> Key32 {
        self.derive(salt, &[OBJECT_LABEL, object_arn.as_bytes()])
    }

    /// The key check the header records.
    pub(crate) fn key_check(
        &self,
        salt: &[u8; CUSTOMER_KEY_SALT_LEN],
    ) -> [u8; CUSTOMER_KEY_CHECK_LEN] {
        *self.derive(salt, &[CHECK_LABEL])
    }

    /// Whether this is the key an object was written with (constant time).
    pub(crate) fn matches(
        &self,
        salt: &[u8; CUSTOMER_KEY_SALT_LEN],
        key_check: &[u8; CUSTOMER_KEY_CHECK_LEN],
    ) -> bool {
        let ours = self.key_check(salt);
        ours.iter()
            .zip(key_check)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_checks_depend_on_key_salt_and_object() {
        let a = CustomerKey::new(&[1; 32]).unwrap();
        let b = CustomerKey::new(&[2; 32]).unwrap();
        let (s1, s2) = ([7; 32], [8; 32]);
        assert!(a.matches(&s1, &a.key_check(&s1)));
        assert!(!b.matches(&s1, &a.key_check(&s1)));
        assert_ne!(a.key_check(&s1), a.key_check(&s2));
        assert_ne!(*a.object_key(&s1, "arn:x"), *a.object_key(&s1, "arn:y"));
        assert_ne!(*a.object_key(&s1, "arn:x"), *b.object_key(&s1, "arn:x"));
        assert_ne!(*a.object_key(&s1, "arn:x"), a.key_check(&s1));
        assert!(CustomerKey::new(&[0; 16]).is_err());
        assert_eq!(format!("{a:?}"), "CustomerKey { .. }");
    }
}
