//! The object file format, version 1 (byte tables in `docs/FORMAT.md`).
//!
//! An object file is a header followed by the sealed segments. The header has two
//! parts: the *bound* part (everything known before the first byte of the body is
//! read: names, the wrapped data key, the encryption context, the nonce prefix) whose
//! SHA-256 is bound into every segment's AAD, and the *summary* (plaintext length,
//! ETag, last-modified time) which is only known once the body has been read and is
//! bound into the final segment's AAD. A SHA-256 checksum over both ends the header.
//!
//! [`ObjectHeader::decode`] is the one parser of header bytes: it never panics,
//! rejects trailing bytes and non-canonical encodings, and names the first thing that
//! is wrong.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// First bytes of every object file.
pub const MAGIC: [u8; 8] = *b"ATRS3OBJ";
/// The format version this code writes for an object without system metadata (and
/// reads).
pub const VERSION: u16 = 1;
/// Version 1 plus a system-metadata field at the end of the bound part (written only
/// when there is system metadata, so other objects stay readable by older builds).
pub const VERSION_SYSTEM_METADATA: u16 = 2;
/// Plaintext bytes per segment (every segment but the last is exactly this long).
pub const SEGMENT_SIZE: u32 = 64 * 1024;
/// AES-GCM tag appended to every segment.
pub const TAG_LEN: usize = 16;
/// Random per-object nonce prefix; the nonce is `prefix || segment index (u32 LE)`.
pub const NONCE_PREFIX_LEN: usize = 8;
/// Upper bound on a header, so a reader never allocates more than this for one.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// S3's limit on object key length, in UTF-8 bytes.
pub const MAX_OBJECT_KEY_LEN: usize = 1024;
/// Longest CMK ARN the header holds (AWS's limit for key identifiers).
pub const MAX_KEY_ARN_LEN: usize = 2048;
/// Longest wrapped data key the header holds (AWS's ciphertext-blob limit).
pub const MAX_WRAPPED_KEY_LEN: usize = 6144;
/// Longest content type the header holds.
pub const MAX_CONTENT_TYPE_LEN: usize = 1024;
/// Bound on the encoded encryption context (the key service's own limit).
pub const MAX_CONTEXT_LEN: usize = 8192;
/// Bound on the encoded user metadata (the store enforces S3's tighter 2 KB limit).
pub const MAX_USER_METADATA_LEN: usize = 8192;
/// Object sizes the format accepts: S3's 5 TiB single-object limit. With 64 KiB
/// segments that keeps the segment index far inside the nonce's 32 bits.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// Salt of a per-object key derived from a bucket key (HKDF-SHA256).
pub const BUCKET_KEY_SALT_LEN: usize = 32;

/// AES-256-GCM, 64 KiB segments, the object's own data key.
const CIPHER_AES_256_GCM: u16 = 1;
/// AES-256-GCM, 64 KiB segments, a key derived from a bucket key; the wrapped-key
/// field holds the salt, then the wrapped bucket key.
const CIPHER_AES_256_GCM_BUCKET_KEY: u16 = 2;
/// As 1, SSE-S3: the data key is wrapped by the AWS managed key `alias/aws/s3`.
const CIPHER_AES_256_GCM_SSE_S3: u16 = 3;
/// As 2, SSE-S3: the bucket key is wrapped by the AWS managed key.
const CIPHER_AES_256_GCM_SSE_S3_BUCKET_KEY: u16 = 4;
/// AES-256-GCM, 64 KiB segments, SSE-C: the object key is derived from the customer's
/// key, which is never stored; the wrapped-key field holds the salt, then the key
/// check; the key ARN and the encryption context are empty.
const CIPHER_AES_256_GCM_CUSTOMER_KEY: u16 = 5;
/// Salt of an SSE-C object key derivation, and length of its key check.
pub const CUSTOMER_KEY_SALT_LEN: usize = 32;
/// Length of an SSE-C object's key check.
pub const CUSTOMER_KEY_CHECK_LEN: usize = 32;
const CHECKSUM_LEN: usize = 32;

