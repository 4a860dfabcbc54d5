//! GenerateDataKey and Decrypt through LocalKms, as a volume attach uses them: the
//! keystore on disk, the policy check, and one durable (fsynced) trail record per
//! call; then the same calls from eight threads at once, where the trail's group
//! commit shares one fsync among concurrent calls.
//! `cargo bench -p atrest-benches --bench kms`; the peer figure to compare with is
//! moto's server (see /work/shared/PEERS.md), which syncs nothing.

use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion, Throughput};
use crypto_core::kms::{
    CreateKeyRequest, DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest,
    KeyService, LocalKms, LocalKmsConfig,
};

const THREADS: u64 = 8;

/// Runs `iters` calls of `op` spread over [`THREADS`] threads and returns the wall time.
fn on_threads(iters: u64, op: impl Fn() + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let calls = iters / THREADS + u64::from(thread < iters % THREADS);
            let op = &op;
            scope.spawn(move || (0..calls).for_each(|_| op()));
        }
    });
    start.elapsed()
}

fn kms_calls(c: &mut Criterion) {
    let home = tempfile::tempdir().expect("tempdir");
    let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).expect("open LocalKms");
    let key = kms
        .create_key(&CreateKeyRequest::default())
        .expect("create key");
    let context: EncryptionContext =
        [("atrest:volume-id".to_owned(), "3f1c9a52-bench".to_owned())].into();
    let generate = GenerateDataKeyRequest {
        key_id: key.arn.clone(),
        spec: DataKeySpec::Bytes(64),
        encryption_context: context.clone(),
    };
    let decrypt = DecryptRequest {
        ciphertext_blob: kms
            .generate_data_key_without_plaintext(&generate)
            .expect("wrap a data key")
            .ciphertext_blob,
        encryption_context: context,
        key_id: None,
    };
    let generate_one = || {
        kms.generate_data_key(&generate).expect("GenerateDataKey");
    };
    let decrypt_one = || {
        kms.decrypt(&decrypt).expect("Decrypt");
    };

    let mut group = c.benchmark_group("local_kms");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.bench_function("generate_data_key_512bit", |b| b.iter(generate_one));
    group.bench_function("decrypt_512bit", |b| b.iter(decrypt_one));
    group.bench_function("generate_data_key_512bit_8_threads", |b| {
        b.iter_custom(|iters| on_threads(iters, generate_one))
    });
    group.bench_function("decrypt_512bit_8_threads", |b| {
        b.iter_custom(|iters| on_threads(iters, decrypt_one))
    });
    group.finish();
}

// `criterion_group!` makes a `pub fn`; inside a private module it is not a public
// item of this bench crate, so it needs no doc.
mod group {
    criterion::criterion_group!(benches, super::kms_calls);
}
criterion_main!(group::benches);
