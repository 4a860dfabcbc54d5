//! The ciphertext-blob format: AES-256-GCM under CMK material, encryption context as AAD.
//!
//! A blob is a fixed header (magic, version, the CMK's id, the material version, the
//! nonce) followed by the GCM ciphertext and tag. The AAD is the header followed by
//! [`encode_context`] of the encryption context, so any change to the header, the
//! ciphertext or the context fails authentication. Byte table: docs/FORMAT.md.
//!
//! [`parse`] is the one parser of untrusted blobs; it and [`open`] never panic.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::kms::{EncryptionContext, KmsError};
use crate::secret::{fill_random, Aes256Key, SecretBytes};

/// First bytes of every blob.
pub const MAGIC: [u8; 4] = *b"ATKB";
/// The one format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the ciphertext: magic, version, key id, material version, nonce.
pub const HEADER_LEN: usize = 4 + 1 + 16 + 4 + NONCE_LEN;
/// The AES-GCM nonce: 96 random bits per blob.
pub const NONCE_LEN: usize = 12;
/// The AES-GCM authentication tag that ends every blob.
pub const TAG_LEN: usize = 16;
/// Encrypt takes at most 4096 bytes of plaintext (as AWS KMS).
pub const MAX_PLAINTEXT_LEN: usize = 4096;
/// The longest blob [`parse`] accepts: a full-size plaintext in a version-1 blob.
pub const MAX_BLOB_LEN: usize = HEADER_LEN + MAX_PLAINTEXT_LEN + TAG_LEN;

/// The authenticated but unencrypted part of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobHeader {
    /// The CMK whose material sealed the blob.
    pub key_id: Uuid,
    /// Which of the CMK's material versions (0 = the original, +1 per rotation).
    pub material_version: u32,
    /// The AES-GCM nonce the blob was sealed with.
    pub nonce: [u8; NONCE_LEN],
}

impl BlobHeader {
    /// The header's bytes, exactly as they lead the blob.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5..21].copy_from_slice(self.key_id.as_bytes());
        out[21..25].copy_from_slice(&self.material_version.to_le_bytes());
        out[25..HEADER_LEN].copy_from_slice(&self.nonce);
        out
    }
}

/// A blob split into its parts; borrows the caller's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedBlob<'a> {
    /// The decoded header (key id, material version, nonce).
    pub header: BlobHeader,
    header_bytes: &'a [u8],
    /// GCM ciphertext followed by the 16-byte tag.
    sealed: &'a [u8],
}

impl ParsedBlob<'_> {
    /// Length of the plaintext the blob holds.
    pub fn plaintext_len(&self) -> usize {
        self.sealed.len() - TAG_LEN
    }
}

/// The canonical encoding of an encryption context, used as part of the AAD:
/// u32 LE pair count, then for each pair in byte order of keys: u32 LE key length,
/// key bytes (UTF-8), u32 LE value length, value bytes.
pub fn encode_context(context: &EncryptionContext) -> Vec<u8> {
    let size = 4 + context
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len_u32(context.len()).to_le_bytes());
    for (key, value) in context {
        out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&len_u32(value.len()).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Context sizes are bounded far below 4 GiB by the callers (AWS limits a context to
/// 8 KiB); saturating keeps the encoding total even for absurd inputs, and a
/// saturated length can only make authentication fail, never succeed wrongly,
/// because the bytes themselves follow.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn invalid(why: &str) -> KmsError {
    KmsError::InvalidCiphertext(format!("the ciphertext blob is not valid: {why}"))
}

/// Splits `blob` into header and sealed part, checking magic, version and lengths.
/// Does not authenticate: only [`open`] with the right material does.
pub fn parse(blob: &[u8]) -> Result<ParsedBlob<'_>, KmsError> {
    if blob.len() < HEADER_LEN + TAG_LEN {
        return Err(invalid("it is shorter than the smallest blob"));
    }
    if blob.len() > MAX_BLOB_LEN {
        return Err(invalid("it is longer than the largest blob"));
    }
    let (header_bytes, sealed) = blob.split_at(HEADER_LEN);
    if header_bytes[0..4] != MAGIC {
        return Err(invalid("it is not an atrest ciphertext blob"));
    }
    if header_bytes[4] != VERSION {
        return Err(invalid("unknown format version"));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&header_bytes[5..21]);
    let mut version = [0u8; 4];
    version.copy_from_slice(&header_bytes[21..25]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&header_bytes[25..HEADER_LEN]);
    Ok(ParsedBlob {
        header: BlobHeader {
            key_id: Uuid::from_bytes(id),
            material_version: u32::from_le_bytes(version),
            nonce,
        },
        header_bytes,
        sealed,
    })
}

