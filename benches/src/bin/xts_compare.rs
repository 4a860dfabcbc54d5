//! AES-256-XTS side by side, in one run: every atrest backend this CPU runs, RustCrypto
//! `xts-mode`, and `openssl speed -seconds S -bytes 4096 -evp aes-256-xts`.
//!
//! Single-core figures encrypt one 4 KiB sector per call, in place, the way
//! `openssl speed` does, and are divided by the thread's CPU time as `openssl speed`
//! divides by user CPU time, so time the scheduler gives to other processes on a
//! shared machine does not count against either.
//!
//! The ratio to OpenSSL comes from short adjacent slices: `--pairs` times, a slice of
//! `--slice` seconds of each atrest backend and one `openssl speed -seconds SLICE`
//! run, the order reversed every other pair (atrest first, then OpenSSL first), and
//! the ratio taken within each pair. On a shared virtual machine the CPU's speed
//! moves by 10-25% over minutes (other tenants, frequency), so one OpenSSL figure
//! per run set against atrest's median scatters by more than a kernel change is
//! worth; within a pair both sides see nearly the same machine, and the alternating
//! order cancels a steady drift. The table shows the median ratio and its min..max.
//!
//! Further columns decrypt one sector per call and encrypt 1 MiB per call (tweaks
//! batched) with 4 KiB and 512-byte sectors, in `--rounds` rounds that interleave
//! the contenders. The thread rows encrypt a 64 MiB buffer on a one-thread and a
//! two-thread rayon pool, by the wall clock, and also show how many CPUs the process
//! got meanwhile: on a busy machine the wall-clock ratio says more about the other
//! processes than about the code. The tables show medians.
//!
//! ```text
//! cargo run --release -p atrest-benches --bin xts_compare -- [--pairs N] [--slice S]
//!     [--rounds N] [--seconds S] [--out DIR]
//! ```
//!
//! Every slice and round of every cell also goes to `DIR/xts-compare.json` (default
//! `bench-results/`), drawn as `DIR/xts-compare-cpu.svg` (GB per CPU-second) and
//! `DIR/xts-compare-ratio.svg` (the per-pair ratios) by benches/src/chart.rs.

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use aes::cipher::KeyInit;
use aes::Aes256;
use anyhow::{bail, Context, Result};
use atrest_benches::chart::{Bar, Chart, Group, Report};
use atrest_benches::throughput;
use crypto_core::xts::{Backend, SectorCipher};
use xts_mode::{get_tweak_default, Xts128};

const SECTOR: usize = 4096;
const MIB: usize = 1 << 20;
const BIG: usize = 64 << 20;

struct Options {
    /// Adjacent atrest/OpenSSL slices for the encrypt 4 KiB column.
    pairs: usize,
    /// Seconds per slice (whole seconds: `openssl speed -seconds` takes no fraction).
    slice: u32,
    rounds: usize,
    seconds: f64,
    out: std::path::PathBuf,
}

fn parse_options() -> Result<Options> {
    let mut opts = Options {
        pairs: 15,
        slice: 1,
        rounds: 3,
        seconds: 1.0,
        out: "bench-results".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--pairs" => opts.pairs = value()?.parse().context("--pairs")?,
            "--slice" => opts.slice = value()?.parse().context("--slice (whole seconds)")?,
            "--rounds" => opts.rounds = value()?.parse().context("--rounds")?,
            "--seconds" => opts.seconds = value()?.parse().context("--seconds")?,
            "--out" => opts.out = value()?.into(),
            "-h" | "--help" => {
                println!(
                    "usage: xts_compare [--pairs N adjacent atrest/openssl slices (15)] \
                     [--slice S whole seconds per slice (1)] [--rounds N of the other \
                     columns (3)] [--seconds S per measurement of them (1.0)] \
                     [--out DIR for xts-compare.json and its charts (bench-results)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if opts.pairs == 0 || opts.slice == 0 || opts.rounds == 0 || opts.seconds <= 0.0 {
        bail!("--pairs, --slice, --rounds and --seconds must be positive");
    }
    Ok(opts)
}

/// Nanoseconds all threads of this process have run on a CPU.
fn process_cpu_ns() -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        let path = task?.path().join("schedstat");
        // A thread that exited between the listing and the read has nothing to add.
        if let Ok(text) = std::fs::read_to_string(path) {
            let field = text.split_whitespace().next().context("empty schedstat")?;
            total += field.parse::<u64>()?;
        }
    }
    Ok(total)
}

