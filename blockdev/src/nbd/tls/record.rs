//! The TLS 1.3 record layer (RFC 8446 section 5) after the handshake, without I/O:
//! sealing plaintext into `application_data` records in place, and opening one
//! record in place. Pure functions over bytes so that every rule here is unit-tested
//! and fuzzed (`fuzz/fuzz_targets/nbd_tls_record.rs`).
//!
//! A record on the wire is `type (1) | legacy_version (2) | length (2) | ciphertext`,
//! where the outer type is always 23 once the handshake is done and the ciphertext is
//! `AEAD(plaintext | inner content type | zero padding)` with the 5 header bytes as
//! associated data and `iv XOR sequence number` (big-endian, left-padded) as the nonce.

use std::fmt;
use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use zeroize::Zeroizing;

/// Largest plaintext of one record (`2^14`).
pub(crate) const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest ciphertext of one record a peer may send (`2^14 + 256`).
pub(crate) const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The record header: type, legacy version, length.
pub(crate) const HEADER_LEN: usize = 5;
/// Every cipher suite of TLS 1.3 has a 16-byte tag.
const TAG_LEN: usize = 16;
/// What a record adds to its plaintext: header, inner content type, tag.
pub(crate) const RECORD_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;
/// The outer type of every protected record.
const APPLICATION_DATA: u8 = 23;
/// `legacy_record_version` as TLS 1.3 sends it.
const LEGACY_VERSION: [u8; 2] = [3, 3];

/// The inner content type of a record after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContentType {
    /// An alert (close_notify or an error).
    Alert,
    /// A post-handshake message (KeyUpdate is the only one a client may send).
    Handshake,
    /// NBD bytes.
    ApplicationData,
}

impl ContentType {
    fn byte(self) -> u8 {
        match self {
            ContentType::Alert => 21,
            ContentType::Handshake => 22,
            ContentType::ApplicationData => APPLICATION_DATA,
        }
    }

    fn of_byte(byte: u8) -> Result<ContentType, RecordError> {
        match byte {
            21 => Ok(ContentType::Alert),
            22 => Ok(ContentType::Handshake),
            23 => Ok(ContentType::ApplicationData),
            other => Err(RecordError::ContentType(other)),
        }
    }
}

/// Why a record was refused. Each ends the connection (TLS has no recovery).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum RecordError {
    /// The client sent a record that is not protected (outer type other than 23).
    #[error("the client sent an unprotected record of type {0} after the handshake")]
    Unprotected(u8),
    /// The record is longer than TLS allows.
    #[error("the client sent a record of {0} bytes (at most 2^14 + 256)")]
    TooLong(usize),
    /// The record is too short to hold a tag and a content type.
    #[error("the client sent a record of {0} bytes, too short for a tag")]
    TooShort(usize),
    /// The record failed authentication (deliberately says no more).
    #[error("a record from the client failed authentication")]
    BadRecord,
    /// The decrypted record is all padding, without a content type.
    #[error("a record from the client has no content type")]
    NoContentType,
    /// The decrypted record holds more than 2^14 bytes.
    #[error("a record from the client holds {0} bytes of plaintext (at most 2^14)")]
    PlaintextTooLong(usize),
    /// A content type that TLS 1.3 does not allow after the handshake.
    #[error("the client sent a record of content type {0} after the handshake")]
    ContentType(u8),
    /// A sequence number would wrap (never in practice: keys are updated long before).
    #[error("the record sequence number is exhausted")]
    SequenceExhausted,
    /// The handshake agreed on a cipher this record layer does not implement.
    #[error("the negotiated cipher is not supported by the record layer")]
    UnsupportedCipher,
}

/// The key, IV and next sequence number of one direction.
pub(crate) struct TrafficKey {
    key: LessSafeKey,
    iv: Zeroizing<[u8; aead::NONCE_LEN]>,
    seq: u64,
}

