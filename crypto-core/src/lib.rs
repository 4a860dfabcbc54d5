//! atrest's envelope-encryption engine.
//!
//! Nothing in this crate touches the network. The public map:
//!
//! - [`secret`]: zeroizing containers for key material and the OS random source.
//! - [`xts`]: the AES-256-XTS sector cipher used for block volumes.
//! - [`envelope`]: the ciphertext-blob format (AES-256-GCM, encryption context as AAD).
//! - [`kms`]: the [`kms::KeyService`] trait and [`kms::LocalKms`], the embedded key service.
//! - [`trail`]: the audit trail of every key use.
//! - [`hardening`]: process protections (no core dumps) for servers holding keys.
//! - [`locked`]: memory for keys that is never swapped out or dumped (mlock, MADV_DONTDUMP).
// Where a module allows unsafe code (xts's SIMD backends, locked), every unsafe block
// says why it is sound, and an unsafe fn's body is not one implicit unsafe block: the
// workspace denies `clippy::undocumented_unsafe_blocks` and `unsafe_op_in_unsafe_fn`.
#![deny(unsafe_code)]

pub mod envelope;
pub mod hardening;
pub mod kms;
pub mod locked;
pub mod secret;
pub mod trail;
pub mod xts;
