//! GenerateDataKey + Decrypt pairs per second through atrest's own KMS client
//! (`gateway::RemoteKms`: Rust, SigV4, HTTP keep-alive), against several
//! AWS-KMS-compatible endpoints in the same run. The client costs microseconds per
//! call, so this measures the servers; `benches/kms-compare.py` measures the same
//! through boto3, whose own per-call cost caps both servers.
//!
//! ```text
//! kms_compare --target NAME=URL=ACCESS_KEY_ID=SECRET [...] [--region R]
//!             [--seconds S] [--rounds N] [--threads T]
//! ```
//!
//! Every target gets its own key (CreateKey) and one client per thread. Each round
//! measures every target for S seconds, rotating the order; the result is the median
//! pairs/s over the rounds, and the ratio of the first target to each other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crypto_core::kms::{
    CreateKeyRequest, DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest,
    KeyService,
};
use gateway::sigv4::SigningCredentials;
use gateway::{RemoteKms, RemoteKmsConfig};
use zeroize::Zeroizing;

struct Target {
    name: String,
    url: String,
    access_key_id: String,
    secret: String,
    key_id: String,
}

struct Options {
    targets: Vec<Target>,
    region: String,
    seconds: f64,
    rounds: usize,
    threads: usize,
    /// Where to write the rounds as a chart report (benches/src/chart.rs), if anywhere.
    report: Option<std::path::PathBuf>,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        targets: Vec::new(),
        region: "us-east-1".into(),
        seconds: 5.0,
        rounds: 3,
        threads: 1,
        report: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => {
                let spec = value()?;
                let parts: Vec<&str> = spec.splitn(4, '=').collect();
                let [name, url, access_key_id, secret] = parts.as_slice() else {
                    bail!("--target {spec:?} is not NAME=URL=ACCESS_KEY_ID=SECRET");
                };
                options.targets.push(Target {
                    name: (*name).into(),
                    url: (*url).into(),
                    access_key_id: (*access_key_id).into(),
                    secret: (*secret).into(),
                    key_id: String::new(),
                });
            }
            "--region" => options.region = value()?,
            "--seconds" => options.seconds = value()?.parse().context("--seconds")?,
            "--rounds" => options.rounds = value()?.parse().context("--rounds")?,
            "--threads" => options.threads = value()?.parse().context("--threads")?,
            "--report" => options.report = Some(value()?.into()),
            other => bail!("unknown option {other}"),
        }
    }
    if options.targets.is_empty() || options.rounds == 0 || options.threads == 0 {
        bail!("need at least one --target, --rounds >= 1 and --threads >= 1");
    }
    Ok(options)
}

fn client(target: &Target, region: &str) -> anyhow::Result<RemoteKms> {
    Ok(RemoteKms::new(RemoteKmsConfig {
        endpoint: target.url.clone(),
        region: region.to_owned(),
        credentials: SigningCredentials {
            access_key_id: target.access_key_id.clone(),
            secret_access_key: Zeroizing::new(target.secret.clone()),
            session_token: None,
        },
        timeout: Duration::from_secs(30),
        ca_bundle: None,
    })?)
}

fn pair(kms: &RemoteKms, key_id: &str, context: &EncryptionContext) -> anyhow::Result<()> {
    let generated = kms.generate_data_key(&GenerateDataKeyRequest {
        key_id: key_id.to_owned(),
        spec: DataKeySpec::Aes256,
        encryption_context: context.clone(),
    })?;
    let back = kms.decrypt(&DecryptRequest {
        ciphertext_blob: generated.ciphertext_blob,
        encryption_context: context.clone(),
        key_id: None,
    })?;
    if back.plaintext.expose() != generated.plaintext.expose() {
        bail!("Decrypt returned another key than GenerateDataKey");
    }
    Ok(())
}

/// Pairs per second over `seconds`, one thread per client.
fn measure(clients: &[Arc<RemoteKms>], key_id: &str, seconds: f64) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, kms)| {
            let (kms, done, stop) = (Arc::clone(kms), Arc::clone(&done), Arc::clone(&stop));
            let key_id = key_id.to_owned();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let context: EncryptionContext = [("bench".to_owned(), i.to_string())].into();
                while !stop.load(Ordering::Relaxed) {
                    pair(&kms, &key_id, &context)?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let mut options = parse_args()?;
    let mut clients = Vec::new();
    for target in &mut options.targets {
        let pool = (0..options.threads)
            .map(|_| client(target, &options.region).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        target.key_id = pool[0]
            .create_key(&CreateKeyRequest {
                description: format!("kms_compare {}", target.name),
                ..CreateKeyRequest::default()
            })
            .with_context(|| format!("CreateKey on {}", target.name))?
            .key_id;
        let warm: EncryptionContext = EncryptionContext::new();
        for kms in &pool {
            for _ in 0..20 {
                pair(kms, &target.key_id, &warm)
                    .with_context(|| format!("warm-up on {}", target.name))?;
            }
        }
        clients.push(pool);
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); options.targets.len()];
    for round in 0..options.rounds {
        for offset in 0..options.targets.len() {
            let i = (round + offset) % options.targets.len();
            let target = &options.targets[i];
            let rate = measure(&clients[i], &target.key_id, options.seconds)
                .with_context(|| format!("measuring {}", target.name))?;
            eprintln!(
                "round {}: {:10} {rate:10.1} pairs/s",
                round + 1,
                target.name
            );
            rates[i].push(rate);
        }
    }
    println!(
        "\nGenerateDataKey+Decrypt pairs/s through gateway::RemoteKms ({} client thread(s), \
         {} x {} s, median):",
        options.threads, options.rounds, options.seconds
    );
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    for (i, target) in options.targets.iter().enumerate() {
        let (low, high) = rates[i]
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        let spread = (high - low) / medians[i] * 100.0;
        let mut line = format!(
            "  {:10} {:10.1} pairs/s  (spread {spread:4.1}%)",
            target.name, medians[i]
        );
        if i > 0 {
            line.push_str(&format!(
                "   {}/{} = {:.1}x",
                options.targets[0].name,
                target.name,
                medians[0] / medians[i]
            ));
        }
        println!("{line}");
    }
    if let Some(path) = &options.report {
        use atrest_benches::chart::{Bar, Chart, Group, Report};
        let bars = options
            .targets
            .iter()
            .zip(&rates)
            .map(|(t, r)| Bar {
                series: t.name.clone(),
                rounds: r.clone(),
            })
            .collect();
        Report {
            bench: "kms-compare".into(),
            title: format!(
                "GenerateDataKey+Decrypt pairs, {} client thread(s), {} rounds x {} s",
                options.threads, options.rounds, options.seconds
            ),
            machine: String::new(),
            date: String::new(),
            charts: vec![Chart {
                name: "pairs".into(),
                title: "GenerateDataKey+Decrypt pairs per second".into(),
                higher_is_better: true,
                groups: vec![Group {
                    label: "Rust client (gateway::RemoteKms)".into(),
                    unit: "pairs/s".into(),
                    bars,
                }],
            }],
        }
        .write(path)?;
    }
    Ok(())
}
