//! Zeroizing containers for key material and the one source of randomness.
//!
//! Key types here have no `Clone`, no `Serialize` and a `Debug` that prints
//! nothing of the value. They live in locked memory ([`crate::locked`]: never swapped
//! out, left out of core dumps) that is overwritten when they are dropped.

use std::fmt;

use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::locked::{Locked, LockedBytes};

/// Fills `buf` from the operating system's CSPRNG (`getrandom(2)`).
///
/// Every key and nonce in atrest comes from here. A failing OS random source
/// leaves no safe way to go on, so this panics rather than return weak bytes.
pub fn fill_random(buf: &mut [u8]) {
    if let Err(err) = getrandom::fill(buf) {
        panic!("the operating system's random number generator failed: {err}");
    }
}

/// Secret bytes of any length: a plaintext data key, CMK material, the root key.
pub struct SecretBytes(LockedBytes);

impl SecretBytes {
    /// `len` fresh random bytes.
    pub fn random(len: usize) -> Self {
        let mut bytes = LockedBytes::zeroed(len);
        fill_random(bytes.as_mut_slice());
        Self(bytes)
    }

    /// Takes ownership of bytes that are already secret. The vector is wrapped in
    /// `Zeroizing` by the caller so that no unzeroized copy is left behind on a
    /// reallocation.
    pub fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self::from_slice(&bytes)
    }

    /// Copies `bytes` into a new secret; the caller stays responsible for its copy.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut secret = LockedBytes::zeroed(bytes.len());
        secret.as_mut_slice().copy_from_slice(bytes);
        Self(secret)
    }

    /// The secret value. Callers must not log, format or persist it.
    pub fn expose(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// The secret's length in bytes (not secret itself).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The locked pages are zeroed when dropped.
impl ZeroizeOnDrop for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes { .. }")
    }
}

/// A fixed-size secret key, kept in locked memory (which also means moves of the
/// handle leave no copies of the key behind).
pub struct SecretKey<const N: usize>(Locked<KeyBytes<N>>);

/// The bytes of a [`SecretKey`]; zeros by default, so a new key is made in place.
struct KeyBytes<const N: usize>([u8; N]);

impl<const N: usize> Default for KeyBytes<N> {
    fn default() -> Self {
        Self([0; N])
    }
}

/// The 512-bit key of AES-256-XTS (two AES-256 keys).
pub type XtsKey = SecretKey<64>;

/// A 256-bit AES key (CMK material, the root key).
pub type Aes256Key = SecretKey<32>;

impl<const N: usize> SecretKey<N> {
    /// A key from the OS random source, made in locked memory.
    pub fn random() -> Self {
        let mut key = Locked::<KeyBytes<N>>::new_default();
        fill_random(&mut key.0);
        Self(key)
    }

    /// Copies a key of exactly `N` bytes; `None` if the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != N {
            return None;
        }
        let mut key = Locked::<KeyBytes<N>>::new_default();
        key.0.copy_from_slice(bytes);
        Some(Self(key))
    }

    /// The key bytes. Callers must not log, format or persist them.
    pub fn expose(&self) -> &[u8; N] {
        &self.0 .0
    }
}

/// The locked pages are zeroed when dropped.
impl<const N: usize> ZeroizeOnDrop for SecretKey<N> {}

impl<const N: usize> fmt::Debug for SecretKey<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey<{N}> {{ .. }}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_key_bytes() {
        let key = SecretKey::<4>::from_slice(&[0xAB, 0xCD, 0xEF, 0x12]).expect("length 4");
        let shown = format!("{key:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab"));
        let bytes = SecretBytes::from_slice(b"hunter2");
        assert_eq!(format!("{bytes:?}"), "SecretBytes { .. }");
    }

    #[test]
    fn random_keys_differ_and_have_the_right_length() {
        let a = XtsKey::random();
        let b = XtsKey::random();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(SecretBytes::random(33).len(), 33);
        assert!(SecretKey::<32>::from_slice(&[0; 31]).is_none());
    }

    #[test]
    fn keys_live_in_locked_memory() {
        let key = XtsKey::random();
        let bytes = SecretBytes::from_slice(b"a plaintext data key");
        assert!(
            key.0.is_locked() && bytes.0.is_locked(),
            "mlock refused (RLIMIT_MEMLOCK)"
        );
        assert_eq!(bytes.expose(), b"a plaintext data key");
        assert_eq!(bytes.len(), 20);
    }
}
