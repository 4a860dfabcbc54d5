//! The AES-NI backend: eight blocks in flight, their tweaks advanced together.
//!
//! AES-NI's `aesenc` has a latency of several cycles but issues every half cycle, so
//! one block at a time leaves the unit mostly idle. The kernel whitens eight
//! consecutive blocks, runs the fourteen rounds on all eight interleaved, and moves
//! the eight tweaks on by alpha^8 each (a byte shift plus the old top byte times
//! 0x87), so no lane waits on another. The tweak arithmetic runs in general-purpose
//! registers: on recent cores every vector instruction other than AES competes with
//! `aesenc` for issue slots, and measured here the vector form of the update cost
//! about a tenth of the throughput.
//!
//! The key schedule for both x86 backends lives here too: `aeskeygenassist` keeps the
//! expansion free of table lookups.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{mul_alpha, Direction, XtsKernel};
use crate::locked::Locked;

/// Blocks per interleaved batch.
const LANES: usize = 8;

pub(super) fn is_supported() -> bool {
    std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("pclmulqdq")
}

/// AES-256 round keys for XTS: encryption and decryption schedules of the data key,
/// the encryption schedule of the tweak key. Made in locked memory, zeroized on drop.
#[derive(Default, Zeroize, ZeroizeOnDrop)]
pub(super) struct RoundKeys {
    pub(super) data_enc: [[u8; 16]; 15],
    /// The "equivalent inverse cipher" schedule that `aesdec` expects, in the order it
    /// is applied.
    pub(super) data_dec: [[u8; 16]; 15],
    pub(super) tweak_enc: [[u8; 16]; 15],
}

impl RoundKeys {
    /// Expands both keys, in place in locked memory.
    ///
    /// # Panics
    ///
    /// If the CPU lacks AES-NI; callers check [`is_supported`] first.
    pub(super) fn new(data_key: &[u8; 32], tweak_key: &[u8; 32]) -> Locked<Self> {
        assert!(
            is_supported(),
            "AES-NI round keys requested on a CPU without AES-NI"
        );
        let mut locked = Locked::<RoundKeys>::new_default();
        let keys = &mut *locked;
        // SAFETY: the assert above established that the CPU has AES-NI and PCLMULQDQ.
        unsafe {
            expand_key(data_key, &mut keys.data_enc);
            expand_key(tweak_key, &mut keys.tweak_enc);
            invert_schedule(&keys.data_enc, &mut keys.data_dec);
        }
        locked
    }
}

/// The AES-NI kernel over a borrowed schedule.
pub(super) struct AesNiKernel<'a>(pub(super) &'a RoundKeys);

impl XtsKernel for AesNiKernel<'_> {
    fn sector_tweaks(&self, first_sector: u64, out: &mut [u128]) {
        // SAFETY: an AesNiKernel exists only over RoundKeys, whose constructor asserted
        // AES-NI and PCLMULQDQ support.
        unsafe { encrypt_sector_numbers(&self.0.tweak_enc, first_sector, out) }
    }

    fn encrypt_run(&self, blocks: &mut [u8], tweak: u128) -> u128 {
        // SAFETY: as in sector_tweaks.
        unsafe { xts_run::<true>(&self.0.data_enc, blocks, tweak) }
    }

    fn decrypt_run(&self, blocks: &mut [u8], tweak: u128) -> u128 {
        // SAFETY: as in sector_tweaks.
        unsafe { xts_run::<false>(&self.0.data_dec, blocks, tweak) }
    }

    fn crypt_run_to(&self, src: &[u8], dst: &mut [u8], tweak: u128, dir: Direction) -> u128 {
        let src = &src[..dst.len()];
        // SAFETY: as in sector_tweaks.
        unsafe {
            match dir {
                Direction::Encrypt => xts_run_to::<true>(&self.0.data_enc, src, dst, tweak),
                Direction::Decrypt => xts_run_to::<false>(&self.0.data_dec, src, dst, tweak),
            }
        }
    }
}

#[inline(always)]
pub(super) fn load(block: &[u8; 16]) -> __m128i {
    // SAFETY: `block` is 16 readable bytes and `loadu` has no alignment requirement;
    // SSE2 is part of the x86_64 baseline.
    unsafe { _mm_loadu_si128(block.as_ptr().cast()) }
}