// Offsets of the fixed part; each is the previous one plus its size.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 8;
const OFF_CIPHER: usize = OFF_VERSION + 2;
const OFF_HEADER_LEN: usize = OFF_CIPHER + 2;
const OFF_SEGMENT_SIZE: usize = OFF_HEADER_LEN + 4;
const OFF_NONCE_PREFIX: usize = OFF_SEGMENT_SIZE + 4;
const OFF_BUCKET_LEN: usize = OFF_NONCE_PREFIX + NONCE_PREFIX_LEN;
const OFF_KEY_LEN: usize = OFF_BUCKET_LEN + 2;
const OFF_KEY_ARN_LEN: usize = OFF_KEY_LEN + 2;
const OFF_WRAPPED_KEY_LEN: usize = OFF_KEY_ARN_LEN + 2;
const OFF_CONTENT_TYPE_LEN: usize = OFF_WRAPPED_KEY_LEN + 2;
const OFF_CONTEXT_LEN: usize = OFF_CONTENT_TYPE_LEN + 2;
const OFF_USER_METADATA_LEN: usize = OFF_CONTEXT_LEN + 2;
const OFF_VARIABLE: usize = OFF_USER_METADATA_LEN + 2;
/// Size of the summary that follows the bound part: plaintext length, ETag, time.
const SUMMARY_LEN: usize = 8 + 16 + 8;

/// Who holds the key that protects the object's key: S3's three server-side
/// encryption modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sse {
    /// SSE-KMS (`aws:kms`): a customer's (or the managed) CMK wraps the data key.
    Kms,
    /// SSE-S3 (`AES256`): the AWS managed key `alias/aws/s3` wraps the data key.
    S3,
    /// SSE-C: the object key is derived from the customer's key (HKDF-SHA256 with
    /// `salt`); `key_check` lets a GET tell a wrong key from a tampered object
    /// (see `docs/FORMAT.md`). Neither reveals the key.
    Customer {
        /// Salt of the object key's derivation from the customer's key.
        salt: [u8; CUSTOMER_KEY_SALT_LEN],
        /// Lets a GET tell the customer's key from another without revealing it.
        key_check: [u8; CUSTOMER_KEY_CHECK_LEN],
    },
}

/// Everything fixed before the body is read. Its SHA-256 ([`ObjectHeader::bound_digest`])
/// is in every segment's AAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundHeader {
    /// The object's bucket.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// ARN of the CMK that wrapped the data key.
    pub key_arn: String,
    /// The key service's ciphertext blob of the 32-byte data key, or of the bucket
    /// key when `bucket_key_salt` is set.
    pub wrapped_key: Vec<u8>,
    /// Set when the object's key is derived from a bucket key: the fresh random salt
    /// of the derivation (see `docs/FORMAT.md`).
    pub bucket_key_salt: Option<[u8; BUCKET_KEY_SALT_LEN]>,
    /// `Content-Type`.
    pub content_type: String,
    /// The full encryption context the data key was generated under (including
    /// `aws:s3:arn`).
    pub encryption_context: BTreeMap<String, String>,
    /// `x-amz-meta-*` pairs, names lower-case.
    pub user_metadata: BTreeMap<String, String>,
    /// The stored HTTP headers (`cache-control`, `content-disposition`,
    /// `content-encoding`, `content-language`, `expires`), names lower-case. Non-empty
    /// only in version 2 headers.
    pub system_metadata: BTreeMap<String, String>,
    /// Random per object: the start of every segment's nonce.
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// The server-side encryption mode (the header's cipher field, with
    /// `bucket_key_salt`).
    pub sse: Sse,
}

/// What is known once the body has been read; bound into the final segment's AAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The object's size in bytes.
    pub plaintext_len: u64,
    /// MD5 of the plaintext (S3's ETag of a single PUT).
    pub etag: [u8; 16],
    /// Milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
}

/// A decoded, valid version-1 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHeader {
    /// Fixed before the body is read.
    pub bound: BoundHeader,
    /// Known once the body is read.
    pub summary: Summary,
}

/// What is wrong with header bytes. The caller adds the file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(what: impl Into<String>) -> FormatError {
    FormatError(what.into())
}

/// Bytes of `n` plaintext bytes on disk: every segment's ciphertext plus its tag.
/// An empty object still has one (empty, final) segment, so that its summary is sealed.
pub fn sealed_len(plaintext_len: u64) -> u64 {
    plaintext_len + segment_count(plaintext_len) * TAG_LEN as u64
}

/// Number of segments of an object of `plaintext_len` bytes (at least one).
pub fn segment_count(plaintext_len: u64) -> u64 {
    plaintext_len.div_ceil(u64::from(SEGMENT_SIZE)).max(1)
}

