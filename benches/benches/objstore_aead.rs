//! criterion benches of the objstore's bulk AEAD: ring's and RustCrypto's AES-256-GCM
//! sealing and opening one 64 KiB segment, and objstore PUT and GET of a 64 MiB
//! object. The side-by-side comparison with OpenSSL is `src/bin/aead_compare.rs`.

use std::io::{self, Write};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce as AesGcmNonce};
use criterion::{criterion_main, Criterion, Throughput};
use crypto_core::kms::{CreateKeyRequest, KeyService, LocalKms, LocalKmsConfig};
use objstore::{ObjectStore, PutObjectOptions};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

const SEGMENT: usize = 64 * 1024;
const OBJECT: usize = 64 << 20;

fn segment(c: &mut Criterion) {
    let key = [0x42u8; 32];
    let ring_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
    let rc_key = Aes256Gcm::new(&key.into());
    let aad = [7u8; 49];
    let nonce = [1u8; 12];
    let mut data = vec![0x5au8; SEGMENT];
    let mut group = c.benchmark_group("aead/64KiB");
    group.throughput(Throughput::Bytes(SEGMENT as u64));
    group.bench_function("ring/seal", |b| {
        b.iter(|| {
            ring_key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad),
                    &mut data,
                )
                .unwrap()
        })
    });
    group.bench_function("aes-gcm/seal", |b| {
        b.iter(|| {
            rc_key
                .encrypt_inout_detached(&AesGcmNonce::from(nonce), &aad, data.as_mut_slice().into())
                .unwrap()
        })
    });
    let mut sealed = data.clone();
    let tag = ring_key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut sealed,
        )
        .unwrap();
    group.bench_function("ring/open", |b| {
        b.iter(|| {
            data.copy_from_slice(&sealed);
            ring_key
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad),
                    tag,
                    &mut data,
                    0..,
                )
                .unwrap();
        })
    });
    let mut rc_sealed = data.clone();
    let rc_tag = rc_key
        .encrypt_inout_detached(
            &AesGcmNonce::from(nonce),
            &aad,
            rc_sealed.as_mut_slice().into(),
        )
        .unwrap();
    group.bench_function("aes-gcm/open", |b| {
        b.iter(|| {
            data.copy_from_slice(&rc_sealed);
            rc_key
                .decrypt_inout_detached(
                    &AesGcmNonce::from(nonce),
                    &aad,
                    data.as_mut_slice().into(),
                    &rc_tag,
                )
                .unwrap();
        })
    });
    group.finish();
}

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn object(c: &mut Criterion) {
    let home = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
    let key_arn = kms.create_key(&CreateKeyRequest::default()).unwrap().arn;
    let store = ObjectStore::open(home.path()).unwrap();
    store
        .create_bucket("bench", "arn:aws:iam::000000000000:root")
        .unwrap();
    let opts = PutObjectOptions {
        kms_key_id: Some(key_arn),
        ..Default::default()
    };
    let body = vec![0xa5u8; OBJECT];
    let mut group = c.benchmark_group("objstore/64MiB");
    group.throughput(Throughput::Bytes(OBJECT as u64));
    group.sample_size(10);
    group.bench_function("put", |b| {
        b.iter(|| {
            store
                .put_object(&kms, "bench", "obj", &mut body.as_slice(), &opts)
                .unwrap()
        })
    });
    group.bench_function("get", |b| {
        b.iter(|| {
            let download = store.get_object(&kms, "bench", "obj", None).unwrap();
            download.body.write_to(&mut Sink).unwrap()
        })
    });
    group.finish();
}

// `criterion_group!` makes a `pub fn`; inside a private module it is not a public
// item of this bench crate, so it needs no doc.
mod group {
    criterion::criterion_group!(benches, super::segment, super::object);
}
criterion_main!(group::benches);