impl fmt::Debug for TrafficKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrafficKey")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl TrafficKey {
    /// The key of one direction as rustls derived it, with its next sequence number.
    pub(crate) fn new(
        secrets: ConnectionTrafficSecrets,
        seq: u64,
    ) -> Result<TrafficKey, RecordError> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(RecordError::UnsupportedCipher),
        };
        let unbound =
            UnboundKey::new(algorithm, key.as_ref()).map_err(|_| RecordError::UnsupportedCipher)?;
        let mut fixed = Zeroizing::new([0u8; aead::NONCE_LEN]);
        if iv.as_ref().len() != fixed.len() {
            return Err(RecordError::UnsupportedCipher);
        }
        fixed.copy_from_slice(iv.as_ref());
        Ok(TrafficKey {
            key: LessSafeKey::new(unbound),
            iv: fixed,
            seq,
        })
    }

    /// The sequence number of the next record.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The nonce of the next record; counts it.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(RecordError::SequenceExhausted)?;
        let mut nonce = *self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// Reads the plaintext of several slices in order, a record's worth at a time.
pub(crate) struct Parts<'a> {
    parts: &'a [&'a [u8]],
    /// Bytes already taken from `parts[0]`.
    taken: usize,
}

impl<'a> Parts<'a> {
    /// All of `parts`, in order.
    pub(crate) fn new(parts: &'a [&'a [u8]]) -> Parts<'a> {
        Parts { parts, taken: 0 }
    }

    /// Bytes not yet taken.
    pub(crate) fn remaining(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum::<usize>() - self.taken
    }

    /// Appends the next `n` bytes (at most [`Parts::remaining`]) to `out`.
    fn take_into(&mut self, mut n: usize, out: &mut Vec<u8>) {
        while n > 0 {
            let Some((first, rest)) = self.parts.split_first() else {
                return;
            };
            let available = &first[self.taken..];
            let now = available.len().min(n);
            out.extend_from_slice(&available[..now]);
            n -= now;
            self.taken += now;
            if self.taken == first.len() {
                self.parts = rest;
                self.taken = 0;
            }
        }
    }
}

/// Appends one record of `content` holding the next `len` bytes of `plain` (at most
/// [`MAX_PLAINTEXT`]) to `out`, sealed in place with `key`.
pub(crate) fn seal(
    key: &mut TrafficKey,
    content: ContentType,
    plain: &mut Parts<'_>,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    debug_assert!(len <= MAX_PLAINTEXT && len <= plain.remaining());
    let nonce = key.next_nonce()?;
    let start = out.len();
    let ciphertext_len = len + 1 + TAG_LEN;
    let length = u16::try_from(ciphertext_len).map_err(|_| RecordError::TooLong(ciphertext_len))?;
    let mut header = [APPLICATION_DATA, LEGACY_VERSION[0], LEGACY_VERSION[1], 0, 0];
    header[3..].copy_from_slice(&length.to_be_bytes());
    out.reserve(HEADER_LEN + ciphertext_len);
    out.extend_from_slice(&header);
    plain.take_into(len, out);
    out.push(content.byte());
    let tag = key
        .key
        .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER_LEN..])
        .map_err(|_| RecordError::BadRecord)?;
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

/// The bytes [`seal_in_place`] appends to its `side` buffer per record: the header,
/// then the sealed inner content type and the tag.
pub(crate) const SIDE_LEN: usize = RECORD_OVERHEAD;

/// Seals `chunk[..len - 1]` as one application data record without moving it: the
/// byte after the plaintext (`chunk[len - 1]`, the next record's first byte) lends
/// its place to the inner content type while the record is sealed, and gets its
/// value back. Appends the record's header (5 bytes), then its sealed content type
/// and tag (17 bytes), to `side`; the record on the wire is that header, the sealed
/// `chunk[..len - 1]`, then those 17 bytes.
pub(crate) fn seal_in_place(
    key: &mut TrafficKey,
    chunk: &mut [u8],
    side: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let Some(len) = chunk.len().checked_sub(1) else {
        return Err(RecordError::TooShort(0));
    };
    if len > MAX_PLAINTEXT {
        return Err(RecordError::PlaintextTooLong(len));
    }
    let nonce = key.next_nonce()?;
    let ciphertext_len = len + 1 + TAG_LEN;
    let length = u16::try_from(ciphertext_len).map_err(|_| RecordError::TooLong(ciphertext_len))?;
    let mut header = [APPLICATION_DATA, LEGACY_VERSION[0], LEGACY_VERSION[1], 0, 0];
    header[3..].copy_from_slice(&length.to_be_bytes());
    let borrowed = chunk[len];
    chunk[len] = ContentType::ApplicationData.byte();
    let tag = key
        .key
        .seal_in_place_separate_tag(nonce, Aad::from(header), chunk);
    let sealed_type = chunk[len];
    chunk[len] = borrowed;
    let tag = tag.map_err(|_| RecordError::BadRecord)?;
    side.extend_from_slice(&header);
    side.push(sealed_type);
    side.extend_from_slice(tag.as_ref());
    Ok(())
}