impl BoundHeader {
    /// Length of the encoded bound part, or an error naming the field that is too long.
    fn encoded_len(&self) -> Result<usize, FormatError> {
        let context = encode_pairs(&self.encryption_context);
        let user = encode_pairs(&self.user_metadata);
        if let Sse::Customer { .. } = self.sse {
            if self.bucket_key_salt.is_some()
                || !self.key_arn.is_empty()
                || !self.wrapped_key.is_empty()
                || !self.encryption_context.is_empty()
            {
                return Err(bad(
                    "an SSE-C object has no bucket key, key ARN, wrapped key or context",
                ));
            }
        }
        let system = self.system_pairs();
        let fields: [(&str, usize, usize); 9] = [
            ("system metadata", system.len(), MAX_USER_METADATA_LEN),
            ("bucket name", self.bucket.len(), 63),
            ("object key", self.key.len(), MAX_OBJECT_KEY_LEN),
            ("key ARN", self.key_arn.len(), MAX_KEY_ARN_LEN),
            (
                "wrapped data key",
                self.wrapped_key.len(),
                MAX_WRAPPED_KEY_LEN,
            ),
            (
                "bucket key salt or customer key check",
                self.salt().len(),
                CUSTOMER_KEY_SALT_LEN + CUSTOMER_KEY_CHECK_LEN,
            ),
            (
                "content type",
                self.content_type.len(),
                MAX_CONTENT_TYPE_LEN,
            ),
            ("encryption context", context.len(), MAX_CONTEXT_LEN),
            ("user metadata", user.len(), MAX_USER_METADATA_LEN),
        ];
        let mut total = OFF_VARIABLE;
        for (name, len, max) in fields {
            if len > max {
                return Err(bad(format!("{name} is {len} bytes, more than {max}")));
            }
            total += len;
        }
        Ok(total)
    }

    /// The encoded system metadata: nothing in version 1.
    fn system_pairs(&self) -> Vec<u8> {
        if self.system_metadata.is_empty() {
            Vec::new()
        } else {
            encode_pairs(&self.system_metadata)
        }
    }

    fn version(&self) -> u16 {
        if self.system_metadata.is_empty() {
            VERSION
        } else {
            VERSION_SYSTEM_METADATA
        }
    }

    /// What the wrapped-key field holds before the wrapped key.
    fn salt(&self) -> Vec<u8> {
        match (&self.sse, &self.bucket_key_salt) {
            (Sse::Customer { salt, key_check }, _) => [&salt[..], &key_check[..]].concat(),
            (_, Some(salt)) => salt.to_vec(),
            (_, None) => Vec::new(),
        }
    }

    fn cipher(&self) -> u16 {
        match (self.sse, self.bucket_key_salt.is_some()) {
            (Sse::Kms, false) => CIPHER_AES_256_GCM,
            (Sse::Kms, true) => CIPHER_AES_256_GCM_BUCKET_KEY,
            (Sse::S3, false) => CIPHER_AES_256_GCM_SSE_S3,
            (Sse::S3, true) => CIPHER_AES_256_GCM_SSE_S3_BUCKET_KEY,
            (Sse::Customer { .. }, _) => CIPHER_AES_256_GCM_CUSTOMER_KEY,
        }
    }
}

impl ObjectHeader {
    /// Encoded length of a header with this bound part (the summary does not change it).
    pub fn encoded_len(bound: &BoundHeader) -> Result<usize, FormatError> {
        Ok(bound.encoded_len()? + SUMMARY_LEN + CHECKSUM_LEN)
    }

