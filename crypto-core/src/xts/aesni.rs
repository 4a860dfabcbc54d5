//! The AES-NI backend: eight blocks in flight, the tweak walk in integer registers.
//!
//! What limits it: AES-256 is fourteen rounds, and a core with two 128-bit AES units
//! (Intel since Ice Lake, AMD since Zen) starts at most two `aesenc` per cycle, so a
//! block costs at least seven cycles (about 6.9 GB/s at 3 GHz). With a latency of
//! three or four cycles, six to eight independent blocks must be in flight to reach
//! that; the kernel runs batches of eight, all in step (`batch!`, one `asm!` block
//! per batch, round keys read from the schedule).
//!
//! Everything else a block needs must fit beside the rounds without taking the AES
//! units' issue ports. On Intel cores vector instructions issue on ports 0, 1 and 5,
//! and ports 0 and 1 are the AES units, so every vector XOR or shuffle beyond the
//! rounds either waits for port 5 or delays a round. So per block the kernel spends
//! two vector XORs and nothing more: the whitening value (tweak XOR round key 0) is
//! computed ahead in general-purpose registers (which also have ports 6 and 10 on
//! Intel, and pipes of their own on AMD) and stored in a small table, so one XOR
//! with the table both whitens and applies round key 0; the closing tweak XOR rides
//! on the last round (`aesenclast(x, k14 ^ t) = aesenclast(x, k14) ^ t`), with
//! `k14 ^ t` one XOR away from the table value. The tweak walk itself is a 128-bit
//! doubling in `add`/`adc` with the feedback masked in by `sar`/`and`, spread between
//! the rounds of the batch before.
//!
//! Measured on the Intel Xeon (Sapphire Rapids class, AVX-512 + VAES) this was
//! written on, one 4 KiB sector per call as `openssl speed` does: 0.90 to 0.93 of
//! the two units' limit (a loop of nothing but `aesenc` on eight lanes, timed
//! alongside), against 0.68 for the previous kernel (tweaks moved by alpha^8 per
//! lane in integer registers and moved into vectors, more vector instructions per
//! block, round keys spilled) and 0.81 to 0.87 for OpenSSL 3.0's `aesni_xts_encrypt`
//! (`xts_compare`: 1.01x-1.03x OpenSSL, from 0.67x). One 64 KiB sector per call
//! reaches 0.96 to 0.97: the rest at 4 KiB is each sector's start (its tweak's
//! fourteen dependent rounds, the first whitening values, the first batch's latency),
//! about 80 cycles. Tried without a measurable change: computing the walk one batch
//! ahead instead of two.
//!
//! The sector's start (issue #20, session 8): a call for one sector of whole blocks
//! (the shape of a 4 KiB block request and of `openssl speed`) enters through
//! `xts_sector_raw`, which encrypts the sector number in one `asm!` chain and hands
//! the tweak on in a register (the general path went through the batched-tweak array
//! and back); the first two batches' whitening values are `t * alpha^j`, each
//! computed from `t` by two shifts and one `pclmulqdq` (`mul_alpha_pow!`) instead of
//! a chain of sixteen doublings that the first batch waited for; and the table is
//! zeroized by 24 16-byte stores in one `asm!` block instead of `Zeroize`'s 48
//! volatile 8-byte stores. Measured (rdtsc in one process, a 0.3 ms segment of each
//! contender in turn, 10th percentile; benches/README.md): 4 KiB per call from
//! 0.91-0.92 to 0.92-0.93 of the limit, against 0.85-0.86 for OpenSSL 3.0's EVP
//! interface called the same way: 1.06x-1.07x to 1.08x-1.09x. Of the remaining
//! ~32 ns per sector (67 ticks of the 2.1 GHz TSC, some 110 core cycles), the
//! tweak's fourteen dependent rounds are a third (measured by skipping them) and the
//! loop's own 2% a quarter. Tried and dropped: the second batch's values by the
//! integer walk instead of `pclmulqdq` (no change or slightly worse).
//!
//! Session 9 (issue #20 item 4): a call for several sectors of whole batches (512 and
//! 4096 bytes) runs them in one walk (`xts_sectors_raw`): the batch two before a
//! sector's first restarts the integer walk from that sector's tweak (encrypted with
//! the others, eight at a time), so the set-up above runs once per sixteen sectors
//! instead of once per sector: 64 KiB of 4 KiB sectors per call from 0.955 to 0.973
//! of the limit (the loop alone is 0.98). A one-sector call is unchanged here; in
//! `SectorCipher` it now goes to `crypt_sector` before the buffer checks and the
//! split (1010 -> 1002 TSC ticks per 4 KiB, the kernel alone 1000). Tried and dropped,
//! each measured in one process against the kernel before it: the first batch's
//! whitening values handed over in registers instead of through the table (LLVM keeps
//! eight of them live across the set-up and spills them to the stack: 0.2% slower);
//! the second batch's values by `pclmulqdq` and byte shifts alone, to leave ports 0
//! and 1 to the AES units (0.2% slower); `tweak ^ k14` stored by the integer walk
//! beside each whitening value so that the last round reads it from memory, saving
//! two vector instructions per block (twice the walk's stores: 2.5% slower).
//! With the restarts the loop has more live values than registers, and LLVM spilled
//! `c0` (which gives away round key 0) to a stack slot nothing zeroized, and read round
//! key 0 for a restart byte by byte onto the stack: the walk now reads `c0` from a cell
//! zeroized at the end (0.15% slower for one 4 KiB sector, kept for the guarantee) and
//! a restart XORs round key 0 into the walk's registers in one `asm!` block. Checked
//! with objdump: no key-derived value is stored to the stack outside the table and
//! that cell.
//!
//! Session 9, continued (aesni4): a run without restarts (every one-sector call, and
//! `xts_run_raw`) runs all its batches in one `asm!` block with the loop inside
//! (`batch_loop!`): `c0` goes from its cell into two registers once per call and
//! stays there (inside one block the compiler cannot spill it), the walk no longer
//! reads it from memory at each step, the walk's start moves from its vector into
//! its registers inside the block (LLVM, short of registers around the block, had
//! spilled its halves, round key 0 masked by a tweak, to the stack), and the loop's
//! top is aligned to 32 bytes. The last read of round key 0 (for the returned tweak)
//! was a volatile read of a `[u8; 16]`, which LLVM did byte by byte, parking three
//! of the key's bytes on the stack (in main too): now two 8-byte loads in an `asm!`
//! block. Checked with objdump: the stack holds no key-derived value outside the
//! table and `c0`'s cell (both zeroized). Measured through `SectorCipher`, one 4 KiB
//! sector per call, TSC ticks in one process against a loop of nothing but `aesenc`
//! (941.8 ticks), 10th percentile of 200-call segments, builds run alternately:
//! 1000.7-1003.0 before, 999.7-1000.2 with the loop in one block, 998.6-998.9 with
//! the walk's start moved in and the last key read fixed (0.941 -> 0.943 of the
//! limit). Tried and dropped, in the same harness: the first batch whitened from
//! registers, its values made inside the block from the tweak instead of through the
//! table (1024-1025 ticks); that plus the second batch's values made between the
//! first batch's rounds instead of before them (1012 ticks), both slower than the
//! store-to-load forward they save; the table left unzeroed at the start
//! (`MaybeUninit`, eight fewer stores: 999.2-999.6, slower).
//!
//! Instructions: AES-NI, PCLMULQDQ and SSE2 only (no AVX, no AVX-512VL, no SSE4.1),
//! so one path serves every AES-NI CPU (detection asks for both); ten of the sixteen
//! XMM registers are used. The round keys are read from the locked schedule inside
//! the `asm!` blocks, data and sector-number batches alike, so the compiler never
//! holds a copy of them to spill to the stack.
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

    fn crypt_sector(&self, data: &mut [u8], sector: u64, dir: Direction) {
        let at = data.as_mut_ptr();
        // SAFETY: `data` is readable and writable for its length, source and
        // destination the same buffer.
        unsafe { self.sector(at, at, data.len(), sector, dir) }
    }

    fn crypt_sector_to(&self, src: &[u8], dst: &mut [u8], sector: u64, dir: Direction) {
        let src = &src[..dst.len()];
        // SAFETY: `src` is readable and `dst` writable for `dst.len()` bytes, and a
        // shared and a mutable borrow cannot overlap.
        unsafe { self.sector(src.as_ptr(), dst.as_mut_ptr(), dst.len(), sector, dir) }
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

    fn crypt_sector_run(
        &self,
        data: &mut [u8],
        sector_size: usize,
        tweaks: &[u128],
        dir: Direction,
    ) {
        let at = data.as_mut_ptr();
        // SAFETY: `data` is readable and writable for its length, source and
        // destination the same buffer.
        unsafe { self.sectors(at, at, data.len(), sector_size, tweaks, dir) }
    }

    fn crypt_sector_run_to(
        &self,
        src: &[u8],
        dst: &mut [u8],
        sector_size: usize,
        tweaks: &[u128],
        dir: Direction,
    ) {
        let src = &src[..dst.len()];
        // SAFETY: `src` is readable and `dst` writable for `dst.len()` bytes, and a
        // shared and a mutable borrow cannot overlap.
        unsafe {
            self.sectors(
                src.as_ptr(),
                dst.as_mut_ptr(),
                dst.len(),
                sector_size,
                tweaks,
                dir,
            )
        }
    }
}