/// Appends records of `content` holding all of `parts` to `out`.
pub(crate) fn seal_all(
    key: &mut TrafficKey,
    content: ContentType,
    parts: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let mut plain = Parts::new(parts);
    while plain.remaining() > 0 {
        let len = plain.remaining().min(MAX_PLAINTEXT);
        seal(key, content, &mut plain, len, out)?;
    }
    Ok(())
}

/// The length of the record at the start of `buf`, header included, once its header
/// is there (`None` before). Refuses headers no client may send.
pub(crate) fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    // legacy_record_version is ignored, as RFC 8446 section 5.1 says; it is
    // authenticated as part of the header anyway.
    if header[0] != APPLICATION_DATA {
        return Err(RecordError::Unprotected(header[0]));
    }
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if length > MAX_CIPHERTEXT {
        return Err(RecordError::TooLong(length));
    }
    if length < 1 + TAG_LEN {
        return Err(RecordError::TooShort(length));
    }
    Ok(Some(HEADER_LEN + length))
}

/// Opens the whole record `record` (as long as [`record_len`] says) in place: its
/// content type and where in `record` its plaintext now is.
pub(crate) fn open(
    key: &mut TrafficKey,
    record: &mut [u8],
) -> Result<(ContentType, Range<usize>), RecordError> {
    if record_len(record)? != Some(record.len()) {
        return Err(RecordError::TooShort(
            record.len().saturating_sub(HEADER_LEN),
        ));
    }
    let nonce = key.next_nonce()?;
    let (header, body) = record.split_at_mut(HEADER_LEN);
    let header: [u8; HEADER_LEN] = [header[0], header[1], header[2], header[3], header[4]];
    let inner = key
        .key
        .open_in_place(nonce, Aad::from(header), body)
        .map_err(|_| RecordError::BadRecord)?;
    let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
        return Err(RecordError::NoContentType);
    };
    if type_at > MAX_PLAINTEXT {
        return Err(RecordError::PlaintextTooLong(type_at));
    }
    let content = ContentType::of_byte(inner[type_at])?;
    Ok((content, HEADER_LEN..HEADER_LEN + type_at))
}

/// Seals `inner` (plaintext, content type byte and padding as the sender chose them)
/// as one record: what a client could send, including what this layer never would.
pub(crate) fn seal_inner(key: &mut TrafficKey, inner: &[u8]) -> Result<Vec<u8>, RecordError> {
    let nonce = key.next_nonce()?;
    let length = inner.len() + TAG_LEN;
    let len = u16::try_from(length).map_err(|_| RecordError::TooLong(length))?;
    let mut header = [APPLICATION_DATA, LEGACY_VERSION[0], LEGACY_VERSION[1], 0, 0];
    header[3..].copy_from_slice(&len.to_be_bytes());
    let mut body = inner.to_vec();
    key.key
        .seal_in_place_append_tag(nonce, Aad::from(header), &mut body)
        .map_err(|_| RecordError::BadRecord)?;
    let mut record = header.to_vec();
    record.extend_from_slice(&body);
    Ok(record)
}

