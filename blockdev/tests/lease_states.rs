//! `DataKeyLease` against a real `LocalKms`: the key's state changes are made through a
//! second handle on the same home (as another process would), and the lease must
//! notice them through its keystore watch (or DescribeKey when it has none).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::lease::{DataKeyLease, KeyStatus, LeaseConfig, OnKeyDisable};
use blockdev::volume::{self, EncryptedVolume, NewVolumeKey, Volume};
use blockdev::Error;
use crypto_core::kms::{
    CreateKeyRequest, KeyService, KeystoreGeneration, LocalKms, LocalKmsConfig, ManualClock,
};
use time::OffsetDateTime;

/// Generous: the lease polls every 50 ms; a loaded machine may be slow.
const PATIENCE: Duration = Duration::from_secs(30);

struct Lab {
    home: tempfile::TempDir,
    /// The server's key service (what the lease uses).
    server: LocalKms,
    /// An administrator's handle on the same keystore.
    admin: LocalKms,
    key_arn: String,
}

impl Lab {
    fn new() -> Lab {
        let home = tempfile::tempdir().unwrap();
        let server = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
        let admin = LocalKms::open(home.path(), LocalKmsConfig::new()).unwrap();
        let key_arn = admin.create_key(&CreateKeyRequest::default()).unwrap().arn;
        Lab {
            home,
            server,
            admin,
            key_arn,
        }
    }

    fn volume(&self, name: &str) -> std::path::PathBuf {
        let path = self.home.path().join(name);
        volume::create(
            &path,
            1 << 20,
            NewVolumeKey::Kms {
                kms: &self.admin,
                key_id: &self.key_arn,
            },
        )
        .unwrap();
        path
    }

    fn lease(&self, path: &Path, config: LeaseConfig, watched: bool) -> Arc<DataKeyLease> {
        let watch: Option<Arc<dyn KeystoreGeneration>> = if watched {
            Some(Arc::new(self.server.clone()))
        } else {
            None
        };
        DataKeyLease::start(
            EncryptedVolume::open_locked(path, false).unwrap(),
            Arc::new(self.server.clone()),
            watch,
            config,
        )
        .unwrap()
    }

    /// `(eventName, errorCode)` of every trail record.
    fn trail(&self) -> Vec<(String, Option<String>)> {
        let text = std::fs::read_to_string(self.home.path().join("trail/trail.jsonl")).unwrap();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                (
                    v["eventName"].as_str().unwrap().to_owned(),
                    v["errorCode"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }
}

fn wait_for(lease: &DataKeyLease, what: &str, done: impl Fn(&KeyStatus) -> bool) {
    let start = Instant::now();
    while !done(&lease.status()) {
        assert!(
            start.elapsed() < PATIENCE,
            "lease never became {what}: {:?}",
            lease.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn unavailable(state: &'static str) -> impl Fn(&KeyStatus) -> bool {
    move |s| matches!(s, KeyStatus::Unavailable { state: got, .. } if got == state)
}

fn usable(s: &KeyStatus) -> bool {
    *s == KeyStatus::Usable
}

fn read(lease: &DataKeyLease) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; 4096];
    lease.read_at(8192, &mut buf).map(|()| buf)
}

#[test]
fn revoke_fails_io_and_attaches_then_recovers_on_the_same_lease() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    let lease = lab.lease(&path, LeaseConfig::default(), true);
    assert_eq!(lease.status(), KeyStatus::Usable);
    lease.check_attach().unwrap();
    lease.write_at(8192, &[0x5a; 4096]).unwrap();

    lab.admin.disable_key(&lab.key_arn).unwrap();
    wait_for(&lease, "Disabled", unavailable("Disabled"));
    assert!(
        !lease.encrypted_volume().has_key(),
        "the key must be zeroized"
    );
    assert!(matches!(read(&lease), Err(Error::KeyUnavailable { .. })));
    assert!(lease.write_at(0, &[1; 512]).is_err());
    let refusal = lease.check_attach().unwrap_err().to_string();
    assert!(
        refusal.contains(&lab.key_arn) && refusal.contains("Disabled"),
        "{refusal}"
    );

    lab.admin.enable_key(&lab.key_arn).unwrap();
    wait_for(&lease, "usable again", usable);
    assert_eq!(read(&lease).unwrap(), vec![0x5a; 4096]);
    lease.check_attach().unwrap();
}

#[test]
fn an_attach_right_after_disable_is_refused_without_waiting_for_the_watcher() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    for _ in 0..20 {
        let lease = lab.lease(&path, LeaseConfig::default(), true);
        lease.check_attach().unwrap();
        lab.admin.disable_key(&lab.key_arn).unwrap();
        let refusal = lease.check_attach().unwrap_err().to_string();
        assert!(
            refusal.contains(&lab.key_arn) && refusal.contains("Disabled"),
            "{refusal}"
        );
        assert!(!lease.encrypted_volume().has_key());
        lab.admin.enable_key(&lab.key_arn).unwrap();
        lease.check_attach().unwrap();
    }
}

#[test]
fn keep_attached_serves_attached_clients_but_refuses_new_ones() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    let config = LeaseConfig {
        on_key_disable: OnKeyDisable::KeepAttached,
        ..LeaseConfig::default()
    };
    let lease = lab.lease(&path, config, true);
    lease.write_at(8192, &[7; 4096]).unwrap();
    lab.admin.disable_key(&lab.key_arn).unwrap();
    wait_for(&lease, "Disabled", unavailable("Disabled"));
    assert_eq!(read(&lease).unwrap(), vec![7; 4096]);
    assert!(lease.check_attach().is_err());
    lab.admin.enable_key(&lab.key_arn).unwrap();
    wait_for(&lease, "usable again", usable);
    lease.check_attach().unwrap();
}

