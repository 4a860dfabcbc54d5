//! Ciphertext blobs: `envelope::parse` and `envelope::open` never panic on any bytes;
//! whatever parses re-encodes to the same header; a blob sealed from the input opens
//! to the input again, and every single-byte change to it fails authentication.
#![no_main]

use crypto_core::envelope::{self, HEADER_LEN, MAX_PLAINTEXT_LEN};
use crypto_core::kms::EncryptionContext;
use crypto_core::secret::Aes256Key;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fn material() -> Aes256Key {
    Aes256Key::from_slice(&[0x5a; 32]).expect("32 bytes")
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let key = material();
    let context: EncryptionContext = [("atrest:volume-id".to_owned(), "fuzz".to_owned())].into();
    if let Ok(parsed) = envelope::parse(data) {
        assert_eq!(parsed.header.encode()[..], data[..HEADER_LEN]);
        assert_eq!(
            parsed.plaintext_len(),
            data.len() - HEADER_LEN - envelope::TAG_LEN
        );
        // Random bytes authenticate with negligible probability; a panic is the bug.
        let _ = envelope::open(&key, &parsed, &context);
        let _ = envelope::open(&key, &parsed, &EncryptionContext::new());
    }

    let plaintext = &data[..data.len().min(MAX_PLAINTEXT_LEN)];
    let blob = envelope::seal(&key, Uuid::nil(), 3, plaintext, &context).expect("seals");
    let parsed = envelope::parse(&blob).expect("a sealed blob parses");
    let opened = envelope::open(&key, &parsed, &context).expect("a sealed blob opens");
    assert_eq!(opened.expose(), plaintext);
    if let Some(&pick) = data.first() {
        let at = usize::from(pick) * blob.len() / 256;
        let mut edited = blob.clone();
        edited[at] ^= 1u8 << (data.len() % 8);
        if let Ok(parsed) = envelope::parse(&edited) {
            assert!(
                envelope::open(&key, &parsed, &context).is_err(),
                "a blob with byte {at} changed still opened"
            );
        }
    }
});