/// Wall-clock bytes per second of `op` repeated for about `seconds`, and the CPU
/// time the whole process used meanwhile (in CPU-seconds per second).
fn wall_and_cpus(seconds: f64, bytes_per_call: usize, mut op: impl FnMut()) -> Result<(f64, f64)> {
    op();
    let (start, start_cpu) = (Instant::now(), process_cpu_ns()?);
    let mut calls = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        op();
        calls += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = (process_cpu_ns()? - start_cpu) as f64 / 1e9;
    Ok((calls as f64 * bytes_per_call as f64 / wall, cpu / wall))
}

/// `openssl speed`'s figure for 4096-byte blocks over `seconds`, in bytes per second.
fn openssl_speed(seconds: u32) -> Result<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", &seconds.to_string()])
        .args(["-bytes", "4096", "-evp", "aes-256-xts"])
        .output()
        .context("running openssl speed (is openssl installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl speed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The result row reads "AES-256-XTS    8173806.31k": thousands of bytes per second.
    let row = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("aes-256-xts"))
        .with_context(|| format!("no aes-256-xts row in openssl output:\n{text}"))?;
    let field = row.split_whitespace().last().context("empty openssl row")?;
    let k: f64 = field
        .trim_end_matches('k')
        .parse()
        .context("openssl figure")?;
    Ok(k * 1000.0)
}

/// The 1, 5 and 15 minute load averages: the thread rows use wall-clock time, so other
/// work on the machine shows in them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
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

/// The encrypt 4 KiB column as adjacent slices (see the module doc).
struct Paired {
    /// Per backend, bytes per CPU-second of each pair's atrest slice.
    atrest: Vec<Vec<f64>>,
    /// Each pair's `openssl speed` figure, bytes per CPU-second.
    openssl: Vec<f64>,
}

impl Paired {
    /// Per backend, atrest over OpenSSL within each pair.
    fn ratios(&self) -> Vec<Vec<f64>> {
        self.atrest
            .iter()
            .map(|a| a.iter().zip(&self.openssl).map(|(a, o)| a / o).collect())
            .collect()
    }
}

/// `opts.pairs` pairs of slices: the first backend, OpenSSL, the other backends, in
/// that order and reversed every other pair, so that OpenSSL sits next to the first
/// two backends (VAES and AES-NI where the CPU has both) and a drift that slows the
/// later slices of a pair slows each side as often as the other.
fn paired(opts: &Options, ciphers: &[SectorCipher], sector: &mut [u8]) -> Result<Paired> {
    let mut result = Paired {
        atrest: vec![Vec::with_capacity(opts.pairs); ciphers.len()],
        openssl: Vec::with_capacity(opts.pairs),
    };
    // None is OpenSSL's slice.
    let mut order: Vec<Option<usize>> = (0..ciphers.len()).map(Some).collect();
    order.insert(1.min(order.len()), None);
    let mut n = 0u64;
    for pair in 0..opts.pairs {
        eprintln!("pair {}/{}", pair + 1, opts.pairs);
        for &who in &order {
            match who {
                None => result.openssl.push(openssl_speed(opts.slice)?),
                Some(i) => {
                    let cipher = &ciphers[i];
                    result.atrest[i].push(throughput(f64::from(opts.slice), SECTOR, || {
                        cipher.encrypt_sectors(black_box(&mut *sector), n, SECTOR);
                        n += 1;
                    })?);
                }
            }
        }
        order.reverse();
    }
    Ok(result)
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?)
}