#[test]
fn pending_deletion_then_deletion_is_final() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    let lease = lab.lease(&path, LeaseConfig::default(), true);
    lease.write_at(8192, &[9; 4096]).unwrap();
    lab.admin
        .schedule_key_deletion(&lab.key_arn, Some(7))
        .unwrap();
    wait_for(&lease, "PendingDeletion", unavailable("PendingDeletion"));
    assert!(read(&lease).is_err());

    // Eight days later, someone uses the key service: the deletion completes.
    let later = LocalKmsConfig {
        clock: Arc::new(ManualClock::new(
            OffsetDateTime::now_utc() + time::Duration::days(8),
        )),
        ..LocalKmsConfig::new()
    };
    let future = LocalKms::open(lab.home.path(), later).unwrap();
    assert!(future.describe_key(&lab.key_arn).is_err());
    wait_for(&lease, "Deleted", unavailable("Deleted"));
    assert!(read(&lease).is_err());
    let refusal = lease.check_attach().unwrap_err().to_string();
    assert!(refusal.contains("Deleted"), "{refusal}");
    // Nothing brings it back: a fresh lease (a restarted server) cannot unwrap either.
    drop(lease);
    let again = lab.lease(&path, LeaseConfig::default(), true);
    assert!(matches!(again.status(), KeyStatus::Unavailable { .. }));
    assert!(again.check_attach().is_err());
}

#[test]
fn a_policy_that_denies_decrypt_revokes_the_key() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    let lease = lab.lease(&path, LeaseConfig::default(), true);
    let root = lab.server.principal().to_owned();
    let deny = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": root}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Deny", "Principal": {"AWS": root}, "Action": "kms:Decrypt", "Resource": "*"}
        ]
    });
    lab.admin
        .put_key_policy(&lab.key_arn, "default", &deny.to_string(), false)
        .unwrap();
    wait_for(&lease, "AccessDenied", unavailable("AccessDenied"));
    assert!(read(&lease).is_err());
}

#[test]
fn without_a_watch_describe_key_runs_every_interval() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    let config = LeaseConfig {
        check_interval: Duration::from_millis(100),
        ..LeaseConfig::default()
    };
    let lease = lab.lease(&path, config, false);
    lab.admin.disable_key(&lab.key_arn).unwrap();
    wait_for(&lease, "Disabled", unavailable("Disabled"));
    lab.admin.enable_key(&lab.key_arn).unwrap();
    wait_for(&lease, "usable again", usable);
    assert!(
        lab.trail()
            .iter()
            .filter(|(name, _)| name == "DescribeKey")
            .count()
            >= 2
    );
}

#[test]
fn the_trail_shows_unwraps_and_refused_attaches_but_not_idle_polls() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    let config = LeaseConfig {
        check_interval: Duration::from_millis(20),
        ..LeaseConfig::default()
    };
    let lease = lab.lease(&path, config, true);
    let before = lab.trail().len();
    // Many polls of an unchanged keystore: no key-service call, nothing audited.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.trail().len(), before);

    lab.admin.disable_key(&lab.key_arn).unwrap();
    wait_for(&lease, "Disabled", unavailable("Disabled"));
    assert!(lease.check_attach().is_err());
    let trail = lab.trail();
    let decrypts: Vec<_> = trail.iter().filter(|(n, _)| n == "Decrypt").collect();
    // The unwrap at start, and the refused attach as a failed Decrypt.
    assert_eq!(decrypts.first().unwrap().1, None);
    assert_eq!(
        decrypts.last().unwrap().1.as_deref(),
        Some("DisabledException")
    );
}

#[test]
fn a_lease_started_on_a_disabled_key_recovers_when_it_is_enabled() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    lab.admin.disable_key(&lab.key_arn).unwrap();
    let lease = lab.lease(&path, LeaseConfig::default(), true);
    assert!(matches!(lease.status(), KeyStatus::Unavailable { .. }));
    assert!(lease.check_attach().is_err());
    lab.admin.enable_key(&lab.key_arn).unwrap();
    wait_for(&lease, "usable", usable);
    lease.check_attach().unwrap();
}

#[test]
fn dropping_the_lease_zeroizes_and_stops_the_watcher() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    let lease = lab.lease(&path, LeaseConfig::default(), true);
    let weak = Arc::downgrade(&lease);
    drop(lease);
    // The watcher holds the lease only for the length of one check.
    let start = Instant::now();
    while weak.upgrade().is_some() {
        assert!(
            start.elapsed() < PATIENCE,
            "the watcher kept the lease alive"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_zero_interval_is_refused() {
    let lab = Lab::new();
    let path = lab.volume("v.vol");
    let err = DataKeyLease::start(
        EncryptedVolume::open_locked(&path, false).unwrap(),
        Arc::new(lab.server.clone()),
        None,
        LeaseConfig {
            check_interval: Duration::ZERO,
            ..LeaseConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("interval"), "{err}");
}