#[inline(always)]
pub(super) fn store(block: &mut [u8; 16], v: __m128i) {
    // SAFETY: `block` is 16 writable bytes and `storeu` has no alignment requirement.
    unsafe { _mm_storeu_si128(block.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "sse2")]
pub(super) fn from_u128(t: u128) -> __m128i {
    _mm_set_epi64x((t >> 64) as i64, t as i64)
}

#[inline(always)]
pub(super) fn to_u128(v: __m128i) -> u128 {
    let mut bytes = [0u8; 16];
    store(&mut bytes, v);
    u128::from_le_bytes(bytes)
}

/// `t * alpha^n` for `n` in 0..8 without a chain of doublings: the tweak shifted up
/// `n` bits, the bits shifted out multiplied by 0x87 carry-less. Independent per
/// lane, so the first batch does not wait for seven doublings in a row.
#[inline(always)]
fn mul_alpha_pow(t: u128, n: u32) -> u128 {
    debug_assert!(n < 8);
    // `checked_shr` covers n = 0, where nothing is shifted out.
    let top = t.checked_shr(128 - n).unwrap_or(0) as u64;
    t.checked_shl(n).unwrap_or(0) ^ u128::from(top ^ (top << 1) ^ (top << 2) ^ (top << 7))
}

/// `t * alpha^8` on the integer side: the tweak shifted up a byte, the byte shifted
/// out multiplied by 0x87 carry-less (x^7 + x^2 + x + 1, so four shifted copies).
/// No table and no branch: the time taken does not depend on the tweak.
#[inline(always)]
fn mul_alpha8_scalar(t: u128) -> u128 {
    let top = (t >> 120) as u64;
    (t << 8) ^ u128::from(top ^ (top << 1) ^ (top << 2) ^ (top << 7))
}

/// One AES round (`$insn` = aesenc, aesenclast, aesdec or aesdeclast) on eight lanes.
///
/// Written as one `asm!` block so that the compiler keeps the eight lanes together:
/// left to itself, LLVM runs some lanes through all fourteen rounds before the others
/// to save registers, which serialises the tail lanes on the instruction's latency.
macro_rules! round8 {
    ($insn:literal, $x:ident, $k:expr) => {
        // SAFETY: register-only AES instructions; the enclosing function enables AES-NI.
        unsafe {
            std::arch::asm!(
                concat!($insn, " {0}, {k}"),
                concat!($insn, " {1}, {k}"),
                concat!($insn, " {2}, {k}"),
                concat!($insn, " {3}, {k}"),
                concat!($insn, " {4}, {k}"),
                concat!($insn, " {5}, {k}"),
                concat!($insn, " {6}, {k}"),
                concat!($insn, " {7}, {k}"),
                inout(xmm_reg) $x[0],
                inout(xmm_reg) $x[1],
                inout(xmm_reg) $x[2],
                inout(xmm_reg) $x[3],
                inout(xmm_reg) $x[4],
                inout(xmm_reg) $x[5],
                inout(xmm_reg) $x[6],
                inout(xmm_reg) $x[7],
                k = in(xmm_reg) $k,
                options(pure, nomem, nostack, preserves_flags),
            )
        }
    };
}

#[inline]
#[target_feature(enable = "aes")]
fn encrypt8(x: &mut [__m128i; LANES], rk: &[__m128i; 15]) {
    for v in x.iter_mut() {
        *v = _mm_xor_si128(*v, rk[0]);
    }
    for k in &rk[1..14] {
        round8!("aesenc", x, *k);
    }
    round8!("aesenclast", x, rk[14]);
}

#[inline]
#[target_feature(enable = "aes")]
fn encrypt1(x: __m128i, rk: &[__m128i; 15]) -> __m128i {
    let mut v = _mm_xor_si128(x, rk[0]);
    for k in &rk[1..14] {
        v = _mm_aesenc_si128(v, *k);
    }
    _mm_aesenclast_si128(v, rk[14])
}

#[inline]
#[target_feature(enable = "aes")]
fn decrypt1(x: __m128i, rk: &[__m128i; 15]) -> __m128i {
    let mut v = _mm_xor_si128(x, rk[0]);
    for k in &rk[1..14] {
        v = _mm_aesdec_si128(v, *k);
    }
    _mm_aesdeclast_si128(v, rk[14])
}

#[inline]
#[target_feature(enable = "aes")]
pub(super) fn load_schedule(rk: &[[u8; 16]; 15]) -> [__m128i; 15] {
    let mut k = [_mm_setzero_si128(); 15];
    for (v, bytes) in k.iter_mut().zip(rk) {
        *v = load(bytes);
    }
    k
}

/// XTS over the whole blocks of `blocks`, in place, with the schedule `rk`
/// (encryption or decryption per `ENCRYPT`); returns the tweak after the last block.
#[target_feature(enable = "aes,pclmulqdq")]
pub(super) fn xts_run<const ENCRYPT: bool>(
    rk: &[[u8; 16]; 15],
    blocks: &mut [u8],
    tweak: u128,
) -> u128 {
    debug_assert!(blocks.len().is_multiple_of(16), "XTS runs are whole blocks");
    let len = blocks.len() / 16 * 16;
    let at = blocks.as_mut_ptr();
    // SAFETY: `at` is readable and writable for `len` bytes; source and destination
    // are the same buffer, which the kernel allows.
    unsafe { xts_run_raw::<ENCRYPT>(rk, at, at, len, tweak) }
}

/// [`xts_run`] from `src` into `dst` (equal lengths, whole blocks).
#[target_feature(enable = "aes,pclmulqdq")]
pub(super) fn xts_run_to<const ENCRYPT: bool>(
    rk: &[[u8; 16]; 15],
    src: &[u8],
    dst: &mut [u8],
    tweak: u128,
) -> u128 {
    assert_eq!(src.len(), dst.len(), "XTS source and destination lengths");
    debug_assert!(src.len().is_multiple_of(16), "XTS runs are whole blocks");
    let len = src.len() / 16 * 16;
    // SAFETY: `src` is readable and `dst` writable for `len` bytes, and a shared and
    // a mutable borrow cannot overlap.
    unsafe { xts_run_raw::<ENCRYPT>(rk, src.as_ptr(), dst.as_mut_ptr(), len, tweak) }
}

/// The kernel behind [`xts_run`] and [`xts_run_to`]: reads `len` bytes (whole
/// blocks) at `src`, writes the result at `dst`.
///
/// # Safety
///
/// The CPU has AES-NI and PCLMULQDQ; `src` is readable and `dst` writable for `len`
/// bytes; the two are the same address or the ranges do not overlap. Each block is
/// read before its result is written, so in place is fine.
#[target_feature(enable = "aes,pclmulqdq")]
pub(super) unsafe fn xts_run_raw<const ENCRYPT: bool>(
    rk: &[[u8; 16]; 15],
    src: *const u8,
    dst: *mut u8,
    len: usize,
    tweak: u128,
) -> u128 {
    // The wider kernels hand over their (often empty) tails; skip the key loads then.
    if len == 0 {
        return tweak;
    }
    let k = load_schedule(rk);
    let blocks = len / 16;
    let groups = blocks / LANES;
    let mut t = tweak;
    if groups > 0 {
        // The lanes' tweaks advance in general-purpose registers (module comment).
        let mut lanes = [0u128; LANES];
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = mul_alpha_pow(t, i as u32);
        }
        for g in 0..groups {
            let base = g * LANES * 16;
            let mut tw = [_mm_setzero_si128(); LANES];
            let mut x = [_mm_setzero_si128(); LANES];
            for i in 0..LANES {
                tw[i] = from_u128(lanes[i]);
                // SAFETY: block `g * LANES + i` is below `blocks`, inside `src`.
                let block = unsafe { _mm_loadu_si128(src.add(base + 16 * i).cast()) };
                x[i] = _mm_xor_si128(_mm_xor_si128(block, tw[i]), k[0]);
                lanes[i] = mul_alpha8_scalar(lanes[i]);
            }
            // The closing tweak XOR is folded into the last round key:
            // aesenclast(x, k ^ t) = aesenclast(x, k) ^ t.
            if ENCRYPT {
                for key in &k[1..14] {
                    round8!("aesenc", x, *key);
                }
                for i in 0..LANES {
                    x[i] = _mm_aesenclast_si128(x[i], _mm_xor_si128(k[14], tw[i]));
                }
            } else {
                for key in &k[1..14] {
                    round8!("aesdec", x, *key);
                }
                for i in 0..LANES {
                    x[i] = _mm_aesdeclast_si128(x[i], _mm_xor_si128(k[14], tw[i]));
                }
            }
            for (i, v) in x.iter().enumerate() {
                // SAFETY: as for the load, inside `dst`.
                unsafe { _mm_storeu_si128(dst.add(base + 16 * i).cast(), *v) };
            }
        }
        t = lanes[0];
        lanes.zeroize();
    }
    for b in groups * LANES..blocks {
        let tv = from_u128(t);
        // SAFETY: block `b` is below `blocks`, inside `src` and `dst`.
        let x = _mm_xor_si128(unsafe { _mm_loadu_si128(src.add(16 * b).cast()) }, tv);
        let y = if ENCRYPT {
            encrypt1(x, &k)
        } else {
            decrypt1(x, &k)
        };
        // SAFETY: as above.
        unsafe { _mm_storeu_si128(dst.add(16 * b).cast(), _mm_xor_si128(y, tv)) };
        t = mul_alpha(t);
    }
    t
}

