//! criterion benches of the AES-256-XTS sector cipher: every backend this CPU runs,
//! 512-byte and 4 KiB sectors, 1 MiB and 64 MiB buffers, on 1 and 2 rayon threads.
//! The side-by-side comparison with OpenSSL is `src/bin/xts_compare.rs`.

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use crypto_core::xts::{Backend, SectorCipher};

fn xts(c: &mut Criterion) {
    let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(29).wrapping_add(1));
    let pools: Vec<(usize, rayon::ThreadPool)> = [1, 2]
        .into_iter()
        .map(|n| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap();
            (n, pool)
        })
        .collect();
    for backend in Backend::available() {
        let cipher = SectorCipher::with_backend(&key, backend).unwrap();
        let mut group = c.benchmark_group(format!("xts/{backend:?}"));
        for buffer in [1usize << 20, 64 << 20] {
            group.throughput(Throughput::Bytes(buffer as u64));
            group.sample_size(if buffer > 1 << 20 { 10 } else { 30 });
            let mut data = vec![0x5au8; buffer];
            for sector in [512usize, 4096] {
                for (threads, pool) in &pools {
                    let id = format!("{}MiB/{sector}B/{threads}t", buffer >> 20);
                    group.bench_function(BenchmarkId::new("encrypt", &id), |b| {
                        b.iter(|| pool.install(|| cipher.encrypt_sectors(&mut data, 0, sector)))
                    });
                    group.bench_function(BenchmarkId::new("decrypt", &id), |b| {
                        b.iter(|| pool.install(|| cipher.decrypt_sectors(&mut data, 0, sector)))
                    });
                }
            }
        }
        group.finish();
    }
}

// `criterion_group!` makes a `pub fn`; inside a private module it is not a public
// item of this bench crate, so it needs no doc.
mod group {
    criterion::criterion_group!(benches, super::xts);
}
criterion_main!(group::benches);
