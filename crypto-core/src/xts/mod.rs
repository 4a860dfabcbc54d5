//! AES-256-XTS sector cipher (IEEE 1619), tweak = little-endian sector number
//! (dm-crypt `aes-xts-plain64`).
//!
//! Three backends compute the same function: a 256-bit VAES + VPCLMULQDQ kernel, a
//! 128-bit AES-NI kernel and a portable one on the `aes` crate. [`SectorCipher::new`]
//! picks the fastest the CPU runs; [`SectorCipher::with_backend`] forces one (tests
//! and benches verify each). Buffers of at least [`PARALLEL_THRESHOLD`] bytes are
//! split at sector boundaries over the current rayon pool; every sector is computed
//! the same way whichever thread runs it, so the output equals the serial one;
//! [`serially`] keeps a caller's calls on its own thread.
//!
//! Sector numbers are 64-bit and wrap: the sector after `u64::MAX` is sector 0, as in
//! dm-crypt's `plain64` IV. A 64-bit sector space is far beyond any volume atrest
//! serves, so the wrap is never reached in practice; it is defined only so that no
//! input can make the cipher panic.

#[cfg(target_arch = "x86_64")]
mod aesni;
mod portable;
#[cfg(target_arch = "x86_64")]
mod vaes;

use std::cell::Cell;

use rayon::prelude::*;
use thiserror::Error;

use crate::locked::Locked;

/// Which implementation runs the AES rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// VAES + VPCLMULQDQ: 256-bit registers (AVX2), 512-bit where the CPU also has
    /// AVX-512 (F + BW).
    Vaes,
    /// 128-bit AES-NI, eight blocks interleaved.
    AesNi,
    /// The `aes` crate, batched; runs everywhere.
    Portable,
}

impl Backend {
    /// The fastest backend this CPU supports.
    pub fn detect() -> Backend {
        if Backend::Vaes.is_supported() {
            Backend::Vaes
        } else if Backend::AesNi.is_supported() {
            Backend::AesNi
        } else {
            Backend::Portable
        }
    }

    /// Every backend this CPU supports, fastest first.
    pub fn available() -> Vec<Backend> {
        [Backend::Vaes, Backend::AesNi, Backend::Portable]
            .into_iter()
            .filter(|b| b.is_supported())
            .collect()
    }

    /// Whether this CPU can run the backend.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi => aesni::is_supported(),
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes => vaes::is_supported(),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::AesNi | Backend::Vaes => false,
        }
    }
}

/// Why an XTS cipher could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum XtsError {
    /// The caller gave a key whose two AES-256 halves are equal (IEEE 1619-2018 5.1).
    #[error("the two halves of the XTS key are equal")]
    EqualKeyHalves,
    /// The caller asked for a backend this CPU cannot run.
    #[error("this CPU does not support the {0:?} backend")]
    Unsupported(Backend),
}

/// Buffers at least this long are split across the rayon pool. Below it the cost of
/// waking another thread (a few microseconds) is larger than the work saved.
pub const PARALLEL_THRESHOLD: usize = 128 * 1024;