/// `out[i] = AES-256(tweak key, LE128(first_sector + i))`, eight at a time.
#[target_feature(enable = "aes")]
pub(super) fn encrypt_sector_numbers(rk: &[[u8; 16]; 15], first_sector: u64, out: &mut [u128]) {
    let k = load_schedule(rk);
    let mut sector = first_sector;
    let mut groups = out.chunks_exact_mut(LANES);
    for group in &mut groups {
        let mut x = [_mm_setzero_si128(); LANES];
        for v in x.iter_mut() {
            *v = _mm_set_epi64x(0, sector as i64);
            sector = sector.wrapping_add(1);
        }
        encrypt8(&mut x, &k);
        for (t, v) in group.iter_mut().zip(x) {
            *t = to_u128(v);
        }
    }
    for t in groups.into_remainder() {
        *t = to_u128(encrypt1(_mm_set_epi64x(0, sector as i64), &k));
        sector = sector.wrapping_add(1);
    }
}

/// One step of the AES-256 schedule for the even round keys: the previous even key
/// folded with the `aeskeygenassist` word `t` (already broadcast).
#[inline]
#[target_feature(enable = "aes")]
fn fold(prev: __m128i, t: __m128i) -> __m128i {
    let mut x = prev;
    x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
    x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
    x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
    _mm_xor_si128(x, t)
}

