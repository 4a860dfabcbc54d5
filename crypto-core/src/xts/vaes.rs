//! The VAES backend: `vaesenc` on several blocks per register, eight registers in
//! flight.
//!
//! Two widths share one design. With AVX2 a 256-bit register holds two blocks (16
//! per batch); where the CPU also has AVX-512 (F + BW) a 512-bit register holds four
//! (32 per batch), which doubles throughput on cores with full-width AES units (AMD
//! Zen 4/5, Intel Ice Lake and later). Each register carries the tweaks of
//! consecutive blocks; after a batch every register's tweaks move on by alpha^16 (or
//! alpha^32) at once: a byte shift within each 128-bit lane, plus the bytes shifted
//! out times 0x87 with one carry-less multiply (VPCLMULQDQ). The tweaks are
//! independent chains and never serialise the rounds. The closing tweak XOR is folded
//! into the last round key. Runs shorter than a batch fall through to the narrower
//! kernel and finally to AES-NI, which every VAES CPU also has.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::aesni::{self, from_u128, load, to_u128, RoundKeys};
use super::{Direction, XtsKernel};

/// 256-bit registers per batch (two blocks each).
const REGS: usize = 8;

/// How far ahead of the batch being loaded the source is prefetched, when the caller
/// says more source follows (out-of-place runs over cold memory, such as a file
/// mapping: each 4 KiB page starts cold, as the hardware prefetchers stop at page
/// boundaries). One page ahead took a 1 MiB decrypt from a mapped, cached file from
/// 152 to 105-128 us (in cache: 82-103 us); 1 and 2 KiB helped less, 8 KiB the same.
const PREFETCH_AHEAD: usize = 4096;

pub(super) fn is_supported() -> bool {
    aesni::is_supported()
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("vaes")
        && std::is_x86_feature_detected!("vpclmulqdq")
}

fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
}

/// Proof that the CPU runs the VAES kernel, and at which width; only
/// [`Token::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Token {
    wide: bool,
}

impl Token {
    pub(super) fn detect() -> Option<Token> {
        is_supported().then(|| Token { wide: has_avx512() })
    }
}

/// The VAES kernel over a borrowed schedule and the proof that the CPU supports it.
pub(super) struct VaesKernel<'a>(pub(super) &'a RoundKeys, pub(super) Token);

impl VaesKernel<'_> {
    /// Runs the widest kernel the token allows from `src` to `dst`.
    ///
    /// # Safety
    ///
    /// As for [`xts_run256`], apart from the CPU features, which the token proves.
    unsafe fn run<const ENCRYPT: bool>(
        &self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        readable: usize,
        tweak: u128,
    ) -> u128 {
        let rk = if ENCRYPT {
            &self.0.data_enc
        } else {
            &self.0.data_dec
        };
        debug_assert!(len.is_multiple_of(16), "XTS runs are whole blocks");
        let len = len / 16 * 16;
        if self.1.wide {
            // SAFETY: the Token proves VAES, VPCLMULQDQ, AES-NI and, being wide,
            // AVX-512F and AVX-512BW; the caller vouches for the pointers.
            unsafe { xts_run512::<ENCRYPT>(rk, src, dst, len, readable, tweak) }
        } else {
            // SAFETY: the Token proves AVX2, VAES, VPCLMULQDQ, AES-NI and PCLMULQDQ;
            // the caller vouches for the pointers.
            unsafe { xts_run256::<ENCRYPT>(rk, src, dst, len, readable, tweak) }
        }
    }
}

impl XtsKernel for VaesKernel<'_> {
    fn sector_tweaks(&self, first_sector: u64, out: &mut [u128]) {
        // SAFETY: the Token proves AVX2, VAES, VPCLMULQDQ, AES-NI and PCLMULQDQ.
        unsafe { aesni::encrypt_sector_numbers(&self.0.tweak_enc, first_sector, out) }
    }

    fn encrypt_run(&self, blocks: &mut [u8], tweak: u128) -> u128 {
        let at = blocks.as_mut_ptr();
        // SAFETY: `blocks` is readable and writable; in place is allowed.
        unsafe { self.run::<true>(at, at, blocks.len(), blocks.len(), tweak) }
    }

    fn decrypt_run(&self, blocks: &mut [u8], tweak: u128) -> u128 {
        let at = blocks.as_mut_ptr();
        // SAFETY: as in encrypt_run.
        unsafe { self.run::<false>(at, at, blocks.len(), blocks.len(), tweak) }
    }

    fn crypt_run_to(&self, src: &[u8], dst: &mut [u8], tweak: u128, dir: Direction) -> u128 {
        assert!(
            src.len() >= dst.len(),
            "XTS source shorter than destination"
        );
        let (from, to, len, readable) = (src.as_ptr(), dst.as_mut_ptr(), dst.len(), src.len());
        // SAFETY: a shared and a mutable borrow never overlap; `src` is readable for
        // its whole length, at least `dst.len()`.
        unsafe {
            match dir {
                Direction::Encrypt => self.run::<true>(from, to, len, readable, tweak),
                Direction::Decrypt => self.run::<false>(from, to, len, readable, tweak),
            }
        }
    }
}