thread_local! {
    /// Set while [`serially`] runs on this thread.
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every cipher call it makes on this thread kept on this thread, however
/// large the buffer. For callers that already keep every core busy with requests of
/// their own (a server with more requests in flight than cores): there, splitting one
/// buffer across the rayon pool adds only hand-offs and spinning pool threads (60 us
/// of CPU per 1 MiB read in the NBD server, 1.6x the cipher's own cost).
pub fn serially<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// The smallest piece of a buffer handed to one rayon task.
const MIN_PARALLEL_CHUNK: usize = 64 * 1024;

/// Sectors whose initial tweaks are encrypted in one batch before their data.
const TWEAK_BATCH: usize = 16;

/// AES-256-XTS over whole sectors. `Send + Sync`: one cipher serves many threads.
pub struct SectorCipher {
    engine: Engine,
}

/// The expanded keys, in the layout the chosen backend reads, in locked memory
/// ([`crate::locked`]). Each variant zeroizes its round keys when dropped.
enum Engine {
    /// Always `Some`: the `aes` crate's schedules have no default to fill in place.
    Portable(Locked<Option<portable::PortableKeys>>),
    #[cfg(target_arch = "x86_64")]
    AesNi(Locked<aesni::RoundKeys>),
    #[cfg(target_arch = "x86_64")]
    Vaes(Locked<aesni::RoundKeys>, vaes::Token),
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectorCipher")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl SectorCipher {
    /// The fastest backend this CPU supports. `key` is the data key (first half)
    /// followed by the tweak key (second half).
    pub fn new(key: &[u8; 64]) -> Result<Self, XtsError> {
        Self::with_backend(key, Backend::detect())
    }

    /// A cipher on the given backend, or `Unsupported` when this CPU cannot run it.
    pub fn with_backend(key: &[u8; 64], backend: Backend) -> Result<Self, XtsError> {
        let (data_key, tweak_key) = split_key(key);
        if constant_time_eq(data_key, tweak_key) {
            return Err(XtsError::EqualKeyHalves);
        }
        if !backend.is_supported() {
            return Err(XtsError::Unsupported(backend));
        }
        let engine = match backend {
            Backend::Portable => {
                let mut keys = Locked::<Option<portable::PortableKeys>>::new_default();
                *keys = Some(portable::PortableKeys::new(data_key, tweak_key));
                Engine::Portable(keys)
            }
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi => Engine::AesNi(aesni::RoundKeys::new(data_key, tweak_key)),
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes => {
                let token = vaes::Token::detect().ok_or(XtsError::Unsupported(backend))?;
                Engine::Vaes(aesni::RoundKeys::new(data_key, tweak_key), token)
            }
            #[cfg(not(target_arch = "x86_64"))]
            Backend::AesNi | Backend::Vaes => return Err(XtsError::Unsupported(backend)),
        };
        Ok(Self { engine })
    }

    /// The implementation this cipher runs on (portable, AES-NI or VAES).
    pub fn backend(&self) -> Backend {
        match self.engine {
            Engine::Portable(_) => Backend::Portable,
            #[cfg(target_arch = "x86_64")]
            Engine::AesNi(_) => Backend::AesNi,
            #[cfg(target_arch = "x86_64")]
            Engine::Vaes(..) => Backend::Vaes,
        }
    }

    /// Encrypts `buf` in place: `buf.len() / sector_size` consecutive sectors, the first
    /// numbered `first_sector`. A `sector_size` that is not a multiple of 16 uses
    /// ciphertext stealing (IEEE 1619 5.3.2) within each sector.
    ///
    /// # Panics
    ///
    /// If `sector_size < 16` or `buf.len()` is not a multiple of `sector_size`: both
    /// are the caller's invariants (the volume layer only passes whole sectors).
    pub fn encrypt_sectors(&self, buf: &mut [u8], first_sector: u64, sector_size: usize) {
        self.crypt(buf, first_sector, sector_size, Direction::Encrypt);
    }

    /// Decrypts `buf` in place; the inverse of [`SectorCipher::encrypt_sectors`], with
    /// the same panics.
    pub fn decrypt_sectors(&self, buf: &mut [u8], first_sector: u64, sector_size: usize) {
        self.crypt(buf, first_sector, sector_size, Direction::Decrypt);
    }

    /// Encrypts `src` into `dst`: the same result as copying `src` to `dst` and
    /// calling [`SectorCipher::encrypt_sectors`], without the copy.
    ///
    /// # Panics
    ///
    /// As for `encrypt_sectors`, and when the two lengths differ.
    pub fn encrypt_sectors_to(
        &self,
        src: &[u8],
        dst: &mut [u8],
        first_sector: u64,
        sector_size: usize,
    ) {
        self.crypt_to(src, dst, first_sector, sector_size, Direction::Encrypt);
    }

    /// Decrypts `src` into `dst`: the same result as copying `src` to `dst` and
    /// calling [`SectorCipher::decrypt_sectors`], in one pass over `src` (which is
    /// the point when `src` is cold memory such as a file mapping).
    ///
    /// # Panics
    ///
    /// As for `decrypt_sectors`, and when the two lengths differ.
    pub fn decrypt_sectors_to(
        &self,
        src: &[u8],
        dst: &mut [u8],
        first_sector: u64,
        sector_size: usize,
    ) {
        self.crypt_to(src, dst, first_sector, sector_size, Direction::Decrypt);
    }

    fn crypt_to(
        &self,
        src: &[u8],
        dst: &mut [u8],
        first_sector: u64,
        sector_size: usize,
        dir: Direction,
    ) {
        assert_eq!(
            src.len(),
            dst.len(),
            "XTS source and destination lengths differ"
        );
        if dst.len() == sector_size && sector_size >= 16 && sector_size.is_multiple_of(16) {
            self.crypt_serial_to(src, dst, first_sector, sector_size, dir);
            return;
        }
        check_sectors(dst.len(), sector_size);
        match self.split(dst.len(), sector_size) {
            None => self.crypt_serial_to(src, dst, first_sector, sector_size, dir),
            Some(sectors_per_chunk) => {
                let chunk = sectors_per_chunk * sector_size;
                dst.par_chunks_mut(chunk)
                    .zip(src.par_chunks(chunk))
                    .enumerate()
                    .for_each(|(i, (to, from))| {
                        // Wrapping: the chunk index times its length is below len.
                        let first = first_sector.wrapping_add((i * sectors_per_chunk) as u64);
                        self.crypt_serial_to(from, to, first, sector_size, dir);
                    });
            }
        }
    }

    fn crypt(&self, buf: &mut [u8], first_sector: u64, sector_size: usize, dir: Direction) {
        // One sector of whole blocks (a 4 KiB block request; `openssl speed`): straight
        // to the serial path (and there to the kernel's single-sector entry), ahead of
        // the division in `check_sectors` and the split that longer buffers need (about
        // 1% of a 4 KiB call on the AES-NI backend).
        if buf.len() == sector_size && sector_size >= 16 && sector_size.is_multiple_of(16) {
            self.crypt_serial(buf, first_sector, sector_size, dir);
            return;
        }
        check_sectors(buf.len(), sector_size);
        match self.split(buf.len(), sector_size) {
            None => self.crypt_serial(buf, first_sector, sector_size, dir),
            Some(sectors_per_chunk) => buf
                .par_chunks_mut(sectors_per_chunk * sector_size)
                .enumerate()
                .for_each(|(i, chunk)| {
                    // Wrapping: the chunk index times its length is below buf.len().
                    let first = first_sector.wrapping_add((i * sectors_per_chunk) as u64);
                    self.crypt_serial(chunk, first, sector_size, dir);
                }),
        }
    }

    /// Sectors per rayon task for a call over `len` bytes, or `None` to stay on this
    /// thread.
    fn split(&self, len: usize, sector_size: usize) -> Option<usize> {
        // Length first: asking rayon for its pool size costs more than a small call.
        if len < PARALLEL_THRESHOLD || SERIAL.with(Cell::get) || rayon::current_num_threads() < 2 {
            return None;
        }
        let threads = rayon::current_num_threads();
        // A few chunks per thread so that a thread slowed by another process does
        // not hold the whole call back; each chunk still large enough to amortise
        // the task hand-off.
        let sectors = len / sector_size;
        let target = (len / (threads * 4)).max(MIN_PARALLEL_CHUNK);
        Some((target / sector_size).clamp(1, sectors))
    }

    fn crypt_serial_to(
        &self,
        src: &[u8],
        dst: &mut [u8],
        first_sector: u64,
        sector_size: usize,
        dir: Direction,
    ) {
        match &self.engine {
            Engine::Portable(k) => {
                let keys = k.as_ref().expect("portable round keys are set when made");
                crypt_sectors_to(keys, src, dst, first_sector, sector_size, dir)
            }
            #[cfg(target_arch = "x86_64")]
            Engine::AesNi(k) => crypt_sectors_to(
                &aesni::AesNiKernel(k),
                src,
                dst,
                first_sector,
                sector_size,
                dir,
            ),
            #[cfg(target_arch = "x86_64")]
            Engine::Vaes(k, token) => crypt_sectors_to(
                &vaes::VaesKernel(k, *token),
                src,
                dst,
                first_sector,
                sector_size,
                dir,
            ),
        }
    }

    fn crypt_serial(&self, buf: &mut [u8], first_sector: u64, sector_size: usize, dir: Direction) {
        match &self.engine {
            Engine::Portable(k) => {
                let keys = k.as_ref().expect("portable round keys are set when made");
                crypt_sectors(keys, buf, first_sector, sector_size, dir)
            }
            #[cfg(target_arch = "x86_64")]
            Engine::AesNi(k) => {
                crypt_sectors(&aesni::AesNiKernel(k), buf, first_sector, sector_size, dir)
            }
            #[cfg(target_arch = "x86_64")]
            Engine::Vaes(k, token) => crypt_sectors(
                &vaes::VaesKernel(k, *token),
                buf,
                first_sector,
                sector_size,
                dir,
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// What a backend provides; the sector walk and ciphertext stealing are shared.
///
/// A tweak is the 128-bit value whose little-endian bytes are the XTS tweak block, so
/// multiplication by alpha is a left shift with the 0x87 feedback.
trait XtsKernel {
    /// `out[i] = AES-256(tweak key, LE128(first_sector + i))`, sector numbers wrapping.
    fn sector_tweaks(&self, first_sector: u64, out: &mut [u128]);
    /// Encrypts the whole blocks of `blocks` (length a multiple of 16) with tweaks
    /// `tweak`, `tweak * alpha`, ...; returns the tweak of the block after the last.
    fn encrypt_run(&self, blocks: &mut [u8], tweak: u128) -> u128;
    /// The inverse of `encrypt_run`, same tweaks, same return value.
    fn decrypt_run(&self, blocks: &mut [u8], tweak: u128) -> u128;
    /// `encrypt_run` or `decrypt_run` (per `dir`) reading the first `dst.len()` bytes
    /// of `src` and writing `dst`; the rest of `src` is what the caller reads next,
    /// which a kernel may prefetch. The vector kernels read the source as they go,
    /// which saves a pass over memory when the source is cold; the default copies
    /// first.
    fn crypt_run_to(&self, src: &[u8], dst: &mut [u8], tweak: u128, dir: Direction) -> u128 {
        dst.copy_from_slice(&src[..dst.len()]);
        match dir {
            Direction::Encrypt => self.encrypt_run(dst, tweak),
            Direction::Decrypt => self.decrypt_run(dst, tweak),
        }
    }
    /// One sector of whole blocks (`data.len()` a multiple of 16) in place, its tweak
    /// encrypted from its number: a call for a single sector. A kernel may override
    /// it to start the data's blocks as soon as the tweak is out of the cipher; the
    /// default takes the general path.
    fn crypt_sector(&self, data: &mut [u8], sector: u64, dir: Direction) {
        let mut tweak = [0u128];
        self.sector_tweaks(sector, &mut tweak);
        match dir {
            Direction::Encrypt => self.encrypt_run(data, tweak[0]),
            Direction::Decrypt => self.decrypt_run(data, tweak[0]),
        };
        zeroize::Zeroize::zeroize(&mut tweak);
    }
    /// [`XtsKernel::crypt_sector`] reading the first `dst.len()` bytes of `src` and
    /// writing `dst`.
    fn crypt_sector_to(&self, src: &[u8], dst: &mut [u8], sector: u64, dir: Direction) {
        let mut tweak = [0u128];
        self.sector_tweaks(sector, &mut tweak);
        self.crypt_run_to(src, dst, tweak[0], dir);
        zeroize::Zeroize::zeroize(&mut tweak);
    }
    /// Consecutive sectors of whole blocks, `sector_size` bytes each, in place, sector
    /// `i` with the initial tweak `tweaks[i]` (`data.len() == tweaks.len() *
    /// sector_size`). The default runs them one by one; a kernel may carry its walk
    /// across the sector boundaries.
    fn crypt_sector_run(
        &self,
        data: &mut [u8],
        sector_size: usize,
        tweaks: &[u128],
        dir: Direction,
    ) {
        for (sector, &tweak) in data.chunks_exact_mut(sector_size).zip(tweaks) {
            match dir {
                Direction::Encrypt => self.encrypt_run(sector, tweak),
                Direction::Decrypt => self.decrypt_run(sector, tweak),
            };
        }
    }
    /// [`XtsKernel::crypt_sector_run`] reading the first `dst.len()` bytes of `src`
    /// and writing `dst`; the rest of `src` as for [`XtsKernel::crypt_run_to`].
    fn crypt_sector_run_to(
        &self,
        src: &[u8],
        dst: &mut [u8],
        sector_size: usize,
        tweaks: &[u128],
        dir: Direction,
    ) {
        for (i, &tweak) in tweaks.iter().enumerate() {
            let at = i * sector_size;
            // The whole rest of the source: the kernel may prefetch the next sector.
            self.crypt_run_to(&src[at..], &mut dst[at..at + sector_size], tweak, dir);
        }
    }
}

/// Multiplies a tweak by alpha (x) in GF(2^128) mod x^128 + x^7 + x^2 + x + 1.
#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

/// Calls `each(i, tweaks)` for the sectors `i..i + tweaks.len()` in `0..sectors` of a
/// run that starts at `first_sector`, with their initial tweaks, encrypted
/// [`TWEAK_BATCH`] at a time and zeroized afterwards (they are as sensitive as the
/// tweak key for this range).
fn for_each_tweak_batch<K: XtsKernel>(
    k: &K,
    sectors: usize,
    first_sector: u64,
    mut each: impl FnMut(usize, &[u128]),
) {
    let mut tweaks = [0u128; TWEAK_BATCH];
    let mut used = 0;
    let mut done = 0;
    while done < sectors {
        let n = (sectors - done).min(TWEAK_BATCH);
        used = used.max(n);
        // Sector numbers wrap, as dm-crypt's plain64 does.
        k.sector_tweaks(first_sector.wrapping_add(done as u64), &mut tweaks[..n]);
        each(done, &tweaks[..n]);
        done += n;
    }
    zeroize::Zeroize::zeroize(&mut tweaks[..used]);
}

/// [`for_each_tweak_batch`] one sector at a time: `each(i, tweak)`.
fn for_each_sector<K: XtsKernel>(
    k: &K,
    sectors: usize,
    first_sector: u64,
    mut each: impl FnMut(usize, u128),
) {
    for_each_tweak_batch(k, sectors, first_sector, |done, tweaks| {
        for (j, &tweak) in tweaks.iter().enumerate() {
            each(done + j, tweak);
        }
    });
}

fn crypt_sectors<K: XtsKernel>(
    k: &K,
    buf: &mut [u8],
    first_sector: u64,
    sector_size: usize,
    dir: Direction,
) {
    // One sector per call (a 4 KiB block device request, `openssl speed`): the
    // kernel's own entry, which need not hand the tweak back through memory.
    if buf.len() == sector_size && sector_size.is_multiple_of(16) {
        k.crypt_sector(buf, first_sector, dir);
        return;
    }
    let sectors = buf.len() / sector_size;
    if sector_size.is_multiple_of(16) {
        // Whole blocks: a batch of sectors per kernel call, which may walk across them.
        for_each_tweak_batch(k, sectors, first_sector, |i, tweaks| {
            let run = &mut buf[i * sector_size..(i + tweaks.len()) * sector_size];
            k.crypt_sector_run(run, sector_size, tweaks, dir);
        });
        return;
    }
    for_each_sector(k, sectors, first_sector, |i, tweak| {
        crypt_one_sector(k, &mut buf[i * sector_size..][..sector_size], tweak, dir);
    });
}

/// [`crypt_sectors`] from `src` into `dst` (equal lengths).
fn crypt_sectors_to<K: XtsKernel>(
    k: &K,
    src: &[u8],
    dst: &mut [u8],
    first_sector: u64,
    sector_size: usize,
    dir: Direction,
) {
    if dst.len() == sector_size && sector_size.is_multiple_of(16) {
        k.crypt_sector_to(src, dst, first_sector, dir);
        return;
    }
    let sectors = dst.len() / sector_size;
    if sector_size.is_multiple_of(16) {
        for_each_tweak_batch(k, sectors, first_sector, |i, tweaks| {
            let (at, end) = (i * sector_size, (i + tweaks.len()) * sector_size);
            // The whole rest of the source: the kernel may prefetch what follows.
            k.crypt_sector_run_to(&src[at..], &mut dst[at..end], sector_size, tweaks, dir);
        });
        return;
    }
    for_each_sector(k, sectors, first_sector, |i, tweak| {
        let at = i * sector_size;
        let to = &mut dst[at..at + sector_size];
        to.copy_from_slice(&src[at..at + sector_size]);
        crypt_one_sector(k, to, tweak, dir);
    });
}

fn crypt_one_sector<K: XtsKernel>(k: &K, data: &mut [u8], tweak: u128, dir: Direction) {
    let tail = data.len() % 16;
    if tail == 0 {
        match dir {
            Direction::Encrypt => k.encrypt_run(data, tweak),
            Direction::Decrypt => k.decrypt_run(data, tweak),
        };
        return;
    }
    // Ciphertext stealing (IEEE 1619-2018 5.3.2 / 5.4.2): the last whole block and the
    // partial block are handled together; everything before them is ordinary XTS.
    let last_full = data.len() - tail - 16;
    let (head, rest) = data.split_at_mut(last_full);
    let (block, partial) = rest.split_at_mut(16);
    let mut stolen = [0u8; 16];
    match dir {
        Direction::Encrypt => {
            let t_last = k.encrypt_run(head, tweak);
            k.encrypt_run(block, t_last);
            // block now holds CC; the partial ciphertext is its head and the
            // plaintext tail borrows its end.
            stolen[..tail].copy_from_slice(partial);
            stolen[tail..].copy_from_slice(&block[tail..]);
            partial.copy_from_slice(&block[..tail]);
            k.encrypt_run(&mut stolen, mul_alpha(t_last));
            block.copy_from_slice(&stolen);
        }
        Direction::Decrypt => {
            let t_last = k.decrypt_run(head, tweak);
            // The last whole ciphertext block was made with the *following* tweak.
            k.decrypt_run(block, mul_alpha(t_last));
            stolen[..tail].copy_from_slice(partial);
            stolen[tail..].copy_from_slice(&block[tail..]);
            partial.copy_from_slice(&block[..tail]);
            k.decrypt_run(&mut stolen, t_last);
            block.copy_from_slice(&stolen);
        }
    }
    zeroize::Zeroize::zeroize(&mut stolen);
}

/// The caller's invariants for every call (see [`SectorCipher::encrypt_sectors`]).
fn check_sectors(len: usize, sector_size: usize) {
    assert!(
        sector_size >= 16,
        "XTS sector size {sector_size} is below one AES block (16 bytes)"
    );
    assert!(
        len.is_multiple_of(sector_size),
        "XTS buffer of {len} bytes is not a whole number of {sector_size}-byte sectors"
    );
}

fn split_key(key: &[u8; 64]) -> (&[u8; 32], &[u8; 32]) {
    let (a, b) = key.split_at(32);
    // Both halves of a 64-byte array are exactly 32 bytes.
    (
        a.try_into().expect("32-byte half"),
        b.try_into().expect("32-byte half"),
    )
}

/// Compares key halves without an early exit, so the time taken says nothing of how
/// long a common prefix they share.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mul_alpha_feeds_back_the_top_bit() {
        assert_eq!(mul_alpha(1), 2);
        assert_eq!(mul_alpha(1 << 127), 0x87);
        assert_eq!(mul_alpha((1 << 127) | 1), 0x85);
    }

    #[test]
    fn serially_computes_the_same_and_restores_the_hint() {
        let key: [u8; 64] = core::array::from_fn(|i| i as u8);
        let cipher = SectorCipher::new(&key).expect("distinct halves");
        let mut split = vec![0x5au8; 4 * PARALLEL_THRESHOLD];
        let mut kept = split.clone();
        cipher.encrypt_sectors(&mut split, 9, 4096);
        serially(|| {
            assert!(SERIAL.with(Cell::get));
            serially(|| cipher.encrypt_sectors(&mut kept, 9, 4096));
            assert!(SERIAL.with(Cell::get), "a nested call keeps the outer hint");
        });
        assert_eq!(split, kept);
        assert!(!SERIAL.with(Cell::get));
        let unwound = std::panic::catch_unwind(|| serially(|| panic!("inside")));
        assert!(unwound.is_err());
        assert!(!SERIAL.with(Cell::get), "unwinding restores the hint");
    }

    #[test]
    fn cipher_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SectorCipher>();
    }

    #[test]
    fn equal_halves_are_rejected_on_every_backend() {
        let key = [7u8; 64];
        for backend in Backend::available() {
            assert!(matches!(
                SectorCipher::with_backend(&key, backend),
                Err(XtsError::EqualKeyHalves)
            ));
        }
    }
}
