//! AES-256-XTS: for any key, sector number, sector size and data, every backend this
//! CPU has computes the same ciphertext as RustCrypto's `xts-mode` (the reference,
//! with sector numbers wrapping at 2^64 as dm-crypt `plain64`), and decrypting gives
//! the data back. Keys with equal halves are refused by every backend.
#![no_main]

use std::sync::Mutex;

use aes::cipher::{Array, KeyInit};
use aes::Aes256;
use atrest_fuzz::Input;
use crypto_core::xts::{Backend, SectorCipher};
use libfuzzer_sys::fuzz_target;
use xts_mode::{get_tweak_default, Xts128};

/// Sectors per input at most: crypto-core computes sector tweaks 16 at a time, so
/// this is two whole batches and one sector of a third. Inputs of 100 to 250 short
/// sectors (the campaign corpus has them) cost as much as all the others together,
/// and each sector is computed on its own the same way whatever its neighbours.
const MAX_SECTORS: usize = 33;

/// The ciphers of the last input's key: most mutations leave the 64 key bytes as
/// they are, and expanding the key for the reference and every backend was a tenth
/// of the time. A new key is checked as before (every backend takes it).
struct Ciphers {
    key: [u8; 64],
    reference: Xts128<Aes256>,
    backends: Vec<(Backend, SectorCipher)>,
}

static LAST: Mutex<Option<Ciphers>> = Mutex::new(None);

fn ciphers(key: &[u8; 64]) -> Option<Ciphers> {
    let data_key = Aes256::new_from_slice(&key[..32]).ok()?;
    let tweak_key = Aes256::new_from_slice(&key[32..]).ok()?;
    let equal_halves = key[..32] == key[32..];
    let mut backends = Vec::new();
    for backend in Backend::available() {
        match SectorCipher::with_backend(key, backend) {
            Ok(cipher) => backends.push((backend, cipher)),
            Err(_) => assert!(equal_halves, "{backend:?} refused a valid key"),
        }
    }
    Some(Ciphers {
        key: *key,
        reference: Xts128::new(data_key, tweak_key),
        backends,
    })
}

fn wrap64(index: u128) -> Array<u8, aes::cipher::consts::U16> {
    get_tweak_default(u128::from(index as u64))
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let mut input = Input::new(data);
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(&{
        let mut half = [0u8; 32];
        let bytes = input.bytes(32);
        half[..bytes.len()].copy_from_slice(bytes);
        half
    });
    // One selector byte: copy the first half (equal halves must be refused) or read
    // a second half.
    if input.u8() == 0xee {
        let (data_key, tweak_key) = key.split_at_mut(32);
        tweak_key.copy_from_slice(data_key);
        for backend in Backend::available() {
            assert!(SectorCipher::with_backend(&key, backend).is_err());
        }
        return;
    }
    let bytes = input.bytes(32);
    key[32..32 + bytes.len()].copy_from_slice(bytes);
    let sector_size = match input.u8() % 4 {
        0 => 4096,
        1 => 512,
        2 => 16 * (1 + usize::from(input.u8() % 64)),
        _ => 16 + usize::from(input.u16() % 1024),
    };
    let first_sector = match input.u8() % 3 {
        0 => u64::from(input.u16()),
        1 => u64::MAX - u64::from(input.u8()),
        _ => input.u64(),
    };
    let payload = input.rest();
    // No sector is longer than the data rounded up to a block: a short input is
    // a short sector, not 4096 bytes of zeros through every backend (which held this
    // target to 3,000 exec/s); 512- and 4096-byte sectors need inputs that long.
    let sector_size = sector_size.min(payload.len().next_multiple_of(16).max(16));
    let sectors = (payload.len() / sector_size).clamp(1, MAX_SECTORS);
    let mut plain = vec![0u8; sectors * sector_size];
    plain[..payload.len().min(sectors * sector_size)]
        .copy_from_slice(&payload[..payload.len().min(sectors * sector_size)]);

    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if last.as_ref().is_none_or(|c| c.key != key) {
        *last = ciphers(&key);
    }
    let Some(Ciphers {
        reference,
        backends,
        ..
    }) = last.as_ref()
    else {
        return;
    };
    let mut expected = plain.clone();
    reference.encrypt_area(&mut expected, sector_size, u128::from(first_sector), wrap64);

    for (backend, cipher) in backends {
        let mut buf = plain.clone();
        cipher.encrypt_sectors(&mut buf, first_sector, sector_size);
        assert_eq!(buf, expected, "{backend:?} differs from the reference");
        cipher.decrypt_sectors(&mut buf, first_sector, sector_size);
        assert_eq!(buf, plain, "{backend:?} does not decrypt its own output");
    }
});