fn aad(header: &[u8], context: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 64);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&encode_context(context));
    aad
}

/// Seals `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes) under `material`, version
/// `material_version` of CMK `key_id`, with a fresh random nonce.
pub fn seal(
    material: &Aes256Key,
    key_id: Uuid,
    material_version: u32,
    plaintext: &[u8],
    context: &EncryptionContext,
) -> Result<Vec<u8>, KmsError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: \
             Member must have length less than or equal to {MAX_PLAINTEXT_LEN}"
        )));
    }
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    let header = BlobHeader {
        key_id,
        material_version,
        nonce,
    }
    .encode();
    let cipher = Aes256Gcm::new(material.expose().into());
    let mut blob = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    blob.extend_from_slice(&header);
    blob.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            &aad(&header, context),
            (&mut blob[HEADER_LEN..]).into(),
        )
        .map_err(|_| KmsError::Internal("AES-GCM refused to encrypt".into()))?;
    blob.extend_from_slice(&tag);
    Ok(blob)
}

/// Authenticates and decrypts a parsed blob. The caller has already matched
/// `blob.header.key_id`/`material_version` to `material`. Every failure is the same
/// opaque InvalidCiphertextException.
pub fn open(
    material: &Aes256Key,
    blob: &ParsedBlob<'_>,
    context: &EncryptionContext,
) -> Result<SecretBytes, KmsError> {
    let cipher = Aes256Gcm::new(material.expose().into());
    let (ciphertext, tag) = blob.sealed.split_at(blob.sealed.len() - TAG_LEN);
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_inout_detached(
            &Nonce::from(blob.header.nonce),
            &aad(blob.header_bytes, context),
            plaintext.as_mut_slice().into(),
            tag.try_into().map_err(|_| invalid("bad tag length"))?,
        )
        .map_err(|_| {
            invalid(
                "it was altered, made under other key material, or the encryption context differs",
            )
        })?;
    Ok(SecretBytes::from_zeroizing(plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_and_layout() {
        let key = Aes256Key::random();
        let id = Uuid::new_v4();
        let ctx = context(&[("atrest:volume-id", "v1")]);
        let blob = seal(&key, id, 7, b"data key bytes", &ctx).unwrap();
        assert_eq!(blob.len(), HEADER_LEN + 14 + TAG_LEN);
        assert_eq!(&blob[0..4], b"ATKB");
        let parsed = parse(&blob).unwrap();
        assert_eq!(parsed.header.key_id, id);
        assert_eq!(parsed.header.material_version, 7);
        assert_eq!(parsed.plaintext_len(), 14);
        assert_eq!(
            open(&key, &parsed, &ctx).unwrap().expose(),
            b"data key bytes"
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let key = Aes256Key::random();
        let a = seal(&key, Uuid::nil(), 0, b"x", &EncryptionContext::new()).unwrap();
        let b = seal(&key, Uuid::nil(), 0, b"x", &EncryptionContext::new()).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn context_encoding_is_unambiguous() {
        let a = encode_context(&context(&[("ab", "c")]));
        let b = encode_context(&context(&[("a", "bc")]));
        assert_ne!(a, b);
        assert_eq!(encode_context(&EncryptionContext::new()), vec![0, 0, 0, 0]);
    }

    #[test]
    fn oversized_plaintext_and_blobs_are_refused() {
        let key = Aes256Key::random();
        let big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            seal(&key, Uuid::nil(), 0, &big, &EncryptionContext::new()),
            Err(KmsError::Validation(_))
        ));
        let max = seal(&key, Uuid::nil(), 0, &big[1..], &EncryptionContext::new()).unwrap();
        assert_eq!(max.len(), MAX_BLOB_LEN);
        parse(&max).unwrap();
        let mut longer = max.clone();
        longer.push(0);
        assert!(matches!(
            parse(&longer),
            Err(KmsError::InvalidCiphertext(_))
        ));
    }
}