/// One VAES round (`$insn` = vaesenc or vaesdec) on eight registers of class `$class`
/// (`ymm_reg` or `zmm_reg`), as one `asm!` block so that the compiler keeps all eight
/// in flight (see `round8!` in the AES-NI module for why).
macro_rules! vround8 {
    ($insn:literal, $class:ident, $x:ident, $k:expr) => {
        // SAFETY: register-only VAES instructions; the enclosing function enables VAES
        // and the register class's vector extension.
        unsafe {
            std::arch::asm!(
                concat!($insn, " {0}, {0}, {k}"),
                concat!($insn, " {1}, {1}, {k}"),
                concat!($insn, " {2}, {2}, {k}"),
                concat!($insn, " {3}, {3}, {k}"),
                concat!($insn, " {4}, {4}, {k}"),
                concat!($insn, " {5}, {5}, {k}"),
                concat!($insn, " {6}, {6}, {k}"),
                concat!($insn, " {7}, {7}, {k}"),
                inout($class) $x[0],
                inout($class) $x[1],
                inout($class) $x[2],
                inout($class) $x[3],
                inout($class) $x[4],
                inout($class) $x[5],
                inout($class) $x[6],
                inout($class) $x[7],
                k = in($class) $k,
                options(pure, nomem, nostack, preserves_flags),
            )
        }
    };
}

/// Each 128-bit lane of `t` times alpha^n, `n` (0..64) given per 64-bit half in
/// `counts` (both halves of a lane equal): a 128-bit shift left by `n` bits, the `n`
/// bits shifted out folded back as their carry-less product with 0x87 (at most 70
/// bits, so one multiply reduces fully). Lets the registers' tweaks be computed side
/// by side from one tweak instead of by a chain of doublings.
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn mul_alpha_n256(t: __m256i, counts: __m256i) -> __m256i {
    let right = _mm256_sub_epi64(_mm256_set1_epi64x(64), counts);
    let shifted = _mm256_or_si256(
        _mm256_sllv_epi64(t, counts),
        _mm256_bslli_epi128::<8>(_mm256_srlv_epi64(t, right)),
    );
    let carry = _mm256_srlv_epi64(_mm256_bsrli_epi128::<8>(t), right);
    let poly = _mm256_set_epi64x(0, 0x87, 0, 0x87);
    _mm256_xor_si256(shifted, _mm256_clmulepi64_epi128::<0x00>(carry, poly))
}

/// The 512-bit form of [`mul_alpha_n256`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
fn mul_alpha_n512(t: __m512i, counts: __m512i) -> __m512i {
    let right = _mm512_sub_epi64(_mm512_set1_epi64(64), counts);
    let shifted = _mm512_or_si512(
        _mm512_sllv_epi64(t, counts),
        _mm512_bslli_epi128::<8>(_mm512_srlv_epi64(t, right)),
    );
    let carry = _mm512_srlv_epi64(_mm512_bsrli_epi128::<8>(t), right);
    let poly = _mm512_set_epi64(0, 0x87, 0, 0x87, 0, 0x87, 0, 0x87);
    _mm512_xor_si512(shifted, _mm512_clmulepi64_epi128::<0x00>(carry, poly))
}

/// Both lanes times alpha^16 (see the module comment).
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn mul_alpha16(t: __m256i) -> __m256i {
    let poly = _mm256_set_epi64x(0, 0x87, 0, 0x87);
    _mm256_xor_si256(
        _mm256_bslli_epi128::<2>(t),
        _mm256_clmulepi64_epi128::<0x00>(_mm256_bsrli_epi128::<14>(t), poly),
    )
}

