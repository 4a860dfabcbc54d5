//! Zeroizing containers for key material and the one source of randomness.
//!
//! Key types here have no `Clone`, no `Serialize` and a `Debug` that prints
//! nothing of the value. Their memory is overwritten when they are dropped.
#![forbid(unsafe_code)]

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

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
pub struct SecretBytes(Box<[u8]>);

impl SecretBytes {
    /// `len` fresh random bytes.
    pub fn random(len: usize) -> Self {
        let mut bytes = vec![0u8; len].into_boxed_slice();
        fill_random(&mut bytes);
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
        Self(bytes.to_vec().into_boxed_slice())
    }

    /// The secret value. Callers must not log, format or persist it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes { .. }")
    }
}

/// A fixed-size secret key, kept on the heap so moves do not leave copies behind.
pub struct SecretKey<const N: usize>(Box<[u8; N]>);

/// The 512-bit key of AES-256-XTS (two AES-256 keys).
pub type XtsKey = SecretKey<64>;

/// A 256-bit AES key (CMK material, the root key).
pub type Aes256Key = SecretKey<32>;

impl<const N: usize> SecretKey<N> {
    pub fn random() -> Self {
        let mut key = Box::new([0u8; N]);
        fill_random(&mut key[..]);
        Self(key)
    }

    /// Copies a key of exactly `N` bytes; `None` if the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != N {
            return None;
        }
        let mut key = Box::new([0u8; N]);
        key.copy_from_slice(bytes);
        Some(Self(key))
    }

    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> Drop for SecretKey<N> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

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
}
