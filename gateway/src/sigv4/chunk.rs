//! The signature chain of an aws-chunked body: every chunk, and the trailer, signed
//! over the previous signature.

use super::*;

/// The chain of signatures of an aws-chunked body (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`):
/// each chunk's signature covers its data and the previous signature, starting from
/// the request's own, so chunks cannot be dropped, reordered or replaced.
pub struct ChunkChain {
    /// The signing key of the request's scope (zeroized on drop).
    pub(super) key: Zeroizing<[u8; 32]>,
    /// The request's `X-Amz-Date`.
    pub(super) amz_date: String,
    /// The request's credential scope.
    pub(super) scope: CredentialScope,
    /// The last signature of the chain (the request's, before the first chunk).
    pub(super) previous: [u8; 32],
}

impl std::fmt::Debug for ChunkChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkChain")
            .field("amz_date", &self.amz_date)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of the empty string, part of every chunk's string to sign.
pub(super) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl ChunkChain {
    /// The chain a client continues after signing a request as `signer` with
    /// `seed_signature` (hex, from its `Authorization` header).
    pub fn for_client(
        signer: &Signer<'_>,
        seed_signature: &str,
    ) -> Result<ChunkChain, GatewayError> {
        Ok(ChunkChain {
            key: signing_key(
                signer.credentials.secret_access_key.as_bytes(),
                &signer.scope,
            ),
            amz_date: amz_date(signer.time),
            scope: signer.scope.clone(),
            previous: parse_signature(seed_signature)?,
        })
    }

    fn expected(&self, kind: &str, data_hash: &[u8; 32]) -> [u8; 32] {
        let to_sign = format!(
            "{kind}\n{}\n{}\n{}\n{}{}",
            self.amz_date,
            self.scope.render(),
            hex::encode(self.previous),
            if kind == CHUNK_ALGORITHM {
                format!("{EMPTY_SHA256}\n")
            } else {
                String::new()
            },
            hex::encode(data_hash)
        );
        *hmac(self.key.as_slice(), to_sign.as_bytes())
    }

    fn advance(
        &mut self,
        kind: &str,
        data_hash: &[u8; 32],
        presented: &[u8; 32],
    ) -> Result<(), GatewayError> {
        let expected = self.expected(kind, data_hash);
        let mut mac = HmacSha256::new_from_slice(&expected)
            .map_err(|_| GatewayError::InvalidSignature("signature of the wrong size".into()))?;
        // Compared through an HMAC of both sides, so the time taken says nothing about
        // where they differ.
        mac.update(b"chunk");
        let want = mac.finalize().into_bytes();
        let mut mac = HmacSha256::new_from_slice(presented)
            .map_err(|_| GatewayError::InvalidSignature("signature of the wrong size".into()))?;
        mac.update(b"chunk");
        mac.verify_slice(&want).map_err(|_| signature_mismatch())?;
        self.previous = *presented;
        Ok(())
    }

    /// Checks the signature of the next chunk, whose data hashes to `data_hash`.
    pub fn verify_chunk(
        &mut self,
        data_hash: &[u8; 32],
        signature: &[u8; 32],
    ) -> Result<(), GatewayError> {
        self.advance(CHUNK_ALGORITHM, data_hash, signature)
    }

    /// Checks the signature of the trailing headers (canonical text `name:value\n`...).
    pub fn verify_trailer(
        &mut self,
        trailer_hash: &[u8; 32],
        signature: &[u8; 32],
    ) -> Result<(), GatewayError> {
        self.advance(TRAILER_ALGORITHM, trailer_hash, signature)
    }

    /// Signs the next chunk (clients, tests), hex.
    pub fn sign_chunk(&mut self, data: &[u8]) -> String {
        let signature = self.expected(CHUNK_ALGORITHM, &Sha256::digest(data).into());
        self.previous = signature;
        hex::encode(signature)
    }

    /// Signs the trailing headers' canonical text (clients, tests), hex.
    pub fn sign_trailer(&mut self, canonical_trailer: &[u8]) -> String {
        let signature = self.expected(TRAILER_ALGORITHM, &Sha256::digest(canonical_trailer).into());
        self.previous = signature;
        hex::encode(signature)
    }
}

/// The string-to-sign algorithm names of aws-chunked chunks and trailers.
pub(super) const CHUNK_ALGORITHM: &str = "AWS4-HMAC-SHA256-PAYLOAD";
pub(super) const TRAILER_ALGORITHM: &str = "AWS4-HMAC-SHA256-TRAILER";
