//! AES-256-XTS against OpenSSL's EVP `aes-256-xts`: for any key, first sector and
//! data, every backend this CPU has encrypts 512- and 4096-byte sectors (the sizes
//! volumes use) exactly as OpenSSL does with the sector number as a little-endian
//! 128-bit tweak (dm-crypt `plain64`), and each side decrypts the other's output.
//! Keys with equal halves are refused by every backend and by OpenSSL's encryption.
#![no_main]

use atrest_fuzz::Input;
use crypto_core::xts::{Backend, SectorCipher};
use libfuzzer_sys::fuzz_target;
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;

/// Runs OpenSSL over `buf` sector by sector, the tweak of each its number (wrapping
/// at 2^64 as `plain64`); `None` when OpenSSL refuses the key.
fn openssl_xts(
    key: &[u8; 64],
    buf: &[u8],
    first_sector: u64,
    sector_size: usize,
    encrypt: bool,
) -> Option<Vec<u8>> {
    let mut ctx = CipherCtx::new().expect("an EVP context");
    let cipher = Cipher::aes_256_xts();
    let init = if encrypt {
        ctx.encrypt_init(Some(cipher), Some(key), None)
    } else {
        ctx.decrypt_init(Some(cipher), Some(key), None)
    };
    init.ok()?;
    let mut out = vec![0u8; buf.len()];
    for (index, (src, dst)) in buf
        .chunks(sector_size)
        .zip(out.chunks_mut(sector_size))
        .enumerate()
    {
        let mut tweak = [0u8; 16];
        let sector = first_sector.wrapping_add(index as u64);
        tweak[..8].copy_from_slice(&sector.to_le_bytes());
        let reinit = if encrypt {
            ctx.encrypt_init(None, None, Some(&tweak))
        } else {
            ctx.decrypt_init(None, None, Some(&tweak))
        };
        reinit.expect("a new tweak");
        let written = ctx
            .cipher_update(src, Some(dst))
            .expect("one XTS data unit");
        assert_eq!(written, src.len(), "OpenSSL wrote part of a sector");
    }
    Some(out)
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let mut input = Input::new(data);
    let mut key = [0u8; 64];
    let half = input.bytes(32);
    key[..half.len()].copy_from_slice(half);
    // One selector byte: copy the first half (equal halves must be refused) or read
    // a second half.
    let selector = input.u8();
    if selector == 0xee {
        let (data_key, tweak_key) = key.split_at_mut(32);
        tweak_key.copy_from_slice(data_key);
    } else {
        let half = input.bytes(32);
        key[32..32 + half.len()].copy_from_slice(half);
    }
    let sector_size = if selector & 1 == 0 { 512 } else { 4096 };
    let first_sector = match input.u8() % 3 {
        0 => u64::from(input.u16()),
        1 => u64::MAX - u64::from(input.u8()),
        _ => input.u64(),
    };
    // Whole sectors: at least one, and no more than the input holds (so small inputs
    // stay fast and longer ones reach several sectors).
    let payload = input.rest();
    let sectors = payload.len().div_ceil(sector_size).max(1);
    let mut plain = vec![0u8; sectors * sector_size];
    plain[..payload.len()].copy_from_slice(payload);

    let expected = openssl_xts(&key, &plain, first_sector, sector_size, true);
    let equal_halves = key[..32] == key[32..];
    assert_eq!(
        expected.is_none(),
        equal_halves,
        "OpenSSL's verdict on the key is not 'equal halves'"
    );
    // Every backend's output must equal `expected` (checked below), so OpenSSL
    // decrypting it once stands for decrypting each backend's: the same bytes.
    if let Some(expected) = &expected {
        let decrypted = openssl_xts(&key, expected, first_sector, sector_size, false)
            .expect("OpenSSL decrypts under a key it encrypted with");
        assert!(
            decrypted == plain,
            "OpenSSL does not decrypt its own output"
        );
    }
    for backend in Backend::available() {
        let cipher = SectorCipher::with_backend(&key, backend);
        let (Some(expected), Ok(cipher)) = (&expected, cipher) else {
            assert!(equal_halves, "{backend:?} refused a key OpenSSL accepts");
            continue;
        };
        let mut buf = plain.clone();
        cipher.encrypt_sectors(&mut buf, first_sector, sector_size);
        assert!(buf == *expected, "{backend:?} differs from OpenSSL");
        cipher.decrypt_sectors(&mut buf, first_sector, sector_size);
        assert!(buf == plain, "{backend:?} does not decrypt its own output");
    }
});
