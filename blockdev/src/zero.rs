//! The crate's one all-zero test. Every sector read, written, copied or served asks
//! it: all-zero sectors are holes on disk and hole chunks on the wire, so it runs on
//! every byte the server moves, and ciphertext must leave at its first block.

/// Whether every byte of `bytes` is zero. It reads eight bytes a step, OR-folded over
/// 64-byte blocks (the compiler vectorises the fold; data stops the test at its first
/// block with a set bit). A byte at a time, the test was where the `volume_ops` fuzz
/// target spent much of its time (a coverage counter on every iteration).
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let (blocks, rest) = bytes.as_chunks::<64>();
    let (words, tail) = rest.as_chunks::<8>();
    blocks
        .iter()
        .all(|block| or_words(block.as_chunks::<8>().0) == 0)
        && or_words(words) == 0
        && tail.iter().all(|&b| b == 0)
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
}