fn main() -> Result<()> {
    let opts = parse_options()?;
    let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(29).wrapping_add(1));
    let backends = Backend::available();
    let ciphers: Vec<SectorCipher> = backends
        .iter()
        .map(|&b| SectorCipher::with_backend(&key, b))
        .collect::<Result<_, _>>()?;
    let reference = Xts128::new(
        Aes256::new_from_slice(&key[..32])?,
        Aes256::new_from_slice(&key[32..])?,
    );
    let one = pool(1)?;
    let two = pool(2)?;
    let fastest = &ciphers[0];

    let mut sector = vec![0x5au8; SECTOR];
    let mut big = vec![0xa5u8; BIG];
    let mut mib = vec![0x3cu8; MIB];
    let paired = paired(&opts, &ciphers, &mut sector)?;
    // Per backend: encrypt one 4 KiB sector per call (the pairs' atrest slices), decrypt
    // one, then 1 MiB per call with 4 KiB and with 512-byte sectors.
    let mut per_backend: Vec<[Vec<f64>; 4]> = paired
        .atrest
        .iter()
        .map(|enc| [enc.clone(), Vec::new(), Vec::new(), Vec::new()])
        .collect();
    let mut xts_mode = Vec::new();
    let mut big_one = Vec::new();
    let mut big_two = Vec::new();

    for round in 1..=opts.rounds {
        eprintln!("round {round}/{}", opts.rounds);
        for (cipher, [_, dec, mib4k, mib512]) in ciphers.iter().zip(&mut per_backend) {
            let mut n = 0u64;
            dec.push(throughput(opts.seconds, SECTOR, || {
                cipher.decrypt_sectors(black_box(&mut sector), n, SECTOR);
                n += 1;
            })?);
            for (results, size) in [(mib4k, SECTOR), (mib512, 512)] {
                results.push(one.install(|| {
                    throughput(opts.seconds, MIB, || {
                        cipher.encrypt_sectors(black_box(&mut mib), 0, size)
                    })
                })?);
            }
        }
        let mut n = 0u128;
        xts_mode.push(throughput(opts.seconds, SECTOR, || {
            reference.encrypt_area(black_box(&mut sector), SECTOR, n, get_tweak_default);
            n += 1;
        })?);
        let mut big_run = |p: &rayon::ThreadPool| {
            p.install(|| {
                wall_and_cpus(opts.seconds, BIG, || {
                    fastest.encrypt_sectors(black_box(&mut big), 0, SECTOR)
                })
            })
        };
        big_one.push(big_run(&one)?);
        big_two.push(big_run(&two)?);
    }

    let ratios = paired.ratios();
    let report = report(&opts, &backends, &per_backend, &xts_mode, &paired, &ratios);
    let json = opts.out.join("xts-compare.json");
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    report.write(&json)?;

    let gb = |bps: f64| bps / 1e9;
    let openssl_m = median(paired.openssl.clone());
    println!(
        "AES-256-XTS, 4 KiB sectors, one core, GB/s per CPU-second: encrypt and ratio from \
         {} pairs of {} s slices, the other columns medians of {} rounds",
        opts.pairs, opts.slice, opts.rounds
    );
    println!(
        "(ratio = atrest / openssl within each pair: median [min..max]; openssl and the \
         first columns process one 4 KiB sector per call)"
    );
    println!(
        "{:<34} {:>8} {:>8} {:>15} {:>8} {:>10} {:>10}",
        "contender", "encrypt", "ratio", "[min..max]", "decrypt", "1MiB/4K", "1MiB/512"
    );
    for ((backend, results), ratio) in backends.iter().zip(per_backend).zip(&ratios) {
        let [enc, dec, mib4k, mib512] = results.map(median);
        let (lo, hi) = min_max(ratio);
        println!(
            "{:<34} {:>8.2} {:>7.3}x {:>15} {:>8.2} {:>10.2} {:>10.2}",
            format!("atrest {backend:?}"),
            gb(enc),
            median(ratio.clone()),
            format!("[{lo:.3}..{hi:.3}]"),
            gb(dec),
            gb(mib4k),
            gb(mib512)
        );
    }
    let xm = median(xts_mode);
    println!(
        "{:<34} {:>8.2} {:>7.2}x  (its rounds' median / the pairs' openssl median)",
        "xts-mode 0.6 (aes 0.9)",
        gb(xm),
        xm / openssl_m
    );
    let (olo, ohi) = min_max(&paired.openssl);
    println!(
        "{:<34} {:>8.2} {:>7.2}x  (slices {:.2}..{:.2})",
        "openssl speed -evp aes-256-xts",
        gb(openssl_m),
        1.0,
        gb(olo),
        gb(ohi)
    );
    let summary = |runs: Vec<(f64, f64)>| {
        let (wall, cpus): (Vec<f64>, Vec<f64>) = runs.into_iter().unzip();
        let (wall, cpus) = (median(wall), median(cpus));
        (wall, cpus, wall / cpus)
    };
    let (w1, c1, p1) = summary(big_one);
    let (w2, c2, p2) = summary(big_two);
    println!();
    println!(
        "atrest {:?}, 64 MiB buffer, 4 KiB sectors (load average now: {})",
        fastest.backend(),
        load_average()
    );
    println!("(wall-clock GB/s; CPUs = process CPU time / wall time; per CPU = GB per CPU-second:");
    println!(
        " equal per-CPU figures mean the second thread adds its full share when it gets a core)"
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "threads", "GB/s", "ratio", "CPUs", "per CPU"
    );
    println!(
        "{:<34} {:>8.2} {:>7.2}x {:>8.2} {:>8.2}",
        "1",
        gb(w1),
        1.0,
        c1,
        gb(p1)
    );
    println!(
        "{:<34} {:>8.2} {:>7.2}x {:>8.2} {:>8.2}",
        "2",
        gb(w2),
        w2 / w1,
        c2,
        gb(p2)
    );
    println!("\nreport: {}", json.display());
    for chart in report.render_all(&opts.out)? {
        println!("chart: {}", chart.display());
    }
    Ok(())
}

