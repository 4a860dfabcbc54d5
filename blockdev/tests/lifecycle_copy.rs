//! Snapshot, encrypted copy, import and rewrap on real files with a real `LocalKms`:
//! contents survive, holes stay holes, the source is never modified, `DST` appears
//! whole or not at all, and the refusals EBS makes are made.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use blockdev::format::{self, Encryption, HeaderCopy, VolumeHeader};
use blockdev::lifecycle::{self, NoProgress, Progress, Target};
use blockdev::volume::{self, ImageFormat, NewVolumeKey, Volume};
use blockdev::Error;
use crypto_core::kms::{CreateKeyRequest, KeyService, LocalKms, LocalKmsConfig};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;

struct Lab {
    home: tempfile::TempDir,
    kms: LocalKms,
    key_a: String,
    key_b: String,
}

impl Lab {
    fn new() -> Lab {
        let home = tempfile::tempdir().unwrap();
        let kms = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
        let key = || kms.create_key(&CreateKeyRequest::default()).unwrap().arn;
        let (key_a, key_b) = (key(), key());
        Lab {
            home,
            kms,
            key_a,
            key_b,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// A 64 MiB volume with data at 0, 10 MiB (unaligned run) and the last sector;
    /// the rest is holes.
    fn volume(&self, name: &str, key: Option<&str>) -> PathBuf {
        let path = self.path(name);
        let new_key = match key {
            Some(key_id) => NewVolumeKey::Kms {
                kms: &self.kms,
                key_id,
            },
            None => NewVolumeKey::Unencrypted,
        };
        volume::create(&path, 64 * MIB, new_key).unwrap();
        let v = volume::open(&path, &self.kms, false).unwrap();
        fill(&*v);
        v.flush().unwrap();
        path
    }

    fn digest(&self, path: &Path) -> Vec<u8> {
        let v = volume::open(path, &self.kms, true).unwrap();
        digest(&*v)
    }
}

fn fill(v: &dyn Volume) {
    v.write_at(0, &pattern(MIB as usize, 1)).unwrap();
    v.write_at(10 * MIB + 100, &pattern(300_000, 2)).unwrap();
    v.write_at(v.size() - 4096, &pattern(4096, 3)).unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn digest(v: &dyn Volume) -> Vec<u8> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut pos = 0;
    while pos < v.size() {
        let len = (v.size() - pos).min(buf.len() as u64) as usize;
        v.read_at(pos, &mut buf[..len]).unwrap();
        hash.update(&buf[..len]);
        pos += len as u64;
    }
    hash.finalize().to_vec()
}

fn file_digest(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn header(path: &Path) -> VolumeHeader {
    format::read_header(&File::open(path).unwrap(), path)
        .unwrap()
        .header
}

fn key_arn(path: &Path) -> String {
    match header(path).encryption() {
        Encryption::Aes256XtsPlain64(w) => w.key_arn.clone(),
        Encryption::None => panic!("{} is unencrypted", path.display()),
    }
}

#[derive(Default)]
struct Counted(Mutex<(u64, u64, bool)>);

impl Progress for Counted {
    fn start(&self, total: u64) {
        self.0.lock().unwrap().0 = total;
    }
    fn advance(&self, bytes: u64) {
        self.0.lock().unwrap().1 += bytes;
    }
    fn finish(&self) {
        self.0.lock().unwrap().2 = true;
    }
}

#[test]
fn unencrypted_to_encrypted_copy_keeps_data_and_holes() {
    let lab = Lab::new();
    let src = lab.volume("plain.vol", None);
    let before = file_digest(&src);
    let dst = lab.path("enc.vol");
    let progress = Counted::default();
    let report = lifecycle::copy(
        &src,
        &dst,
        &lab.kms,
        Target::Key(&lab.key_a),
        false,
        &progress,
    )
    .unwrap();
    assert_eq!(file_digest(&src), before, "the source was modified");
    assert_eq!(lab.digest(&dst), lab.digest(&src));
    assert_eq!(key_arn(&dst), lab.key_a);
    assert_ne!(report.header.volume_id(), header(&src).volume_id());
    assert_eq!(*progress.0.lock().unwrap(), (64 * MIB, 64 * MIB, true));
    // About 1.3 MiB of data plus the header: holes stayed holes.
    assert!(
        allocated(&dst) < 4 * MIB,
        "{} bytes allocated",
        allocated(&dst)
    );
    assert!(report.data_bytes >= MIB && report.data_bytes < 2 * MIB);
    assert!(!lab.path("enc.vol.partial").exists());
    // None of the plaintext is in the encrypted file.
    let stored = std::fs::read(&dst).unwrap();
    let needle = &pattern(MIB as usize, 1)[4096..4096 + 64];
    assert!(!stored.windows(64).any(|w| w == needle));
}

#[test]
fn encrypted_copy_under_another_key_is_a_fresh_data_key() {
    let lab = Lab::new();
    let src = lab.volume("a.vol", Some(&lab.key_a));
    let dst = lab.path("b.vol");
    lifecycle::copy(
        &src,
        &dst,
        &lab.kms,
        Target::Key(&lab.key_b),
        false,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(key_arn(&dst), lab.key_b);
    assert_eq!(lab.digest(&dst), lab.digest(&src));
    // The source's key is not needed any more to read the copy.
    lab.kms.disable_key(&lab.key_a).unwrap();
    assert!(volume::open(&src, &lab.kms, true).is_err());
    volume::open(&dst, &lab.kms, true).unwrap();
    // Same CMK by default, and the data sectors differ (another data key).
    lab.kms.enable_key(&lab.key_a).unwrap();
    let same = lab.path("same.vol");
    lifecycle::copy(&src, &same, &lab.kms, Target::SourceKey, false, &NoProgress).unwrap();
    assert_eq!(key_arn(&same), lab.key_a);
    let sector = |p: &Path| {
        let mut buf = vec![0u8; 4096];
        File::open(p).unwrap().read_exact_at(&mut buf, MIB).unwrap();
        buf
    };
    assert_ne!(sector(&src), sector(&same));
}

#[test]
fn encrypted_to_unencrypted_is_refused_and_leaves_nothing() {
    let lab = Lab::new();
    let src = lab.volume("a.vol", Some(&lab.key_a));
    let dst = lab.path("plain.vol");
    let err = lifecycle::copy(
        &src,
        &dst,
        &lab.kms,
        Target::Unencrypted,
        false,
        &NoProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!dst.exists() && !lab.path("plain.vol.partial").exists());
    let plain = lab.volume("p.vol", None);
    let err = lifecycle::copy(
        &plain,
        &dst,
        &lab.kms,
        Target::SourceKey,
        false,
        &NoProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("--key-id"), "{err}");
}

#[test]
fn existing_destination_is_refused_unless_forced() {
    let lab = Lab::new();
    let src = lab.volume("a.vol", None);
    let dst = lab.path("b.vol");
    std::fs::write(&dst, b"keep me").unwrap();
    let err = lifecycle::copy(
        &src,
        &dst,
        &lab.kms,
        Target::Key(&lab.key_a),
        false,
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");
    lifecycle::copy(
        &src,
        &dst,
        &lab.kms,
        Target::Key(&lab.key_a),
        true,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(lab.digest(&dst), lab.digest(&src));
    let err = lifecycle::snapshot(&src, ImageFormat::Atrest, &src, true, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("same file"), "{err}");
}

#[test]
fn a_failed_copy_leaves_no_destination_and_clears_a_stale_partial() {
    let lab = Lab::new();
    let src = lab.volume("a.vol", Some(&lab.key_a));
    let dst = lab.path("b.vol");
    std::fs::write(lab.path("b.vol.partial"), b"left by a crash").unwrap();
    lab.kms.disable_key(&lab.key_b).unwrap();
    assert!(lifecycle::copy(
        &src,
        &dst,
        &lab.kms,
        Target::Key(&lab.key_b),
        false,
        &NoProgress
    )
    .is_err());
    assert!(!dst.exists());
    lab.kms.enable_key(&lab.key_b).unwrap();
    lifecycle::copy(
        &src,
        &dst,
        &lab.kms,
        Target::Key(&lab.key_b),
        false,
        &NoProgress,
    )
    .unwrap();
    assert!(!lab.path("b.vol.partial").exists());
}

#[test]
fn import_encrypts_a_sparse_raw_image_of_any_length() {
    let lab = Lab::new();
    let raw = lab.path("disk.img");
    let file = File::create(&raw).unwrap();
    file.set_len(32 * MIB + 1000).unwrap();
    file.write_all_at(&pattern(MIB as usize, 4), 5 * MIB)
        .unwrap();
    file.write_all_at(&pattern(1000, 5), 32 * MIB).unwrap();
    drop(file);
    let dst = lab.path("disk.vol");
    let report = lifecycle::import(&raw, &dst, &lab.kms, "alias/none", false, &NoProgress);
    assert!(report.is_err(), "an unknown alias must fail");
    lab.kms.create_alias("alias/MyKMSKey", &lab.key_a).unwrap();
    let report =
        lifecycle::import(&raw, &dst, &lab.kms, "alias/MyKMSKey", false, &NoProgress).unwrap();
    assert_eq!(report.header.size(), 32 * MIB + 4096);
    assert_eq!(key_arn(&dst), lab.key_a);
    let v = volume::open(&dst, &lab.kms, true).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    v.read_at(5 * MIB, &mut buf).unwrap();
    assert_eq!(buf, pattern(MIB as usize, 4));
    let mut tail = vec![0u8; 4096];
    v.read_at(32 * MIB, &mut tail).unwrap();
    assert_eq!(&tail[..1000], &pattern(1000, 5)[..]);
    assert!(tail[1000..].iter().all(|&b| b == 0));
    assert!(allocated(&dst) < 4 * MIB);
    let err = lifecycle::import(
        &dst,
        &lab.path("x.vol"),
        &lab.kms,
        &lab.key_a,
        false,
        &NoProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("volume copy"), "{err}");
}

#[test]
fn snapshot_is_read_only_with_the_same_encryption() {
    let lab = Lab::new();
    let src = lab.volume("a.vol", Some(&lab.key_a));
    let before = file_digest(&src);
    let snap = lab.path("a.snap");
    let report = lifecycle::snapshot(&src, ImageFormat::Atrest, &snap, false, &NoProgress).unwrap();
    let h = report.header.unwrap();
    assert!(h.is_read_only());
    assert_eq!(h.volume_id(), header(&src).volume_id());
    assert_eq!(h.encryption(), header(&src).encryption());
    assert_eq!(file_digest(&src), before);
    let v = volume::open(&snap, &lab.kms, false).unwrap();
    assert!(v.is_read_only());
    assert!(matches!(v.write_at(0, &[1]), Err(Error::ReadOnly)));
    assert_eq!(digest(&*v), lab.digest(&src));
    assert!(allocated(&snap) < 4 * MIB);
    // Writing the source afterwards does not change the snapshot.
    let w = volume::open(&src, &lab.kms, false).unwrap();
    w.write_at(0, &[0xee; 4096]).unwrap();
    assert_ne!(lab.digest(&src), digest(&*v));
    assert!(lifecycle::rewrap(&snap, &lab.kms, None).is_err());
}

#[test]
fn snapshot_of_a_raw_image_is_a_read_only_file() {
    let lab = Lab::new();
    let raw = lab.path("disk.img");
    std::fs::write(&raw, pattern(10_000, 6)).unwrap();
    let snap = lab.path("disk.snap");
    // Not declared raw: refused, naming both header copies.
    let err =
        lifecycle::snapshot(&raw, ImageFormat::Atrest, &snap, false, &NoProgress).unwrap_err();
    assert!(
        matches!(err, blockdev::Error::NoValidHeader { .. }),
        "{err:?}"
    );
    let report = lifecycle::snapshot(&raw, ImageFormat::Raw, &snap, false, &NoProgress).unwrap();
    assert!(report.header.is_none());
    assert_eq!(std::fs::read(&snap).unwrap(), pattern(10_000, 6));
    assert!(std::fs::metadata(&snap).unwrap().permissions().readonly());
}

#[test]
fn rewrap_moves_the_data_key_to_another_cmk_without_touching_data() {
    let lab = Lab::new();
    let path = lab.volume("a.vol", Some(&lab.key_a));
    let data_before = {
        let mut buf = vec![0u8; 4 * MIB as usize];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut buf, MIB)
            .unwrap();
        buf
    };
    let digest_before = lab.digest(&path);
    let old = header(&path);
    let new = lifecycle::rewrap(&path, &lab.kms, Some(&lab.key_b)).unwrap();
    assert_eq!(new.generation(), old.generation() + 1);
    assert_eq!(key_arn(&path), lab.key_b);
    let located = format::read_header(&File::open(&path).unwrap(), &path).unwrap();
    assert_eq!(located.copy, HeaderCopy::Primary);
    assert!(located.warning.is_none(), "both copies must be updated");
    let mut data_after = vec![0u8; 4 * MIB as usize];
    File::open(&path)
        .unwrap()
        .read_exact_at(&mut data_after, MIB)
        .unwrap();
    assert_eq!(
        data_before, data_after,
        "rewrap must not touch the data area"
    );
    lab.kms.disable_key(&lab.key_a).unwrap();
    assert_eq!(lab.digest(&path), digest_before);
    // Same CMK: new material after rotation.
    lab.kms.rotate_key_on_demand(&lab.key_b).unwrap();
    lifecycle::rewrap(&path, &lab.kms, None).unwrap();
    assert_eq!(key_arn(&path), lab.key_b);
    assert_eq!(lab.digest(&path), digest_before);
    let plain = lab.volume("p.vol", None);
    assert!(lifecycle::rewrap(&plain, &lab.kms, None).is_err());
}

#[test]
fn a_rewrap_interrupted_between_the_header_copies_opens_either_way() {
    let lab = Lab::new();
    let path = lab.volume("a.vol", Some(&lab.key_a));
    let digest_before = lab.digest(&path);
    let old_primary = {
        let mut block = vec![0u8; format::HEADER_SIZE];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut block, 0)
            .unwrap();
        block
    };
    lifecycle::rewrap(&path, &lab.kms, Some(&lab.key_b)).unwrap();
    // The crash: the backup holds the new header, the primary still the old one.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&old_primary, 0).unwrap();
    drop(file);
    let located = format::read_header(&File::open(&path).unwrap(), &path).unwrap();
    assert_eq!(located.copy, HeaderCopy::Backup);
    assert_eq!(key_arn(&path), lab.key_b);
    assert_eq!(lab.digest(&path), digest_before);
    // Re-running the rewrap repairs the primary.
    lifecycle::rewrap(&path, &lab.kms, Some(&lab.key_b)).unwrap();
    let located = format::read_header(&File::open(&path).unwrap(), &path).unwrap();
    assert_eq!(located.copy, HeaderCopy::Primary);
    assert!(located.warning.is_none());
}