/// XTS with two blocks per 256-bit register: reads `len` bytes (whole blocks) at
/// `src`, writes the result at `dst`; returns the tweak after the last block. The
/// source up to `readable` bytes (>= `len`) is prefetched [`PREFETCH_AHEAD`] ahead.
///
/// # Safety
///
/// The CPU has AVX2, VAES, VPCLMULQDQ, AES-NI and PCLMULQDQ; `src` is readable and
/// `dst` writable for `len` bytes; the two are the same address or do not overlap
/// (every batch is loaded before any of it is stored). (Prefetches never fault; the
/// bound only keeps them useful.)
#[target_feature(enable = "avx2,vaes,vpclmulqdq,aes,pclmulqdq")]
unsafe fn xts_run256<const ENCRYPT: bool>(
    rk: &[[u8; 16]; 15],
    src: *const u8,
    dst: *mut u8,
    len: usize,
    readable: usize,
    tweak: u128,
) -> u128 {
    const BATCH: usize = 32 * REGS;
    let batches = len / BATCH;
    let mut t = tweak;
    if batches > 0 {
        let mut k = [_mm256_setzero_si256(); 15];
        for (v, bytes) in k.iter_mut().zip(rk) {
            *v = _mm256_broadcastsi128_si256(load(bytes));
        }
        // Register j holds the tweaks of blocks 2j and 2j + 1.
        let first = mul_alpha_n256(
            _mm256_broadcastsi128_si256(from_u128(t)),
            _mm256_set_epi64x(1, 1, 0, 0),
        );
        let mut tw = [_mm256_setzero_si256(); REGS];
        for (j, reg) in tw.iter_mut().enumerate() {
            *reg = mul_alpha_n256(first, _mm256_set1_epi64x(2 * j as i64));
        }
        for b in 0..batches {
            let base = b * BATCH;
            let mut x = [_mm256_setzero_si256(); REGS];
            if base + PREFETCH_AHEAD + BATCH <= readable {
                for j in 0..REGS / 2 {
                    // A hint only: it reads nothing and never faults.
                    _mm_prefetch::<_MM_HINT_T0>(
                        src.wrapping_add(base + PREFETCH_AHEAD + 64 * j).cast(),
                    );
                }
            }
            for j in 0..REGS {
                // SAFETY: batch `b` is below `len / BATCH`, inside `src`.
                let pair = unsafe { _mm256_loadu_si256(src.add(base + 32 * j).cast()) };
                x[j] = _mm256_xor_si256(_mm256_xor_si256(pair, tw[j]), k[0]);
            }
            if ENCRYPT {
                for key in &k[1..14] {
                    vround8!("vaesenc", ymm_reg, x, *key);
                }
                for j in 0..REGS {
                    x[j] = _mm256_aesenclast_epi128(x[j], _mm256_xor_si256(k[14], tw[j]));
                }
            } else {
                for key in &k[1..14] {
                    vround8!("vaesdec", ymm_reg, x, *key);
                }
                for j in 0..REGS {
                    x[j] = _mm256_aesdeclast_epi128(x[j], _mm256_xor_si256(k[14], tw[j]));
                }
            }
            for j in 0..REGS {
                // SAFETY: as for the load, inside `dst`.
                unsafe { _mm256_storeu_si256(dst.add(base + 32 * j).cast(), x[j]) };
                tw[j] = mul_alpha16(tw[j]);
            }
        }
        t = to_u128(_mm256_castsi256_si128(tw[0]));
    }
    let done = batches * BATCH;
    // SAFETY: the rest of both ranges, under the caller's guarantees.
    unsafe { aesni::xts_run_raw::<ENCRYPT>(rk, src.add(done), dst.add(done), len - done, t) }
}

/// All four lanes times alpha^32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
fn mul_alpha32(t: __m512i) -> __m512i {
    let poly = _mm512_set_epi64(0, 0x87, 0, 0x87, 0, 0x87, 0, 0x87);
    _mm512_xor_si512(
        _mm512_bslli_epi128::<4>(t),
        _mm512_clmulepi64_epi128::<0x00>(_mm512_bsrli_epi128::<12>(t), poly),
    )
}

