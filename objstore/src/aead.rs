//! The bulk AEAD: AES-256-GCM over 64 KiB segments, in parallel over a batch of
//! segments on the rayon pool.
//!
//! ring's AES-GCM is used because it was measured faster than RustCrypto's `aes-gcm`
//! and OpenSSL for 64 KiB segments on the target CPU (VAES + VPCLMULQDQ;
//! `benches/src/bin/aead_compare.rs`). ring does not zeroize its expanded key on drop;
//! the 32-byte data key itself lives only in a zeroizing buffer until the cipher is
//! built (docs/SECURITY.md).

use rayon::prelude::*;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

use crate::format::{segment_aad, segment_nonce, Summary, NONCE_PREFIX_LEN, SEGMENT_SIZE, TAG_LEN};

const SEG: usize = SEGMENT_SIZE as usize;
/// One sealed full segment: ciphertext then tag.
pub(crate) const SEALED_SEG: usize = SEG + TAG_LEN;

/// Seals and opens the segments of one object.
pub(crate) struct SegmentCipher {
    key: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    bound_digest: [u8; 32],
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentCipher { .. }")
    }
}

/// A segment failed authentication (or the cipher could not be built): deliberately
/// without detail.
#[derive(Debug)]
pub(crate) struct Unauthentic;

impl SegmentCipher {
    /// `data_key` must be 32 bytes.
    pub(crate) fn new(
        data_key: &[u8],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        bound_digest: [u8; 32],
    ) -> Result<Self, Unauthentic> {
        let key = UnboundKey::new(&AES_256_GCM, data_key).map_err(|_| Unauthentic)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            nonce_prefix,
            bound_digest,
        })
    }

    fn nonce(&self, index: u64) -> Nonce {
        Nonce::assume_unique_for_key(segment_nonce(&self.nonce_prefix, index))
    }

    /// Seals `plain`, the consecutive segments starting at `first_index` (every one
    /// full but possibly the last), into `out` (replacing its contents) as
    /// `ciphertext || tag` per segment. `final_summary` is given when the last segment
    /// of `plain` is the object's final segment; an empty `plain` is then sealed as one
    /// empty final segment.
    pub(crate) fn seal_batch(
        &self,
        first_index: u64,
        plain: &[u8],
        final_summary: Option<&Summary>,
        out: &mut Vec<u8>,
    ) -> Result<(), Unauthentic> {
        let segments = plain.len().div_ceil(SEG).max(1);
        out.clear();
        out.resize(plain.len() + segments * TAG_LEN, 0);
        let last = segments - 1;
        out.par_chunks_mut(SEALED_SEG)
            .enumerate()
            .try_for_each(|(i, sealed)| {
                let start = i * SEG;
                let end = (start + SEG).min(plain.len());
                let n = end - start;
                sealed[..n].copy_from_slice(&plain[start..end]);
                let index = first_index + i as u64;
                let aad = segment_aad(
                    &self.bound_digest,
                    index,
                    final_summary.filter(|_| i == last),
                );
                let tag = self
                    .key
                    .seal_in_place_separate_tag(self.nonce(index), Aad::from(aad), &mut sealed[..n])
                    .map_err(|_| Unauthentic)?;
                sealed[n..n + TAG_LEN].copy_from_slice(tag.as_ref());
                Ok(())
            })
    }

    /// Opens, in place, the sealed segments in `sealed` starting at `first_index`.
    /// Afterwards segment `i`'s plaintext is at `i * SEALED_SEG` and as long as the
    /// sealed segment minus the tag. `final_summary` is given when the last segment
    /// of the batch is the object's final segment.
    pub(crate) fn open_batch(
        &self,
        first_index: u64,
        sealed: &mut [u8],
        final_summary: Option<&Summary>,
    ) -> Result<(), Unauthentic> {
        let segments = sealed.len().div_ceil(SEALED_SEG);
        let last = segments.checked_sub(1).ok_or(Unauthentic)?;
        sealed
            .par_chunks_mut(SEALED_SEG)
            .enumerate()
            .try_for_each(|(i, chunk)| {
                let n = chunk.len().checked_sub(TAG_LEN).ok_or(Unauthentic)?;
                let index = first_index + i as u64;
                let aad = segment_aad(
                    &self.bound_digest,
                    index,
                    final_summary.filter(|_| i == last),
                );
                let (data, tag) = chunk.split_at_mut(n);
                let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| Unauthentic)?;
                self.key
                    .open_in_place_separate_tag(
                        self.nonce(index),
                        Aad::from(aad),
                        Tag::from(tag),
                        data,
                        0..,
                    )
                    .map(|_| ())
                    .map_err(|_| Unauthentic)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(len: u64) -> Summary {
        Summary {
            plaintext_len: len,
            etag: [5; 16],
            last_modified_ms: 42,
        }
    }

    #[test]
    fn seal_open_round_trip_across_sizes() {
        let c = SegmentCipher::new(&[1; 32], [2; 8], [3; 32]).unwrap();
        for len in [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut sealed = Vec::new();
            c.seal_batch(10, &plain, Some(&summary(len as u64)), &mut sealed)
                .unwrap();
            assert_eq!(
                sealed.len(),
                len + len.div_ceil(SEG).max(1) * TAG_LEN,
                "len {len}"
            );
            c.open_batch(10, &mut sealed, Some(&summary(len as u64)))
                .unwrap();
            let opened: Vec<u8> = sealed
                .chunks(SEALED_SEG)
                .flat_map(|ch| ch[..ch.len() - TAG_LEN].to_vec())
                .collect();
            assert_eq!(opened, plain);
        }
    }

    #[test]
    fn wrong_index_flag_summary_or_digest_fails() {
        let c = SegmentCipher::new(&[1; 32], [2; 8], [3; 32]).unwrap();
        let mut sealed = Vec::new();
        c.seal_batch(0, &[9; 100], Some(&summary(100)), &mut sealed)
            .unwrap();
        assert!(c
            .open_batch(1, &mut sealed.clone(), Some(&summary(100)))
            .is_err());
        assert!(c.open_batch(0, &mut sealed.clone(), None).is_err());
        assert!(c
            .open_batch(0, &mut sealed.clone(), Some(&summary(99)))
            .is_err());
        let other = SegmentCipher::new(&[1; 32], [2; 8], [4; 32]).unwrap();
        assert!(other
            .open_batch(0, &mut sealed.clone(), Some(&summary(100)))
            .is_err());
        assert!(c.open_batch(0, &mut sealed, Some(&summary(100))).is_ok());
    }
}