    /// The header bytes: bound part, summary, checksum.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let b = &self.bound;
        let bound_len = b.encoded_len()?;
        let total = bound_len + SUMMARY_LEN + CHECKSUM_LEN;
        let context = encode_pairs(&b.encryption_context);
        let user = encode_pairs(&b.user_metadata);
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&b.version().to_le_bytes());
        out.extend_from_slice(&b.cipher().to_le_bytes());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&SEGMENT_SIZE.to_le_bytes());
        out.extend_from_slice(&b.nonce_prefix);
        // Every length was checked against a bound below 65536 in `encoded_len`.
        for len in [
            b.bucket.len(),
            b.key.len(),
            b.key_arn.len(),
            b.salt().len() + b.wrapped_key.len(),
            b.content_type.len(),
            context.len(),
            user.len(),
        ] {
            out.extend_from_slice(&(len as u16).to_le_bytes());
        }
        out.extend_from_slice(b.bucket.as_bytes());
        out.extend_from_slice(b.key.as_bytes());
        out.extend_from_slice(b.key_arn.as_bytes());
        out.extend_from_slice(&b.salt());
        out.extend_from_slice(&b.wrapped_key);
        out.extend_from_slice(b.content_type.as_bytes());
        out.extend_from_slice(&context);
        out.extend_from_slice(&user);
        out.extend_from_slice(&b.system_pairs());
        debug_assert_eq!(out.len(), bound_len);
        let s = &self.summary;
        out.extend_from_slice(&s.plaintext_len.to_le_bytes());
        out.extend_from_slice(&s.etag);
        out.extend_from_slice(&s.last_modified_ms.to_le_bytes());
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        Ok(out)
    }

    /// The header's total length as recorded in its fixed part, from the first
    /// [`OFF_VARIABLE`] bytes; lets a reader fetch exactly the header before decoding.
    pub fn peek_len(prefix: &[u8]) -> Result<u32, FormatError> {
        if prefix.len() < OFF_VARIABLE {
            return Err(bad(format!(
                "file is shorter than the {OFF_VARIABLE}-byte fixed header"
            )));
        }
        if prefix[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
            return Err(bad("not an atrest object file (bad magic)"));
        }
        let len = u32_at(prefix, OFF_HEADER_LEN);
        if len < (OFF_VARIABLE + SUMMARY_LEN + CHECKSUM_LEN) as u32 || len > MAX_HEADER_LEN {
            return Err(bad(format!("header length {len} is out of range")));
        }
        Ok(len)
    }

    /// Bytes a reader must fetch to call [`ObjectHeader::peek_len`].
    pub const FIXED_LEN: usize = OFF_VARIABLE;

    /// Parses exactly one header; `bytes` must be the whole header and nothing more.
    pub fn decode(bytes: &[u8]) -> Result<ObjectHeader, FormatError> {
        let total = Self::peek_len(bytes)? as usize;
        if bytes.len() != total {
            return Err(bad(format!(
                "header is {} bytes but says it is {total}",
                bytes.len()
            )));
        }
        let (body, checksum) = bytes.split_at(total - CHECKSUM_LEN);
        if Sha256::digest(body).as_slice() != checksum {
            return Err(bad("header checksum mismatch"));
        }
        let version = u16_at(bytes, OFF_VERSION);
        if version != VERSION && version != VERSION_SYSTEM_METADATA {
            return Err(bad(format!("unsupported format version {version}")));
        }
        let cipher = u16_at(bytes, OFF_CIPHER);
        let (mode, bucket_key) = match cipher {
            CIPHER_AES_256_GCM => (Sse::Kms, false),
            CIPHER_AES_256_GCM_BUCKET_KEY => (Sse::Kms, true),
            CIPHER_AES_256_GCM_SSE_S3 => (Sse::S3, false),
            CIPHER_AES_256_GCM_SSE_S3_BUCKET_KEY => (Sse::S3, true),
            CIPHER_AES_256_GCM_CUSTOMER_KEY => (
                Sse::Customer {
                    salt: [0; CUSTOMER_KEY_SALT_LEN],
                    key_check: [0; CUSTOMER_KEY_CHECK_LEN],
                },
                false,
            ),
            _ => return Err(bad(format!("unknown cipher {cipher}"))),
        };
        let segment_size = u32_at(bytes, OFF_SEGMENT_SIZE);
        if segment_size != SEGMENT_SIZE {
            return Err(bad(format!("unsupported segment size {segment_size}")));
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&bytes[OFF_NONCE_PREFIX..OFF_NONCE_PREFIX + NONCE_PREFIX_LEN]);
        let lens: Vec<usize> = (0..7)
            .map(|i| usize::from(u16_at(bytes, OFF_BUCKET_LEN + 2 * i)))
            .collect();
        let fields_end = OFF_VARIABLE + lens.iter().sum::<usize>();
        // Version 2: the system metadata fills the rest of the bound part.
        let bound_end = total - SUMMARY_LEN - CHECKSUM_LEN;
        let fits = match version {
            VERSION => fields_end == bound_end,
            _ => fields_end < bound_end,
        };
        if !fits {
            return Err(bad(format!(
                "field lengths add up to {} bytes, not the header's {total}",
                fields_end + SUMMARY_LEN + CHECKSUM_LEN
            )));
        }
        let mut cursor = Cursor {
            bytes: &bytes[..bound_end],
            pos: OFF_VARIABLE,
        };
        let bucket = cursor.string(lens[0], "bucket name")?;
        let key = cursor.string(lens[1], "object key")?;
        let key_arn = cursor.string(lens[2], "key ARN")?;
        let mut key_field = cursor.take(lens[3], "wrapped data key")?;
        let sse = match mode {
            Sse::Customer { .. } => {
                let (salt, rest) = key_field
                    .split_first_chunk::<CUSTOMER_KEY_SALT_LEN>()
                    .ok_or_else(|| bad("the key field is shorter than the SSE-C salt"))?;
                let (key_check, rest) = rest
                    .split_first_chunk::<CUSTOMER_KEY_CHECK_LEN>()
                    .ok_or_else(|| bad("the key field is shorter than the SSE-C key check"))?;
                key_field = rest;
                Sse::Customer {
                    salt: *salt,
                    key_check: *key_check,
                }
            }
            other => other,
        };
        let bucket_key_salt = if bucket_key {
            let (salt, rest) = key_field
                .split_first_chunk::<BUCKET_KEY_SALT_LEN>()
                .ok_or_else(|| bad("the wrapped-key field is shorter than the bucket key salt"))?;
            key_field = rest;
            Some(*salt)
        } else {
            None
        };
        let wrapped_key = key_field.to_vec();
        let content_type = cursor.string(lens[4], "content type")?;
        let encryption_context = decode_pairs(cursor.take(lens[5], "encryption context")?)
            .map_err(|e| bad(format!("encryption context: {e}")))?;
        let user_metadata = decode_pairs(cursor.take(lens[6], "user metadata")?)
            .map_err(|e| bad(format!("user metadata: {e}")))?;
        let system_metadata = if version == VERSION {
            BTreeMap::new()
        } else {
            let pairs = decode_pairs(cursor.take(bound_end - fields_end, "system metadata")?)
                .map_err(|e| bad(format!("system metadata: {e}")))?;
            if pairs.is_empty() {
                return Err(bad("a version 2 header with no system metadata"));
            }
            pairs
        };
        let bound = BoundHeader {
            bucket,
            key,
            key_arn,
            wrapped_key,
            bucket_key_salt,
            content_type,
            encryption_context,
            user_metadata,
            system_metadata,
            nonce_prefix,
            sse,
        };
        // Re-checks the per-field bounds, so a decoded header always re-encodes.
        bound.encoded_len()?;
        let plaintext_len = u64_at(bytes, bound_end);
        if plaintext_len > MAX_OBJECT_SIZE {
            return Err(bad(format!("object size {plaintext_len} is out of range")));
        }
        let mut etag = [0u8; 16];
        etag.copy_from_slice(&bytes[bound_end + 8..bound_end + 24]);
        let last_modified_ms = u64_at(bytes, bound_end + 24) as i64;
        Ok(ObjectHeader {
            bound,
            summary: Summary {
                plaintext_len,
                etag,
                last_modified_ms,
            },
        })
    }

    /// SHA-256 of the encoded bound part: what every segment's AAD starts with.
    pub fn bound_digest(bound: &BoundHeader) -> Result<[u8; 32], FormatError> {
        let placeholder = ObjectHeader {
            bound: bound.clone(),
            summary: Summary {
                plaintext_len: 0,
                etag: [0; 16],
                last_modified_ms: 0,
            },
        };
        let bytes = placeholder.encode()?;
        let bound_len = bytes.len() - SUMMARY_LEN - CHECKSUM_LEN;
        Ok(Sha256::digest(&bytes[..bound_len]).into())
    }
}

