//! The objstore's bulk AEAD side by side, in one run: ring's AES-256-GCM (what
//! objstore uses), RustCrypto `aes-gcm`, and
//! `openssl speed -seconds 2 -bytes 65536 -evp aes-256-gcm`, all sealing one 64 KiB
//! segment per call on one core; then objstore PUT and GET of a 64 MiB object
//! (all cores, wall clock, LocalKms in a temporary home).
//!
//! One-core figures are divided by the thread's CPU time, as `openssl speed` divides
//! by user CPU time, so time the scheduler gives to other processes on a shared machine
//! does not count against either. Rounds interleave the contenders; the table shows
//! the median of the rounds.
//!
//! ```text
//! cargo run --release -p atrest-benches --bin aead_compare -- [--rounds N] [--seconds S]
//! ```

use std::hint::black_box;
use std::io::{self, Write};
use std::process::Command;
use std::time::Instant;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce as AesGcmNonce};
use anyhow::{bail, Context, Result};
use atrest_benches::throughput;
use crypto_core::kms::{CreateKeyRequest, KeyService, LocalKms, LocalKmsConfig};
use objstore::{ObjectStore, PutObjectOptions};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

const SEGMENT: usize = 64 * 1024;
const OBJECT: usize = 64 << 20;

struct Options {
    rounds: usize,
    seconds: f64,
}

fn parse_options() -> Result<Options> {
    let mut opts = Options {
        rounds: 5,
        seconds: 1.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => opts.rounds = value()?.parse().context("--rounds")?,
            "--seconds" => opts.seconds = value()?.parse().context("--seconds")?,
            "-h" | "--help" => {
                println!(
                    "usage: aead_compare [--rounds N (5)] [--seconds S per measurement (1.0)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if opts.rounds == 0 || opts.seconds <= 0.0 {
        bail!("--rounds and --seconds must be positive");
    }
    Ok(opts)
}

/// `openssl speed`'s figure for 65536-byte blocks, in bytes per second.
fn openssl_speed() -> Result<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-seconds",
            "2",
            "-bytes",
            "65536",
            "-evp",
            "aes-256-gcm",
        ])
        .output()
        .context("running openssl speed (is openssl installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl speed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The result row reads "AES-256-GCM    5452039.81k": thousands of bytes per second.
    let row = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("aes-256-gcm"))
        .with_context(|| format!("no aes-256-gcm row in openssl output:\n{text}"))?;
    let field = row.split_whitespace().last().context("empty openssl row")?;
    let k: f64 = field
        .trim_end_matches('k')
        .parse()
        .context("openssl figure")?;
    Ok(k * 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Discards what is written.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        black_box(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn main() -> Result<()> {
    let opts = parse_options()?;
    let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(29).wrapping_add(1));
    let ring_key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| anyhow::anyhow!("ring key"))?,
    );
    let rc_key = Aes256Gcm::new(&key.into());
    let aad = [7u8; 49];
    let mut segment = vec![0x5au8; SEGMENT];
    let mut sealed = Vec::new();

    let home = tempfile::tempdir()?;
    let kms = LocalKms::open(home.path(), LocalKmsConfig::new())?;
    let key_arn = kms.create_key(&CreateKeyRequest::default())?.arn;
    let store = ObjectStore::open(home.path())?;
    store.create_bucket("bench", "arn:aws:iam::000000000000:root")?;
    let put_opts = PutObjectOptions {
        kms_key_id: Some(key_arn),
        ..Default::default()
    };
    let object = vec![0xa5u8; OBJECT];

    let names = [
        "ring seal",
        "ring open",
        "aes-gcm 0.11 seal",
        "aes-gcm 0.11 open",
    ];
    let mut results: [Vec<f64>; 4] = Default::default();
    let mut openssl = Vec::new();
    let (mut puts, mut gets) = (Vec::new(), Vec::new());
    for round in 1..=opts.rounds {
        eprintln!("round {round}/{}", opts.rounds);
        let mut n = 0u64;
        let mut nonce = || {
            n += 1;
            let mut bytes = [0u8; 12];
            bytes[..8].copy_from_slice(&n.to_le_bytes());
            bytes
        };
        results[0].push(throughput(opts.seconds, SEGMENT, || {
            let tag = ring_key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce()),
                    Aad::from(&aad),
                    black_box(&mut segment),
                )
                .expect("seal");
            let _ = black_box(tag);
        })?);
        // Open needs a valid ciphertext: seal one, then open copies of it.
        sealed.clone_from(&segment);
        let fixed = [9u8; 12];
        let tag = ring_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(fixed),
                Aad::from(&aad),
                &mut sealed,
            )
            .map_err(|_| anyhow::anyhow!("seal"))?;
        results[1].push(throughput(opts.seconds, SEGMENT, || {
            segment.copy_from_slice(&sealed);
            ring_key
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(fixed),
                    Aad::from(&aad),
                    tag,
                    black_box(&mut segment),
                    0..,
                )
                .expect("open");
        })?);
        results[2].push(throughput(opts.seconds, SEGMENT, || {
            let tag = rc_key
                .encrypt_inout_detached(
                    &AesGcmNonce::from(nonce()),
                    &aad,
                    black_box(segment.as_mut_slice()).into(),
                )
                .expect("seal");
            let _ = black_box(tag);
        })?);
        sealed.clone_from(&segment);
        let rc_tag = rc_key
            .encrypt_inout_detached(
                &AesGcmNonce::from(fixed),
                &aad,
                sealed.as_mut_slice().into(),
            )
            .map_err(|_| anyhow::anyhow!("seal"))?;
        results[3].push(throughput(opts.seconds, SEGMENT, || {
            segment.copy_from_slice(&sealed);
            rc_key
                .decrypt_inout_detached(
                    &AesGcmNonce::from(fixed),
                    &aad,
                    black_box(segment.as_mut_slice()).into(),
                    &rc_tag,
                )
                .expect("open");
        })?);
        openssl.push(openssl_speed()?);

        let t = Instant::now();
        store.put_object(&kms, "bench", "obj", &mut object.as_slice(), &put_opts)?;
        puts.push(OBJECT as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let download = store.get_object(&kms, "bench", "obj", None)?;
        download.body.write_to(&mut Sink)?;
        gets.push(OBJECT as f64 / t.elapsed().as_secs_f64());
    }

    let gb = |bps: f64| bps / 1e9;
    let openssl_m = median(openssl);
    println!(
        "AES-256-GCM, 64 KiB per call, one core, GB/s per CPU-second, medians of {} rounds",
        opts.rounds
    );
    println!("{:<40} {:>8} {:>10}", "contender", "GB/s", "/ openssl");
    for (name, r) in names.iter().zip(results) {
        let m = median(r);
        println!("{name:<40} {:>8.2} {:>9.2}x", gb(m), m / openssl_m);
    }
    println!(
        "{:<40} {:>8.2} {:>9.2}x",
        "openssl speed -evp aes-256-gcm",
        gb(openssl_m),
        1.0
    );
    println!();
    println!(
        "objstore, 64 MiB object from memory, wall clock, {} threads (load average now: {})",
        rayon::current_num_threads(),
        load_average()
    );
    println!(
        "{:<40} {:>8.0} MB/s",
        "PUT (GenerateDataKey, MD5, seal, fsync)",
        median(puts) / 1e6
    );
    println!(
        "{:<40} {:>8.0} MB/s",
        "GET (Decrypt, open)",
        median(gets) / 1e6
    );
    Ok(())
}
