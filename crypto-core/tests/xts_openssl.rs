//! Interop with OpenSSL's AES-256-XTS: sectors encrypted by atrest, on every backend,
//! equal OpenSSL's output for the same key and tweak (LE sector number), including
//! sector sizes that need ciphertext stealing.
//!
//! OpenSSL is reached through Python's `cryptography` package, which calls EVP
//! `aes-256-xts` (`openssl enc` refuses XTS). A missing python3 or `cryptography` makes
//! this test fail: `scripts/install-test-deps.sh` installs both.

use std::io::Write;
use std::process::{Command, Stdio};

use crypto_core::xts::{Backend, SectorCipher};

struct Case {
    key: [u8; 64],
    first_sector: u64,
    sector_size: usize,
    plaintext: Vec<u8>,
}

/// A small deterministic generator so that a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

fn cases() -> Vec<Case> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let layouts: [(usize, usize, u64); 10] = [
        (512, 4, 0),
        (4096, 3, 7),
        (4096, 2, u64::MAX - 1),
        (512, 3, 0xffff_ffff),
        (16, 5, 1 << 40),
        (17, 3, 12345),
        (31, 2, u64::MAX),
        (100, 4, 99),
        (520, 2, 0x12_3456_789a),
        (4096 + 5, 2, 1),
    ];
    layouts
        .iter()
        .map(|&(sector_size, sectors, first_sector)| {
            let mut key = [0u8; 64];
            rng.fill(&mut key);
            let mut plaintext = vec![0u8; sector_size * sectors];
            rng.fill(&mut plaintext);
            Case {
                key,
                first_sector,
                sector_size,
                plaintext,
            }
        })
        .collect()
}

/// OpenSSL's ciphertext of every sector of every case, concatenated per case.
fn openssl_ciphertexts(cases: &[Case]) -> Vec<Vec<u8>> {
    let mut input = String::new();
    for case in cases {
        for (i, sector) in case.plaintext.chunks(case.sector_size).enumerate() {
            let number = case.first_sector.wrapping_add(i as u64);
            let tweak = u128::from(number).to_le_bytes();
            input.push_str(&format!(
                "{} {} {}\n",
                hex::encode(case.key),
                hex::encode(tweak),
                hex::encode(sector)
            ));
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/xts_openssl.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is required for the OpenSSL interop test (scripts/install-test-deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenSSL helper failed (is the `cryptography` package installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = std::str::from_utf8(&out.stdout).unwrap().lines();
    cases
        .iter()
        .map(|case| {
            let sectors = case.plaintext.len() / case.sector_size;
            (0..sectors)
                .flat_map(|_| hex::decode(lines.next().expect("a line per sector")).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn every_backend_matches_openssl_evp_aes_256_xts() {
    let cases = cases();
    let expected = openssl_ciphertexts(&cases);
    for backend in Backend::available() {
        for (case, openssl) in cases.iter().zip(&expected) {
            let cipher = SectorCipher::with_backend(&case.key, backend).unwrap();
            let mut buf = case.plaintext.clone();
            cipher.encrypt_sectors(&mut buf, case.first_sector, case.sector_size);
            assert!(
                buf == *openssl,
                "{backend:?}: sector size {}, first sector {:#x} differs from OpenSSL",
                case.sector_size,
                case.first_sector
            );
            cipher.decrypt_sectors(&mut buf, case.first_sector, case.sector_size);
            assert!(
                buf == case.plaintext,
                "{backend:?}: decrypting OpenSSL's ciphertext"
            );
        }
    }
}
