//! The crate's one all-zero test. Every sector read, written, copied or served asks
//! it: all-zero sectors are holes on disk and hole chunks on the wire, so it runs on
//! every byte the server moves, and ciphertext must leave at its first block.

/// Whether every byte of `bytes` is zero. It reads eight bytes a step, OR-folded over
/// 64-byte blocks (the compiler vectorises the fold): the first block alone, so that
/// data (ciphertext above all) stops the test there, then 1 KiB at a time. A byte at
/// a time, the test was where the `volume_ops` fuzz target spent much of its time (a
/// coverage counter on every iteration); a comparison per 64-byte block was still 64
/// traced comparisons per all-zero sector (libFuzzer traces each comparison with a
/// constant), now six. In release builds it is as fast as one comparison per block.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let (blocks, rest) = bytes.as_chunks::<64>();
    let (first, blocks) = blocks.split_at(blocks.len().min(1));
    let (words, tail) = rest.as_chunks::<8>();
    or_blocks(first) == 0
        && blocks
            .chunks(BLOCKS_PER_STEP)
            .all(|step| or_blocks(step) == 0)
        && or_words(words) == 0
        && tail.iter().all(|&b| b == 0)
}

/// 64-byte blocks OR-folded per step after the first: 1 KiB.
const BLOCKS_PER_STEP: usize = 16;

fn or_blocks(blocks: &[[u8; 64]]) -> u64 {
    blocks
        .iter()
        .fold(0, |acc, block| acc | or_words(block.as_chunks::<8>().0))
}

fn or_words(words: &[[u8; 8]]) -> u64 {
    words
        .iter()
        .fold(0, |acc, word| acc | u64::from_ne_bytes(*word))
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn a_single_set_bit_anywhere_is_seen() {
        for len in [0usize, 1, 7, 8, 9, 63, 64, 65, 71, 72, 4096, 4099] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf), "len {len}");
            for i in 0..len {
                for bit in [0x01, 0x80] {
                    buf[i] = bit;
                    assert!(!is_zero(&buf), "len {len} byte {i} bit {bit:#x}");
                }
                buf[i] = 0;
            }
        }
    }

    /// Every length up to a sector and a bit, against the byte-wise test: zeros,
    /// and one non-zero byte at the edges of every step the test takes (its first
    /// block, each 1 KiB step, the words and bytes after the last block) and at
    /// every position for the lengths around those edges.
    #[test]
    fn agrees_with_the_byte_wise_test_at_every_length() {
        let bytewise = |bytes: &[u8]| bytes.iter().all(|&b| b == 0);
        let mut buf = vec![0u8; 4096 + 65];
        for len in 0..=4096 + 65 {
            let buf = &mut buf[..len];
            assert!(is_zero(buf), "len {len}");
            let every = [
                0usize, 1, 7, 8, 63, 64, 65, 127, 128, 1023, 1024, 1025, 1087, 1088, 1089, 2047,
                2048, 4095, 4096, 4097, 4159,
            ]
            .contains(&len);
            let edges = [
                0, 7, 8, 63, 64, 65, 1087, 1088, 1089, 2111, 2112, 4031, 4032, 4095, 4096, 4103,
                4104,
            ];
            let positions: Vec<usize> = if every {
                (0..len).collect()
            } else {
                edges
                    .iter()
                    .copied()
                    .chain([len / 2, len.saturating_sub(9), len.saturating_sub(1)])
                    .filter(|&i| i < len)
                    .collect()
            };
            for i in positions {
                buf[i] = 0x10;
                assert_eq!(is_zero(buf), bytewise(buf), "len {len} byte {i}");
                assert!(!is_zero(buf), "len {len} byte {i}");
                buf[i] = 0;
            }
        }
    }
}