/// The AAD of segment `index`: the bound digest, the index, and a final flag; the
/// final segment also carries the summary, so editing the length, ETag or time in the
/// header (and fixing its checksum) makes the last segment fail to open.
pub fn segment_aad(
    bound_digest: &[u8; 32],
    index: u64,
    final_summary: Option<&Summary>,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + 8 + 1 + SUMMARY_LEN);
    aad.extend_from_slice(bound_digest);
    aad.extend_from_slice(&index.to_le_bytes());
    match final_summary {
        None => aad.push(0),
        Some(s) => {
            aad.push(1);
            aad.extend_from_slice(&s.plaintext_len.to_le_bytes());
            aad.extend_from_slice(&s.etag);
            aad.extend_from_slice(&s.last_modified_ms.to_le_bytes());
        }
    }
    aad
}

/// The 96-bit nonce of segment `index`: the object's random prefix, then the index as
/// a little-endian u32. Unique per data key because each object has its own key and
/// [`MAX_OBJECT_SIZE`] keeps the index below 2^32.
pub fn segment_nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    nonce[NONCE_PREFIX_LEN..].copy_from_slice(&(index as u32).to_le_bytes());
    nonce
}

/// Pairs as `count: u16`, then per pair `name_len: u16, name, value_len: u16, value`,
/// names in ascending byte order (so the encoding is canonical).
fn encode_pairs(pairs: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for (name, value) in pairs {
        for s in [name, value] {
            out.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

fn decode_pairs(bytes: &[u8]) -> Result<BTreeMap<String, String>, FormatError> {
    let mut cursor = Cursor { bytes, pos: 0 };
    let count = cursor.u16("pair count")?;
    let mut pairs = BTreeMap::new();
    let mut previous: Option<String> = None;
    for _ in 0..count {
        let len = usize::from(cursor.u16("name length")?);
        let name = cursor.string(len, "name")?;
        let len = usize::from(cursor.u16("value length")?);
        let value = cursor.string(len, "value")?;
        if previous.as_deref().is_some_and(|p| p >= name.as_str()) {
            return Err(bad("names are not in strictly ascending order"));
        }
        previous = Some(name.clone());
        pairs.insert(name, value);
    }
    if cursor.pos != bytes.len() {
        return Err(bad(format!("{} trailing bytes", bytes.len() - cursor.pos)));
    }
    Ok(pairs)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| bad(format!("{what} runs past the end")))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn string(&mut self, len: usize, what: &str) -> Result<String, FormatError> {
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ObjectHeader {
        ObjectHeader {
            bound: BoundHeader {
                bucket: "photos".into(),
                key: "2026/clock.png".into(),
                key_arn: "arn:aws:kms:local:000000000000:key/k".into(),
                wrapped_key: vec![7; 200],
                bucket_key_salt: None,
                content_type: "image/png".into(),
                encryption_context: BTreeMap::from([(
                    "aws:s3:arn".into(),
                    "arn:aws:s3:::photos/2026/clock.png".into(),
                )]),
                user_metadata: BTreeMap::from([("owner".into(), "me".into())]),
                system_metadata: BTreeMap::new(),
                nonce_prefix: [1, 2, 3, 4, 5, 6, 7, 8],
                sse: Sse::Kms,
            },
            summary: Summary {
                plaintext_len: 123_456,
                etag: [9; 16],
                last_modified_ms: 1_700_000_000_000,
            },
        }
    }

    #[test]
    fn round_trip_and_length() {
        let h = sample();
        let bytes = h.encode().unwrap();
        assert_eq!(bytes.len(), ObjectHeader::encoded_len(&h.bound).unwrap());
        assert_eq!(
            ObjectHeader::peek_len(&bytes).unwrap() as usize,
            bytes.len()
        );
        assert_eq!(ObjectHeader::decode(&bytes).unwrap(), h);
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let bytes = sample().encode().unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(ObjectHeader::decode(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn bucket_key_headers_round_trip_and_every_flip_is_rejected() {
        let mut h = sample();
        h.bound.bucket_key_salt = Some([0x5a; BUCKET_KEY_SALT_LEN]);
        let bytes = h.encode().unwrap();
        assert_eq!(u16_at(&bytes, OFF_CIPHER), CIPHER_AES_256_GCM_BUCKET_KEY);
        assert_eq!(
            bytes.len(),
            sample().encode().unwrap().len() + BUCKET_KEY_SALT_LEN
        );
        assert_eq!(ObjectHeader::decode(&bytes).unwrap(), h);
        assert_ne!(
            ObjectHeader::bound_digest(&h.bound).unwrap(),
            ObjectHeader::bound_digest(&sample().bound).unwrap()
        );
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(ObjectHeader::decode(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn trailing_and_missing_bytes_are_rejected() {
        let bytes = sample().encode().unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ObjectHeader::decode(&longer).is_err());
        assert!(ObjectHeader::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(ObjectHeader::decode(&[]).is_err());
    }

    #[test]
    fn over_long_fields_are_refused_when_encoding() {
        let mut h = sample();
        h.bound.key = "k".repeat(MAX_OBJECT_KEY_LEN + 1);
        assert!(h.encode().unwrap_err().0.contains("object key"));
    }

    #[test]
    fn segment_arithmetic() {
        let seg = u64::from(SEGMENT_SIZE);
        assert_eq!(segment_count(0), 1);
        assert_eq!(segment_count(1), 1);
        assert_eq!(segment_count(seg), 1);
        assert_eq!(segment_count(seg + 1), 2);
        assert_eq!(sealed_len(0), 16);
        assert_eq!(sealed_len(seg + 1), seg + 1 + 32);
    }

    #[test]
    fn final_aad_differs_from_inner_aad() {
        let d = [3u8; 32];
        let s = sample().summary;
        assert_ne!(segment_aad(&d, 4, None), segment_aad(&d, 4, Some(&s)));
        assert_ne!(segment_aad(&d, 4, None), segment_aad(&d, 5, None));
    }

    fn arb_text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..max)
            .prop_map(|c| c.into_iter().collect::<String>())
            .prop_filter("fits", move |s| s.len() <= max)
    }

    #[test]
    fn system_metadata_makes_a_version_2_header_and_only_then() {
        let v1 = sample().encode().unwrap();
        assert_eq!(u16_at(&v1, OFF_VERSION), VERSION);
        let mut h = sample();
        h.bound.system_metadata = BTreeMap::from([("cache-control".into(), "no-cache".into())]);
        let v2 = h.encode().unwrap();
        assert_eq!(u16_at(&v2, OFF_VERSION), VERSION_SYSTEM_METADATA);
        assert_eq!(ObjectHeader::decode(&v2).unwrap(), h);
        // Version 1 bytes relabelled as version 2 (checksum fixed): no system metadata.
        let mut forged = v1.clone();
        forged[OFF_VERSION..OFF_VERSION + 2]
            .copy_from_slice(&VERSION_SYSTEM_METADATA.to_le_bytes());
        let end = forged.len() - CHECKSUM_LEN;
        let sum = Sha256::digest(&forged[..end]);
        forged[end..].copy_from_slice(&sum);
        assert!(ObjectHeader::decode(&forged).is_err());
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            bucket in "[a-z0-9.-]{3,63}",
            key in arb_text(200),
            wrapped in proptest::collection::vec(any::<u8>(), 0..400),
            ctx in proptest::collection::btree_map(arb_text(20), arb_text(40), 0..5),
            meta in proptest::collection::btree_map("[a-z0-9-]{1,20}", arb_text(40), 0..5),
            prefix in any::<[u8; 8]>(),
            salt in any::<Option<[u8; 32]>>(),
            sse_s3 in any::<bool>(),
            system in proptest::collection::btree_map("[a-z-]{1,20}", arb_text(40), 0..3),
            len in 0..MAX_OBJECT_SIZE,
            etag in any::<[u8; 16]>(),
            ms in any::<i64>(),
        ) {
            let h = ObjectHeader {
                bound: BoundHeader {
                    bucket, key, key_arn: "arn:aws:kms:local:000000000000:key/x".into(),
                    wrapped_key: wrapped, bucket_key_salt: salt, content_type: "text/plain".into(),
                    encryption_context: ctx, user_metadata: meta, system_metadata: system,
                    nonce_prefix: prefix,
                    sse: if sse_s3 { Sse::S3 } else { Sse::Kms },
                },
                summary: Summary { plaintext_len: len, etag, last_modified_ms: ms },
            };
            let bytes = h.encode().unwrap();
            prop_assert_eq!(ObjectHeader::decode(&bytes).unwrap(), h);
        }

        #[test]
        fn prop_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ObjectHeader::decode(&bytes);
        }

        #[test]
        fn prop_mutated_headers_decode_to_valid_or_error(
            at in 0usize..400, value in any::<u8>(), cut in 0usize..400,
        ) {
            let mut bytes = sample().encode().unwrap();
            let at = at % bytes.len();
            bytes[at] = value;
            bytes.truncate(bytes.len() - cut.min(bytes.len()));
            if let Ok(h) = ObjectHeader::decode(&bytes) {
                prop_assert_eq!(h.encode().unwrap(), bytes);
            }
        }
    }
}