/// The rounds as a chart report: one panel per way of calling the cipher, a bar per
/// contender, in GB per CPU-second (the fastest atrest backend first).
fn report(
    opts: &Options,
    backends: &[Backend],
    per_backend: &[[Vec<f64>; 4]],
    xts_mode: &[f64],
    paired: &Paired,
    ratios: &[Vec<f64>],
) -> Report {
    let gb = |v: &[f64]| v.iter().map(|x| x / 1e9).collect::<Vec<f64>>();
    let labels = [
        "encrypt 4 KiB per call",
        "decrypt 4 KiB per call",
        "encrypt 1 MiB, 4 KiB sectors",
        "encrypt 1 MiB, 512 B sectors",
    ];
    let groups = labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let mut bars: Vec<Bar> = backends
                .iter()
                .zip(per_backend)
                .map(|(b, cells)| Bar {
                    series: format!("atrest {b:?}"),
                    rounds: gb(&cells[i]),
                })
                .collect();
            if i == 0 {
                bars.push(Bar {
                    series: "xts-mode".into(),
                    rounds: gb(xts_mode),
                });
                bars.push(Bar {
                    series: "openssl".into(),
                    rounds: gb(&paired.openssl),
                });
            }
            Group {
                label: label.to_string(),
                unit: "GB per CPU-second".into(),
                bars,
            }
        })
        .collect();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // The ratio chart: a panel per backend (each on its own scale), its rounds the
    // pairs' ratios.
    let ratio_groups = backends
        .iter()
        .zip(ratios)
        .map(|(b, r)| Group {
            label: format!("{b:?}, encrypt 4 KiB per call"),
            unit: "atrest / openssl speed, same pair".into(),
            bars: vec![Bar {
                series: format!("atrest {b:?}"),
                rounds: r.clone(),
            }],
        })
        .collect();
    Report {
        bench: "xts-compare".into(),
        title: format!(
            "one core; enc 4 KiB: {} pairs x {} s; others: {} rounds x {} s",
            opts.pairs, opts.slice, opts.rounds, opts.seconds
        ),
        machine: format!("{cpu}, load {}", load_average()),
        date: Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%MZ"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        charts: vec![
            Chart {
                name: "cpu".into(),
                title: "AES-256-XTS per CPU-second".into(),
                higher_is_better: true,
                groups,
            },
            Chart {
                name: "ratio".into(),
                title: "atrest / openssl, 4 KiB per call, per pair".into(),
                higher_is_better: true,
                groups: ratio_groups,
            },
        ],
    }
}
