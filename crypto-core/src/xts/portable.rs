//! The portable backend: the `aes` crate's multi-block API, fed whole runs of blocks.
//!
//! XTS is ECB between two tweak XORs, so a run is whitened with its tweaks, handed to
//! `encrypt_blocks` in one call (the `aes` crate pipelines as many blocks as its own
//! backend can), and whitened again. Tweaks are recomputed for the second pass rather
//! than stored, so no tweak table sits in memory.

use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::Aes256;

use super::{mul_alpha, XtsKernel};

/// Blocks whitened and encrypted per call into the `aes` crate: large enough for its
/// pipelining, small enough that the run stays in L1 between the passes.
const RUN_BLOCKS: usize = 64;

/// The two AES-256 key schedules. `Aes256` zeroizes itself on drop (the `zeroize`
/// feature of the `aes` crate).
pub(super) struct PortableKeys {
    data: Aes256,
    tweak: Aes256,
}

impl PortableKeys {
    pub(super) fn new(data_key: &[u8; 32], tweak_key: &[u8; 32]) -> Self {
        Self {
            data: Aes256::new(&Array::from(*data_key)),
            tweak: Aes256::new(&Array::from(*tweak_key)),
        }
    }

    fn run(&self, blocks: &mut [u8], mut tweak: u128, encrypt: bool) -> u128 {
        debug_assert_eq!(blocks.len() % 16, 0);
        for chunk in blocks.chunks_mut(16 * RUN_BLOCKS) {
            let start = tweak;
            tweak = whiten(chunk, start);
            let (chunk_blocks, rest) = Array::slice_as_chunks_mut(chunk);
            debug_assert!(rest.is_empty());
            if encrypt {
                self.data.encrypt_blocks(chunk_blocks);
            } else {
                self.data.decrypt_blocks(chunk_blocks);
            }
            whiten(chunk, start);
        }
        tweak
    }
}

/// XORs each 16-byte block with its tweak, starting from `tweak`; returns the tweak
/// after the last block.
fn whiten(blocks: &mut [u8], mut tweak: u128) -> u128 {
    for block in blocks.chunks_exact_mut(16) {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(block);
        let x = u128::from_le_bytes(bytes) ^ tweak;
        block.copy_from_slice(&x.to_le_bytes());
        tweak = mul_alpha(tweak);
    }
    tweak
}

impl XtsKernel for PortableKeys {
    fn sector_tweaks(&self, first_sector: u64, out: &mut [u128]) {
        let mut blocks = [Array::<u8, _>::default(); super::TWEAK_BATCH];
        let blocks = &mut blocks[..out.len()];
        for (i, block) in blocks.iter_mut().enumerate() {
            let sector = first_sector.wrapping_add(i as u64);
            *block = Array::from(u128::from(sector).to_le_bytes());
        }
        self.tweak.encrypt_blocks(blocks);
        for (t, block) in out.iter_mut().zip(blocks.iter_mut()) {
            *t = u128::from_le_bytes(block.0);
            block.0 = [0; 16];
        }
    }

    fn encrypt_run(&self, blocks: &mut [u8], tweak: u128) -> u128 {
        self.run(blocks, tweak, true)
    }

    fn decrypt_run(&self, blocks: &mut [u8], tweak: u128) -> u128 {
        self.run(blocks, tweak, false)
    }
}