/// FIPS 197 5.2 for Nk = 8, with `aeskeygenassist` doing SubWord/RotWord/Rcon.
#[target_feature(enable = "aes")]
fn expand_key(key: &[u8; 32], out: &mut [[u8; 16]; 15]) {
    let (lo, hi) = key.split_at(16);
    let mut a = load(lo.try_into().expect("16-byte half"));
    let mut b = load(hi.try_into().expect("16-byte half"));
    store(&mut out[0], a);
    store(&mut out[1], b);
    macro_rules! even {
        ($rcon:literal, $i:literal) => {
            a = fold(
                a,
                _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(b)),
            );
            store(&mut out[$i], a);
        };
    }
    // The odd keys use SubWord without RotWord or Rcon.
    macro_rules! odd {
        ($i:literal) => {
            b = fold(
                b,
                _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(a)),
            );
            store(&mut out[$i], b);
        };
    }
    even!(0x01, 2);
    odd!(3);
    even!(0x02, 4);
    odd!(5);
    even!(0x04, 6);
    odd!(7);
    even!(0x08, 8);
    odd!(9);
    even!(0x10, 10);
    odd!(11);
    even!(0x20, 12);
    odd!(13);
    even!(0x40, 14);
}

/// The decryption schedule for `aesdec`: the encryption keys in reverse order, the
/// inner ones passed through InvMixColumns (FIPS 197 5.3.5).
#[target_feature(enable = "aes")]
fn invert_schedule(enc: &[[u8; 16]; 15], dec: &mut [[u8; 16]; 15]) {
    dec[0] = enc[14];
    dec[14] = enc[0];
    for i in 1..14 {
        store(&mut dec[i], _mm_aesimc_si128(load(&enc[14 - i])));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_alpha8_equals_eight_doublings() {
        for t in [
            1u128,
            0x87,
            u128::MAX,
            1 << 127,
            0xdead_beef << 90,
            0x0123_4567_89ab_cdef,
        ] {
            let mut expected = t;
            for _ in 0..8 {
                expected = mul_alpha(expected);
            }
            assert_eq!(mul_alpha8_scalar(t), expected, "t = {t:x}");
        }
    }
}
