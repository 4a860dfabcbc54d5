//! The read path of an encrypted volume, per 1 MiB from a file the page cache holds,
//! side by side in one run:
//!
//! - `pread`: what nbdkit's `file` plugin does for a read (the peer's whole read step);
//! - `pread + decrypt`: atrest before session 4: read, then decrypt in place;
//! - `mapped decrypt`: atrest now (`blockdev::mapped`): decrypt straight from a
//!   read-only mapping of the file into the reply buffer, one pass over memory
//!   (`SectorCipher::decrypt_sectors_to`, prefetching one page ahead);
//! - `decrypt (hot)`: the cipher alone on a buffer already in cache, for scale.
//!
//! One thread, no rayon split (as the NBD server runs under load), rounds interleaved,
//! medians printed with ratios. The file is random bytes (ciphertext looks random),
//! larger than the CPU caches by default.
//!
//! ```text
//! cargo run --release -p atrest-benches --bin read_path_compare -- [--size-mib 512] [--rounds 5]
//! ```
// The mapping is of a file this program made and nobody else writes.
#![allow(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use crypto_core::xts::{serially, SectorCipher};

const SECTOR: usize = 4096;
const MIB: usize = 1 << 20;

fn main() -> Result<()> {
    let mut size_mib = 512usize;
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .context("missing value")
                .and_then(|v| Ok(v.parse()?))
        };
        match arg.as_str() {
            "--size-mib" => size_mib = value()?,
            "--rounds" => rounds = value()?,
            "-h" | "--help" => {
                println!("usage: read_path_compare [--size-mib N] [--rounds N]");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if size_mib == 0 || rounds == 0 {
        bail!("--size-mib and --rounds must be positive");
    }

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("volume.data");
    let mut file = std::fs::File::create_new(&path)?;
    let mut chunk = vec![0u8; MIB];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..size_mib {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    let file = std::fs::File::open(&path)?;
    // SAFETY: a read-only mapping of a file this process made, which nothing writes
    // or truncates while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&file)? };

    let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(1));
    let cipher = SectorCipher::new(&key)?;
    let mut buf = vec![0u8; MIB];
    // Everything in the page cache and mapped before the first timed round.
    for m in 0..size_mib {
        file.read_exact_at(&mut buf, (m * MIB) as u64)?;
        buf.copy_from_slice(&map[m * MIB..(m + 1) * MIB]);
    }

    let names = [
        "pread",
        "pread + decrypt",
        "mapped decrypt",
        "decrypt (hot)",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let per_mib = |start: Instant| start.elapsed().as_secs_f64() * 1e6 / size_mib as f64;
    serially(|| -> Result<()> {
        for _ in 0..rounds {
            let t = Instant::now();
            for m in 0..size_mib {
                file.read_exact_at(&mut buf, (m * MIB) as u64)?;
            }
            samples[0].push(per_mib(t));
            let t = Instant::now();
            for m in 0..size_mib {
                file.read_exact_at(&mut buf, (m * MIB) as u64)?;
                cipher.decrypt_sectors(&mut buf, (m * MIB / SECTOR) as u64, SECTOR);
            }
            samples[1].push(per_mib(t));
            let t = Instant::now();
            for m in 0..size_mib {
                let stored = &map[m * MIB..(m + 1) * MIB];
                cipher.decrypt_sectors_to(stored, &mut buf, (m * MIB / SECTOR) as u64, SECTOR);
            }
            samples[2].push(per_mib(t));
            let t = Instant::now();
            for m in 0..size_mib {
                cipher.decrypt_sectors(&mut buf, (m * MIB / SECTOR) as u64, SECTOR);
            }
            samples[3].push(per_mib(t));
        }
        Ok(())
    })?;
    std::hint::black_box(&buf);

    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect();
    println!(
        "read path per 1 MiB, {size_mib} MiB file in the page cache, {rounds} rounds, backend {:?}",
        cipher.backend()
    );
    println!(
        "{:<18} {:>9} {:>16} {:>18}",
        "path", "us/MiB", "vs pread", "vs pread+decrypt"
    );
    for (name, median) in names.iter().zip(&medians) {
        println!(
            "{name:<18} {median:>9.0} {:>15.2}x {:>17.2}x",
            median / medians[0],
            median / medians[1]
        );
    }
    std::io::stdout().flush()?;
    Ok(())
}