impl AesNiKernel<'_> {
    /// [`XtsKernel::crypt_sector`] from `src` into `dst`: the single-sector entry
    /// ([`xts_sector_raw`]).
    ///
    /// # Safety
    ///
    /// `src` is readable and `dst` writable for `len` bytes, the same address or not
    /// overlapping.
    unsafe fn sector(&self, src: *const u8, dst: *mut u8, len: usize, sector: u64, dir: Direction) {
        assert!(len.is_multiple_of(16), "a whole-block sector");
        let keys = self.0;
        // SAFETY: as in sector_tweaks; the pointers as the caller guarantees.
        unsafe {
            match dir {
                Direction::Encrypt => {
                    xts_sector_raw::<true>(&keys.data_enc, &keys.tweak_enc, src, dst, len, sector)
                }
                Direction::Decrypt => {
                    xts_sector_raw::<false>(&keys.data_dec, &keys.tweak_enc, src, dst, len, sector)
                }
            }
        }
    }

    /// [`XtsKernel::crypt_sector_run`] from `src` into `dst`: one walk across the
    /// sectors ([`xts_sectors_raw`]) when they are whole batches, at least two each
    /// (512- and 4096-byte sectors), else sector by sector.
    ///
    /// # Safety
    ///
    /// `src` is readable and `dst` writable for `len` bytes, the same address or not
    /// overlapping.
    unsafe fn sectors(
        &self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        sector_size: usize,
        tweaks: &[u128],
        dir: Direction,
    ) {
        assert_eq!(len, tweaks.len() * sector_size, "a whole number of sectors");
        let rk = match dir {
            Direction::Encrypt => &self.0.data_enc,
            Direction::Decrypt => &self.0.data_dec,
        };
        let whole_batches = sector_size.is_multiple_of(16 * LANES) && sector_size >= 32 * LANES;
        if tweaks.is_empty() {
            return;
        }
        // SAFETY: an AesNiKernel exists only over RoundKeys, whose constructor asserted
        // AES-NI and PCLMULQDQ; the pointers as the caller guarantees; the sector size
        // checked above for the walk across sectors, and each sector's range inside
        // `len` for the other path.
        unsafe {
            if whole_batches {
                match dir {
                    Direction::Encrypt => {
                        xts_sectors_raw::<true>(rk, src, dst, sector_size, tweaks)
                    }
                    Direction::Decrypt => {
                        xts_sectors_raw::<false>(rk, src, dst, sector_size, tweaks)
                    }
                }
            } else {
                for (i, &tweak) in tweaks.iter().enumerate() {
                    let (from, to) = (src.add(i * sector_size), dst.add(i * sector_size));
                    match dir {
                        Direction::Encrypt => xts_run_raw::<true>(rk, from, to, sector_size, tweak),
                        Direction::Decrypt => {
                            xts_run_raw::<false>(rk, from, to, sector_size, tweak)
                        }
                    };
                }
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

/// Loads round key `$r` (byte offset `$off`) into `{k}` and runs round `$insn` on
/// all eight lanes.
macro_rules! round_text {
    ($insn:literal, $off:literal) => {
        concat!(
            "movdqu {k}, xmmword ptr [{rk} + ",
            $off,
            "]\n",
            $insn,
            " {x0}, {k}\n",
            $insn,
            " {x1}, {k}\n",
            $insn,
            " {x2}, {k}\n",
            $insn,
            " {x3}, {k}\n",
            $insn,
            " {x4}, {k}\n",
            $insn,
            " {x5}, {k}\n",
            $insn,
            " {x6}, {k}\n",
            $insn,
            " {x7}, {k}",
        )
    };
}

/// One step of the tweak walk in general-purpose registers: stores the whitening value
/// `(lo, hi)` into the 16-byte slot at byte offset `$off` of `{next}`, then moves it
/// on to the following block's, `w * alpha ^ c0` (see [`xts_run_raw`]). The doubling
/// is `add`/`adc`, with the feedback 0x87 masked in by the sign of the old top word
/// (`sar`, `and`): no branch, no table, the same instructions whatever the tweak.
macro_rules! step_text {
    ($off:literal) => {
        step_text!($off, "qword ptr [{c0}]", "qword ptr [{c0} + 8]")
    };
    // With `c0`'s halves from these operands (memory or registers).
    ($off:literal, $c0lo:literal, $c0hi:literal) => {
        concat!(
            "mov qword ptr [{next} + ",
            $off,
            "], {lo}\n",
            "mov qword ptr [{next} + ",
            $off,
            " + 8], {hi}\n",
            "mov {m}, {hi}\n",
            "sar {m}, 63\n",
            "and {m}, 0x87\n",
            "xor {m}, ",
            $c0lo,
            "\n",
            "add {lo}, {lo}\n",
            "adc {hi}, {hi}\n",
            "xor {lo}, {m}\n",
            "xor {hi}, ",
            $c0hi,
        )
    };
}

/// Block `$x` (byte offset `$off` in the batch): loaded and whitened with its slot of
/// `{cur}`.
macro_rules! whiten_text {
    ($x:literal, $off:literal) => {
        concat!(
            "movdqu ",
            $x,
            ", xmmword ptr [{src} + ",
            $off,
            "]\n",
            "pxor ",
            $x,
            ", xmmword ptr [{cur} + ",
            $off,
            "]",
        )
    };
}

/// Block `$x`'s last round, with round key 14 XOR its tweak (its slot of `{cur}` XOR
/// `{fold}`), and its store.
macro_rules! finish_text {
    ($last:literal, $x:literal, $off:literal) => {
        concat!(
            "movdqa {k}, xmmword ptr [{cur} + ",
            $off,
            "]\n",
            "pxor {k}, {fold}\n",
            $last,
            " ",
            $x,
            ", {k}\n",
            "movdqu xmmword ptr [{dst} + ",
            $off,
            "], ",
            $x,
        )
    };
}

/// One batch of eight blocks, `$insn` (`aesenc` or `aesdec`) for rounds 1 to 13 and
/// `$last` for round 14, as one `asm!` block. The eight lanes stay in registers and
/// in step (left to itself, LLVM runs some lanes through all fourteen rounds before
/// the others to save registers, which serialises the tail lanes on the instruction's
/// latency); rounds 1 to 8 each carry one step of the next batch's tweak walk, so
/// the integer work is spread between the AES instructions; the round keys are read
/// from the schedule, never copied to the stack.
macro_rules! batch {
    ($insn:literal, $last:literal, $src:expr, $dst:expr, $rk:expr, $cur:expr, $next:expr,
     $lo:ident, $hi:ident, $c0:expr, $fold:expr) => {
        std::arch::asm!(
            whiten_text!("{x0}", 0),
            whiten_text!("{x1}", 16),
            whiten_text!("{x2}", 32),
            whiten_text!("{x3}", 48),
            whiten_text!("{x4}", 64),
            whiten_text!("{x5}", 80),
            whiten_text!("{x6}", 96),
            whiten_text!("{x7}", 112),
            round_text!($insn, 16),
            step_text!(0),
            round_text!($insn, 32),
            step_text!(16),
            round_text!($insn, 48),
            step_text!(32),
            round_text!($insn, 64),
            step_text!(48),
            round_text!($insn, 80),
            step_text!(64),
            round_text!($insn, 96),
            step_text!(80),
            round_text!($insn, 112),
            step_text!(96),
            round_text!($insn, 128),
            step_text!(112),
            round_text!($insn, 144),
            round_text!($insn, 160),
            round_text!($insn, 176),
            round_text!($insn, 192),
            round_text!($insn, 208),
            finish_text!($last, "{x0}", 0),
            finish_text!($last, "{x1}", 16),
            finish_text!($last, "{x2}", 32),
            finish_text!($last, "{x3}", 48),
            finish_text!($last, "{x4}", 64),
            finish_text!($last, "{x5}", 80),
            finish_text!($last, "{x6}", 96),
            finish_text!($last, "{x7}", 112),
            src = in(reg) $src,
            dst = in(reg) $dst,
            rk = in(reg) $rk,
            cur = in(reg) $cur,
            next = in(reg) $next,
            lo = inout(reg) $lo,
            hi = inout(reg) $hi,
            m = out(reg) _,
            c0 = in(reg) $c0,
            fold = in(xmm_reg) $fold,
            k = out(xmm_reg) _,
            x0 = out(xmm_reg) _,
            x1 = out(xmm_reg) _,
            x2 = out(xmm_reg) _,
            x3 = out(xmm_reg) _,
            x4 = out(xmm_reg) _,
            x5 = out(xmm_reg) _,
            x6 = out(xmm_reg) _,
            x7 = out(xmm_reg) _,
            options(nostack),
        )
    };
}

/// Every batch of a run without restarts (`$src` up to `$end`, a whole number of
/// batches, at least one), as one `asm!` block with the loop inside: the batch of
/// [`batch!`], then the table's three parts rotated and the pointers moved on. The
/// walk's constant `c0` is loaded once from its cell into two registers, where it
/// stays (inside one `asm!` block the compiler cannot spill it; a Rust loop around
/// [`batch!`] had to read it from memory at each step to keep it off the stack),
/// and the loop's top is aligned to 32 bytes. The walk starts from `$w` (a vector:
/// the third batch's first whitening value), moved into its registers here, since
/// LLVM, short of registers for the block, spilled the two halves to the stack when
/// it did that move itself.
macro_rules! batch_loop {
    ($insn:literal, $last:literal, $src:expr, $dst:expr, $end:expr, $rk:expr, $table:expr,
     $w:expr, $c0:expr, $fold:expr) => {
        std::arch::asm!(
            "mov {c0hi}, qword ptr [{c0lo} + 8]",
            "mov {c0lo}, qword ptr [{c0lo}]",
            "movq {lo}, {w}",
            "punpckhqdq {w}, {w}",
            "movq {hi}, {w}",
            "lea {after}, [{cur} + 128]",
            "lea {next}, [{cur} + 256]",
            ".p2align 5",
            "2:",
            whiten_text!("{x0}", 0),
            whiten_text!("{x1}", 16),
            whiten_text!("{x2}", 32),
            whiten_text!("{x3}", 48),
            whiten_text!("{x4}", 64),
            whiten_text!("{x5}", 80),
            whiten_text!("{x6}", 96),
            whiten_text!("{x7}", 112),
            round_text!($insn, 16),
            step_text!(0, "{c0lo}", "{c0hi}"),
            round_text!($insn, 32),
            step_text!(16, "{c0lo}", "{c0hi}"),
            round_text!($insn, 48),
            step_text!(32, "{c0lo}", "{c0hi}"),
            round_text!($insn, 64),
            step_text!(48, "{c0lo}", "{c0hi}"),
            round_text!($insn, 80),
            step_text!(64, "{c0lo}", "{c0hi}"),
            round_text!($insn, 96),
            step_text!(80, "{c0lo}", "{c0hi}"),
            round_text!($insn, 112),
            step_text!(96, "{c0lo}", "{c0hi}"),
            round_text!($insn, 128),
            step_text!(112, "{c0lo}", "{c0hi}"),
            round_text!($insn, 144),
            round_text!($insn, 160),
            round_text!($insn, 176),
            round_text!($insn, 192),
            round_text!($insn, 208),
            finish_text!($last, "{x0}", 0),
            finish_text!($last, "{x1}", 16),
            finish_text!($last, "{x2}", 32),
            finish_text!($last, "{x3}", 48),
            finish_text!($last, "{x4}", 64),
            finish_text!($last, "{x5}", 80),
            finish_text!($last, "{x6}", 96),
            finish_text!($last, "{x7}", 112),
            "mov {m}, {cur}",
            "mov {cur}, {after}",
            "mov {after}, {next}",
            "mov {next}, {m}",
            "add {src}, 128",
            "add {dst}, 128",
            "cmp {src}, {end}",
            "jne 2b",
            src = inout(reg) $src => _,
            dst = inout(reg) $dst => _,
            end = in(reg) $end,
            rk = in(reg) $rk,
            cur = inout(reg) $table => _,
            after = out(reg) _,
            next = out(reg) _,
            w = inout(xmm_reg) $w => _,
            lo = out(reg) _,
            hi = out(reg) _,
            m = out(reg) _,
            c0lo = inout(reg) $c0 => _,
            c0hi = out(reg) _,
            fold = in(xmm_reg) $fold,
            k = out(xmm_reg) _,
            x0 = out(xmm_reg) _,
            x1 = out(xmm_reg) _,
            x2 = out(xmm_reg) _,
            x3 = out(xmm_reg) _,
            x4 = out(xmm_reg) _,
            x5 = out(xmm_reg) _,
            x6 = out(xmm_reg) _,
            x7 = out(xmm_reg) _,
            options(nostack),
        )
    };
}

/// The kernel behind [`xts_run`] and [`xts_run_to`]: reads `len` bytes (whole
/// blocks) at `src`, writes the result at `dst`.
///
/// Batches of eight blocks ([`batch!`]). Each block is whitened with one value, its
/// tweak XOR round key 0, from a small table that the previous batch filled in; the
/// closing tweak XOR rides on the last round, since `aesenclast(x, k14 ^ t) =
/// aesenclast(x, k14) ^ t`, with `k14 ^ t` made from the same table value by one XOR
/// with `k0 ^ k14`. The walk keeps round key 0 folded in: `(t ^ k0) * alpha ^ c0 =
/// t * alpha ^ k0` for `c0 = k0 * alpha ^ k0`. The table holds two batches (one being
/// read, one being written) and is zeroized before returning: its values are round
/// key 0 masked only by the tweak.
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
    // SAFETY: the caller's guarantees, passed on.
    unsafe { run_from::<ENCRYPT, false>(rk, src, dst, len, from_u128(tweak), &[], 0) }
}

/// One sector of `len` bytes (whole blocks, at least one) at `src` into `dst`, its
/// initial tweak `AES-256(tk, LE128(sector))` computed here: [`xts_run_raw`] without
/// a round trip of the tweak through memory, the same result.
///
/// # Safety
///
/// As for [`xts_run_raw`].
#[target_feature(enable = "aes,pclmulqdq")]
pub(super) unsafe fn xts_sector_raw<const ENCRYPT: bool>(
    rk: &[[u8; 16]; 15],
    tk: &[[u8; 16]; 15],
    src: *const u8,
    dst: *mut u8,
    len: usize,
    sector: u64,
) {
    if len == 0 {
        return;
    }
    let tweak = encrypt_sector_number(tk, sector);
    // SAFETY: the caller's guarantees, passed on.
    unsafe { run_from::<ENCRYPT, false>(rk, src, dst, len, tweak, &[], 0) };
}

/// `AES-256(tk, LE128(sector))`: fourteen dependent rounds, the round keys loaded
/// beside them (`movdqu`: the schedule has no alignment guarantee).
#[inline]
#[target_feature(enable = "aes")]
fn encrypt_sector_number(tk: &[[u8; 16]; 15], sector: u64) -> __m128i {
    let t: __m128i;
    macro_rules! rnd {
        ($off:literal) => {
            concat!(
                "movdqu {k}, xmmword ptr [{tk} + ",
                $off,
                "]\n",
                "aesenc {t}, {k}"
            )
        };
    }
    // SAFETY: reads the 15 * 16 bytes of `tk`; the enclosing function enables AES-NI.
    unsafe {
        std::arch::asm!(
            "movq {t}, {s}",
            "movdqu {k}, xmmword ptr [{tk}]",
            "pxor {t}, {k}",
            rnd!(16),
            rnd!(32),
            rnd!(48),
            rnd!(64),
            rnd!(80),
            rnd!(96),
            rnd!(112),
            rnd!(128),
            rnd!(144),
            rnd!(160),
            rnd!(176),
            rnd!(192),
            rnd!(208),
            "movdqu {k}, xmmword ptr [{tk} + 224]",
            "aesenclast {t}, {k}",
            s = in(reg) sector,
            tk = in(reg) tk.as_ptr(),
            t = out(xmm_reg) t,
            k = out(xmm_reg) _,
            options(pure, readonly, nostack, preserves_flags),
        )
    };
    t
}

/// `t * alpha^j` for `0 < j < 64`, with no step depending on another: the 128-bit
/// shift as two 64-bit shifts and the carry between them, the bits shifted out of the
/// top reduced by one carry-less multiplication with 0x87 (`poly`).
macro_rules! mul_alpha_pow {
    ($t:expr, $j:literal, $poly:expr) => {{
        let t = $t;
        let out = _mm_srli_epi64::<{ 64 - $j }>(t);
        let shifted = _mm_xor_si128(_mm_slli_epi64::<$j>(t), _mm_slli_si128::<8>(out));
        _mm_xor_si128(shifted, _mm_clmulepi64_si128::<0x01>(out, $poly))
    }};
}

/// Consecutive sectors of `sector_size` bytes at `src` into `dst`, sector `i` with
/// the initial tweak `tweaks[i]`, in one walk: `len` is `tweaks.len() * sector_size`.
/// The values of a new sector's first batch are made by the walk that the batch two
/// before it carries, restarted from that sector's tweak, so a sector costs no more
/// set-up than a batch: the set-up of [`xts_run_raw`] runs once per call.
///
/// # Safety
///
/// As for [`xts_run_raw`]; `sector_size` is a multiple of 128 (whole batches) and at
/// least 256, `tweaks` is not empty.
#[target_feature(enable = "aes,pclmulqdq")]
pub(super) unsafe fn xts_sectors_raw<const ENCRYPT: bool>(
    rk: &[[u8; 16]; 15],
    src: *const u8,
    dst: *mut u8,
    sector_size: usize,
    tweaks: &[u128],
) {
    debug_assert!(sector_size.is_multiple_of(16 * LANES) && sector_size >= 32 * LANES);
    let len = tweaks.len() * sector_size;
    // SAFETY: the caller's guarantees, passed on; `len` is at least 256.
    unsafe {
        run_from::<ENCRYPT, true>(
            rk,
            src,
            dst,
            len,
            from_u128(tweaks[0]),
            &tweaks[1..],
            sector_size / (16 * LANES),
        )
    };
}

/// The walk of [`xts_run_raw`] from the tweak `t` (a vector); with `ACROSS`, the walk
/// of [`xts_sectors_raw`]: every `sector_batches` batches it restarts from the next of
/// `later` (without, `later` and `sector_batches` are ignored, and the loop has no
/// restart to check: a one-sector call ran 0.2% slower with the check).
///
/// # Safety
///
/// As for [`xts_run_raw`], and `len` is at least 16; with `ACROSS`, `sector_batches`
/// is at least 2 and `len` a multiple of 128.
#[inline]
#[target_feature(enable = "aes,pclmulqdq")]
unsafe fn run_from<const ENCRYPT: bool, const ACROSS: bool>(
    rk: &[[u8; 16]; 15],
    src: *const u8,
    dst: *mut u8,
    len: usize,
    t: __m128i,
    later: &[u128],
    sector_batches: usize,
) -> u128 {
    let blocks = len / 16;
    let groups = blocks / LANES;
    let k0v = load(&rk[0]);
    let k0 = to_u128(k0v);
    // `c0` (which gives away round key 0) is kept in this cell, zeroized at the end:
    // with the restarts of `ACROSS` the loop has more live values than registers, and
    // LLVM spilled it, loop-invariant, to a stack slot that nothing zeroized, so that
    // walk reads it from here at each step; without restarts, `batch_loop!` loads it
    // from here into registers inside its one `asm!` block.
    let mut c0 = [mul_alpha(k0) ^ k0];
    let c0cell = c0.as_ptr();
    // The last round key's fold: whitening value ^ (k0 ^ k14) = tweak ^ k14.
    let fold = _mm_xor_si128(k0v, load(&rk[14]));
    // Batch `g` reads `whitening[g % 3]` and fills `whitening[(g + 2) % 3]`: two
    // batches ahead, so that its 8-byte stores have retired before the 16-byte loads
    // of the batch that reads them (a load spanning two stores still in flight
    // waits for them to retire, which would hold each batch back until the one
    // before it was nearly done). The first two batches' values are stored here
    // whole, 16 bytes at a time, which a load can take straight from the store, and
    // computed side by side (`t * alpha^j` for each j, then from `t * alpha^8`)
    // rather than by a chain of sixteen doublings: the first batch waits for them.
    let mut whitening = [[0u128; LANES]; 3];
    let poly = _mm_set_epi64x(0, 0x87);
    let t8 = mul_alpha_pow!(t, 8, poly);
    let t16 = mul_alpha_pow!(t8, 8, poly);
    for (half, base) in [t, t8].into_iter().enumerate() {
        let values = [
            base,
            mul_alpha_pow!(base, 1, poly),
            mul_alpha_pow!(base, 2, poly),
            mul_alpha_pow!(base, 3, poly),
            mul_alpha_pow!(base, 4, poly),
            mul_alpha_pow!(base, 5, poly),
            mul_alpha_pow!(base, 6, poly),
            mul_alpha_pow!(base, 7, poly),
        ];
        for (slot, v) in whitening[half].iter_mut().zip(values) {
            // SAFETY: `slot` is an aligned, writable 16-byte value.
            unsafe { _mm_store_si128((slot as *mut u128).cast(), _mm_xor_si128(v, k0v)) };
        }
    }
    let w = _mm_xor_si128(t16, k0v);
    let table = whitening.as_mut_ptr();
    if !ACROSS {
        if groups > 0 {
            // SAFETY: `end` is the end of the last whole batch, inside `src`; the
            // table's three parts are LANES aligned 16-byte slots each, `c0cell` 16
            // readable bytes; the asm reads the round keys at `rk` (15 * 16 bytes),
            // the batches at `src` and the table, and writes the batches at `dst`
            // (each after reading it, for in place) and the table; the CPU has AES-NI
            // (the caller's guarantee).
            unsafe {
                let end = src.add(groups * LANES * 16);
                if ENCRYPT {
                    batch_loop!(
                        "aesenc",
                        "aesenclast",
                        src,
                        dst,
                        end,
                        rk,
                        table,
                        w,
                        c0cell,
                        fold
                    );
                } else {
                    batch_loop!(
                        "aesdec",
                        "aesdeclast",
                        src,
                        dst,
                        end,
                        rk,
                        table,
                        w,
                        c0cell,
                        fold
                    );
                }
            }
        }
    } else {
        let (mut lo, mut hi) = (
            _mm_cvtsi128_si64(w) as u64,
            _mm_cvtsi128_si64(_mm_unpackhi_epi64(w, w)) as u64,
        );
        // SAFETY: the table has three parts.
        let (mut cur, mut after, mut next) = unsafe { (table, table.add(1), table.add(2)) };
        // Batches until the one whose walk fills the next sector's first values.
        let mut until_restart = if ACROSS { sector_batches - 2 } else { 0 };
        let mut later = later.iter();
        for g in 0..groups {
            if ACROSS && until_restart == 0 {
                // Batch g fills batch g + 2's values, the first of the next sector (past
                // the last sector, values nothing reads): its tweak XOR round key 0, read
                // from the schedule straight into the walk's registers (no copy of the
                // key elsewhere).
                if let Some(tweak) = later.next() {
                    // SAFETY: reads the 16 bytes of `tweak` (a u128, little-endian in
                    // memory as on every x86_64) and of round key 0 at `rk`.
                    unsafe {
                        std::arch::asm!(
                            "mov {lo}, qword ptr [{t}]",
                            "xor {lo}, qword ptr [{rk}]",
                            "mov {hi}, qword ptr [{t} + 8]",
                            "xor {hi}, qword ptr [{rk} + 8]",
                            t = in(reg) tweak as *const u128,
                            rk = in(reg) rk.as_ptr(),
                            lo = out(reg) lo,
                            hi = out(reg) hi,
                            options(pure, readonly, nostack),
                        )
                    };
                }
                until_restart = sector_batches;
            }
            if ACROSS {
                until_restart -= 1;
            }
            // SAFETY: batch `g` is below `blocks / LANES`, inside `src` and `dst`; `cur`
            // and `next` are parts of the table, LANES aligned 16-byte slots each; the
            // asm reads the round keys at `rk` (15 * 16 bytes), the batch at `src` and
            // `cur`, and writes the batch at `dst` (after reading it, for in place) and
            // `next`; the CPU has AES-NI (the caller's guarantee).
            unsafe {
                let (from, to) = (src.add(g * LANES * 16), dst.add(g * LANES * 16));
                if ENCRYPT {
                    batch!(
                        "aesenc",
                        "aesenclast",
                        from,
                        to,
                        rk,
                        cur,
                        next,
                        lo,
                        hi,
                        c0cell,
                        fold
                    );
                } else {
                    batch!(
                        "aesdec",
                        "aesdeclast",
                        from,
                        to,
                        rk,
                        cur,
                        next,
                        lo,
                        hi,
                        c0cell,
                        fold
                    );
                }
            }
            (cur, after, next) = (after, next, cur);
        }
    }
    // The last batch (or the set-up above) left the next LANES blocks' values here.
    let rest = &whitening[groups % 3];
    for (j, b) in (groups * LANES..blocks).enumerate() {
        let w = from_u128(rest[j]);
        // SAFETY: block `b` is below `blocks`, inside `src`.
        let mut v = _mm_xor_si128(unsafe { _mm_loadu_si128(src.add(16 * b).cast()) }, w);
        let last = _mm_xor_si128(w, fold);
        for key in &rk[1..14] {
            v = if ENCRYPT {
                _mm_aesenc_si128(v, load(key))
            } else {
                _mm_aesdec_si128(v, load(key))
            };
        }
        v = if ENCRYPT {
            _mm_aesenclast_si128(v, last)
        } else {
            _mm_aesdeclast_si128(v, last)
        };
        // SAFETY: as above, inside `dst`.
        unsafe { _mm_storeu_si128(dst.add(16 * b).cast(), v) };
    }
    // Round key 0 read again, inside an `asm!` block, so that the compiler keeps no
    // copy of it from the start (on the stack, where nothing would zeroize it) for
    // this XOR. (A volatile read of the `[u8; 16]` went byte by byte, and LLVM parked
    // three of the key's bytes on the stack while assembling them.)
    let (k0lo, k0hi): (u64, u64);
    // SAFETY: reads the 16 bytes of round key 0 at `rk`.
    unsafe {
        std::arch::asm!(
            "mov {lo}, qword ptr [{rk}]",
            "mov {hi}, qword ptr [{rk} + 8]",
            rk = in(reg) rk.as_ptr(),
            lo = out(reg) k0lo,
            hi = out(reg) k0hi,
            options(pure, readonly, nostack, preserves_flags),
        )
    };
    let after = rest[blocks - groups * LANES] ^ (u128::from(k0hi) << 64 | u128::from(k0lo));
    zeroize_table(&mut whitening);
    zeroize::Zeroize::zeroize(&mut c0);
    after
}

/// Zeroizes the whitening table with 16-byte stores in one `asm!` block (which the
/// compiler cannot drop: it is not `pure`), instead of `Zeroize`'s volatile
/// element-by-element writes, split into 8-byte stores.
#[inline(always)]
fn zeroize_table(table: &mut [[u128; LANES]; 3]) {
    macro_rules! zero_text {
        ($($off:literal)*) => {
            concat!($("movdqa xmmword ptr [{t} + ", $off, "], {z}\n",)*)
        };
    }
    // SAFETY: writes the table's 384 bytes, 16-byte aligned (u128).
    unsafe {
        std::arch::asm!(
            "xorps {z}, {z}",
            zero_text!(0 16 32 48 64 80 96 112 128 144 160 176 192 208 224 240
                       256 272 288 304 320 336 352 368),
            t = in(reg) table.as_mut_ptr(),
            z = out(xmm_reg) _,
            options(nostack, preserves_flags),
        )
    };
}

/// `out[i] = AES-256(tweak key, LE128(first_sector + i))`, eight at a time (one
/// `asm!` block per eight, the round keys read from the schedule: a copy in
/// registers would be spilled to the stack, where nothing zeroizes it).
#[target_feature(enable = "aes")]
pub(super) fn encrypt_sector_numbers(rk: &[[u8; 16]; 15], first_sector: u64, out: &mut [u128]) {
    let mut sector = first_sector;
    let mut groups = out.chunks_exact_mut(LANES);
    for group in &mut groups {
        let mut x = [_mm_setzero_si128(); LANES];
        for v in x.iter_mut() {
            *v = _mm_set_epi64x(0, sector as i64);
            sector = sector.wrapping_add(1);
        }
        // SAFETY: reads the 15 * 16 bytes of `rk`; the enclosing function enables
        // AES-NI.
        unsafe {
            std::arch::asm!(
                "movdqu {k}, xmmword ptr [{rk}]",
                "pxor {x0}, {k}",
                "pxor {x1}, {k}",
                "pxor {x2}, {k}",
                "pxor {x3}, {k}",
                "pxor {x4}, {k}",
                "pxor {x5}, {k}",
                "pxor {x6}, {k}",
                "pxor {x7}, {k}",
                round_text!("aesenc", 16),
                round_text!("aesenc", 32),
                round_text!("aesenc", 48),
                round_text!("aesenc", 64),
                round_text!("aesenc", 80),
                round_text!("aesenc", 96),
                round_text!("aesenc", 112),
                round_text!("aesenc", 128),
                round_text!("aesenc", 144),
                round_text!("aesenc", 160),
                round_text!("aesenc", 176),
                round_text!("aesenc", 192),
                round_text!("aesenc", 208),
                round_text!("aesenclast", 224),
                rk = in(reg) rk.as_ptr(),
                k = out(xmm_reg) _,
                x0 = inout(xmm_reg) x[0],
                x1 = inout(xmm_reg) x[1],
                x2 = inout(xmm_reg) x[2],
                x3 = inout(xmm_reg) x[3],
                x4 = inout(xmm_reg) x[4],
                x5 = inout(xmm_reg) x[5],
                x6 = inout(xmm_reg) x[6],
                x7 = inout(xmm_reg) x[7],
                options(pure, readonly, nostack, preserves_flags),
            )
        };
        for (t, v) in group.iter_mut().zip(x) {
            *t = to_u128(v);
        }
    }
    for t in groups.into_remainder() {
        *t = to_u128(encrypt_sector_number(rk, sector));
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
    use crate::xts::portable::PortableKeys;

    /// The kernel against the portable backend over every run length from 0 to 100
    /// blocks (no batch, whole batches, each remainder after them), tweaks with the
    /// top bit set and clear, and keys whose round key 0 does and does not carry out
    /// of the top bit (`c0`): in place, out of place, both directions, the tweak
    /// returned, and nothing written outside the run.
    #[test]
    fn kernel_equals_the_portable_kernel_for_every_run_length() {
        if !is_supported() {
            eprintln!("AES-NI kernel not tested: this CPU has no AES-NI");
            return;
        }
        let keys = [
            (
                std::array::from_fn(|i| i as u8 ^ 0x3c),
                std::array::from_fn(|i| (i as u8).wrapping_mul(7)),
            ),
            ([0xff; 32], [0x80; 32]),
        ];
        let tweaks = [
            1u128,
            0x87,
            u128::MAX,
            1 << 127,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ];
        for (data_key, tweak_key) in &keys {
            let schedule = RoundKeys::new(data_key, tweak_key);
            let kernel = AesNiKernel(&schedule);
            let reference = PortableKeys::new(data_key, tweak_key);
            for blocks in 0..=100usize {
                let plain: Vec<u8> = (0..blocks * 16).map(|i| (i * 31 + blocks) as u8).collect();
                for &tweak in &tweaks {
                    let mut expected = plain.clone();
                    let next = reference.encrypt_run(&mut expected, tweak);
                    // The run sits between guard bytes that must stay untouched.
                    let mut framed = vec![0xee; 32 + plain.len() + 32];
                    framed[32..32 + plain.len()].copy_from_slice(&plain);
                    let run = &mut framed[32..32 + plain.len()];
                    assert_eq!(kernel.encrypt_run(run, tweak), next, "{blocks} blocks");
                    assert_eq!(run, &expected[..], "{blocks} blocks, tweak {tweak:x}");
                    assert_eq!(kernel.decrypt_run(run, tweak), next, "{blocks} blocks");
                    assert_eq!(run, &plain[..], "decrypt, {blocks} blocks");
                    assert!(framed[..32].iter().all(|&b| b == 0xee), "{blocks} blocks");
                    assert!(framed[32 + plain.len()..].iter().all(|&b| b == 0xee));
                    let mut out = vec![0xa5; plain.len() + 32];
                    let to = &mut out[..plain.len()];
                    assert_eq!(
                        kernel.crypt_run_to(&plain, to, tweak, Direction::Encrypt),
                        next
                    );
                    assert_eq!(to, &expected[..], "encrypt to, {blocks} blocks");
                    assert_eq!(
                        kernel.crypt_run_to(&expected, to, tweak, Direction::Decrypt),
                        next
                    );
                    assert_eq!(to, &plain[..], "decrypt to, {blocks} blocks");
                    assert!(out[plain.len()..].iter().all(|&b| b == 0xa5));
                }
            }
        }
    }

    /// The walk across sectors (`crypt_sector_run`, `crypt_sector_run_to`, through the
    /// dispatch of `crypt_sectors` / `crypt_sectors_to`) against the portable backend:
    /// 1 to 17 sectors per call (one batch of tweaks and the start of a second), sector
    /// sizes of 2, 3 and 4 batches (the restart before the first batch, after one, and
    /// 512 bytes) and 4096 bytes, a size that is not whole batches (sector by
    /// sector), first sector numbers whose run carries past 2^32 and wraps past
    /// u64::MAX, both directions, in place and out of place, nothing written outside.
    #[test]
    fn walk_across_sectors_equals_the_portable_path() {
        if !is_supported() {
            eprintln!("AES-NI kernel not tested: this CPU has no AES-NI");
            return;
        }
        let data_key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x81);
        let tweak_key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(59) ^ 0x1d);
        let schedule = RoundKeys::new(&data_key, &tweak_key);
        let kernel = AesNiKernel(&schedule);
        let reference = PortableKeys::new(&data_key, &tweak_key);
        let firsts = [0u64, (1 << 32) - 5, u64::MAX - 6, u64::MAX];
        for sector_size in [256usize, 384, 512, 4096, 1040] {
            for sectors in 1..=17usize {
                if sector_size == 4096 && sectors % 4 != 1 && sectors != 16 {
                    continue; // the long sectors at a few counts keep the test quick
                }
                let len = sectors * sector_size;
                let plain: Vec<u8> = (0..len).map(|i| (i * 13 + sectors) as u8).collect();
                for &first in &firsts {
                    let mut expected = plain.clone();
                    for (i, sector) in expected.chunks_exact_mut(sector_size).enumerate() {
                        let mut tweak = [0u128];
                        reference.sector_tweaks(first.wrapping_add(i as u64), &mut tweak);
                        reference.encrypt_run(sector, tweak[0]);
                    }
                    let what = format!("{sectors} x {sector_size} from sector {first}");
                    let mut framed = vec![0xee; 32 + len + 32];
                    framed[32..32 + len].copy_from_slice(&plain);
                    let run = &mut framed[32..32 + len];
                    crate::xts::crypt_sectors(&kernel, run, first, sector_size, Direction::Encrypt);
                    assert!(run == &expected[..], "encrypt {what}");
                    crate::xts::crypt_sectors(&kernel, run, first, sector_size, Direction::Decrypt);
                    assert!(run == &plain[..], "decrypt {what}");
                    assert!(framed[..32].iter().all(|&b| b == 0xee), "{what}");
                    assert!(framed[32 + len..].iter().all(|&b| b == 0xee), "{what}");

                    let mut out = vec![0xa5; len + 32];
                    let to = &mut out[..len];
                    crate::xts::crypt_sectors_to(
                        &kernel,
                        &plain,
                        to,
                        first,
                        sector_size,
                        Direction::Encrypt,
                    );
                    assert!(to == &expected[..], "encrypt to, {what}");
                    crate::xts::crypt_sectors_to(
                        &kernel,
                        &expected,
                        to,
                        first,
                        sector_size,
                        Direction::Decrypt,
                    );
                    assert!(to == &plain[..], "decrypt to, {what}");
                    assert!(out[len..].iter().all(|&b| b == 0xa5), "{what}");
                }
            }
        }
    }

    /// The single-sector entry (`crypt_sector`, `crypt_sector_to`: the tweak encrypted
    /// in the kernel, the first sixteen whitening values computed side by side)
    /// against the portable backend's general path: every sector length from one
    /// block to 100, sector numbers at both ends of the 64-bit range and with the top
    /// bit of the tweak set, in place and out of place, both directions, nothing
    /// written outside the sector.
    #[test]
    fn sector_entry_equals_the_portable_path() {
        if !is_supported() {
            eprintln!("AES-NI kernel not tested: this CPU has no AES-NI");
            return;
        }
        let data_key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(13) ^ 0x5a);
        let tweak_key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(101) ^ 0xc3);
        let schedule = RoundKeys::new(&data_key, &tweak_key);
        let kernel = AesNiKernel(&schedule);
        let reference = PortableKeys::new(&data_key, &tweak_key);
        let sectors = [0u64, 1, 7, 255, 1 << 32, u64::MAX - 1, u64::MAX];
        for blocks in 1..=100usize {
            let len = blocks * 16;
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + blocks) as u8).collect();
            for &sector in &sectors {
                let mut tweak = [0u128];
                reference.sector_tweaks(sector, &mut tweak);
                let mut expected = plain.clone();
                reference.encrypt_run(&mut expected, tweak[0]);

                let mut framed = vec![0xee; 32 + len + 32];
                framed[32..32 + len].copy_from_slice(&plain);
                kernel.crypt_sector(&mut framed[32..32 + len], sector, Direction::Encrypt);
                assert_eq!(
                    &framed[32..32 + len],
                    &expected[..],
                    "{blocks} blocks, sector {sector}"
                );
                kernel.crypt_sector(&mut framed[32..32 + len], sector, Direction::Decrypt);
                assert_eq!(
                    &framed[32..32 + len],
                    &plain[..],
                    "decrypt, {blocks} blocks"
                );
                assert!(framed[..32].iter().all(|&b| b == 0xee));
                assert!(framed[32 + len..].iter().all(|&b| b == 0xee));

                // Out of place, from a longer source (the rest is not read into dst).
                let mut longer = expected.clone();
                longer.extend_from_slice(&[0x11; 48]);
                let mut out = vec![0xa5; len + 32];
                kernel.crypt_sector_to(&longer, &mut out[..len], sector, Direction::Decrypt);
                assert_eq!(&out[..len], &plain[..], "decrypt to, {blocks} blocks");
                kernel.crypt_sector_to(&plain, &mut out[..len], sector, Direction::Encrypt);
                assert_eq!(&out[..len], &expected[..], "encrypt to, {blocks} blocks");
                assert!(out[len..].iter().all(|&b| b == 0xa5));
            }
        }
    }
}