/// The fuzz target's body (see [`super::check_record_opener`]).
pub(crate) fn check_opener(data: &[u8]) {
    let key = || {
        let key = rustls::crypto::cipher::AeadKey::from([0x42u8; 32]);
        let iv = rustls::crypto::cipher::Iv::from([0x24u8; 12]);
        TrafficKey::new(ConnectionTrafficSecrets::Aes256Gcm { key, iv }, 0)
            .expect("a valid AES-256-GCM key")
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut wire, inners) = if mode & 1 == 0 {
        (rest.to_vec(), Vec::new())
    } else {
        // Records of the sizes and inner bytes the input gives, sealed properly.
        let mut sealer = key();
        let (mut wire, mut inners, mut input) = (Vec::new(), Vec::new(), rest);
        while let [hi, lo, tail @ ..] = input {
            let len = usize::from(u16::from_be_bytes([*hi, *lo])) % (MAX_CIPHERTEXT + 64);
            let (inner, after) = tail.split_at(len.min(tail.len()));
            input = after;
            match seal_inner(&mut sealer, inner) {
                Ok(record) => wire.extend_from_slice(&record),
                Err(_) => break,
            }
            inners.push(inner.to_vec());
        }
        (wire, inners)
    };
    let mut opener = key();
    let mut at = 0;
    let mut index = 0;
    while let Ok(Some(len)) = record_len(&wire[at..]) {
        let Some(record) = wire.get_mut(at..at + len) else {
            break;
        };
        let Ok((_, plain)) = open(&mut opener, record) else {
            break;
        };
        assert_eq!(plain.start, HEADER_LEN);
        assert!(plain.len() <= MAX_PLAINTEXT && plain.end < len);
        if let Some(inner) = inners.get(index) {
            assert_eq!(&record[plain.clone()], &inner[..plain.len()]);
        }
        at += len;
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key pair for one direction: the same secret on both ends.
    fn keys(seq: u64) -> (TrafficKey, TrafficKey) {
        let make = || {
            let key = rustls::crypto::cipher::AeadKey::from([7u8; 32]);
            let iv = rustls::crypto::cipher::Iv::from([9u8; 12]);
            TrafficKey::new(ConnectionTrafficSecrets::Aes256Gcm { key, iv }, seq).unwrap()
        };
        (make(), make())
    }

    fn open_all(key: &mut TrafficKey, mut wire: Vec<u8>) -> Vec<(ContentType, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let len = record_len(&wire[at..]).unwrap().unwrap();
            let (content, plain) = open(key, &mut wire[at..at + len]).unwrap();
            out.push((content, wire[at + plain.start..at + plain.end].to_vec()));
            at += len;
        }
        out
    }

    #[test]
    fn plaintext_round_trips_across_record_boundaries() {
        let data: Vec<u8> = (0..3 * MAX_PLAINTEXT + 77)
            .map(|i| (i * 31) as u8)
            .collect();
        let header = [1u8; 16];
        let (mut tx, mut rx) = keys(5);
        let mut wire = Vec::new();
        seal_all(
            &mut tx,
            ContentType::ApplicationData,
            &[&header[..], &data[..], &[]],
            &mut wire,
        )
        .unwrap();
        let records = open_all(&mut rx, wire);
        assert_eq!(records.len(), 4);
        assert!(records
            .iter()
            .all(|(c, _)| *c == ContentType::ApplicationData));
        assert!(records[..3].iter().all(|(_, p)| p.len() == MAX_PLAINTEXT));
        let joined: Vec<u8> = records.into_iter().flat_map(|(_, p)| p).collect();
        assert_eq!(&joined[..16], &header);
        assert_eq!(&joined[16..], &data[..]);
        assert_eq!((tx.seq(), rx.seq()), (9, 9));
    }

    #[test]
    fn a_record_sealed_in_place_opens_and_the_borrowed_byte_is_restored() {
        let (mut tx, mut rx) = keys(0);
        let data: Vec<u8> = (0..MAX_PLAINTEXT + 1).map(|i| (i * 7) as u8).collect();
        let mut buf = data.clone();
        let mut side = Vec::new();
        seal_in_place(&mut tx, &mut buf, &mut side).unwrap();
        assert_eq!(side.len(), SIDE_LEN);
        assert_eq!(buf[MAX_PLAINTEXT], data[MAX_PLAINTEXT], "the borrowed byte");
        let mut wire = side[..HEADER_LEN].to_vec();
        wire.extend_from_slice(&buf[..MAX_PLAINTEXT]);
        wire.extend_from_slice(&side[HEADER_LEN..]);
        let (content, plain) = open(&mut rx, &mut wire).unwrap();
        assert_eq!(content, ContentType::ApplicationData);
        assert_eq!(&wire[plain], &data[..MAX_PLAINTEXT]);
        assert!(seal_in_place(&mut tx, &mut [], &mut side).is_err());
        assert!(seal_in_place(&mut tx, &mut vec![0u8; MAX_PLAINTEXT + 2], &mut side).is_err());
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let (mut tx, _) = keys(0);
        let mut wire = Vec::new();
        seal_all(
            &mut tx,
            ContentType::ApplicationData,
            &[&b"hello nbd"[..]],
            &mut wire,
        )
        .unwrap();
        for bit in 0..wire.len() * 8 {
            let mut bad = wire.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let (_, mut rx) = keys(0);
            let result = match record_len(&bad) {
                Ok(Some(len)) if len == bad.len() => open(&mut rx, &mut bad).map(|_| ()),
                Ok(_) => Err(RecordError::TooShort(0)),
                Err(err) => Err(err),
            };
            assert!(result.is_err(), "bit {bit} flipped was accepted");
        }
    }

    #[test]
    fn a_record_under_the_wrong_sequence_number_is_refused() {
        let (mut tx, mut rx) = keys(0);
        let mut wire = Vec::new();
        seal_all(
            &mut tx,
            ContentType::ApplicationData,
            &[&b"one"[..]],
            &mut wire,
        )
        .unwrap();
        let mut replay = wire.clone();
        open(&mut rx, &mut wire).unwrap();
        assert_eq!(open(&mut rx, &mut replay), Err(RecordError::BadRecord));
    }

    #[test]
    fn oversized_short_and_unprotected_headers_are_refused() {
        let header = |kind: u8, len: usize| {
            let mut h = vec![kind, 3, 3];
            h.extend_from_slice(&(len as u16).to_be_bytes());
            h
        };
        assert_eq!(
            record_len(&header(23, MAX_CIPHERTEXT)),
            Ok(Some(HEADER_LEN + MAX_CIPHERTEXT))
        );
        assert_eq!(
            record_len(&header(23, MAX_CIPHERTEXT + 1)),
            Err(RecordError::TooLong(MAX_CIPHERTEXT + 1))
        );
        assert_eq!(record_len(&header(23, 16)), Err(RecordError::TooShort(16)));
        assert_eq!(
            record_len(&header(22, 100)),
            Err(RecordError::Unprotected(22))
        );
        assert_eq!(
            record_len(&header(21, 2)),
            Err(RecordError::Unprotected(21))
        );
        assert_eq!(
            record_len(&header(20, 1)),
            Err(RecordError::Unprotected(20))
        );
        assert_eq!(record_len(&[23, 3, 3, 0]), Ok(None));
    }

    #[test]
    fn padding_is_stripped_and_bad_inner_types_are_refused() {
        let (mut tx, mut rx) = keys(0);
        let mut padded = seal_inner(&mut tx, b"abc\x17\0\0\0\0").unwrap();
        let (content, plain) = open(&mut rx, &mut padded).unwrap();
        assert_eq!(
            (content, &padded[plain]),
            (ContentType::ApplicationData, &b"abc"[..])
        );
        let mut all_padding = seal_inner(&mut tx, &[0u8; 40]).unwrap();
        assert_eq!(
            open(&mut rx, &mut all_padding),
            Err(RecordError::NoContentType)
        );
        for kind in [1u8, 20, 24, 255] {
            let mut odd = seal_inner(&mut tx, &[b'x', kind]).unwrap();
            assert_eq!(open(&mut rx, &mut odd), Err(RecordError::ContentType(kind)));
        }
        let mut big = vec![1u8; MAX_PLAINTEXT + 1];
        big.push(23);
        let mut too_much = seal_inner(&mut tx, &big).unwrap();
        assert_eq!(
            open(&mut rx, &mut too_much),
            Err(RecordError::PlaintextTooLong(MAX_PLAINTEXT + 1))
        );
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let (mut tx, _) = keys(u64::MAX);
        let mut wire = Vec::new();
        assert_eq!(
            seal_all(
                &mut tx,
                ContentType::ApplicationData,
                &[&b"x"[..]],
                &mut wire
            ),
            Err(RecordError::SequenceExhausted)
        );
    }

    proptest::proptest! {
        /// The fuzz target's body on random input, both modes (the fuzzer in
        /// `fuzz/fuzz_targets/nbd_tls_record.rs` goes further).
        #[test]
        fn the_opener_keeps_its_promises(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            check_opener(&bytes);
            let mut sealed = vec![1u8];
            sealed.extend_from_slice(&bytes);
            check_opener(&sealed);
        }
    }
}