/// [`xts_run256`] with four blocks per 512-bit register.
///
/// # Safety
///
/// As for [`xts_run256`], and the CPU also has AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw,avx2,vaes,vpclmulqdq,aes,pclmulqdq")]
unsafe fn xts_run512<const ENCRYPT: bool>(
    rk: &[[u8; 16]; 15],
    src: *const u8,
    dst: *mut u8,
    len: usize,
    readable: usize,
    tweak: u128,
) -> u128 {
    const BATCH: usize = 64 * REGS;
    let batches = len / BATCH;
    let mut t = tweak;
    if batches > 0 {
        let mut k = [_mm512_setzero_si512(); 15];
        for (v, bytes) in k.iter_mut().zip(rk) {
            *v = _mm512_broadcast_i32x4(load(bytes));
        }
        // Register j holds the tweaks of blocks 4j .. 4j + 3.
        let first = mul_alpha_n512(
            _mm512_broadcast_i32x4(from_u128(t)),
            _mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0),
        );
        let mut tw = [_mm512_setzero_si512(); REGS];
        for (j, reg) in tw.iter_mut().enumerate() {
            *reg = mul_alpha_n512(first, _mm512_set1_epi64(4 * j as i64));
        }
        for b in 0..batches {
            let base = b * BATCH;
            let mut x = [_mm512_setzero_si512(); REGS];
            if base + PREFETCH_AHEAD + BATCH <= readable {
                for j in 0..REGS {
                    // A hint only: it reads nothing and never faults.
                    _mm_prefetch::<_MM_HINT_T0>(
                        src.wrapping_add(base + PREFETCH_AHEAD + 64 * j).cast(),
                    );
                }
            }
            for j in 0..REGS {
                // SAFETY: batch `b` is below `len / BATCH`, inside `src`.
                let quad = unsafe { _mm512_loadu_si512(src.add(base + 64 * j).cast()) };
                x[j] = _mm512_xor_si512(_mm512_xor_si512(quad, tw[j]), k[0]);
            }
            if ENCRYPT {
                for key in &k[1..14] {
                    vround8!("vaesenc", zmm_reg, x, *key);
                }
                for j in 0..REGS {
                    x[j] = _mm512_aesenclast_epi128(x[j], _mm512_xor_si512(k[14], tw[j]));
                }
            } else {
                for key in &k[1..14] {
                    vround8!("vaesdec", zmm_reg, x, *key);
                }
                for j in 0..REGS {
                    x[j] = _mm512_aesdeclast_epi128(x[j], _mm512_xor_si512(k[14], tw[j]));
                }
            }
            for j in 0..REGS {
                // SAFETY: as for the load, inside `dst`.
                unsafe { _mm512_storeu_si512(dst.add(base + 64 * j).cast(), x[j]) };
                tw[j] = mul_alpha32(tw[j]);
            }
        }
        t = to_u128(_mm512_castsi512_si128(tw[0]));
    }
    let done = batches * BATCH;
    if done == len {
        return t;
    }
    // SAFETY: the rest of both ranges, under the caller's guarantees.
    unsafe {
        xts_run256::<ENCRYPT>(
            rk,
            src.add(done),
            dst.add(done),
            len - done,
            readable - done,
            t,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xts::portable::PortableKeys;

    /// The kernel at one width; 512 only where [`has_avx512`] holds.
    fn kernel(keys: &RoundKeys, wide: bool) -> VaesKernel<'_> {
        assert!(is_supported() && (!wide || has_avx512()));
        VaesKernel(keys, Token { wide })
    }

    /// The public API runs only the widest kernel the CPU has, so on an AVX-512 machine
    /// the 256-bit kernel is checked here directly against the portable backend, over
    /// run lengths that hit every path (full batches, 256-bit tail, AES-NI tail).
    #[test]
    fn both_widths_equal_the_portable_kernel() {
        if !is_supported() {
            return;
        }
        let data_key: [u8; 32] = std::array::from_fn(|i| i as u8 ^ 0x3c);
        let tweak_key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(7));
        let keys = RoundKeys::new(&data_key, &tweak_key);
        let reference = PortableKeys::new(&data_key, &tweak_key);
        let tweaks = [
            1u128,
            0x87,
            u128::MAX,
            1 << 127,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ];
        let widths: &[bool] = if has_avx512() {
            &[false, true]
        } else {
            &[false]
        };
        for blocks in 0..=100usize {
            let plain: Vec<u8> = (0..blocks * 16).map(|i| (i * 31 + blocks) as u8).collect();
            for &tweak in &tweaks {
                let mut expected = plain.clone();
                let next = reference.encrypt_run(&mut expected, tweak);
                for &wide in widths {
                    let k = kernel(&keys, wide);
                    let mut buf = plain.clone();
                    assert_eq!(
                        k.encrypt_run(&mut buf, tweak),
                        next,
                        "wide {wide}, {blocks} blocks"
                    );
                    assert_eq!(
                        buf, expected,
                        "wide {wide}, {blocks} blocks, tweak {tweak:x}"
                    );
                    let mut out = vec![0xa5; buf.len()];
                    assert_eq!(
                        k.crypt_run_to(&plain, &mut out, tweak, Direction::Encrypt),
                        next
                    );
                    assert_eq!(out, expected, "wide {wide} encrypt to, {blocks} blocks");
                    assert_eq!(
                        k.crypt_run_to(&buf, &mut out, tweak, Direction::Decrypt),
                        next
                    );
                    let mut longer = buf.clone();
                    longer.extend_from_slice(&[0x5a; 4096 + 512]);
                    out.fill(0xa5);
                    assert_eq!(
                        k.crypt_run_to(&longer, &mut out, tweak, Direction::Decrypt),
                        next
                    );
                    assert_eq!(out, plain, "wide {wide} decrypt from a longer source");
                    assert_eq!(out, plain, "wide {wide} decrypt to, {blocks} blocks");
                    assert_eq!(k.decrypt_run(&mut buf, tweak), next);
                    assert_eq!(buf, plain, "wide {wide} decrypt, {blocks} blocks");
                }
            }
        }
    }
}
